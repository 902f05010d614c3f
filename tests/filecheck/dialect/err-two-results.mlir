func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %labels: tensor<8xi32>) -> (tensor<f32>, tensor<f32>)
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>
  func.return %loss, %loss : tensor<f32>, tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-two-results.mlir:1:96: error: {{.*}}a step returns exactly one value, the scalar loss; found 2 results
// CHECK-NOT: Traceback
