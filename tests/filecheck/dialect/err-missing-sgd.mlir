func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %labels: tensor<8xi32>) -> tensor<f32> {
  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-missing-sgd.mlir:1:1: error: {{.*}}the function needs an optimizer: attributes {step.sgd = #step.sgd<lr = 0.1>}
// CHECK-NOT: Traceback
