func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %key: tensor<2xui32>, %ids: tensor<2xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %d = step.dropout %x, %key rate 1.5 : (tensor<8x4xf32>, tensor<2xui32>) -> tensor<8x4xf32>
  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-dropout-rate.mlir:3:3: error: {{.*}}step.dropout rate is the probability of dropping an element, in [0, 1]; found 1.5
// CHECK-NOT: Traceback
