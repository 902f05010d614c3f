func.func @f(%a: tensor<4x2xf32> {step.param}, %b: tensor<4x2xf64> {step.param}) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %r = step.concat %a, %b axis 0 : (tensor<4x2xf32>, tensor<4x2xf64>) -> tensor<8x2xf32>
  %loss = step.sum %r : tensor<8x2xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-concat-types.mlir:3:3: error: {{.*}}step.concat needs equal element types, found f32 (operand 0) and f64 (operand 1)
// CHECK-NOT: Traceback
