func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %labels: tensor<8xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %h = step.exp %w : tensor<4x3xf32>
  func.return %h : tensor<4x3xf32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-return-type.mlir:4:3: error: {{.*}}func.return: Expected arguments to have the same types as the function output types
// CHECK-NOT: Traceback
