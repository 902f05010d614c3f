func.func @f(%x: tensor<3x8x8xf32> {step.param}, %w: tensor<4x3x3x3xf32> {step.param}) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %y = step.conv2d %x, %w  : (tensor<3x8x8xf32>, tensor<4x3x3x3xf32>) -> tensor<4x6x6xf32>
  %loss = step.sum %y : tensor<4x6x6xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-conv-rank.mlir:3:3: error: {{.*}}step.conv2d: conv2d takes an input of shape NxCxHxW (rank 4), found 3x8x8
// CHECK-NOT: Traceback
