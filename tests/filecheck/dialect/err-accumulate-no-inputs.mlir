func.func @f(%w: tensor<4x3xf32> {step.param}) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>, step.accumulate = 4 : i64} {
  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// Accumulation splits the batch inputs into micro-batches: a program without any is an error.
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-accumulate-no-inputs.mlir:2:49: error: step.accumulate = 4 splits the batch inputs into micro-batches, but @f has none (every argument is a parameter)
// CHECK-NOT: Traceback
