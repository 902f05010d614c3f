func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32> {step.output = "x"}) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-misplaced-attribute.mlir:1:69: error: attribute 'step.output' (the key of a result) is written on a result, not on argument %x
// CHECK-NOT: Traceback
