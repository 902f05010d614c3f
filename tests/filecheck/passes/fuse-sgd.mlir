// RUN: stepc opt %s --verify-only -p fuse-sgd | filecheck %s
// RUN: sed -e 's/lr = 0.1, momentum/lr = -0.1, momentum/' %s | not stepc opt - --verify-only -p fuse-sgd 2>&1 | filecheck %s --check-prefix=ERR

// The seeded gradient program of least squares: w with momentum, dampening and weight
// decay (so a `first_step` flag); b in a group without momentum (no buffer), maximized.

func.func @linreg(%w: tensor<4x3xf32> {step.param},
                  %b: tensor<3xf32> {step.param = #step.sgd<lr = 0.05, momentum = 0.0, weight_decay = 0.0, maximize = true>},
                  %x: tensor<8x4xf32>, %t: tensor<8x3xf32>)
    -> (tensor<f32> {step.output = "loss"}, tensor<4x3xf32> {step.output = "grad.w"}, tensor<3xf32> {step.output = "grad.b"})
    attributes {step.sgd = #step.sgd<lr = 0.1, momentum = 0.9, dampening = 0.3, weight_decay = 0.01>} {
  %xw = step.matmul %x, %w : (tensor<8x4xf32>, tensor<4x3xf32>) -> tensor<8x3xf32>
  %y = step.add %xw, %b : (tensor<8x3xf32>, tensor<3xf32>) -> tensor<8x3xf32>
  %loss = step.mse %y, %t : (tensor<8x3xf32>, tensor<8x3xf32>) -> tensor<f32>
  %r = step.sub %y, %t : (tensor<8x3xf32>, tensor<8x3xf32>) -> tensor<8x3xf32>
  %c = step.constant 0.08333333333333333 : tensor<f32>
  %dy = step.mul %r, %c : (tensor<8x3xf32>, tensor<f32>) -> tensor<8x3xf32>
  %xt = step.transpose %x perm [1, 0] : tensor<8x4xf32> -> tensor<4x8xf32>
  %gw = step.matmul %xt, %dy : (tensor<4x8xf32>, tensor<8x3xf32>) -> tensor<4x3xf32>
  %gb = step.sum %dy dims [0] : tensor<8x3xf32> -> tensor<3xf32>
  func.return %loss, %gw, %gb : tensor<f32>, tensor<4x3xf32>, tensor<3xf32>
}

// State after the batch inputs: w's buffer and the first-step flag; b has no buffer.
// CHECK-LABEL: func.func @linreg(
// CHECK-SAME:    %t: tensor<8x3xf32>, %momentum.w: tensor<4x3xf32> {step.state = "momentum.w"}, %first_step: tensor<f32> {step.state = "first_step"})
// CHECK-SAME:    -> (tensor<4x3xf32> {step.output = "w"}, tensor<3xf32> {step.output = "b"}, tensor<4x3xf32> {step.output = "momentum.w"}, tensor<f32> {step.output = "first_step"}, tensor<f32> {step.output = "loss"})
// CHECK-NOT:   grad.
// The dampened update's factors: keep * momentum and first_step + keep * (1 - dampening).
// CHECK:       %[[ONE:.*]] = step.constant 1.0 : tensor<f32>
// CHECK-NEXT:  %[[KEEP:.*]] = step.sub %[[ONE]], %first_step
// CHECK-NEXT:  %[[M:.*]] = step.constant 0.9 : tensor<f32>
// CHECK-NEXT:  %[[MF:.*]] = step.mul %[[KEEP]], %[[M]]
// CHECK-NEXT:  %[[D:.*]] = step.constant 0.7 : tensor<f32>
// CHECK-NEXT:  %[[KD:.*]] = step.mul %[[KEEP]], %[[D]]
// CHECK-NEXT:  %[[GF:.*]] = step.add %first_step, %[[KD]]
// w's update follows its gradient at once: weight decay, buffer, lr.
// CHECK:       %gw = step.matmul
// CHECK-NEXT:  %[[WD:.*]] = step.constant 0.01 : tensor<f32>
// CHECK-NEXT:  %[[WDP:.*]] = step.mul %w, %[[WD]]
// CHECK-NEXT:  %[[DPW:.*]] = step.add %gw, %[[WDP]]
// CHECK-NEXT:  %[[MB:.*]] = step.mul %momentum.w, %[[MF]]
// CHECK-NEXT:  %[[GD:.*]] = step.mul %[[DPW]], %[[GF]]
// CHECK-NEXT:  %[[BUF:.*]] = step.add %[[MB]], %[[GD]]
// CHECK-NEXT:  %[[LRW:.*]] = step.constant 0.1 : tensor<f32>
// CHECK-NEXT:  %[[STEPW:.*]] = step.mul %[[BUF]], %[[LRW]]
// CHECK-NEXT:  %[[NEWW:.*]] = step.sub %w, %[[STEPW]]
// b: maximize negates the gradient; its own lr, no weight decay, no buffer.
// CHECK-NEXT:  %gb = step.sum
// CHECK-NEXT:  %[[NEG:.*]] = step.neg %gb
// CHECK-NEXT:  %[[LRB:.*]] = step.constant 0.05 : tensor<f32>
// CHECK-NEXT:  %[[STEPB:.*]] = step.mul %[[NEG]], %[[LRB]]
// CHECK-NEXT:  %[[NEWB:.*]] = step.sub %b, %[[STEPB]]
// The next step is not a first step.
// CHECK-NEXT:  %[[ZERO:.*]] = step.constant 0.0 : tensor<f32>
// CHECK-NEXT:  func.return %[[NEWW]], %[[NEWB]], %[[BUF]], %[[ZERO]], %loss

// ERR: <stdin>:11:17: error: invalid SGD lr: -0.1 (must be >= 0, as in torch.optim.SGD)
// ERR-NEXT: attributes {step.sgd = #step.sgd<lr = -0.1,
// ERR-NEXT: {{^ +}}^~~~~~~~{{$}}
