func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %labels: tensor<8xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1, beta = 0.9>} {
  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-sgd-unknown-field.mlir:2:48: error: {{.*}}unknown SGD field 'beta'; the fields are lr, momentum, dampening, weight_decay, nesterov, maximize
// CHECK-NOT: Traceback
