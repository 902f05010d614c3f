func.func @f(%w: tensor<4x3xf32> {step.param = #step.adam<lr = 0.01>}, %x: tensor<8x4xf32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-sgd-param-adam.mlir:1:14: error: parameter %w: its optimizer fields must be a #step.sgd<...> as the function's, found #step.adam<lr = 0.01>
// CHECK-NOT: Traceback
