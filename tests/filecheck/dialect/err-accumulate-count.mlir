func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>, step.accumulate = 0 : i64} {
  %y = step.matmul %x, %w : (tensor<8x4xf32>, tensor<4x3xf32>) -> tensor<8x3xf32>
  %loss = step.sum %y : tensor<8x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// The number of micro-batches is an integer of at least 1, checked as the program is read.
// RUN: not stepc opt %s 2>&1 | filecheck %s
// RUN: sed -e 's/= 0 : i64/= 2.5 : f64/' %s | not stepc opt - 2>&1 | filecheck %s --check-prefix=FLOAT
// CHECK: err-accumulate-count.mlir:2:49: error: step.accumulate = 0: the number of micro-batches must be at least 1
// CHECK-NOT: Traceback
// FLOAT: <stdin>:2:49: error: step.accumulate takes the number of micro-batches as an integer (step.accumulate = 4 : i64), found 2.500000e+00 : f64
