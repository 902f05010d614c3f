func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %labels: tensor<8xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %h = step.matmul %labels, %w : (tensor<8xi32>, tensor<4x3xf32>) -> tensor<8x3xf32>
  %loss = step.sum %h : tensor<8x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-matmul-rank.mlir:3:3: error: {{.*}}step.matmul lhs must be a float tensor
// CHECK-NOT: Traceback
