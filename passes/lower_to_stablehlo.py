"""`lower-to-stablehlo`: every step op to the StableHLO ops XLA compiles, by one table.

`LOWERINGS` maps each step op class to its rule, registered with `@lowering(OpClass)` like
`mlir.register_lowering(mul_p, ...)` in JAX; a step op without a rule is an error naming it (as
an illegal op under MLIR's conversion target). A rule receives a `StableHLOBuilder`, which
inserts StableHLO ops before the step op with its location, and returns the value that
replaces the step op's result. The lowering is strictly one rule per op: rewrites that look
across ops (a product with a 0/1 mask as a select, `x - one_hot` as a scatter) are the
`simplify-stablehlo` pass.

Conventions of the output (see `ir/stablehlo.py` for the text):
- broadcasting is explicit (`broadcast_in_dim`); StableHLO elementwise ops take equal shapes;
- `relu` is `maximum(x, 0)` tagged `{step.relu}`: the JAX backend gives it PyTorch's
  derivative 0 at 0 when the lowered function is differentiated with `jax.grad`;
- softmax, log_softmax and cross_entropy subtract the row maximum first (numerically stable);
  cross_entropy is `mean(logsumexp - picked logit)` with the logit picked by a gather;
- the function becomes `@main` (public) inside `module @<step name>`; argument roles and result
  keys stay as attributes (`{step.param}`, `{step.output = "..."}`) that XLA ignores, so the
  JAX backend and `stepc exec` still know every name.

Contract (`check/lower_to_stablehlo.py`): the JAX function of the lowered module equals the
reference interpreter on random inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar, cast

import numpy as np
from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import (
    ArrayAttr,
    DenseIntOrFPElementsAttr,
    IntegerType,
    ModuleOp,
    Signedness,
    StringAttr,
    TensorType,
    UnitAttr,
    i32,
)
from xdsl.ir import Attribute, Block, Operation, Region, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint
from xdsl.traits import IsTerminator

from stepc.ir import dialect as step
from stepc.ir import stablehlo as shlo
from stepc.ir.builder import LocatedBuilder
from stepc.ir.diagnostics import error_at
from stepc.ir.dialect import RELU_TAG, element_of, make_tensor, shape_of
from stepc.ir.interpreter import GELU_ALPHA, GELU_BETA, GELU_KAPPA, SQRT1_2
from stepc.ir.program import step_function
from stepc.ir.shapes import broadcast
from stepc.ir.threefry import MANTISSA_BITS, PARITY, ROTATIONS, dropout_scale, keep_threshold
from stepc.ir.values import numpy_dtype

# ---------------------------------------------------------------------------------------------
# Building StableHLO before a step op


@dataclass(eq=False)
class StableHLOBuilder(LocatedBuilder):
    """Inserts StableHLO ops before the step op being lowered, at its location."""

    def constant(self, value: float | Sequence[float], element: Attribute, shape: Sequence[int] = ()) -> SSAValue:
        """`dense<value>` of the given element type and shape; one value for a shape with
        elements is a rank-0 constant broadcast to it (as `jnp.zeros` is), so the attribute holds
        one element, not one per element of the shape."""
        values = [value] if isinstance(value, (int, float)) else list(value)
        # Keyed by the exact bits: -0.0 == 0.0 and NaN != NaN as floats.
        key = tuple(v.hex() if isinstance(v, float) else int(v) for v in values)
        if len(values) == 1 and tuple(shape) != ():
            scalar = self.emit(shlo.ConstantOp(dense_constant(key, element, ())))
            return self.broadcast_dims(scalar, shape, [])
        return self.emit(shlo.ConstantOp(dense_constant(key, element, tuple(shape))))

    def broadcast(self, value: SSAValue, shape: Sequence[int]) -> SSAValue:
        """NumPy broadcasting of `value` to `shape` (trailing dims aligned); a no-op when equal."""
        source = shape_of(value)
        if tuple(source) == tuple(shape):
            return value
        lead = len(shape) - len(source)
        return self.broadcast_dims(value, shape, range(lead, len(shape)))

    def broadcast_dims(self, value: SSAValue, shape: Sequence[int], dims: Sequence[int]) -> SSAValue:
        """`broadcast_in_dim`: dim i of `value` becomes dim `dims[i]` of the result."""
        result_type = make_tensor(shape, element_of(value))
        return self.emit(shlo.BroadcastInDimOp(value, list(dims), result_type))

    def kept_broadcast(self, reduced: SSAValue, shape: Sequence[int], axes: Sequence[int]) -> SSAValue:
        """A value reduced over `axes` stretched back to `shape` (the reduced dims repeated)."""
        kept = [d for d in range(len(shape)) if d not in axes]
        return self.broadcast_dims(reduced, shape, kept)

    def binary(self, cls: type[shlo.ElementwiseBinary], lhs: SSAValue, rhs: SSAValue) -> SSAValue:
        shape = step_broadcast(shape_of(lhs), shape_of(rhs))
        return self.emit(cls(self.broadcast(lhs, shape), self.broadcast(rhs, shape)))

    def unary(self, cls: type[shlo.ElementwiseUnary], operand: SSAValue) -> SSAValue:
        return self.emit(cls(operand))

    def reduce(self, value: SSAValue, axes: Sequence[int], combiner: type[shlo.ElementwiseBinary]) -> SSAValue:
        """Reduce `axes` (dropped) with `add` (init 0) or `maximum` (init -inf)."""
        element = element_of(value)
        init = self.constant(REDUCE_INIT[combiner], element)
        shape = [d for i, d in enumerate(shape_of(value)) if i not in axes]
        return self.emit(shlo.ReduceOp(value, init, list(axes), combiner, make_tensor(shape, element)))

    def divide_by_count(self, value: SSAValue, count: int) -> SSAValue:
        """`value / count`, as `jnp.mean` divides its sum."""
        divisor = self.constant(float(count), element_of(value))
        return self.binary(shlo.DivideOp, value, divisor)

    def compare(self, direction: shlo.ComparisonDirection, lhs: SSAValue, rhs: SSAValue) -> SSAValue:
        shape = step_broadcast(shape_of(lhs), shape_of(rhs))
        return self.emit(shlo.CompareOp(direction, self.broadcast(lhs, shape), self.broadcast(rhs, shape)))

    def convert(self, value: SSAValue, element: Attribute) -> SSAValue:
        return self.emit(shlo.ConvertOp(value, make_tensor(shlo.shape_of_any(value), element)))


@lru_cache(maxsize=1024)
def dense_constant(key: tuple[str | int, ...], element: Attribute, shape: tuple[int, ...]) -> DenseIntOrFPElementsAttr:
    """The attribute of `StableHLOBuilder.constant` (float values as `float.hex`); shared, as every
    attribute can be: a lowered program repeats a few constants (the zeros of reductions)."""
    values: list[float] | list[int]
    if isinstance(element, IntegerType):  # i32 indices, ui32 key words and shift counts
        values = [int(float.fromhex(v)) if isinstance(v, str) else v for v in key]
    else:  # round to the element type first: 1e308 in f32 is inf (as torch), not a packing error
        floats = np.array([float.fromhex(v) if isinstance(v, str) else float(v) for v in key], dtype=np.float64)
        with np.errstate(over="ignore"):
            values = [float(v) for v in floats.astype(numpy_dtype(element)).astype(np.float64)]
    return DenseIntOrFPElementsAttr.from_list(make_tensor(shape, element), values)  # type: ignore[arg-type]


def step_broadcast(lhs: Sequence[int], rhs: Sequence[int]) -> tuple[int, ...]:
    return broadcast(tuple(lhs), tuple(rhs))


REDUCE_INIT: dict[type[shlo.ElementwiseBinary], float] = {shlo.AddOp: 0.0, shlo.MaxOp: -math.inf}

# ---------------------------------------------------------------------------------------------
# The rules, one per step op


OpT = TypeVar("OpT", bound=Operation)
# A rule returns the value of the op's result (a sequence, one per result, for an op of several).
Lowered = SSAValue | Sequence[SSAValue]
Rule = Callable[[StableHLOBuilder, Operation], Lowered]
LOWERINGS: dict[type[Operation], Rule] = {}
LoweredT = TypeVar("LoweredT", bound=Lowered)


def lowering(*op_types: type[OpT]) -> Callable[[Callable[[StableHLOBuilder, OpT], LoweredT]], Callable[[StableHLOBuilder, OpT], LoweredT]]:
    """Register a rule for these step op classes (the rule is typed by its own op class)."""

    def register(rule: Callable[[StableHLOBuilder, OpT], LoweredT]) -> Callable[[StableHLOBuilder, OpT], LoweredT]:
        for op_type in op_types:
            # The table is keyed by op class, and the pass calls a rule only for its own key.
            LOWERINGS[op_type] = cast(Rule, rule)
        return rule

    return register


ELEMENTWISE_BINARY: dict[type[step.BinaryOp], type[shlo.ElementwiseBinary]] = {
    step.AddOp: shlo.AddOp,
    step.SubOp: shlo.SubtractOp,
    step.MulOp: shlo.MultiplyOp,
    step.DivOp: shlo.DivideOp,
    step.MaximumOp: shlo.MaxOp,
    step.MinimumOp: shlo.MinOp,
}
ELEMENTWISE_UNARY: dict[type[step.UnaryOp], type[shlo.ElementwiseUnary]] = {
    step.ExpOp: shlo.ExpOp,
    step.NegOp: shlo.NegateOp,
    step.LogOp: shlo.LogOp,
    step.TanhOp: shlo.TanhOp,
    step.SigmoidOp: shlo.LogisticOp,
    step.SqrtOp: shlo.SqrtOp,
    step.RsqrtOp: shlo.RsqrtOp,
    step.AbsOp: shlo.AbsOp,
}


@lowering(*ELEMENTWISE_BINARY)
def lower_elementwise_binary(b: StableHLOBuilder, op: step.BinaryOp) -> SSAValue:
    return b.binary(ELEMENTWISE_BINARY[type(op)], op.lhs, op.rhs)


@lowering(*ELEMENTWISE_UNARY)
def lower_elementwise_unary(b: StableHLOBuilder, op: step.UnaryOp) -> SSAValue:
    return b.unary(ELEMENTWISE_UNARY[type(op)], op.input)


@lowering(step.SquareOp)
def lower_square(b: StableHLOBuilder, op: step.UnaryOp) -> SSAValue:
    return b.emit(shlo.MultiplyOp(op.input, op.input))


@lowering(step.ReluOp)
def lower_relu(b: StableHLOBuilder, op: step.UnaryOp) -> SSAValue:
    """`maximum(x, 0)`, as XLA and `jax.nn.relu` compute it (one op per element), tagged
    `{step.relu}` so that the JAX backend differentiates it with PyTorch's relu'(0) = 0
    (`lax.max` would split a tie: 0.5 at 0)."""
    x = op.input
    zero = b.constant(0.0, element_of(x), shape_of(x))
    relu = shlo.MaxOp(x, zero)
    relu.attributes[RELU_TAG] = UnitAttr()
    return b.emit(relu)


@lowering(step.CompareOp)
def lower_compare(b: StableHLOBuilder, op: step.CompareOp) -> SSAValue:
    """A 0/1 mask: `convert(compare(lhs, rhs))` (simplify-stablehlo turns a product with it into a select)."""
    direction = shlo.ComparisonDirection(op.direction.data.upper())
    mask = b.compare(direction, op.lhs, op.rhs)
    return b.convert(mask, element_of(op.result))


@lowering(step.SelectOp)
def lower_select(b: StableHLOBuilder, op: step.SelectOp) -> SSAValue:
    """`select(compare(m != 0), a, b)`, each operand broadcast to the result's shape."""
    shape = shape_of(op.result)
    mask = b.broadcast(op.mask, shape)
    pred = b.compare(shlo.ComparisonDirection.NE, mask, b.constant(0.0, element_of(op.mask)))
    return b.emit(shlo.SelectOp(pred, b.broadcast(op.on_true, shape), b.broadcast(op.on_false, shape)))


