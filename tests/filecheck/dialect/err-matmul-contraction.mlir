func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %labels: tensor<8xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %h = step.matmul %w, %x : (tensor<4x3xf32>, tensor<8x4xf32>) -> tensor<4x4xf32>
  %loss = step.sum %h : tensor<4x4xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-matmul-contraction.mlir:3:3: error: {{.*}}step.matmul: matmul contraction mismatch: lhs 4x3 has k = 3, rhs 8x4 has k = 8
// CHECK-NOT: Traceback
