func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %ids: tensor<8xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %y = step.embedding %w, %ids : (tensor<4x3xf32>, tensor<8xi32>) -> tensor<8x4xf32>
  %loss = step.constant 0.0 : tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-embedding-result.mlir:3:3: error: {{.*}}step.embedding result type: expected tensor<8x3xf32>, found tensor<8x4xf32>
// CHECK-NOT: Traceback