UI32 = IntegerType(32, Signedness.UNSIGNED)


@lowering(step.DropoutOp)
def lower_dropout(b: StableHLOBuilder, op: step.DropoutOp) -> SSAValue:
    """`select(keep, x * scale, 0)`, the keep mask `jax.random.bernoulli`'s bit for bit: threefry
    bits of the row-major element index (`threefry_bits`), kept where their 23 high bits are
    below `keep_threshold(rate)` (JAX's uniform float32 below p, in integers)."""
    shape = shape_of(op.result)
    element = element_of(op.result)
    zeros = b.constant(0.0, element, shape)
    threshold = keep_threshold(op.drop_rate)
    if threshold == 0:  # rate 1: nothing is kept
        return zeros
    count = math.prod(shape)
    if count >= 2**32:
        raise error_at(op, f"step.dropout of {count} elements: the lowering counts elements in 32 bits")
    bits = threefry_bits(b, op.key, count)
    high = b.emit(shlo.ShiftRightLogicalOp(bits, b.constant(32 - MANTISSA_BITS, UI32, (count,))))
    keep = b.compare(shlo.ComparisonDirection.LT, high, b.constant(threshold, UI32, (count,)))
    keep = b.emit(shlo.ReshapeOp(keep, TensorType(shlo.i1, list(shape))))
    scaled = b.binary(shlo.MultiplyOp, op.input, b.constant(dropout_scale(op.drop_rate), element))
    return b.emit(shlo.SelectOp(keep, scaled, zeros))


