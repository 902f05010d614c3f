func.func @f(%w: tensor<4x3xf32> {step.param = #step.sgd<lr = 0.1>}, %x: tensor<8x4xf32>) -> tensor<f32>
    attributes {step.adam = #step.adam<lr = 1.0e-3>} {
  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-adam-param-sgd.mlir:1:14: error: parameter %w: its optimizer fields must be a #step.adam<...> as the function's, found #step.sgd<lr = 0.1>
// CHECK-NOT: Traceback
