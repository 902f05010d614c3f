// RUN: stepc opt %s -p differentiate | filecheck %s
// RUN: not stepc opt %s -p differentiate,differentiate 2>&1 | filecheck %s --check-prefix=ERR

// A two-layer perceptron where %h fans out (a residual add) and %unused never reaches the loss.

func.func @mlp(%w1: tensor<3x4xf32> {step.param}, %b1: tensor<4xf32> {step.param = #step.sgd<weight_decay = 0.0>},
               %unused: tensor<2xf32> {step.param}, %x: tensor<8x3xf32>, %labels: tensor<8xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1, momentum = 0.9>} {
  %h0 = step.matmul %x, %w1 : (tensor<8x3xf32>, tensor<3x4xf32>) -> tensor<8x4xf32>
  %h1 = step.add %h0, %b1 : (tensor<8x4xf32>, tensor<4xf32>) -> tensor<8x4xf32>
  %h = step.relu %h1 : tensor<8x4xf32>
  %logits = step.add %h, %h1 : (tensor<8x4xf32>, tensor<8x4xf32>) -> tensor<8x4xf32>
  %loss = step.cross_entropy %logits, %labels : (tensor<8x4xf32>, tensor<8xi32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}

// The cotangent comes last; the loss, then one gradient per parameter in parameter order.
// CHECK-LABEL: func.func @mlp(
// CHECK-SAME:    %w1: tensor<3x4xf32> {step.param}, %b1: tensor<4xf32> {step.param = #step.sgd<weight_decay = 0.0>}
// CHECK-SAME:    %labels: tensor<8xi32>, %loss_cotangent: tensor<f32> {step.cotangent})
// CHECK-SAME:    -> (tensor<f32> {step.output = "loss"}, tensor<3x4xf32> {step.output = "grad.w1"}, tensor<4xf32> {step.output = "grad.b1"}, tensor<2xf32> {step.output = "grad.unused"})
// CHECK-SAME:    attributes {step.sgd = #step.sgd<lr = 0.1, momentum = 0.9>}
// The forward part is kept as it was.
// CHECK:       %loss = step.cross_entropy %logits, %labels
// cross_entropy: (softmax - one_hot(labels)) * cotangent / N.
// CHECK-NEXT:  %[[P:.*]] = step.softmax %logits axis 1 : tensor<8x4xf32>
// CHECK-NEXT:  %[[T:.*]] = step.one_hot %labels : tensor<8xi32> -> tensor<8x4xf32>
// CHECK-NEXT:  %[[N:.*]] = step.constant 0.125 : tensor<f32>
// CHECK-NEXT:  %[[S:.*]] = step.mul %loss_cotangent, %[[N]]
// CHECK-NEXT:  %[[D:.*]] = step.sub %[[P]], %[[T]]
// CHECK-NEXT:  %logits_cotangent = step.mul %[[D]], %[[S]]
// relu reuses its forward input for the mask: relu'(0) = 0.
// CHECK:       %[[Z:.*]] = step.constant 0.0 : tensor<f32>
// CHECK-NEXT:  %[[M:.*]] = step.compare gt %h1, %[[Z]]
// CHECK-NEXT:  %[[R:.*]] = step.mul %logits_cotangent, %[[M]]
// %h1 fans out (read by relu and the residual add): its two cotangents are added.
// CHECK-NEXT:  %h1_cotangent = step.add %logits_cotangent, %[[R]] : (tensor<8x4xf32>, tensor<8x4xf32>) -> tensor<8x4xf32>
// The bias was broadcast over the rows: summed back.
// CHECK-NEXT:  %b1_cotangent = step.sum %h1_cotangent dims [0] : tensor<8x4xf32> -> tensor<4xf32>
// CHECK:       %w1_cotangent = step.matmul %{{.*}}, %h1_cotangent : (tensor<3x8xf32>, tensor<8x4xf32>) -> tensor<3x4xf32>
// A parameter the loss never reads gets an explicit zero gradient.
// CHECK:       %[[ZERO:.*]] = step.constant dense<0.0> : tensor<2xf32>
// CHECK-NEXT:  func.return %loss, %w1_cotangent, %b1_cotangent, %[[ZERO]]

// Differentiating twice is refused, at the function.
// ERR:      differentiate.mlir:6:1: error: differentiate: the function is already differentiated (it has a {step.cotangent} argument)
// ERR-NEXT: func.func @mlp(
// ERR-NEXT: ^~~~~~~~~
