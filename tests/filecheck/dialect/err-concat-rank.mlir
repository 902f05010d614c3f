func.func @f(%a: tensor<4x2xf32> {step.param}, %b: tensor<2xf32> {step.param}) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %r = step.concat %a, %b axis 0 : (tensor<4x2xf32>, tensor<2xf32>) -> tensor<6x2xf32>
  %loss = step.sum %r : tensor<6x2xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-concat-rank.mlir:3:3: error: {{.*}}step.concat: concat operands have one rank: operand 0 is 4x2, operand 1 is 2
// CHECK-NOT: Traceback
