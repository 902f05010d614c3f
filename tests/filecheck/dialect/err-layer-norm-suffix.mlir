func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %ids: tensor<8xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %y = step.layer_norm %x, %w, %w : (tensor<8x4xf32>, tensor<4x3xf32>, tensor<4x3xf32>) -> tensor<8x4xf32>
  %loss = step.constant 0.0 : tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-layer-norm-suffix.mlir:3:3: error: {{.*}}layer_norm normalizes the trailing dims of its input given by its weight's shape: 4x3 is not a suffix of the input's shape 8x4
// CHECK-NOT: Traceback
