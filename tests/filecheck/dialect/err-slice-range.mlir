func.func @f(%a: tensor<4x8xf32> {step.param}) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %r = step.slice %a start [0, 2] limit [4, 9] : tensor<4x8xf32> -> tensor<4x7xf32>
  %loss = step.sum %r : tensor<4x7xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-slice-range.mlir:3:3: error: {{.*}}step.slice: slice [2, 9) of dim 1 is out of range for size 8 (4x8)
// CHECK-NOT: Traceback
