func.func @f(%x: tensor<2x3x8x8xf32> {step.param}, %w: tensor<4x3x3x3xf32> {step.param}) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %y = step.conv2d %x, %w stride [0, 1] : (tensor<2x3x8x8xf32>, tensor<4x3x3x3xf32>) -> tensor<2x4x6x6xf32>
  %loss = step.sum %y : tensor<2x4x6x6xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-conv-stride.mlir:3:3: error: {{.*}}step.conv2d: conv2d stride must be positive, found [0, 1] (non-positive stride is not supported)
// CHECK-NOT: Traceback
