func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>) -> tensor<f32>
    attributes {step.adamw = #step.adamw<eps = -1.0e-08>} {
  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-adamw-eps.mlir:2:17: error: invalid AdamW eps: -1.0e-08 (must be >= 0, as in torch.optim.AdamW)
// CHECK-NOT: Traceback
