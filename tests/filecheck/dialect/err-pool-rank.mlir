func.func @f(%x: tensor<4x4xf32> {step.param}) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %r = step.max_pool2d %x kernel [2, 2] : tensor<4x4xf32> -> tensor<2x2xf32>
  %loss = step.sum %r : tensor<2x2xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-pool-rank.mlir:3:3: error: {{.*}}step.max_pool2d: 2d pooling takes an NxCxHxW or CxHxW input, found 4x4
// CHECK-NOT: Traceback
