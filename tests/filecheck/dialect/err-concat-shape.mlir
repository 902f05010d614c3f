func.func @f(%a: tensor<4x2xf32> {step.param}, %b: tensor<3x2xf32> {step.param}) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %r = step.concat %a, %b axis 1 : (tensor<4x2xf32>, tensor<3x2xf32>) -> tensor<4x4xf32>
  %loss = step.sum %r : tensor<4x4xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-concat-shape.mlir:3:3: error: {{.*}}step.concat: concat along axis 1: operand 1 (3x2) differs from operand 0 (4x2) in dim 0
// CHECK-NOT: Traceback
