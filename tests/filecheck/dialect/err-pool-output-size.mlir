func.func @f(%x: tensor<2x1x2x5xf32> {step.param}) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %r = step.avg_pool2d %x kernel [3, 3] stride [1, 1] : tensor<2x1x2x5xf32> -> tensor<2x1x0x3xf32>
  %loss = step.sum %r : tensor<2x1x0x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-pool-output-size.mlir:3:3: error: {{.*}}step.avg_pool2d: input 2x1x2x5 gives an output of spatial size 0x3 with kernel [3, 3], stride [1, 1] and padding [0, 0]: output size is too small
// CHECK-NOT: Traceback
