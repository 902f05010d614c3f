func.func @f(%w: tensor<3x2xf32> {step.param}, %x: tensor<4x8x3xf32>, %goal: tensor<2x8x2xf32>)
    -> (tensor<f32> {step.output = "loss"}, tensor<3x2xf32> {step.output = "grad.w"})
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %loss.sum, %g.sum = step.accumulate (%x.micro = %x, %goal.micro = %goal) : (tensor<4x8x3xf32>, tensor<2x8x2xf32>) -> (tensor<f32>, tensor<3x2xf32>) {
    %y = step.matmul %x.micro, %w : (tensor<8x3xf32>, tensor<3x2xf32>) -> tensor<8x2xf32>
    %loss = step.mse %y, %goal.micro : (tensor<8x2xf32>, tensor<8x2xf32>) -> tensor<f32>
    step.yield %loss, %w : tensor<f32>, tensor<3x2xf32>
  }
  func.return %loss.sum, %g.sum : tensor<f32>, tensor<3x2xf32>
}
// Every operand of step.accumulate holds the same number of micro-batches along its leading axis.
// RUN: not stepc opt %s 2>&1 | filecheck %s
// RUN: sed -e 's/-> (tensor<f32>, tensor<3x2xf32>) {/-> (tensor<f32>, tensor<3x3xf32>) {/' -e 's/%goal: tensor<2x8x2xf32>/%goal: tensor<4x8x2xf32>/' -e 's/, tensor<2x8x2xf32>)/, tensor<4x8x2xf32>)/' %s | not stepc opt - 2>&1 | filecheck %s --check-prefix=YIELD
// CHECK: err-accumulate-micro-batches.mlir:4:3: error: step.accumulate operands disagree on the number of micro-batches: operand 0 has 4 along its leading axis, operand 1 has 2 (tensor<2x8x2xf32>)
// CHECK-NOT: Traceback
// YIELD: <stdin>:4:3: error: step.accumulate yields (tensor<f32>, tensor<3x2xf32>) but returns (tensor<f32>, tensor<3x3xf32>): each result is the sum of one yielded value
