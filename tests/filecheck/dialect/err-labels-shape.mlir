func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %labels: tensor<8xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %t = step.transpose %x perm [1, 0] : tensor<8x4xf32> -> tensor<4x8xf32>
  %loss = step.cross_entropy %t, %labels : (tensor<4x8xf32>, tensor<8xi32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-labels-shape.mlir:4:3: error: {{.*}}step.cross_entropy: cross_entropy takes labels of shape 4 (one per row of the logits), found 8
// CHECK-NOT: Traceback
