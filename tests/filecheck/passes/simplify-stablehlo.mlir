// RUN: stepc opt %s -p lower-to-stablehlo,simplify-stablehlo | filecheck %s
// RUN: stepc opt %s -p lower-to-stablehlo | filecheck %s --check-prefix=ONE

// The derivative of relu times a cotangent, then the cross-entropy gradient's `x - one_hot`.
// lower-to-stablehlo is 1:1: a multiply by a convert(compare) mask, an iota/compare one-hot and
// a subtract (ONE). simplify-stablehlo rewrites them as jax.grad emits them: a select, and a
// scatter-add of -1 at x[i, labels[i]]; the mask's convert and the one-hot are erased.

func.func @grad_of_relu_ce(%z: tensor<4x3xf32> {step.param}, %ct: tensor<4x3xf32>, %labels: tensor<4xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %zero = step.constant 0.0 : tensor<f32>
  %mask = step.compare gt %z, %zero : (tensor<4x3xf32>, tensor<f32>) -> tensor<4x3xf32>
  %masked = step.mul %ct, %mask : (tensor<4x3xf32>, tensor<4x3xf32>) -> tensor<4x3xf32>
  %oh = step.one_hot %labels : tensor<4xi32> -> tensor<4x3xf32>
  %diff = step.sub %masked, %oh : (tensor<4x3xf32>, tensor<4x3xf32>) -> tensor<4x3xf32>
  %loss = step.sum %diff : tensor<4x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}

// ONE-LABEL: module @grad_of_relu_ce {
// ONE:         %mask = "stablehlo.convert"
// ONE:         %masked = "stablehlo.multiply"(%ct, %mask)
// ONE:         "stablehlo.iota"
// ONE:         %diff = "stablehlo.subtract"(%masked, %oh)

// CHECK-LABEL: module @grad_of_relu_ce {
// CHECK:         %[[PRED:.*]] = "stablehlo.compare"(%z, %{{.*}}) <{comparison_direction = #stablehlo<comparison_direction GT>}> : (tensor<4x3xf32>, tensor<4x3xf32>) -> tensor<4x3xi1>
// CHECK-NEXT:    %[[ZERO0:.*]] = "stablehlo.constant"() <{value = dense<0.000000e+00> : tensor<f32>}> : () -> tensor<f32>
// CHECK-NEXT:    %[[ZERO:.*]] = "stablehlo.broadcast_in_dim"(%[[ZERO0]]) <{broadcast_dimensions = array<i64>}> : (tensor<f32>) -> tensor<4x3xf32>
// CHECK-NEXT:    %masked = "stablehlo.select"(%[[PRED]], %ct, %[[ZERO]]) : (tensor<4x3xi1>, tensor<4x3xf32>, tensor<4x3xf32>) -> tensor<4x3xf32>
// CHECK-NEXT:    %[[IDX:.*]] = "stablehlo.reshape"(%labels) : (tensor<4xi32>) -> tensor<4x1xi32>
// CHECK-NEXT:    %[[MINUS0:.*]] = "stablehlo.constant"() <{value = dense<-1.000000e+00> : tensor<f32>}> : () -> tensor<f32>
// CHECK-NEXT:    %[[MINUS:.*]] = "stablehlo.broadcast_in_dim"(%[[MINUS0]]) <{broadcast_dimensions = array<i64>}> : (tensor<f32>) -> tensor<4xf32>
// CHECK-NEXT:    %diff = "stablehlo.scatter"(%masked, %[[IDX]], %[[MINUS]]) <{scatter_dimension_numbers = #stablehlo.scatter<inserted_window_dims = [1], input_batching_dims = [0], scatter_indices_batching_dims = [0], scatter_dims_to_operand_dims = [1], index_vector_dim = 1>}> ({
// CHECK:           "stablehlo.add"
// CHECK:         }) : (tensor<4x3xf32>, tensor<4x1xi32>, tensor<4xf32>) -> tensor<4x3xf32>
// CHECK-NOT:     "stablehlo.multiply"
// CHECK-NOT:     "stablehlo.convert"
// CHECK-NOT:     "stablehlo.iota"
// CHECK-NOT:     "stablehlo.subtract"
// CHECK:         func.return %loss : tensor<f32>
