func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %labels: tensor<8xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-no-terminator.mlir:3:3: error: {{.*}}the function body ends with step.sum: it must end with func.return of the loss
// CHECK-NOT: Traceback
