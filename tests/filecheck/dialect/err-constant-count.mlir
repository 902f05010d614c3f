func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %labels: tensor<8xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %c = step.constant dense<[1.0, 2.0]> : tensor<3xf32>
  %loss = step.sum %c : tensor<3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-constant-count.mlir:3:3: error: {{.*}}step.constant of type tensor<3xf32> needs 1 or 3 values, found 2
// CHECK-NOT: Traceback
