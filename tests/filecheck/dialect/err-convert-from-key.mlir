func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %key: tensor<2xui32>, %ids: tensor<2xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %k = step.convert %key : tensor<2xui32> -> tensor<2xf32>
  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-convert-from-key.mlir:3:3: error: {{.*}}step.convert does not convert random keys: tensor<2xui32> is key data
// CHECK-NOT: Traceback
