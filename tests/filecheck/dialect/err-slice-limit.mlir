func.func @f(%a: tensor<4x8xf32> {step.param}) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %r = step.slice %a start [3, 0] limit [1, 8] : tensor<4x8xf32> -> tensor<0x8xf32>
  %loss = step.sum %r : tensor<0x8xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-slice-limit.mlir:3:3: error: {{.*}}step.slice: slice limit 1 of dim 0 is below its start 3
// CHECK-NOT: Traceback