def threefry_bits(b: StableHLOBuilder, key: SSAValue, count: int) -> SSAValue:
    """`jax.random.bits(key, (count,), uint32)` (`ir/threefry.py`): Threefry-2x32 of the counter
    words `(0, i)` for i < count (fewer than 2**32: the high word is 0), the two output words xor-ed."""
    flat = (count,)

    def word(i: int) -> SSAValue:
        piece = b.emit(shlo.DynamicSliceOp(key, [b.constant(i, i32)], [1]))
        return b.emit(shlo.ReshapeOp(piece, make_tensor((), UI32)))

    k0, k1 = word(0), word(1)
    k2 = b.emit(shlo.XorOp(b.emit(shlo.XorOp(k0, k1)), b.constant(PARITY, UI32)))
    schedule = [b.broadcast(k, flat) for k in (k0, k1, k2)]

    def add(x: SSAValue, y: SSAValue) -> SSAValue:
        return b.emit(shlo.AddOp(x, y))

    def rotate_left(x: SSAValue, d: int) -> SSAValue:
        left = b.emit(shlo.ShiftLeftOp(x, b.constant(d, UI32, flat)))
        right = b.emit(shlo.ShiftRightLogicalOp(x, b.constant(32 - d, UI32, flat)))
        return b.emit(shlo.OrOp(left, right))

    x0 = schedule[0]  # the high counter word is 0
    x1 = add(b.emit(shlo.IotaOp(0, make_tensor(flat, UI32))), schedule[1])
    for block in range(5):
        for r in ROTATIONS[block % 2]:
            x0 = add(x0, x1)
            x1 = b.emit(shlo.XorOp(rotate_left(x1, r), x0))
        x0 = add(x0, schedule[(block + 1) % 3])
        x1 = add(add(x1, schedule[(block + 2) % 3]), b.constant(block + 1, UI32, flat))
    return b.emit(shlo.XorOp(x0, x1))


