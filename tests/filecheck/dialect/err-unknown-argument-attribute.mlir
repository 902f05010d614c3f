func.func @f(%w: tensor<4x3xf32> {step.parm}, %b: tensor<3xf32> {step.param}, %x: tensor<8x4xf32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-unknown-argument-attribute.mlir:1:35: error: unknown attribute 'step.parm' on argument %w; did you mean 'step.param'?
// CHECK-NEXT: {step.parm}
// CHECK-NEXT: {{^ +}}^~~~~~~~~{{$}}
// CHECK-NOT: Traceback
