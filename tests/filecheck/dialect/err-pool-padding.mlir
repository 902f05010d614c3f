func.func @f(%x: tensor<1x1x6x6xf32> {step.param}) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %r = step.max_pool2d %x kernel [2, 2] padding [2, 1] : tensor<1x1x6x6xf32> -> tensor<1x1x5x4xf32>
  %loss = step.sum %r : tensor<1x1x5x4xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-pool-padding.mlir:3:3: error: {{.*}}step.max_pool2d: padding should be at most half of the kernel size (as in torch), found padding [2, 1] for kernel [2, 2]
// CHECK-NOT: Traceback
