func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %labels: tensor<8xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %h = step.softmax %w axis 2 : tensor<4x3xf32>
  %loss = step.sum %h : tensor<4x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-softmax-axis.mlir:3:3: error: {{.*}}step.softmax: axis 2 is out of range for rank 2 shape 4x3
// CHECK-NOT: Traceback
