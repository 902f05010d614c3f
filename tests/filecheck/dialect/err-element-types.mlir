func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x3xf64>, %labels: tensor<8xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %h = step.mul %x, %w : (tensor<8x3xf64>, tensor<4x3xf32>) -> tensor<8x3xf64>
  %loss = step.sum %h : tensor<8x3xf64> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-element-types.mlir:3:3: error: {{.*}}step.mul needs equal element types, found f64 and f32
// CHECK-NOT: Traceback
