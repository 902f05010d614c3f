func.func @f(%x: tensor<2x3x4x4xf32> {step.param}, %w: tensor<4x3x3x3xf32> {step.param}) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %y = step.conv2d %x, %w dilation [2, 2] : (tensor<2x3x4x4xf32>, tensor<4x3x3x3xf32>) -> tensor<2x4x1x1xf32>
  %loss = step.sum %y : tensor<2x4x1x1xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-conv-output-size.mlir:3:3: error: {{.*}}step.conv2d: conv2d output size is less than 1: the padded input is 4x4 per channel and the dilated kernel 5x5
// CHECK-NOT: Traceback
