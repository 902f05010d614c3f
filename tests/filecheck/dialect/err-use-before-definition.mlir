func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %labels: tensor<8xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %loss = step.sum %h : tensor<8x3xf32> -> tensor<f32>
  %h = step.matmul %x, %w : (tensor<8x4xf32>, tensor<4x3xf32>) -> tensor<8x3xf32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-use-before-definition.mlir:3:20: error: {{.*}}%h is used before its definition on line 4
// CHECK-NEXT: %loss = step.sum %h
// CHECK-NEXT: {{^ +}}^~{{$}}
// CHECK-NOT: Traceback
