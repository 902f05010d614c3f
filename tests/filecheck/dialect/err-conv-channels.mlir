func.func @f(%x: tensor<2x3x8x8xf32> {step.param}, %w: tensor<4x2x3x3xf32> {step.param}) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %y = step.conv2d %x, %w padding [1, 1] : (tensor<2x3x8x8xf32>, tensor<4x2x3x3xf32>) -> tensor<2x4x8x8xf32>
  %loss = step.sum %y : tensor<2x4x8x8xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-conv-channels.mlir:3:3: error: {{.*}}step.conv2d: conv2d with groups = 1 and weight 4x2x3x3 expects input 2x3x8x8 to have 2 channels, but got 3 channels instead
// CHECK-NOT: Traceback
