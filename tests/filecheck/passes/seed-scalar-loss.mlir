// RUN: stepc opt %s --verify-only -p seed-scalar-loss | filecheck %s
// RUN: sed -e 's/tensor<f32> {step.cotangent}/tensor<2xf32> {step.cotangent}/' -e 's/-> (tensor<f32> {step.output/-> (tensor<2xf32> {step.output/' -e 's/step.mse %y, %goal : (tensor<8x2xf32>, tensor<8x2xf32>) -> tensor<f32>/step.sum %y dims [0] : tensor<8x2xf32> -> tensor<2xf32>/' -e 's/%c : (tensor<f32>, tensor<f32>) -> tensor<f32>/%c : (tensor<2xf32>, tensor<f32>) -> tensor<2xf32>/' -e 's/%k : (tensor<8x2xf32>, tensor<f32>)/%k : (tensor<8x2xf32>, tensor<2xf32>)/' -e 's/%w_cotangent : tensor<f32>/%w_cotangent : tensor<2xf32>/' %s | not stepc opt - --verify-only -p seed-scalar-loss 2>&1 | filecheck %s --check-prefix=ERR
// RUN: not stepc opt %s --verify-only -p seed-scalar-loss,seed-scalar-loss 2>&1 | filecheck %s --check-prefix=TWICE

// Least squares after `differentiate` (as `stepc compile --until differentiate` dumps it).

func.func @linreg(%w: tensor<3x2xf32> {step.param}, %x: tensor<8x3xf32>, %goal: tensor<8x2xf32>,
                  %loss_cotangent: tensor<f32> {step.cotangent})
    -> (tensor<f32> {step.output = "loss"}, tensor<3x2xf32> {step.output = "grad.w"})
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
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

// The cotangent argument is gone; the results are unchanged.
// CHECK-LABEL: func.func @linreg(%w: tensor<3x2xf32> {step.param}, %x: tensor<8x3xf32>, %goal: tensor<8x2xf32>)
// CHECK-SAME:    -> (tensor<f32> {step.output = "loss"}, tensor<3x2xf32> {step.output = "grad.w"})
// It became the constant 1 of the loss's type, first in the body, as loss.backward() seeds it.
// CHECK-NEXT:  %loss_cotangent = step.constant 1.0 : tensor<f32>
// CHECK:       %k = step.mul %loss_cotangent, %c
// CHECK:       func.return %loss, %w_cotangent

// A loss that is not rank 0: a located error at the op that computes it.
// ERR:      <stdin>:12:3: error: seed-scalar-loss needs a rank-0 float loss (as loss.backward() does), found tensor<2xf32>
// ERR-NEXT:   %loss = step.sum %y dims [0]
// ERR-NEXT:   ^~~~~

// Seeding needs the cotangent argument that `differentiate` adds.
// TWICE: error: seed-scalar-loss needs the program after differentiate (no {step.cotangent} argument); run differentiate first
