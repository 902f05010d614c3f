func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %labels: tensor<8xi32>) -> tensor<f32>
    attributes {step.sgd = 0.1} {
  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-sgd-kind.mlir:2:17: error: {{.*}}step.sgd must be a #step.sgd<...> attribute, found 1.000000e-01 : f64
// CHECK-NOT: Traceback
