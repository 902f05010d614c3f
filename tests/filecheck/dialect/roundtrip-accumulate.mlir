// RUN: stepc opt %s | filecheck %s
// RUN: stepc opt %s | stepc opt - | filecheck %s
// RUN: stepc opt %s > %t.first.mlir && stepc opt %t.first.mlir > %t.second.mlir && diff %t.first.mlir %t.second.mlir

// The ops `accumulate-gradients` makes (`step.accumulate`, `step.yield`), printed as written:
// a least-squares gradient over 4 micro-batches, as `stepc compile --until accumulate-gradients` dumps it.

func.func @linreg(%w: tensor<3x2xf32> {step.param}, %x: tensor<4x8x3xf32>, %goal: tensor<4x8x2xf32>)
    -> (tensor<f32> {step.output = "loss"}, tensor<3x2xf32> {step.output = "grad.w"})
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %loss.sum, %w_cotangent.sum = step.accumulate (%x.micro = %x, %goal.micro = %goal) : (tensor<4x8x3xf32>, tensor<4x8x2xf32>) -> (tensor<f32>, tensor<3x2xf32>) {
    %y = step.matmul %x.micro, %w : (tensor<8x3xf32>, tensor<3x2xf32>) -> tensor<8x2xf32>
    %loss = step.mse %y, %goal.micro : (tensor<8x2xf32>, tensor<8x2xf32>) -> tensor<f32>
    %c = step.constant 0.125 : tensor<f32>
    %d = step.sub %y, %goal.micro : (tensor<8x2xf32>, tensor<8x2xf32>) -> tensor<8x2xf32>
    %y_cotangent = step.mul %d, %c : (tensor<8x2xf32>, tensor<f32>) -> tensor<8x2xf32>
    %xt = step.transpose %x.micro perm [1, 0] : tensor<8x3xf32> -> tensor<3x8xf32>
    %w_cotangent = step.matmul %xt, %y_cotangent : (tensor<3x8xf32>, tensor<8x2xf32>) -> tensor<3x2xf32>
    step.yield %loss, %w_cotangent : tensor<f32>, tensor<3x2xf32>
  }
  %micro_batches = step.constant 4.0 : tensor<f32>
  %loss.mean = step.div %loss.sum, %micro_batches : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %w_cotangent.mean = step.div %w_cotangent.sum, %micro_batches : (tensor<3x2xf32>, tensor<f32>) -> tensor<3x2xf32>
  func.return %loss.mean, %w_cotangent.mean : tensor<f32>, tensor<3x2xf32>
}

// CHECK:      %loss.sum, %w_cotangent.sum = step.accumulate (%x.micro = %x, %goal.micro = %goal) : (tensor<4x8x3xf32>, tensor<4x8x2xf32>) -> (tensor<f32>, tensor<3x2xf32>) {
// CHECK-NEXT:   %y = step.matmul %x.micro, %w : (tensor<8x3xf32>, tensor<3x2xf32>) -> tensor<8x2xf32>
// CHECK:        step.yield %loss, %w_cotangent : tensor<f32>, tensor<3x2xf32>
// CHECK-NEXT: }
// CHECK-NEXT: %micro_batches = step.constant 4.0 : tensor<f32>
// CHECK:      func.return %loss.mean, %w_cotangent.mean : tensor<f32>, tensor<3x2xf32>
