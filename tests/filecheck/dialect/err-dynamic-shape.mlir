func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %labels: tensor<8xi32>, %d: tensor<?xf32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %c = step.exp %d : tensor<?xf32>
  %loss = step.sum %c : tensor<?xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-dynamic-shape.mlir:3:3: error: {{.*}}shapes are static in stepc, found dynamic dims in tensor<?xf32>
// CHECK-NOT: Traceback
