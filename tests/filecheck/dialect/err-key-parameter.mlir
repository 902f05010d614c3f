func.func @f(%w: tensor<4x3xf32> {step.param}, %key: tensor<2xui32> {step.param}) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-key-parameter.mlir:1:48: error: {{.*}}parameter %key must be a float tensor (f16, bf16, f32, f64), found tensor<2xui32>
// CHECK-NOT: Traceback
