func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %labels: tensor<8xi32>) -> tensor<4xf32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %h = step.sum %w dims [1] : tensor<4x3xf32> -> tensor<4xf32>
  func.return %h : tensor<4xf32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-non-scalar-loss.mlir:1:96: error: {{.*}}the loss must be a rank-0 float tensor (tensor<f32>, say), found tensor<4xf32>
// CHECK-NEXT: -> tensor<4xf32>
// The caret spans the whole type, not just `tensor`:
// CHECK-NEXT: {{^ +}}^~~~~~~~~~~~~{{$}}
// CHECK-NOT: Traceback
