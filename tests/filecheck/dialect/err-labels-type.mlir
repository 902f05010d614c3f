func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %labels: tensor<8xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %loss = step.cross_entropy %x, %x : (tensor<8x4xf32>, tensor<8x4xf32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-labels-type.mlir:3:3: error: {{.*}}step.cross_entropy takes i32 labels, found tensor<8x4xf32>
// CHECK-NOT: Traceback
