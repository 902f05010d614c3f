func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %labels: tensor<8xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %h = step.transpose %w perm [0, 0] : tensor<4x3xf32> -> tensor<3x4xf32>
  %loss = step.sum %h : tensor<3x4xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-bad-perm.mlir:3:3: error: {{.*}}step.transpose: perm [0, 0] is not a permutation of the 2 dims of 4x3
// CHECK-NOT: Traceback
