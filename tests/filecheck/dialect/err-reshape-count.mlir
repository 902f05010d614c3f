func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %labels: tensor<8xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %h = step.reshape %w : tensor<4x3xf32> -> tensor<2x5xf32>
  %loss = step.sum %h : tensor<2x5xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-reshape-count.mlir:3:3: error: {{.*}}step.reshape: reshape keeps the element count: 4x3 has 12 elements, 2x5 has 10
// CHECK-NOT: Traceback
