func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %ids: tensor<8xi32>,
        %g: tensor<8xf32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %y = step.layer_norm %ids, %g, %g : (tensor<8xi32>, tensor<8xf32>, tensor<8xf32>) -> tensor<8xi32>
  %loss = step.constant 0.0 : tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-layer-norm-float.mlir:4:3: error: {{.*}}step.layer_norm input must be a float tensor (f16, bf16, f32, f64), found tensor<8xi32>
// CHECK-NOT: Traceback
