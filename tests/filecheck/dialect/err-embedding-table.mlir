func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %ids: tensor<8xi32>,
        %t: tensor<2x4x3xf32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %y = step.embedding %t, %ids : (tensor<2x4x3xf32>, tensor<8xi32>) -> tensor<8x3xf32>
  %loss = step.constant 0.0 : tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-embedding-table.mlir:4:3: error: {{.*}}embedding takes a VxD table (rank 2), found 2x4x3
// CHECK-NOT: Traceback
