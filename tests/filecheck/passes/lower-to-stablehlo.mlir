// RUN: stepc opt %s -p lower-to-stablehlo | filecheck %s
// RUN: stepc opt %s -p lower-to-stablehlo | filecheck %s --check-prefix=TEXT

// A small classifier: broadcasting is explicit, matmul is a dot_general, relu is a maximum
// tagged {step.relu} (the JAX backend keeps its derivative 0 at 0), cross_entropy subtracts the
// row max and picks the label's logit with a gather, and means divide a reduce by the count.

func.func @clf(%w: tensor<5x3xf32> {step.param = #step.sgd<weight_decay = 0.0>}, %b: tensor<3xf32> {step.param},
               %x: tensor<4x5xf32>, %labels: tensor<4xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %xw = step.matmul %x, %w : (tensor<4x5xf32>, tensor<5x3xf32>) -> tensor<4x3xf32>
  %z = step.add %xw, %b : (tensor<4x3xf32>, tensor<3xf32>) -> tensor<4x3xf32>
  %h = step.relu %z : tensor<4x3xf32>
  %loss = step.cross_entropy %h, %labels : (tensor<4x3xf32>, tensor<4xi32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}

// The module is named after the step; the function is @main, public, the SGD attributes gone,
// the argument roles kept in a form XLA reads.
// CHECK-LABEL: module @clf {
// CHECK-NEXT:  func.func public @main(%w: tensor<5x3xf32> {step.param}, %b: tensor<3xf32> {step.param}, %x: tensor<4x5xf32>, %labels: tensor<4xi32>) -> tensor<f32> {
// CHECK-NEXT:    %xw = "stablehlo.dot_general"(%x, %w) <{dot_dimension_numbers = #stablehlo.dot<lhs_contracting_dimensions = [1], rhs_contracting_dimensions = [0]>}> : (tensor<4x5xf32>, tensor<5x3xf32>) -> tensor<4x3xf32>
// CHECK-NEXT:    %[[B:.*]] = "stablehlo.broadcast_in_dim"(%b) <{broadcast_dimensions = array<i64: 1>}> : (tensor<3xf32>) -> tensor<4x3xf32>
// CHECK-NEXT:    %z = "stablehlo.add"(%xw, %[[B]]) : (tensor<4x3xf32>, tensor<4x3xf32>) -> tensor<4x3xf32>
// A splat constant is a scalar broadcast to its shape (as jnp.zeros), so its attribute holds one element.
// CHECK-NEXT:    %[[ZERO0:.*]] = "stablehlo.constant"() <{value = dense<0.000000e+00> : tensor<f32>}> : () -> tensor<f32>
// CHECK-NEXT:    %[[ZERO:.*]] = "stablehlo.broadcast_in_dim"(%[[ZERO0]]) <{broadcast_dimensions = array<i64>}> : (tensor<f32>) -> tensor<4x3xf32>
// CHECK-NEXT:    %h = "stablehlo.maximum"(%z, %[[ZERO]]) {step.relu} : (tensor<4x3xf32>, tensor<4x3xf32>) -> tensor<4x3xf32>
// Row max with -inf as the identity, printed as raw hex so both XLA and xDSL read it exactly.
// CHECK-NEXT:    %[[NEGINF:.*]] = "stablehlo.constant"() <{value = dense<"0x000080FF"> : tensor<f32>}> : () -> tensor<f32>
// CHECK-NEXT:    %[[MAX:.*]] = "stablehlo.reduce"(%h, %[[NEGINF]]) <{dimensions = array<i64: 1>}> ({
// CHECK:           "stablehlo.maximum"
// CHECK:         }) : (tensor<4x3xf32>, tensor<f32>) -> tensor<4xf32>
// CHECK:         "stablehlo.subtract"(%h, %{{.*}}) : (tensor<4x3xf32>, tensor<4x3xf32>) -> tensor<4x3xf32>
// CHECK:         "stablehlo.exponential"
// CHECK:         "stablehlo.log"
// CHECK:         %[[IDX:.*]] = "stablehlo.reshape"(%labels) : (tensor<4xi32>) -> tensor<4x1xi32>
// CHECK-NEXT:    %[[PICKED:.*]] = "stablehlo.gather"(%h, %[[IDX]]) <{dimension_numbers = #stablehlo.gather<collapsed_slice_dims = [1], operand_batching_dims = [0], start_indices_batching_dims = [0], start_index_map = [1], index_vector_dim = 1>, slice_sizes = array<i64: 1, 1>}> : (tensor<4x3xf32>, tensor<4x1xi32>) -> tensor<4xf32>
// CHECK:         %[[N:.*]] = "stablehlo.constant"() <{value = dense<4.000000e+00> : tensor<f32>}> : () -> tensor<f32>
// CHECK-NEXT:    %loss = "stablehlo.divide"(%{{.*}}, %[[N]]) : (tensor<f32>, tensor<f32>) -> tensor<f32>
// CHECK-NEXT:    func.return %loss : tensor<f32>

// No step op and no step attribute value XLA cannot parse survives.
// TEXT-NOT: step.{{[a-z_]+}} %
// TEXT-NOT: #step.sgd
