func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %labels: tensor<8xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %c = step.convert %w : tensor<4x3xf32> -> tensor<12xf64>
  %loss = step.sum %c : tensor<12xf64> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-convert-shape.mlir:3:3: error: {{.*}}step.convert keeps the shape: expected 4x3, found 12
// CHECK-NOT: Traceback
