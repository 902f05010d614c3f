func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %key: tensor<2xui32>, %ids: tensor<2xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %k = step.exp %key : tensor<2xui32>
  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-key-float-op.mlir:3:3: error: {{.*}}step.exp operand must be a float tensor (f16, bf16, f32, f64), found tensor<2xui32>
// CHECK-NOT: Traceback
