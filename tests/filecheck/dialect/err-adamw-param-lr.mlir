func.func @f(%w: tensor<4x3xf32> {step.param = #step.adamw<lr = -1.0>}, %x: tensor<8x4xf32>) -> tensor<f32>
    attributes {step.adamw = #step.adamw<lr = 1.0e-3>} {
  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-adamw-param-lr.mlir:1:14: error: parameter %w: invalid AdamW lr: -1.0 (must be >= 0, as in torch.optim.AdamW)
// CHECK-NOT: Traceback