@lowering(step.MatmulOp)
def lower_matmul(b: StableHLOBuilder, op: step.MatmulOp) -> SSAValue:
    lhs_rank, rhs_rank = len(shape_of(op.lhs)), len(shape_of(op.rhs))
    if rhs_rank == 2:  # (m,k)x(k,n) and (...,m,k)x(k,n): no batch dims
        numbers = shlo.DotAttr.make([], [], [lhs_rank - 1], [0])
    else:  # (...,m,k)x(...,k,n): the leading dims are batch dims on both sides
        batch = list(range(lhs_rank - 2))
        numbers = shlo.DotAttr.make(batch, batch, [lhs_rank - 1], [rhs_rank - 2])
    return b.emit(shlo.DotGeneralOp(op.lhs, op.rhs, numbers, op.result.type))


# Convolutions, in PyTorch's layouts (NCHW inputs, OIHW kernels). The two adjoints are JAX's
# transposition rules of `conv_general_dilated` (`_conv_general_dilated_transpose_lhs`, `_rhs`):
# one convolution each, with paddings that give exactly the input's (kernel's) shape for every
# stride, including the rows a stride leaves over (a negative high padding crops them).
NCHW = (0, 1, 2, 3)  # batch (out feature), feature (in feature), the two spatial dims
SWAPPED = (1, 0, 2, 3)  # the same layout with the first two roles exchanged


def convolution(b: StableHLOBuilder, op: step.ConvOp, lhs: SSAValue, rhs: SSAValue, layouts: tuple[Sequence[int], ...],
                **fields: object) -> SSAValue:  # fmt: skip
    numbers = shlo.ConvAttr.make(*layouts)
    return b.emit(shlo.ConvolutionOp(lhs, rhs, op.result.type, numbers=numbers, **fields))  # type: ignore[arg-type]


@lowering(step.Conv2dOp)
def lower_conv2d(b: StableHLOBuilder, op: step.Conv2dOp) -> SSAValue:
    stride, padding, dilation, groups = op.arguments
    return convolution(b, op, op.lhs, op.rhs, (NCHW, NCHW, NCHW), strides=stride, padding=[(p, p) for p in padding],
                       lhs_dilation=(1, 1), rhs_dilation=dilation, feature_groups=groups)  # fmt: skip


