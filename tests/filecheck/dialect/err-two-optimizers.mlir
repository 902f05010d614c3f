func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>, step.adam = #step.adam<lr = 0.01>} {
  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-two-optimizers.mlir:2:49: error: one optimizer per function: found step.sgd and step.adam
// CHECK-NOT: Traceback
