func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %ids: tensor<8xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %y = step.gelu %x approximate erf : tensor<8x4xf32>
  %loss = step.constant 0.0 : tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-gelu-approximate.mlir:3:33: error: {{.*}}unknown approximation 'erf' of step.gelu; expected none or tanh
// CHECK-NOT: Traceback
