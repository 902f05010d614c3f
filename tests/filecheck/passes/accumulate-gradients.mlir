// RUN: stepc opt %s -p accumulate-gradients | filecheck %s
// RUN: stepc opt %s -p accumulate-gradients | stepc opt - -p accumulate-gradients | filecheck %s
// RUN: sed -e 's/step.accumulate = 4 : i64/step.accumulate = 1 : i64/' %s | stepc opt - -p accumulate-gradients | filecheck %s --check-prefix=ONE
// RUN: sed -e 's/, step.accumulate = 4 : i64//' %s | stepc opt - -p accumulate-gradients | filecheck %s --check-prefix=NONE
// RUN: sed -e 's/step.accumulate = 4 : i64/step.accumulate = 0 : i64/' %s | not stepc opt - -p accumulate-gradients 2>&1 | filecheck %s --check-prefix=ZERO

// Least squares after `seed-scalar-loss` (as `stepc compile --until canonicalize` dumps it),
// asking for gradient accumulation over 4 micro-batches.

func.func @linreg(%w: tensor<3x2xf32> {step.param}, %x: tensor<8x3xf32>, %goal: tensor<8x2xf32>)
    -> (tensor<f32> {step.output = "loss"}, tensor<3x2xf32> {step.output = "grad.w"})
    attributes {step.sgd = #step.sgd<lr = 0.1>, step.accumulate = 4 : i64} {
  %loss_cotangent = step.constant 1.0 : tensor<f32>
  %y = step.matmul %x, %w : (tensor<8x3xf32>, tensor<3x2xf32>) -> tensor<8x2xf32>
  %loss = step.mse %y, %goal : (tensor<8x2xf32>, tensor<8x2xf32>) -> tensor<f32>
  %c = step.constant 0.125 : tensor<f32>
  %k = step.mul %loss_cotangent, %c : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %d = step.sub %y, %goal : (tensor<8x2xf32>, tensor<8x2xf32>) -> tensor<8x2xf32>
  %y_cotangent = step.mul %d, %k : (tensor<8x2xf32>, tensor<f32>) -> tensor<8x2xf32>
  %xt = step.transpose %x perm [1, 0] : tensor<8x3xf32> -> tensor<3x8xf32>
  %w_cotangent = step.matmul %xt, %y_cotangent : (tensor<3x8xf32>, tensor<8x2xf32>) -> tensor<3x2xf32>
  func.return %loss, %w_cotangent : tensor<f32>, tensor<3x2xf32>
}

// Every batch input gains a leading axis of 4; the parameter and the result keys stay; the
// attribute is consumed (a second run changes nothing).
// CHECK-LABEL: func.func @linreg(%w: tensor<3x2xf32> {step.param}, %x: tensor<4x8x3xf32>, %goal: tensor<4x8x2xf32>)
// CHECK-SAME:    -> (tensor<f32> {step.output = "loss"}, tensor<3x2xf32> {step.output = "grad.w"})
// CHECK-SAME:    attributes {step.sgd = #step.sgd<lr = 0.1>} {
// The program of one micro-batch is the loop's body, on micro-batch k of each input.
// CHECK-NEXT:  %loss.sum, %w_cotangent.sum = step.accumulate (%x.micro = %x, %goal.micro = %goal)
// CHECK-SAME:    : (tensor<4x8x3xf32>, tensor<4x8x2xf32>) -> (tensor<f32>, tensor<3x2xf32>) {
// CHECK-NEXT:    %loss_cotangent = step.constant 1.0 : tensor<f32>
// CHECK-NEXT:    %y = step.matmul %x.micro, %w : (tensor<8x3xf32>, tensor<3x2xf32>) -> tensor<8x2xf32>
// CHECK:         %xt = step.transpose %x.micro perm [1, 0]
// CHECK:         step.yield %loss, %w_cotangent : tensor<f32>, tensor<3x2xf32>
// CHECK-NEXT:  }
// The sums divided by K: the mean loss and the mean gradient, as (loss / 4).backward() leaves it.
// CHECK-NEXT:  %micro_batches = step.constant 4.0 : tensor<f32>
// CHECK-NEXT:  %loss.mean = step.div %loss.sum, %micro_batches : (tensor<f32>, tensor<f32>) -> tensor<f32>
// CHECK-NEXT:  %w_cotangent.mean = step.div %w_cotangent.sum, %micro_batches : (tensor<3x2xf32>, tensor<f32>) -> tensor<3x2xf32>
// CHECK-NEXT:  func.return %loss.mean, %w_cotangent.mean : tensor<f32>, tensor<3x2xf32>

// K = 1 is the same loop of one trip: the inputs still gain their leading axis, of 1.
// ONE:       %x: tensor<1x8x3xf32>, %goal: tensor<1x8x2xf32>
// ONE:       step.accumulate (%x.micro = %x, %goal.micro = %goal) : (tensor<1x8x3xf32>, tensor<1x8x2xf32>)
// ONE:       %micro_batches = step.constant 1.0 : tensor<f32>

// Without the attribute the pass changes nothing.
// NONE:      func.func @linreg(%w: tensor<3x2xf32> {step.param}, %x: tensor<8x3xf32>, %goal: tensor<8x2xf32>)
// NONE-NOT:  step.accumulate
// NONE:      func.return %loss, %w_cotangent

// A count under 1: a located error at the attribute.
// ZERO:      <stdin>:12:49: error: step.accumulate = 0: the number of micro-batches must be at least 1
// ZERO-NOT:  Traceback
