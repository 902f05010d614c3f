func.func @f(%a: tensor<4x8xf32> {step.param}) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %r = step.slice %a start [0, 1] limit [4, 8] stride [2, 2] : tensor<4x8xf32> -> tensor<2x3xf32>
  %loss = step.sum %r : tensor<2x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-slice-result.mlir:3:3: error: {{.*}}step.slice result type: expected tensor<2x4xf32>, found tensor<2x3xf32>
// CHECK-NOT: Traceback
