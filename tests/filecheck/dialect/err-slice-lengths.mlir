func.func @f(%a: tensor<4x8xf32> {step.param}) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %r = step.slice %a start [0] limit [4, 8] : tensor<4x8xf32> -> tensor<4x8xf32>
  %loss = step.sum %r : tensor<4x8xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-slice-lengths.mlir:3:3: error: {{.*}}step.slice: slice start takes 2 values (one per dim of 4x8), found [0]
// CHECK-NOT: Traceback
