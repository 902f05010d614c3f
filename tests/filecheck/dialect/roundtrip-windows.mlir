// RUN: stepc opt %s | filecheck %s
// RUN: stepc opt %s | stepc opt - | filecheck %s
// RUN: stepc opt %s > %t.first.mlir && stepc opt %t.first.mlir > %t.second.mlir && diff %t.first.mlir %t.second.mlir

// The pooling, concat, slice and pad ops, printed as written: a `stride` equal to the kernel,
// a zero `padding` and a unit slice `stride` are the defaults and are left out.

func.func @windows(%x: tensor<2x3x8x8xf32> {step.param}, %chw: tensor<3x7x7xf32> {step.param},
                   %a: tensor<4x2xf32> {step.param}, %b: tensor<4x3xf32> {step.param}) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %mp = step.max_pool2d %x kernel [2, 2] : tensor<2x3x8x8xf32> -> tensor<2x3x4x4xf32>
  %mp2 = step.max_pool2d %x kernel [3, 2] stride [1, 2] padding [1, 1] : tensor<2x3x8x8xf32> -> tensor<2x3x8x5xf32>
  %same = step.max_pool2d %x kernel [2, 2] stride [2, 2] padding [0, 0] : tensor<2x3x8x8xf32> -> tensor<2x3x4x4xf32>
  %ap = step.avg_pool2d %chw kernel [3, 3] stride [2, 2] padding [1, 1] : tensor<3x7x7xf32> -> tensor<3x4x4xf32>
  %c = step.concat %a, %b, %a axis 1 : (tensor<4x2xf32>, tensor<4x3xf32>, tensor<4x2xf32>) -> tensor<4x7xf32>
  %s = step.slice %c start [0, 1] limit [4, 7] stride [1, 2] : tensor<4x7xf32> -> tensor<4x3xf32>
  %s1 = step.slice %c start [1, 0] limit [3, 7] stride [1, 1] : tensor<4x7xf32> -> tensor<2x7xf32>
  %p = step.pad %s low [1, 0] high [0, 2] interior [0, 1] : tensor<4x3xf32> -> tensor<5x7xf32>
  %l1 = step.sum %mp : tensor<2x3x4x4xf32> -> tensor<f32>
  %l2 = step.sum %mp2 : tensor<2x3x8x5xf32> -> tensor<f32>
  %l3 = step.sum %ap : tensor<3x4x4xf32> -> tensor<f32>
  %l4 = step.sum %p : tensor<5x7xf32> -> tensor<f32>
  %l5 = step.sum %s1 : tensor<2x7xf32> -> tensor<f32>
  %l6 = step.sum %same : tensor<2x3x4x4xf32> -> tensor<f32>
  %m1 = step.add %l1, %l2 : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %m2 = step.add %m1, %l3 : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %m3 = step.add %m2, %l4 : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %m4 = step.add %m3, %l5 : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %loss = step.add %m4, %l6 : (tensor<f32>, tensor<f32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}

// CHECK-LABEL: func.func @windows(
// CHECK-NEXT:   %mp = step.max_pool2d %x kernel [2, 2] : tensor<2x3x8x8xf32> -> tensor<2x3x4x4xf32>
// CHECK-NEXT:   %mp2 = step.max_pool2d %x kernel [3, 2] stride [1, 2] padding [1, 1] : tensor<2x3x8x8xf32> -> tensor<2x3x8x5xf32>
// CHECK-NEXT:   %same = step.max_pool2d %x kernel [2, 2] : tensor<2x3x8x8xf32> -> tensor<2x3x4x4xf32>
// CHECK-NEXT:   %ap = step.avg_pool2d %chw kernel [3, 3] stride [2, 2] padding [1, 1] : tensor<3x7x7xf32> -> tensor<3x4x4xf32>
// CHECK-NEXT:   %c = step.concat %a, %b, %a axis 1 : (tensor<4x2xf32>, tensor<4x3xf32>, tensor<4x2xf32>) -> tensor<4x7xf32>
// CHECK-NEXT:   %s = step.slice %c start [0, 1] limit [4, 7] stride [1, 2] : tensor<4x7xf32> -> tensor<4x3xf32>
// CHECK-NEXT:   %s1 = step.slice %c start [1, 0] limit [3, 7] : tensor<4x7xf32> -> tensor<2x7xf32>
// CHECK-NEXT:   %p = step.pad %s low [1, 0] high [0, 2] interior [0, 1] : tensor<4x3xf32> -> tensor<5x7xf32>
// CHECK:        func.return %loss : tensor<f32>