@lowering(step.Conv2dInputGradOp)
def lower_conv2d_input_grad(b: StableHLOBuilder, op: step.Conv2dInputGradOp) -> SSAValue:
    """The cotangent dilated by the stride, convolved with the kernel reversed in space and with
    its two feature roles exchanged (each group's block of output features made input features)."""
    stride, padding, dilation, groups = op.arguments
    cotangent, w = op.lhs, op.rhs
    o, cg, kh, kw = shape_of(w)
    if groups > 1:  # (O, C/g, ..) -> (O/g, g C/g, ..), the group outermost in the new feature dim
        split = b.emit(shlo.ReshapeOp(w, make_tensor((groups, o // groups, cg, kh, kw), element_of(w))))
        moved = b.emit(shlo.TransposeOp(split, (1, 0, 2, 3, 4), make_tensor((o // groups, groups, cg, kh, kw), element_of(w))))
        w = b.emit(shlo.ReshapeOp(moved, make_tensor((o // groups, groups * cg, kh, kw), element_of(w))))
    reversed_w = b.emit(shlo.ReverseOp(w, (2, 3)))
    size, out = shape_of(op.result)[2:], shape_of(cotangent)[2:]
    pads: list[tuple[int, int]] = []
    for d in range(2):
        reach = dilation[d] * (shape_of(op.rhs)[2 + d] - 1)
        low = reach - padding[d]
        pads.append((low, size[d] + reach - (out[d] - 1) * stride[d] - 1 - low))
    return convolution(b, op, cotangent, reversed_w, (NCHW, SWAPPED, NCHW), strides=(1, 1), padding=pads,
                       lhs_dilation=stride, rhs_dilation=dilation, feature_groups=groups)  # fmt: skip


@lowering(step.Conv2dWeightGradOp)
def lower_conv2d_weight_grad(b: StableHLOBuilder, op: step.Conv2dWeightGradOp) -> SSAValue:
    """The input convolved with the cotangent (dilated by the stride) as its kernel, the batch
    summed as the feature dim; the groups are batch groups of the input's channels."""
    stride, padding, dilation, groups = op.arguments
    x, cotangent = op.lhs, op.rhs
    size, kernel, out = shape_of(x)[2:], shape_of(op.result)[2:], shape_of(cotangent)[2:]
    pads: list[tuple[int, int]] = []
    for d in range(2):
        high = (out[d] - 1) * stride[d] + 1 - size[d] + dilation[d] * (kernel[d] - 1) - padding[d]
        pads.append((padding[d], high))
    return convolution(b, op, x, cotangent, (SWAPPED, SWAPPED, SWAPPED), strides=dilation, padding=pads,
                       lhs_dilation=(1, 1), rhs_dilation=stride, batch_groups=groups)  # fmt: skip


@lowering(step.TransposeOp)
def lower_transpose(b: StableHLOBuilder, op: step.TransposeOp) -> SSAValue:
    return b.emit(shlo.TransposeOp(op.input, op.permutation, op.result.type))


@lowering(step.ReshapeOp)
def lower_reshape(b: StableHLOBuilder, op: step.ReshapeOp) -> SSAValue:
    return b.emit(shlo.ReshapeOp(op.input, op.result.type))


@lowering(step.BroadcastOp)
def lower_broadcast(b: StableHLOBuilder, op: step.BroadcastOp) -> SSAValue:
    return b.broadcast(op.input, shape_of(op.result))


@lowering(step.ConvertOp)
def lower_convert(b: StableHLOBuilder, op: step.ConvertOp) -> SSAValue:
    if op.input.type == op.result.type:
        return op.input
    return b.emit(shlo.ConvertOp(op.input, op.result.type))


@lowering(step.SumOp)
def lower_sum(b: StableHLOBuilder, op: step.SumOp) -> SSAValue:
    return b.reduce(op.input, op.axes, shlo.AddOp)


@lowering(step.MeanOp)
def lower_mean(b: StableHLOBuilder, op: step.MeanOp) -> SSAValue:
    total = b.reduce(op.input, op.axes, shlo.AddOp)
    shape = shape_of(op.input)
    return b.divide_by_count(total, math.prod(shape[a] for a in op.axes))


@lowering(step.MaxOp)
def lower_max(b: StableHLOBuilder, op: step.MaxOp) -> SSAValue:
    return b.reduce(op.input, op.axes, shlo.MaxOp)


def shifted_by_max(b: StableHLOBuilder, x: SSAValue, axis: int) -> tuple[SSAValue, SSAValue]:
    """`(x - max(x, axis), max(x, axis))`: the stable form of every softmax-like op."""
    row_max = b.reduce(x, [axis], shlo.MaxOp)
    shifted = b.emit(shlo.SubtractOp(x, b.kept_broadcast(row_max, shape_of(x), [axis])))
    return shifted, row_max


@lowering(step.SoftmaxOp)
def lower_softmax(b: StableHLOBuilder, op: step.SoftmaxOp) -> SSAValue:
    axis = op.axis_index
    shifted, _ = shifted_by_max(b, op.input, axis)
    exp = b.unary(shlo.ExpOp, shifted)
    total = b.reduce(exp, [axis], shlo.AddOp)
    return b.emit(shlo.DivideOp(exp, b.kept_broadcast(total, shape_of(op.input), [axis])))


@lowering(step.LogSoftmaxOp)
def lower_log_softmax(b: StableHLOBuilder, op: step.LogSoftmaxOp) -> SSAValue:
    axis = op.axis_index
    shifted, _ = shifted_by_max(b, op.input, axis)
    total = b.reduce(b.unary(shlo.ExpOp, shifted), [axis], shlo.AddOp)
    log_total = b.unary(shlo.LogOp, total)
    return b.emit(shlo.SubtractOp(shifted, b.kept_broadcast(log_total, shape_of(op.input), [axis])))


@lowering(step.CrossEntropyOp)
def lower_cross_entropy(b: StableHLOBuilder, op: step.CrossEntropyOp) -> SSAValue:
    logits = op.logits
    shifted, row_max = shifted_by_max(b, logits, 1)
    total = b.reduce(b.unary(shlo.ExpOp, shifted), [1], shlo.AddOp)
    logsumexp = b.emit(shlo.AddOp(b.unary(shlo.LogOp, total), row_max))
    losses = b.emit(shlo.SubtractOp(logsumexp, pick_columns(b, logits, op.labels)))
    return b.divide_by_count(b.reduce(losses, [0], shlo.AddOp), shape_of(logits)[0])


def pick_columns(b: StableHLOBuilder, logits: SSAValue, labels: SSAValue) -> SSAValue:
    """`logits[i, labels[i]]` for each row i: a gather batched over the rows."""
    n = shape_of(logits)[0]
    indices = row_indices(b, labels)
    numbers = shlo.GatherAttr.make(
        offset_dims=[],
        collapsed_slice_dims=[1],
        operand_batching_dims=[0],
        start_indices_batching_dims=[0],
        start_index_map=[1],
        index_vector_dim=1,
    )
    return b.emit(shlo.GatherOp(logits, indices, numbers, [1, 1], TensorType(element_of(logits), [n])))


def row_indices(b: LocatedBuilder, labels: SSAValue) -> SSAValue:
    """The labels `[n]` as gather/scatter start indices `[n, 1]` (one column index per row)."""
    return b.emit(shlo.ReshapeOp(labels, TensorType(i32, [shape_of(labels)[0], 1])))


@lowering(step.MseOp)
def lower_mse(b: StableHLOBuilder, op: step.MseOp) -> SSAValue:
    diff = b.emit(shlo.SubtractOp(op.lhs, op.rhs))
    square = b.emit(shlo.MultiplyOp(diff, diff))
    shape = shape_of(op.lhs)
    return b.divide_by_count(b.reduce(square, list(range(len(shape))), shlo.AddOp), math.prod(shape))


@lowering(step.ConstantOp)
def lower_constant(b: StableHLOBuilder, op: step.ConstantOp) -> SSAValue:
    return b.constant(op.values, element_of(op.result), shape_of(op.result))


@lowering(step.OneHotOp)
def lower_one_hot(b: StableHLOBuilder, op: step.OneHotOp) -> SSAValue:
    """`convert(compare EQ (broadcast_in_dim(labels), iota))` (simplify-stablehlo turns
    `x - one_hot(labels)` into a scatter)."""
    shape = shape_of(op.result)
    rank = len(shape)
    classes = b.emit(shlo.IotaOp(rank - 1, TensorType(i32, list(shape))))
    labels = b.broadcast_dims(op.input, shape, range(rank - 1))
    hit = b.emit(shlo.CompareOp(shlo.ComparisonDirection.EQ, labels, classes))
    return b.convert(hit, element_of(op.result))


# Layer norm, GELU, embedding


@lowering(step.LayerNormOp)
def lower_layer_norm(b: StableHLOBuilder, op: step.LayerNormOp) -> SSAValue:
    """`(x - mean) * rsqrt(var + eps) * g + b` over the normalized (trailing) dims, each mean a
    sum divided by the count (as `step.mean` lowers: the derivative's recomputation matches)."""
    x, axes, shape = op.input, op.axes, shape_of(op.input)
    count = math.prod(shape[a] for a in axes)
    element = element_of(x)
    mean = b.divide_by_count(b.reduce(x, axes, shlo.AddOp), count)
    centered = b.emit(shlo.SubtractOp(x, b.kept_broadcast(mean, shape, axes)))
    variance = b.divide_by_count(b.reduce(b.emit(shlo.MultiplyOp(centered, centered)), axes, shlo.AddOp), count)
    rstd = b.unary(shlo.RsqrtOp, b.binary(shlo.AddOp, variance, b.constant(op.epsilon, element)))
    normalized = b.emit(shlo.MultiplyOp(centered, b.kept_broadcast(rstd, shape, axes)))
    return b.binary(shlo.AddOp, b.binary(shlo.MultiplyOp, normalized, op.weight), op.bias)


def scaled(b: StableHLOBuilder, value: SSAValue, factor: float) -> SSAValue:
    """`value * factor` (a constant of the value's type)."""
    return b.binary(shlo.MultiplyOp, value, b.constant(factor, element_of(value)))


def plus_constant(b: StableHLOBuilder, value: SSAValue, term: float) -> SSAValue:
    """`value + term` (a constant of the value's type)."""
    return b.binary(shlo.AddOp, b.constant(term, element_of(value)), value)


def gelu_tanh_of(b: StableHLOBuilder, x: SSAValue, x_sq: SSAValue) -> SSAValue:
    """`tanh(sqrt(2/pi) (x + 0.044715 x^3))`, given `x^2`."""
    cube = b.emit(shlo.MultiplyOp(x_sq, x))
    return b.unary(shlo.TanhOp, scaled(b, b.emit(shlo.AddOp(x, scaled(b, cube, GELU_KAPPA))), GELU_BETA))


def gelu_cdf(b: StableHLOBuilder, x: SSAValue) -> SSAValue:
    """`0.5 (1 + erf(x / sqrt 2))` (`chlo.erf`: StableHLO has no erf)."""
    return scaled(b, plus_constant(b, b.unary(shlo.ErfOp, scaled(b, x, SQRT1_2)), 1.0), 0.5)


@lowering(step.GeluOp)
def lower_gelu(b: StableHLOBuilder, op: step.GeluOp) -> SSAValue:
    """`x * 0.5 * (1 + erf(x / sqrt 2))`, or `0.5 x (1 + tanh(...))`, in PyTorch's order."""
    x = op.input
    if op.tanh:
        tanh = gelu_tanh_of(b, x, b.emit(shlo.MultiplyOp(x, x)))
        return b.emit(shlo.MultiplyOp(scaled(b, x, 0.5), plus_constant(b, tanh, 1.0)))
    return b.emit(shlo.MultiplyOp(scaled(b, x, 0.5), plus_constant(b, b.unary(shlo.ErfOp, scaled(b, x, SQRT1_2)), 1.0)))


@lowering(step.GeluGradOp)
def lower_gelu_grad(b: StableHLOBuilder, op: step.GeluGradOp) -> SSAValue:
    """PyTorch's `gelu_backward` without the `dy`: `cdf + x pdf`, or for tanh
    `(1 + t)/2 + (x/2) (1 - t^2) sqrt(2/pi) (1 + 3 0.044715 x^2)`."""
    x = op.input
    x_sq = b.emit(shlo.MultiplyOp(x, x))
    if op.tanh:
        t = gelu_tanh_of(b, x, x_sq)
        left = scaled(b, plus_constant(b, t, 1.0), 0.5)
        sech_sq = b.binary(shlo.SubtractOp, b.constant(1.0, element_of(x)), b.emit(shlo.MultiplyOp(t, t)))
        slope = scaled(b, plus_constant(b, scaled(b, x_sq, 3.0 * GELU_KAPPA), 1.0), GELU_BETA)
        right = b.emit(shlo.MultiplyOp(b.emit(shlo.MultiplyOp(scaled(b, x, 0.5), sech_sq)), slope))
        return b.emit(shlo.AddOp(left, right))
    pdf = scaled(b, b.unary(shlo.ExpOp, scaled(b, x_sq, -0.5)), GELU_ALPHA)
    return b.emit(shlo.AddOp(gelu_cdf(b, x), b.emit(shlo.MultiplyOp(x, pdf))))


def ids_as_indices(b: StableHLOBuilder, ids: SSAValue, shape: Sequence[int]) -> SSAValue:
    """The ids reshaped to gather/scatter indices of `shape` (its last dim 1: one row index each)."""
    return b.emit(shlo.ReshapeOp(ids, TensorType(i32, list(shape))))


@lowering(step.EmbeddingOp)
def lower_embedding(b: StableHLOBuilder, op: step.EmbeddingOp) -> SSAValue:
    """A gather of one `1xD` row per id (`jnp.take(table, ids, axis=0)`). XLA clamps an id outside
    `[0, V)` to the nearest row; the compiled step does not check ids (the entry points do)."""
    ids_shape = shape_of(op.ids)
    width = shape_of(op.table)[1]
    numbers = shlo.GatherAttr.make(
        offset_dims=[len(ids_shape)], collapsed_slice_dims=[0], start_index_map=[0], index_vector_dim=len(ids_shape)
    )
    indices = ids_as_indices(b, op.ids, (*ids_shape, 1))
    return b.emit(shlo.GatherOp(op.table, indices, numbers, [1, width], op.result.type))


@lowering(step.EmbeddingGradOp)
def lower_embedding_grad(b: StableHLOBuilder, op: step.EmbeddingGradOp) -> SSAValue:
    """A scatter-add of each id's cotangent row into a `VxD` table of zeros (repeated ids add up;
    XLA drops an update whose id is outside `[0, V)`)."""
    rows, width = shape_of(op.result)
    count = math.prod(shape_of(op.ids))
    indices = ids_as_indices(b, op.ids, (count, 1))
    updates = b.emit(shlo.ReshapeOp(op.cotangent, make_tensor((count, width), element_of(op.cotangent))))
    numbers = shlo.ScatterAttr.make(
        update_window_dims=[1], inserted_window_dims=[0], scatter_dims_to_operand_dims=[0], index_vector_dim=1
    )
    zeros = b.constant(0.0, element_of(op.result), (rows, width))
    return b.emit(shlo.ScatterOp(zeros, indices, updates, numbers, shlo.AddOp))


@lowering(step.MaxPool2dOp, step.AvgPool2dOp)
def lower_pool2d(b: StableHLOBuilder, op: step.Pool2dOp) -> SSAValue:
    """`reduce_window` over the kernel's windows of the last two dims, the padding filled with
    the init value: `maximum` from -inf (never a maximum), or `add` from 0 then a division by
    kh kw (`count_include_pad`, as `jnp.mean` divides its sum)."""
    kernel, stride, padding = op.window
    lead = len(shape_of(op.input)) - 2
    combiner = shlo.MaxOp if isinstance(op, step.MaxPool2dOp) else shlo.AddOp
    init = b.constant(REDUCE_INIT[combiner], element_of(op.input))
    window = shlo.ReduceWindowOp(
        op.input, init, [1] * lead + list(kernel), [1] * lead + list(stride), [(0, 0)] * lead + [(p, p) for p in padding],
        combiner, op.result.type,
    )  # fmt: skip
    pooled = b.emit(window)
    return pooled if combiner is shlo.MaxOp else b.divide_by_count(pooled, kernel[0] * kernel[1])


@lowering(step.ConcatOp)
def lower_concat(b: StableHLOBuilder, op: step.ConcatOp) -> SSAValue:
    return b.emit(shlo.ConcatenateOp(list(op.inputs), op.axis_index, op.result.type))


@lowering(step.SliceOp)
def lower_slice(b: StableHLOBuilder, op: step.SliceOp) -> SSAValue:
    return b.emit(shlo.SliceOp(op.input, op.list("start"), op.list("limit"), op.list("stride"), op.result.type))


@lowering(step.PadOp)
def lower_pad(b: StableHLOBuilder, op: step.PadOp) -> SSAValue:
    zero = b.constant(0, element_of(op.input))
    low, high, interior = (op.list(k) for k in ("low", "high", "interior"))
    return b.emit(shlo.PadOp(op.input, zero, low, high, interior, op.result.type))


@lowering(step.AccumulateOp)
def lower_accumulate(b: StableHLOBuilder, op: step.AccumulateOp) -> list[SSAValue]:
    """A `stablehlo.while` over the micro-batches k = 0, 1, ..., K - 1 (an i32 counter), as
    `lax.fori_loop` lowers: it carries the counter, one accumulator per result (zeros at first),
    the stacked operands, and every value the body reads from outside the op (the loop's regions
    read only their own arguments). The body cuts micro-batch k out of each operand (a
    `dynamic_slice` of size 1 along the leading axis, reshaped), runs the step body lowered by
    the same rules, and adds what it yields to the accumulators; the results are the
    accumulators after the last trip. The operands and outside values come back unchanged, so
    XLA keeps one buffer of each, and one accumulator per result whatever K is."""
    outside = values_from_outside(op)
    zero = b.constant(0, i32)
    accumulators = [b.constant(0.0, element_of(r), shape_of(r)) for r in op.sums]
    carried = [zero, *accumulators, *op.inputs, *outside]
    types = [v.type for v in carried]
    n_sums, n_inputs = len(accumulators), len(op.inputs)

    cond = Block(arg_types=types)
    c = StableHLOBuilder(InsertPoint.at_end(cond), location=op.location)
    more = c.emit(shlo.CompareOp(shlo.ComparisonDirection.LT, cond.args[0], c.constant(op.count, i32)))
    cond.add_op(shlo.ReturnOp([more]))

    body = Block(arg_types=types)
    counter = body.args[0]
    sums = body.args[1 : 1 + n_sums]
    stacked = body.args[1 + n_sums : 1 + n_sums + n_inputs]
    inside = body.args[1 + n_sums + n_inputs :]
    counter.name_hint = "micro_batch"
    e = StableHLOBuilder(InsertPoint.at_end(body), location=op.location)
    index_zero = e.constant(0, i32)
    step_body = op.body.block
    for value, stack, arg in zip(op.inputs, stacked, step_body.args):
        shape = shape_of(value)
        piece = e.emit(shlo.DynamicSliceOp(stack, [counter, *[index_zero] * (len(shape) - 1)], [1, *shape[1:]]))
        micro = e.emit(shlo.ReshapeOp(piece, arg.type))
        micro.name_hint = arg.name_hint
        arg.replace_all_uses_with(micro)
    for value, arg in zip(outside, inside):
        value.replace_uses_with_if(arg, lambda use: op.is_ancestor(use.operation))
        arg.name_hint = value.name_hint
    for inner in list(step_body.ops):
        inner.detach()
        body.add_op(inner)
    lower_block(body)
    yielded = body.last_op
    assert isinstance(yielded, step.YieldOp)
    e = StableHLOBuilder(InsertPoint.before(yielded), location=op.location)
    added = [e.emit(shlo.AddOp(total, value)) for total, value in zip(sums, yielded.values)]
    following = e.emit(shlo.AddOp(counter, e.constant(1, i32)))
    body.erase_op(yielded)
    body.add_op(shlo.ReturnOp([following, *added, *stacked, *inside]))

    loop = shlo.WhileOp(carried, Region(cond), Region(body))
    b.emit(loop)
    return list(loop.outputs[1 : 1 + n_sums])


def values_from_outside(op: Operation) -> list[SSAValue]:
    """The values that the ops inside `op` read and that are defined outside it, in order of
    first use."""
    seen: dict[SSAValue, None] = {}
    for inner in op.walk():
        if inner is op:
            continue
        for operand in inner.operands:
            owner = operand.owner
            defining = owner if isinstance(owner, Operation) else owner.parent_op()
            if defining is not None and defining is not op and not op.is_ancestor(defining):
                seen.setdefault(operand, None)
    return list(seen)


# ---------------------------------------------------------------------------------------------
# The pass


class LowerToStableHLO(ModulePass):
    """Every step op to StableHLO by the table `LOWERINGS`; the function becomes `@main`."""

    name = "lower-to-stablehlo"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        fn = step_function(op)
        lower_block(fn.body.block)
        name_module(op, fn)


def lower_block(block: Block) -> None:
    """Each step op of `block` replaced by its rule's StableHLO (terminators and StableHLO ops
    left as they are); a rule returns the value of the op's one result, or one per result."""
    for inner in list(block.ops):
        if inner.has_trait(IsTerminator) or inner.dialect_name() in shlo.LOWERED_DIALECTS:
            continue
        rule = LOWERINGS.get(type(inner))
        if rule is None:
            raise error_at(inner, f"lower-to-stablehlo: no lowering rule for {inner.name}")
        lowered = rule(StableHLOBuilder.before(inner), inner)
        for old, result in zip(inner.results, [lowered] if isinstance(lowered, SSAValue) else lowered, strict=True):
            old.replace_all_uses_with(result)
            if result.name_hint is None and old.name_hint is not None:
                result.name_hint = old.name_hint
        inner.detach()
        inner.erase()


def lowered_clone(module: ModuleOp) -> ModuleOp:
    """The module itself when already lowered (no step op left), else a lowered clone: how the
    forward and gradient programs of the API and the contracts' forward mode reach the backends."""
    if not any(op.name.startswith("step.") for op in module.walk()):
        return module
    clone = module.clone()
    LowerToStableHLO().apply(Context(), clone)
    return clone


def name_module(module: ModuleOp, fn: func.FuncOp) -> None:
    """`module @<step> { func.func public @main }`, with XLA-readable argument attributes."""
    if fn.sym_name.data != "main":
        module.sym_name = StringAttr(fn.sym_name.data)
        fn.sym_name = StringAttr("main")
    fn.sym_visibility = StringAttr("public")
    if fn.arg_attrs is not None:
        fn.arg_attrs = ArrayAttr([shlo.harmless_arg_attrs(a) for a in fn.arg_attrs.data])
    for key in [k for k in fn.attributes if k.startswith("step.")]:
        del fn.attributes[key]
