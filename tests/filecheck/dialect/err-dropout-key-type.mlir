func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %key: tensor<2xui32>, %ids: tensor<2xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %d = step.dropout %x, %ids rate 0.1 : (tensor<8x4xf32>, tensor<2xi32>) -> tensor<8x4xf32>
  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-dropout-key-type.mlir:3:3: error: {{.*}}step.dropout key must be a random key, tensor<2xui32> (threefry key data), found tensor<2xi32>
// CHECK-NOT: Traceback
