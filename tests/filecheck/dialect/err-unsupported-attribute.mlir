func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %labels: tensor<8xi32>) -> tensor<f32>
    attributes {step.adam = #step.sgd<lr = 1.0e-3>} {
  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// A name the spec defines but this version does not implement is an error, not ignored.
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-unsupported-attribute.mlir:2:17: error: attribute 'step.adam' (the optimizer torch.optim.Adam) is not supported yet by this version of stepc
// CHECK-NOT: Traceback
