func.func @f(%a: tensor<4x2xf32> {step.param}, %b: tensor<4x2xf32> {step.param}) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %r = step.concat %a, %b axis 2 : (tensor<4x2xf32>, tensor<4x2xf32>) -> tensor<4x4xf32>
  %loss = step.sum %r : tensor<4x4xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-concat-axis.mlir:3:3: error: {{.*}}step.concat: axis 2 is out of range for rank 2 shape 4x2
// CHECK-NOT: Traceback
