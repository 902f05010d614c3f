func.func @f(%w: tensor<4x3xf32>, %x: tensor<8x4xf32>, %labels: tensor<8xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-no-parameter.mlir:1:1: error: {{.*}}a step needs at least one parameter: mark one argument {step.param}
// CHECK-NOT: Traceback
