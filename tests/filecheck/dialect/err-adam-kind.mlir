func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>) -> tensor<f32>
    attributes {step.adamw = #step.adam<lr = 0.01>} {
  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
// RUN: not stepc opt %s 2>&1 | filecheck %s
// CHECK: err-adam-kind.mlir:2:17: error: step.adamw must be a #step.adamw<...> attribute, found #step.adam<lr = 0.01>
// CHECK-NOT: Traceback
