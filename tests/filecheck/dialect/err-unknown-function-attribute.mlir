func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %labels: tensor<8xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>, step.clip_grad_nrom = 1.0 : f64} {
  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-unknown-function-attribute.mlir:2:49: error: unknown attribute 'step.clip_grad_nrom' on function @f; did you mean 'step.clip_grad_norm'?
// CHECK-NEXT: step.clip_grad_nrom = 1.0
// CHECK-NEXT: {{^ +}}^~~~~~~~~~~~~~~~~~~{{$}}
// CHECK-NOT: Traceback
