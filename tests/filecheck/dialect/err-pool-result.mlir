func.func @f(%x: tensor<1x3x4x4xf32> {step.param}) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %r = step.max_pool2d %x kernel [2, 2] stride [1, 1] : tensor<1x3x4x4xf32> -> tensor<1x3x2x2xf32>
  %loss = step.sum %r : tensor<1x3x2x2xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-pool-result.mlir:3:3: error: {{.*}}step.max_pool2d result type: expected tensor<1x3x3x3xf32>, found tensor<1x3x2x2xf32>
// CHECK-NOT: Traceback
