"""`lower-to-stablehlo`: every step op to the StableHLO ops XLA compiles, by one table.

`LOWERINGS` maps each step op class to its rule, like `mlir.register_lowering(mul_p, ...)`
in JAX; a step op without a rule is an error naming it (as an illegal op under MLIR's
conversion target). A rule receives an `Emitter`, which inserts StableHLO ops before the step
op with its location, and returns the value that replaces the step op's result.

Conventions of the output (see `backends/stablehlo.py` for the text):
- broadcasting is explicit (`broadcast_in_dim`); StableHLO elementwise ops take equal shapes;
- `relu` is `maximum(x, 0)` tagged `{step.relu}`: the JAX backend gives it PyTorch's
  derivative 0 at 0 when the lowered function is differentiated with `jax.grad`; a product
  with a 0/1 mask (the derivative of relu) is a `select`, as `jax.grad` emits;
- softmax, log_softmax and cross_entropy subtract the row maximum first (numerically stable);
  cross_entropy is `mean(logsumexp - picked logit)` with the logit picked by a gather;
- `x - one_hot(labels)` (N x C, the cross-entropy gradient) is a scatter-add of -1 at
  `x[i, labels[i]]`, as `jax.grad` emits; the one-hot, read nowhere else, is erased;
- the function becomes `@main` (public) inside `module @<step name>`; argument roles and result
  keys stay as attributes (`{step.param}`, `{step.output = "..."}`) that XLA ignores, so the
  JAX backend and `stepc exec` still know every name.

Contract: the JAX function of the lowered module equals the reference interpreter on random
inputs, within a tolerance per element type.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import ClassVar

import numpy as np
from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import ArrayAttr, DenseIntOrFPElementsAttr, ModuleOp, StringAttr, TensorType, UnitAttr, i32
from xdsl.ir import Attribute, Operation, SSAValue
from xdsl.passes import ModulePass

from stepc.backends import stablehlo as shlo
from stepc.ir import dialect as step
from stepc.ir.diagnostics import error_at
from stepc.ir.dialect import element_of, make_tensor, shape_of
from stepc.ir.program import step_function
from stepc.passes.contract import Contract, ContractReport

# ---------------------------------------------------------------------------------------------
# Building StableHLO before a step op


class Emitter:
    """Inserts StableHLO ops before `anchor` (the step op being lowered), at its location."""

    def __init__(self, anchor: Operation):
        self.anchor = anchor

    def emit(self, op: Operation) -> SSAValue:
        op.location = self.anchor.location
        block = self.anchor.parent_block()
        assert block is not None
        block.insert_op_before(op, self.anchor)
        return op.results[0]

    def constant(self, value: float | Sequence[float], element: Attribute, shape: Sequence[int] = ()) -> SSAValue:
        """`dense<value>` of the given element type and shape (a splat when one value)."""
        values = [value] if isinstance(value, (int, float)) else list(value)
        # Keyed by the exact bits: -0.0 == 0.0 and NaN != NaN as floats.
        key = tuple(v.hex() if isinstance(v, float) else int(v) for v in values)
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
        return self.emit(shlo.ConvertOp(value, make_tensor(shape_of_any(value), element)))


@lru_cache(maxsize=1024)
def dense_constant(key: tuple[str | int, ...], element: Attribute, shape: tuple[int, ...]) -> DenseIntOrFPElementsAttr:
    """The attribute of `Emitter.constant` (float values as `float.hex`); shared, as every
    attribute can be: a lowered program repeats a few constants (the zeros of reductions)."""
    values: list[float] | list[int]
    if element == i32:
        values = [int(float.fromhex(v)) if isinstance(v, str) else v for v in key]
    else:  # round to the element type first: 1e308 in f32 is inf (as torch), not a packing error
        from stepc.ir.values import numpy_dtype

        floats = np.array([float.fromhex(v) if isinstance(v, str) else float(v) for v in key], dtype=np.float64)
        with np.errstate(over="ignore"):
            values = [float(v) for v in floats.astype(numpy_dtype(element)).astype(np.float64)]
    return DenseIntOrFPElementsAttr.from_list(make_tensor(shape, element), values)  # type: ignore[arg-type]


def step_broadcast(lhs: Sequence[int], rhs: Sequence[int]) -> tuple[int, ...]:
    from stepc.ir.shapes import broadcast

    return broadcast(tuple(lhs), tuple(rhs))


def shape_of_any(value: SSAValue) -> tuple[int, ...]:
    """The shape of any tensor value (i1 masks included, which the step dialect never has)."""
    t = value.type
    assert isinstance(t, TensorType)
    return tuple(t.get_shape())


REDUCE_INIT: dict[type[shlo.ElementwiseBinary], float] = {shlo.AddOp: 0.0, shlo.MaxOp: -math.inf}

# ---------------------------------------------------------------------------------------------
# The rules, one per step op


Rule = Callable[[Emitter, Operation], SSAValue]


def elementwise_binary(cls: type[shlo.ElementwiseBinary]) -> Rule:
    return lambda b, op: b.binary(cls, op.lhs, op.rhs)  # type: ignore[attr-defined]


def elementwise_unary(cls: type[shlo.ElementwiseUnary]) -> Rule:
    return lambda b, op: b.unary(cls, op.input)  # type: ignore[attr-defined]


def lower_square(b: Emitter, op: step.SquareOp) -> SSAValue:
    return b.emit(shlo.MultiplyOp(op.input, op.input))


def lower_relu(b: Emitter, op: step.ReluOp) -> SSAValue:
    """`maximum(x, 0)`, as XLA and `jax.nn.relu` compute it (one op per element), tagged
    `{step.relu}` so that the JAX backend differentiates it with PyTorch's relu'(0) = 0
    (`lax.max` would split a tie: 0.5 at 0)."""
    x = op.input
    zero = b.constant(0.0, element_of(x), shape_of(x))
    relu = shlo.MaxOp(x, zero)
    relu.attributes[shlo.RELU_TAG] = UnitAttr()
    return b.emit(relu)


def lower_mul(b: Emitter, op: step.MulOp) -> SSAValue:
    """A product, except that a product with a 0/1 mask (a lowered `step.compare`, as the
    derivatives of relu and abs use) is `select(pred, x, 0)`, as `jax.grad` of relu emits: no
    multiply per element, and 0 rather than NaN where the mask is 0 (torch's threshold_backward)."""
    for mask, other in ((op.rhs, op.lhs), (op.lhs, op.rhs)):
        pred = comparison_behind(mask)
        if pred is not None:
            shape = shape_of(op.result)
            if shape_of_any(pred) != shape:
                pred_type = TensorType(element_of_any(pred), list(shape))
                lead = len(shape) - len(shape_of_any(pred))
                pred = b.emit(shlo.BroadcastInDimOp(pred, range(lead, len(shape)), pred_type))
            zero = b.constant(0.0, element_of(op.result), shape)
            return b.emit(shlo.SelectOp(pred, b.broadcast(other, shape), zero))
    return b.binary(shlo.MultiplyOp, op.lhs, op.rhs)


def comparison_behind(value: SSAValue) -> SSAValue | None:
    """The i1 predicate of a mask that `lower_compare` made (`convert(compare(...))`), or None."""
    owner = value.owner
    if isinstance(owner, shlo.ConvertOp) and isinstance(owner.operand.owner, shlo.CompareOp):
        return owner.operand
    return None


def element_of_any(value: SSAValue) -> Attribute:
    t = value.type
    assert isinstance(t, TensorType)
    return t.get_element_type()


def lower_compare(b: Emitter, op: step.CompareOp) -> SSAValue:
    direction = shlo.ComparisonDirection(op.direction.data.upper())
    mask = b.compare(direction, op.lhs, op.rhs)
    return b.convert(mask, element_of(op.result))


def lower_matmul(b: Emitter, op: step.MatmulOp) -> SSAValue:
    lhs_rank, rhs_rank = len(shape_of(op.lhs)), len(shape_of(op.rhs))
    if rhs_rank == 2:  # (m,k)x(k,n) and (...,m,k)x(k,n): no batch dims
        numbers = shlo.DotAttr.make([], [], [lhs_rank - 1], [0])
    else:  # (...,m,k)x(...,k,n): the leading dims are batch dims on both sides
        batch = list(range(lhs_rank - 2))
        numbers = shlo.DotAttr.make(batch, batch, [lhs_rank - 1], [rhs_rank - 2])
    return b.emit(shlo.DotGeneralOp(op.lhs, op.rhs, numbers, op.result.type))


def lower_transpose(b: Emitter, op: step.TransposeOp) -> SSAValue:
    return b.emit(shlo.TransposeOp(op.input, op.permutation, op.result.type))


def lower_reshape(b: Emitter, op: step.ReshapeOp) -> SSAValue:
    return b.emit(shlo.ReshapeOp(op.input, op.result.type))


def lower_broadcast(b: Emitter, op: step.BroadcastOp) -> SSAValue:
    return b.broadcast(op.input, shape_of(op.result))


def lower_convert(b: Emitter, op: step.ConvertOp) -> SSAValue:
    if op.input.type == op.result.type:
        return op.input
    return b.emit(shlo.ConvertOp(op.input, op.result.type))


def lower_sum(b: Emitter, op: step.SumOp) -> SSAValue:
    return b.reduce(op.input, op.axes, shlo.AddOp)


def lower_mean(b: Emitter, op: step.MeanOp) -> SSAValue:
    total = b.reduce(op.input, op.axes, shlo.AddOp)
    shape = shape_of(op.input)
    return b.divide_by_count(total, math.prod(shape[a] for a in op.axes))


def lower_max(b: Emitter, op: step.MaxOp) -> SSAValue:
    return b.reduce(op.input, op.axes, shlo.MaxOp)


def shifted_by_max(b: Emitter, x: SSAValue, axis: int) -> tuple[SSAValue, SSAValue]:
    """`(x - max(x, axis), max(x, axis))`: the stable form of every softmax-like op."""
    row_max = b.reduce(x, [axis], shlo.MaxOp)
    shifted = b.emit(shlo.SubtractOp(x, b.kept_broadcast(row_max, shape_of(x), [axis])))
    return shifted, row_max


def lower_softmax(b: Emitter, op: step.SoftmaxOp) -> SSAValue:
    axis = op.axis_index
    shifted, _ = shifted_by_max(b, op.input, axis)
    exp = b.unary(shlo.ExpOp, shifted)
    total = b.reduce(exp, [axis], shlo.AddOp)
    return b.emit(shlo.DivideOp(exp, b.kept_broadcast(total, shape_of(op.input), [axis])))


def lower_log_softmax(b: Emitter, op: step.LogSoftmaxOp) -> SSAValue:
    axis = op.axis_index
    shifted, _ = shifted_by_max(b, op.input, axis)
    total = b.reduce(b.unary(shlo.ExpOp, shifted), [axis], shlo.AddOp)
    log_total = b.unary(shlo.LogOp, total)
    return b.emit(shlo.SubtractOp(shifted, b.kept_broadcast(log_total, shape_of(op.input), [axis])))


def lower_cross_entropy(b: Emitter, op: step.CrossEntropyOp) -> SSAValue:
    logits = op.logits
    shifted, row_max = shifted_by_max(b, logits, 1)
    total = b.reduce(b.unary(shlo.ExpOp, shifted), [1], shlo.AddOp)
    logsumexp = b.emit(shlo.AddOp(b.unary(shlo.LogOp, total), row_max))
    losses = b.emit(shlo.SubtractOp(logsumexp, pick_columns(b, logits, op.labels)))
    return b.divide_by_count(b.reduce(losses, [0], shlo.AddOp), shape_of(logits)[0])


def pick_columns(b: Emitter, logits: SSAValue, labels: SSAValue) -> SSAValue:
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


def row_indices(b: Emitter, labels: SSAValue) -> SSAValue:
    """The labels `[n]` as gather/scatter start indices `[n, 1]` (one column index per row)."""
    return b.emit(shlo.ReshapeOp(labels, TensorType(i32, [shape_of(labels)[0], 1])))


def lower_mse(b: Emitter, op: step.MseOp) -> SSAValue:
    diff = b.emit(shlo.SubtractOp(op.lhs, op.rhs))
    square = b.emit(shlo.MultiplyOp(diff, diff))
    shape = shape_of(op.lhs)
    return b.divide_by_count(b.reduce(square, list(range(len(shape))), shlo.AddOp), math.prod(shape))


def lower_constant(b: Emitter, op: step.ConstantOp) -> SSAValue:
    return b.constant(op.values, element_of(op.result), shape_of(op.result))


def lower_one_hot(b: Emitter, op: step.OneHotOp) -> SSAValue:
    shape = shape_of(op.result)
    rank = len(shape)
    classes = b.emit(shlo.IotaOp(rank - 1, TensorType(i32, list(shape))))
    labels = b.broadcast_dims(op.input, shape, range(rank - 1))
    hit = b.emit(shlo.CompareOp(shlo.ComparisonDirection.EQ, labels, classes))
    return b.convert(hit, element_of(op.result))


def lower_sub(b: Emitter, op: step.SubOp) -> SSAValue:
    """`x - one_hot(labels)` (N x C, i32 labels) as a scatter-add of -1 at `x[i, labels[i]]`, as
    `jax.grad` of a picked log-probability gives (a labels row out of range adds nothing, as its
    one-hot row is zero); any other subtraction elementwise."""
    labels = lowered_one_hot_labels(op.rhs)
    shape = shape_of(op.lhs)
    if labels is None or len(shape) != 2 or shape_of_any(op.rhs) != shape or element_of(op.lhs) != element_of(op.rhs):
        return b.binary(shlo.SubtractOp, op.lhs, op.rhs)
    indices = row_indices(b, labels)
    updates = b.constant(-1.0, element_of(op.lhs), [shape[0]])
    numbers = shlo.ScatterAttr.make(
        update_window_dims=[],
        inserted_window_dims=[1],
        input_batching_dims=[0],
        scatter_indices_batching_dims=[0],
        scatter_dims_to_operand_dims=[1],
        index_vector_dim=1,
    )
    return b.emit(shlo.ScatterOp(op.lhs, indices, updates, numbers, shlo.AddOp))


def lowered_one_hot_labels(value: SSAValue) -> SSAValue | None:
    """The i32 labels [N] of a value that `lower_one_hot` made from a rank-2 `step.one_hot`
    (`convert(compare EQ (broadcast_in_dim(labels, [0]), iota 1))`), else None."""
    convert = value.owner
    if not isinstance(convert, shlo.ConvertOp) or not isinstance(convert.operand.owner, shlo.CompareOp):
        return None
    compare = convert.operand.owner
    labels, classes = compare.lhs.owner, compare.rhs.owner
    if (
        compare.direction != shlo.ComparisonDirection.EQ
        or not isinstance(labels, shlo.BroadcastInDimOp)
        or not isinstance(classes, shlo.IotaOp)
        or classes.dimension != 1
        or labels.dims != (0,)
        or len(shape_of_any(value)) != 2
        or element_of(labels.operand) != i32
    ):
        return None
    return labels.operand


def erase_if_unused(value: SSAValue) -> None:
    """Erase the op of `value` when nothing reads it any more, then its operands' ops likewise
    (the one-hot that a scatter replaced)."""
    op = value.owner
    if not isinstance(op, Operation) or op.dialect_name() != "stablehlo" or any(r.uses for r in op.results):
        return
    operands = list(op.operands)
    op.detach()
    op.erase()
    for operand in operands:
        erase_if_unused(operand)


LOWERINGS: dict[type[Operation], Rule] = {
    step.AddOp: elementwise_binary(shlo.AddOp),
    step.SubOp: lower_sub,  # type: ignore[dict-item]
    step.MulOp: lower_mul,  # type: ignore[dict-item]
    step.DivOp: elementwise_binary(shlo.DivideOp),
    step.MaximumOp: elementwise_binary(shlo.MaxOp),
    step.MinimumOp: elementwise_binary(shlo.MinOp),
    step.ExpOp: elementwise_unary(shlo.ExpOp),
    step.NegOp: elementwise_unary(shlo.NegateOp),
    step.LogOp: elementwise_unary(shlo.LogOp),
    step.TanhOp: elementwise_unary(shlo.TanhOp),
    step.SigmoidOp: elementwise_unary(shlo.LogisticOp),
    step.SqrtOp: elementwise_unary(shlo.SqrtOp),
    step.RsqrtOp: elementwise_unary(shlo.RsqrtOp),
    step.AbsOp: elementwise_unary(shlo.AbsOp),
    step.SquareOp: lower_square,  # type: ignore[dict-item]
    step.ReluOp: lower_relu,  # type: ignore[dict-item]
    step.CompareOp: lower_compare,  # type: ignore[dict-item]
    step.MatmulOp: lower_matmul,  # type: ignore[dict-item]
    step.TransposeOp: lower_transpose,  # type: ignore[dict-item]
    step.ReshapeOp: lower_reshape,  # type: ignore[dict-item]
    step.BroadcastOp: lower_broadcast,  # type: ignore[dict-item]
    step.ConvertOp: lower_convert,  # type: ignore[dict-item]
    step.SumOp: lower_sum,  # type: ignore[dict-item]
    step.MeanOp: lower_mean,  # type: ignore[dict-item]
    step.MaxOp: lower_max,  # type: ignore[dict-item]
    step.SoftmaxOp: lower_softmax,  # type: ignore[dict-item]
    step.LogSoftmaxOp: lower_log_softmax,  # type: ignore[dict-item]
    step.CrossEntropyOp: lower_cross_entropy,  # type: ignore[dict-item]
    step.MseOp: lower_mse,  # type: ignore[dict-item]
    step.ConstantOp: lower_constant,  # type: ignore[dict-item]
    step.OneHotOp: lower_one_hot,  # type: ignore[dict-item]
}


# ---------------------------------------------------------------------------------------------
# The pass


class LoweringContract(Contract):
    """The JAX function of the lowered module equals the reference interpreter on random inputs.

    Two engines (XLA and NumPy) order sums and fuse differently, so the tolerance is that of
    `ENGINE_TOLERANCES`: a few ulps of the type times the depth of the sums, normwise.
    """

    name = "equal results (JAX)"

    def check(self, pass_name: str, before: ModuleOp, after: ModuleOp, *, trials: int, seed: int) -> ContractReport:
        from stepc.backends.jax import jax_function
        from stepc.passes.contract import random_inputs
        from stepc.passes.contracts import ENGINE_TOLERANCES, Comparison, compare_outputs, run_program, tolerance_text

        start = time.perf_counter()
        fn_before = step_function(before)
        program = jax_function(after)
        comparison = Comparison()
        for trial in range(trials):
            inputs = random_inputs(fn_before, np.random.default_rng(seed * 1000 + trial))
            found = program({spec.key: inputs[spec.name] for spec in program.specs})
            actual = {key: np.asarray(value) for key, value in found.items()}
            compare_outputs(run_program(before, inputs), actual, comparison, ENGINE_TOLERANCES)
        seconds = time.perf_counter() - start
        return comparison.report(
            pass_name, self.name, trials, seconds, tolerance_text(comparison.dtypes, ENGINE_TOLERANCES)
        )


class LowerToStableHLO(ModulePass):
    """Every step op to StableHLO by the table `LOWERINGS`; the function becomes `@main`."""

    name = "lower-to-stablehlo"

    contract: ClassVar[Contract] = LoweringContract()

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        fn = step_function(op)
        for inner in list(fn.body.block.ops):
            if isinstance(inner, func.ReturnOp) or inner.dialect_name() == "stablehlo":
                continue
            rule = LOWERINGS.get(type(inner))
            if rule is None:
                raise error_at(inner, f"lower-to-stablehlo: no lowering rule for {inner.name}")
            result = rule(Emitter(inner), inner)
            inner.results[0].replace_all_uses_with(result)
            if result.name_hint is None and inner.results[0].name_hint is not None:
                result.name_hint = inner.results[0].name_hint
            operands = list(inner.operands)
            inner.detach()
            inner.erase()
            if isinstance(result.owner, shlo.ScatterOp):  # the one-hot it replaced, when unread
                erase_if_unused(operands[1])
        name_module(op, fn)


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
