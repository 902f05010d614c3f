func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %labels: tensor<8xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %loss = step.mse %x, %w : (tensor<8x4xf32>, tensor<4x3xf32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-mse-types.mlir:3:3: error: {{.*}}step.mse takes two operands of the same type, found tensor<8x4xf32> and tensor<4x3xf32>
// CHECK-NOT: Traceback
