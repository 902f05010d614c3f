func.func @f(%a: tensor<4x8xf32> {step.param}) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %r = step.slice %a start [0, 0] limit [4, 8] stride [1, 0] : tensor<4x8xf32> -> tensor<4x8xf32>
  %loss = step.sum %r : tensor<4x8xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-slice-stride.mlir:3:3: error: {{.*}}step.slice: slice strides must be positive, found [1, 0]
// CHECK-NOT: Traceback
