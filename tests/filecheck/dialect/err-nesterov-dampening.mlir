func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %labels: tensor<8xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1, momentum = 0.9, dampening = 0.1, nesterov = true>} {
  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-nesterov-dampening.mlir:2:17: error: {{.*}}Nesterov momentum requires a momentum and zero dampening (as in torch.optim.SGD), found momentum = 0.9, dampening = 0.1
// CHECK-NOT: Traceback
