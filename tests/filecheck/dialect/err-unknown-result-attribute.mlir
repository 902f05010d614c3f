func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %loss_cotangent: tensor<f32> {step.cotangent})
    -> (tensor<f32> {step.output = "loss"}, tensor<4x3xf32> {step.ouptut = "grad.w"})
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>
  %grad = step.broadcast %loss_cotangent : tensor<f32> -> tensor<4x3xf32>
  func.return %loss, %grad : tensor<f32>, tensor<4x3xf32>
}
// A later stage (after differentiate) reads its result attributes the same way.
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-unknown-result-attribute.mlir:2:62: error: unknown attribute 'step.ouptut' on result 1 of function @f; did you mean 'step.output'?
// CHECK-NOT: Traceback
