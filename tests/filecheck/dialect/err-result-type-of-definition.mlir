func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %labels: tensor<8xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %y = step.matmul %x, %w : (tensor<8x4xf32>, tensor<4x3xf32>) -> tensor<8x4xf32>
  %loss = step.cross_entropy %y, %labels : (tensor<8x3xf32>, tensor<8xi32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}
// The matmul's written result type breaks its shape rule; the use agrees with the rule. The
// error is the matmul's, the use a note (err-type-of-use.mlir: a wrong use of a right definition).
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-result-type-of-definition.mlir:3:3: error: step.matmul result type: expected tensor<8x3xf32>, found tensor<8x4xf32>
// CHECK-NEXT: %y = step.matmul %x, %w
// CHECK-NEXT: {{^  }}^~{{$}}
// CHECK-NEXT: err-result-type-of-definition.mlir:4:30: note: %y is used here as tensor<8x3xf32>
// CHECK-NEXT: %loss = step.cross_entropy %y
// CHECK-NEXT: {{^ +}}^~{{$}}
// CHECK-NOT: Traceback
