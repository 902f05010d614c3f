func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>) -> tensor<f32>
    attributes {step.adam = #step.adam<lr = -0.1>} {
  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-adam-negative-lr.mlir:2:17: error: invalid Adam lr: -0.1 (must be >= 0, as in torch.optim.Adam)
// CHECK-NOT: Traceback
