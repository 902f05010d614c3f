func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %ids: tensor<8xi32>,
        %g: tensor<4xf32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %y = step.layer_norm %x, %w, %g : (tensor<8x4xf32>, tensor<4x3xf32>, tensor<4xf32>) -> tensor<8x4xf32>
  %loss = step.constant 0.0 : tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-layer-norm-weight-bias.mlir:4:3: error: {{.*}}step.layer_norm weight and bias have one shape (the normalized shape), found 4x3 and 4
// CHECK-NOT: Traceback
