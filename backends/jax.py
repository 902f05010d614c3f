"""The lowered module as a pure, traceable JAX function, through a table of `jax.lax` calls.

`JAX_RULES` maps each StableHLO op of our subset to the `jax.lax` call that computes it, so
the function composes with `jax.jit`, `vmap`, `grad`, sharding and donation like any JAX code.

    jf = jax_function(module)          # a step-dialect module (lowered on a clone) or a lowered one
    jf.arg_names, jf.output_names      # IR names, in argument / result order
    outputs = jf.fn(*arrays)           # positional and pure: a tuple in output order
    outputs = jf({"w": w, "x": x})     # dict in, dict out, inputs checked (StepcError on a mistake)

A program with f64 values needs `jax_enable_x64`: `__call__` turns it on around the call;
callers of `.fn` enable it themselves (`jax.config.update("jax_enable_x64", True)`).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from xdsl.dialects import func
from xdsl.dialects.builtin import DenseIntOrFPElementsAttr, Float64Type, IntegerType, ModuleOp, TensorType
from xdsl.ir import Attribute, Block, Operation, SSAValue
from xdsl.traits import IsTerminator

from stepc.backends import helpers
from stepc.ir import stablehlo as shlo
from stepc.ir.diagnostics import StepcError, error_at, location_of
from stepc.ir.dialect import RELU_TAG
from stepc.ir.program import ArgSpec, arg_specs, check_inputs, output_names, step_function
from stepc.ir.values import numpy_dtype

# ---------------------------------------------------------------------------------------------
# Element types


def jax_dtype(element: Attribute) -> Any:
    """The NumPy/JAX dtype of an element type (i1 masks included)."""
    if isinstance(element, IntegerType) and element.width.data == 1:
        return np.dtype(np.bool_)
    return numpy_dtype(element)


def tensor_dtype(t: Attribute) -> Any:
    assert isinstance(t, TensorType)
    return jax_dtype(t.get_element_type())


def tensor_shape(t: Attribute) -> tuple[int, ...]:
    assert isinstance(t, TensorType)
    return tuple(t.get_shape())


def constant_array(attr: DenseIntOrFPElementsAttr) -> np.ndarray:
    """The values of a `dense<...>` attribute as a NumPy array of its type (splats expanded)."""
    dtype = tensor_dtype(attr.type)
    shape = tensor_shape(attr.type)
    values = np.asarray(attr.get_values(), dtype=np.float64 if dtype.kind == "f" else dtype)
    values = values.astype(dtype)
    if values.size == 1:
        return np.full(shape, values.reshape(()), dtype=dtype)
    return values.reshape(shape)


# ---------------------------------------------------------------------------------------------
# The table: StableHLO op -> jax.lax call.
#
# A rule describes its call as data (`Call`: a dotted function name such as `lax.dot_general`,
# the op's operands as `Operand(i)`, and static arguments as plain literals). The same
# description is evaluated here to build the JAX function and rendered as Python text by the
# emitted module (`backends/jax_py.py`), so both run exactly the same lax calls.
#
# Under a mesh of explicit axes every value's type carries its sharding, and JAX refuses a
# call whose result sharding is ambiguous or illegal; a hand-written step never meets this in
# `dot_general`, whose transpose rules pass `out_sharding` themselves, but stepc's step is
# already differentiated. So `dot_general` and the operands of every elementwise op of two or
# more operands go through helpers (`backends/helpers.py`) that settle those shardings, and add
# no op without explicit axes.


@dataclass(frozen=True)
class Operand:
    """The i-th operand of the op."""

    index: int


@dataclass(frozen=True)
class Name:
    """A dotted name in `jax.lax`, `jax.numpy` or `numpy`: `lax.GatherScatterMode.PROMISE_IN_BOUNDS`."""

    path: str


@dataclass(frozen=True)
class Starred:
    """`*value` among a call's arguments: the items of a tuple-valued `Call` (`lax.add(*aligned(a, b))`)."""

    value: Call


@dataclass(frozen=True)
class Call:
    """`fn(*args, **kwargs)` with `fn` a dotted name (`lax.add`) and arguments that are
    `Operand`s, nested `Call`s (or `Starred` ones), `Name`s, `Function`s or literals (ints,
    floats, tuples, dtypes, arrays)."""

    fn: str
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, eq=False)
class Function:
    """A region as a Python function of positional arrays returning a tuple of arrays (a loop's
    condition or body): its ops as straight-line code, reading only its own arguments."""

    body: Body


# The names a `Call` may start with: JAX, NumPy, and the functions the table calls beyond
# jax.lax (`backends/helpers.py`, whose code the emitted module carries too).
NAMESPACE: dict[str, Any] = {
    "jax": jax,
    "lax": lax,
    "jnp": jnp,
    "np": np,
    **{name: getattr(helpers, name) for name in helpers.__all__},
}


def resolve(path: str) -> Any:
    head, *rest = path.split(".")
    value = NAMESPACE[head]
    for part in rest:
        value = getattr(value, part)
    return value


def evaluate(node: Any, operands: Sequence[Any]) -> Any:
    """Run a `Call` description on concrete (or traced) operands."""
    if isinstance(node, Operand):
        return operands[node.index]
    if isinstance(node, Name):
        return resolve(node.path)
    if isinstance(node, Call):
        args: list[Any] = []
        for a in node.args:
            if isinstance(a, Starred):
                args.extend(evaluate(a.value, operands))
            else:
                args.append(evaluate(a, operands))
        kwargs = {k: evaluate(v, operands) for k, v in node.kwargs}
        return resolve(node.fn)(*args, **kwargs)
    if isinstance(node, tuple):
        return tuple(evaluate(v, operands) for v in node)
    if isinstance(node, Function):
        return body_function(node.body)
    return node


Rule = Callable[[Operation], Call]


def _elementwise(fn: str) -> Rule:
    return lambda op: elementwise_call(fn, len(op.operands))


def elementwise_call(fn: str, arity: int) -> Call:
    """`fn(a)`, or `fn(*aligned(a, b, ...))`: operands of two or more may clash in their explicit shardings."""
    operands = tuple(Operand(i) for i in range(arity))
    if arity < 2:
        return Call(fn, operands)
    return Call(fn, (Starred(Call("aligned", operands)),))


def _maximum(op: shlo.MaxOp) -> Call:
    """`lax.max`, or `relu0` for the maximum that lowers `step.relu` (PyTorch's relu'(0) = 0)."""
    return _elementwise("relu0" if RELU_TAG in op.attributes else "lax.max")(op)


COMPARISONS: dict[shlo.ComparisonDirection, str] = {
    shlo.ComparisonDirection.EQ: "lax.eq",
    shlo.ComparisonDirection.NE: "lax.ne",
    shlo.ComparisonDirection.LT: "lax.lt",
    shlo.ComparisonDirection.LE: "lax.le",
    shlo.ComparisonDirection.GT: "lax.gt",
    shlo.ComparisonDirection.GE: "lax.ge",
}


@dataclass(frozen=True)
class Reducer:
    """A reduce body's combining op as lax: the reduction over axes, the combiner, its identity."""

    reduce: str
    combine: str
    identity: float


REDUCERS: dict[type[Operation], Reducer] = {
    shlo.AddOp: Reducer("lax.reduce_sum", "lax.add", 0.0),
    shlo.MultiplyOp: Reducer("lax.reduce_prod", "lax.mul", 1.0),
    shlo.MaxOp: Reducer("lax.reduce_max", "lax.max", -math.inf),
    shlo.MinOp: Reducer("lax.reduce_min", "lax.min", math.inf),
}


def _constant(op: shlo.ConstantOp) -> Call:
    return Call("jnp.asarray", (constant_array(op.value),))


def _convert(op: shlo.ConvertOp) -> Call:
    return Call("lax.convert_element_type", (Operand(0), tensor_dtype(op.result.type)))


def _compare(op: shlo.CompareOp) -> Call:
    return elementwise_call(COMPARISONS[op.direction], 2)


def _broadcast_in_dim(op: shlo.BroadcastInDimOp) -> Call:
    return Call("lax.broadcast_in_dim", (Operand(0), tensor_shape(op.result.type), op.dims))


def _reshape(op: shlo.ReshapeOp) -> Call:
    return Call("lax.reshape", (Operand(0), tensor_shape(op.result.type)))


def _transpose(op: shlo.TransposeOp) -> Call:
    return Call("lax.transpose", (Operand(0), op.perm))


def _dot_general(op: shlo.DotGeneralOp) -> Call:
    n = op.dot_dimension_numbers
    numbers = (
        (n.field("lhs_contracting_dimensions"), n.field("rhs_contracting_dimensions")),
        (n.field("lhs_batching_dimensions"), n.field("rhs_batching_dimensions")),
    )
    # `lax.dot_general` naming its output sharding where explicit axes need one (helpers.py).
    return Call(
        "dot_general",
        (Operand(0), Operand(1), numbers),
        (("preferred_element_type", tensor_dtype(op.result.type)),),
    )


def _convolution(op: shlo.ConvolutionOp) -> Call:
    lhs_dilation, rhs_dilation = op.dilations
    feature_groups, batch_groups = op.groups
    numbers = Call("lax.ConvDimensionNumbers", op.dimension_numbers.specs)
    return Call(
        "lax.conv_general_dilated",
        (Operand(0), Operand(1), op.strides, op.pads, lhs_dilation, rhs_dilation, numbers, feature_groups, batch_groups),
        (("preferred_element_type", tensor_dtype(op.result.type)),),
    )


def _reverse(op: shlo.ReverseOp) -> Call:
    return Call("lax.rev", (Operand(0), op.dims))


def _iota(op: shlo.IotaOp) -> Call:
    return Call("lax.broadcasted_iota", (tensor_dtype(op.output.type), tensor_shape(op.output.type), op.dimension))


def _gather(op: shlo.GatherOp) -> Call:
    n = op.dimension_numbers
    indices_rank = len(tensor_shape(op.start_indices.type))
    if n.field("index_vector_dim") != indices_rank - 1:
        raise error_at(op, "stablehlo.gather: the JAX backend takes the index vector in the last dim of the indices")
    numbers = Call(
        "lax.GatherDimensionNumbers",
        kwargs=tuple(
            (key, n.field(key))
            for key in (
                "offset_dims",
                "collapsed_slice_dims",
                "start_index_map",
                "operand_batching_dims",
                "start_indices_batching_dims",
            )
        ),
    )
    return Call(
        "lax.gather",
        (Operand(0), Operand(1), numbers, shlo.i64_values(op.slice_sizes)),
        (("mode", Name("lax.GatherScatterMode.PROMISE_IN_BOUNDS")),),
    )


SCATTERS: dict[type[Operation], str] = {shlo.AddOp: "lax.scatter_add"}


def _scatter(op: shlo.ScatterOp) -> Call:
    n = op.scatter_dimension_numbers
    indices_rank = len(tensor_shape(op.scatter_indices.type))
    if n.field("index_vector_dim") != indices_rank - 1:
        raise error_at(op, "stablehlo.scatter: the JAX backend takes the index vector in the last dim of the indices")
    fn = SCATTERS.get(op.combiner)  # type: ignore[arg-type]
    if fn is None:
        raise error_at(op, "stablehlo.scatter: the JAX backend takes an update body of one add")
    numbers = Call(
        "lax.ScatterDimensionNumbers",
        kwargs=(
            ("update_window_dims", n.field("update_window_dims")),
            ("inserted_window_dims", n.field("inserted_window_dims")),
            ("scatter_dims_to_operand_dims", n.field("scatter_dims_to_operand_dims")),
            ("operand_batching_dims", n.field("input_batching_dims")),
            ("scatter_indices_batching_dims", n.field("scatter_indices_batching_dims")),
        ),
    )
    # XLA's scatter skips an update whose index is out of bounds (FILL_OR_DROP), as a one-hot row
    # of an out-of-range label is zero.
    return Call(
        fn, (Operand(0), Operand(1), Operand(2), numbers), (("mode", Name("lax.GatherScatterMode.FILL_OR_DROP")),)
    )


def _reduce(op: shlo.ReduceOp) -> Call:
    reducer = REDUCERS.get(op.combiner)  # type: ignore[arg-type]
    if reducer is None:
        raise error_at(op, "stablehlo.reduce: the JAX backend takes a body of one add, multiply, maximum or minimum")
    reduced = Call(reducer.reduce, (Operand(0), op.dims))
    init_op = op.init_value.owner
    if isinstance(init_op, shlo.ConstantOp) and bool(np.all(constant_array(init_op.value) == reducer.identity)):
        return reduced
    return Call(reducer.combine, (reduced, Operand(1)))


def _dynamic_slice(op: shlo.DynamicSliceOp) -> Call:
    indices = tuple(Operand(i) for i in range(1, len(op.operands)))
    return Call("lax.dynamic_slice", (Operand(0), indices, op.sizes))


def _while(op: shlo.WhileOp) -> Call:
    """`while_loop(cond, body, operands)` (`backends/helpers.py`: `lax.while_loop` over the tuple)."""
    operands = tuple(Operand(i) for i in range(len(op.operands)))
    return Call("while_loop", (Function(straight_line_block(op.cond.block)), Function(straight_line_block(op.body.block)), operands))


WINDOW_REDUCERS: dict[type[Operation], tuple[str, float]] = {shlo.AddOp: ("lax.add", 0.0), shlo.MaxOp: ("lax.max", -math.inf)}


def _reduce_window(op: shlo.ReduceWindowOp) -> Call:
    """`lax.reduce_window` with the combiner's identity as a literal init (so JAX takes its
    `reduce_window_sum` / `reduce_window_max` primitive, with their derivatives)."""
    reducer = WINDOW_REDUCERS.get(op.combiner)  # type: ignore[arg-type]
    init_op = op.init_value.owner
    if reducer is None or not (
        isinstance(init_op, shlo.ConstantOp) and bool(np.all(constant_array(init_op.value) == reducer[1]))
    ):
        raise error_at(op, "stablehlo.reduce_window: the JAX backend takes a body of one add from 0 or one maximum from -inf")
    combine, identity = reducer
    return Call("lax.reduce_window", (Operand(0), identity, Name(combine), op.window, op.strides, op.pads))


def _pad(op: shlo.PadOp) -> Call:
    return Call("lax.pad", (Operand(0), Operand(1), op.config))


def _slice(op: shlo.SliceOp) -> Call:
    start, limit, strides = op.bounds
    return Call("lax.slice", (Operand(0), start, limit, strides))


def _concatenate(op: shlo.ConcatenateOp) -> Call:
    return Call("lax.concatenate", (tuple(Operand(i) for i in range(len(op.operands))), op.axis))


JAX_RULES: dict[type[Operation], Rule] = {
    shlo.AddOp: _elementwise("lax.add"),
    shlo.SubtractOp: _elementwise("lax.sub"),
    shlo.MultiplyOp: _elementwise("lax.mul"),
    shlo.DivideOp: _elementwise("lax.div"),
    shlo.MaxOp: _maximum,  # type: ignore[dict-item]
    shlo.MinOp: _elementwise("lax.min"),
    shlo.NegateOp: _elementwise("lax.neg"),
    shlo.ExpOp: _elementwise("lax.exp"),
    shlo.LogOp: _elementwise("lax.log"),
    shlo.TanhOp: _elementwise("lax.tanh"),
    shlo.LogisticOp: _elementwise("lax.logistic"),
    shlo.SqrtOp: _elementwise("lax.sqrt"),
    shlo.RsqrtOp: _elementwise("lax.rsqrt"),
    shlo.AbsOp: _elementwise("abs0"),
    shlo.SelectOp: _elementwise("lax.select"),
    shlo.ConstantOp: _constant,  # type: ignore[dict-item]
    shlo.ConvertOp: _convert,  # type: ignore[dict-item]
    shlo.CompareOp: _compare,  # type: ignore[dict-item]
    shlo.BroadcastInDimOp: _broadcast_in_dim,  # type: ignore[dict-item]
    shlo.ReshapeOp: _reshape,  # type: ignore[dict-item]
    shlo.TransposeOp: _transpose,  # type: ignore[dict-item]
    shlo.DotGeneralOp: _dot_general,  # type: ignore[dict-item]
    shlo.IotaOp: _iota,  # type: ignore[dict-item]
    shlo.GatherOp: _gather,  # type: ignore[dict-item]
    shlo.ScatterOp: _scatter,  # type: ignore[dict-item]
    shlo.ReduceOp: _reduce,  # type: ignore[dict-item]
    shlo.DynamicSliceOp: _dynamic_slice,  # type: ignore[dict-item]
    shlo.WhileOp: _while,  # type: ignore[dict-item]
    shlo.ErfOp: _elementwise("lax.erf"),
    shlo.ConvolutionOp: _convolution,  # type: ignore[dict-item]
    shlo.ReverseOp: _reverse,  # type: ignore[dict-item]
    shlo.ReduceWindowOp: _reduce_window,  # type: ignore[dict-item]
    shlo.PadOp: _pad,  # type: ignore[dict-item]
    shlo.SliceOp: _slice,  # type: ignore[dict-item]
    shlo.ConcatenateOp: _concatenate,  # type: ignore[dict-item]
    shlo.XorOp: _elementwise("lax.bitwise_xor"),
    shlo.OrOp: _elementwise("lax.bitwise_or"),
    shlo.ShiftLeftOp: _elementwise("lax.shift_left"),
    shlo.ShiftRightLogicalOp: _elementwise("lax.shift_right_logical"),
}


@dataclass(frozen=True)
class Instruction:
    """One op of the function body: its call, its operand slots and its result slots (a call of
    an op of several results returns a tuple of them)."""

    op: Operation
    call: Call
    operands: tuple[int, ...]
    results: tuple[int, ...]


@dataclass(frozen=True)
class Body:
    """A function body as straight-line code over numbered slots (arguments first)."""

    n_args: int
    instructions: tuple[Instruction, ...]
    outputs: tuple[int, ...]


def straight_line(fn: func.FuncOp) -> Body:
    """The function's ops as `Instruction`s, each op's call made once from the table."""
    return straight_line_block(fn.body.block)


def straight_line_block(block: Block) -> Body:
    """A block's ops as `Instruction`s (its terminator's operands the outputs)."""
    slots: dict[SSAValue, int] = {arg: i for i, arg in enumerate(block.args)}
    instructions: list[Instruction] = []
    outputs: tuple[int, ...] = ()
    for op in block.ops:
        if op.has_trait(IsTerminator):
            outputs = tuple(slots[v] for v in op.operands)
            continue
        rule = JAX_RULES.get(type(op))
        if rule is None:
            raise error_at(op, f"the JAX backend has no rule for {op.name} (lower the program first)")
        for result in op.results:
            slots[result] = len(slots)
        results = tuple(slots[r] for r in op.results)
        instructions.append(Instruction(op, rule(op), tuple(slots[v] for v in op.operands), results))
    return Body(len(block.args), live_only(instructions, outputs), outputs)


def live_only(instructions: Sequence[Instruction], outputs: Sequence[int]) -> tuple[Instruction, ...]:
    """The instructions whose results some call reads (a reduce's identity init is not read)."""
    live = set(outputs)
    kept: list[Instruction] = []
    for ins in reversed(instructions):
        if live.intersection(ins.results):
            kept.append(ins)
            live.update(ins.operands[i] for i in read_operands(ins.call))
    return tuple(reversed(kept))


def read_operands(node: Any) -> set[int]:
    """The operand indices a `Call` description reads."""
    if isinstance(node, Operand):
        return {node.index}
    if isinstance(node, Starred):
        return read_operands(node.value)
    if isinstance(node, Call):
        return set().union(*(read_operands(a) for a in (*node.args, *(v for _, v in node.kwargs))))
    if isinstance(node, tuple):
        return set().union(*(read_operands(v) for v in node))
    return set()


# ---------------------------------------------------------------------------------------------
# The function


@dataclass(eq=False)
class JaxFunction:
    """A lowered step function as JAX: `fn(*arrays) -> tuple`, and a dict form `__call__`."""

    module: ModuleOp
    specs: list[ArgSpec]
    output_names: list[str]
    output_specs: list[tuple[tuple[int, ...], np.dtype]]
    fn: Callable[..., tuple[Any, ...]] = field(repr=False)
    needs_x64: bool = False

    @functools.cached_property
    def jitted(self) -> Callable[..., tuple[Any, ...]]:
        """`jax.jit(fn)`, made once: the dict form runs compiled."""
        return jax.jit(self.fn)

    @property
    def arg_names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def arg_keys(self) -> list[str]:
        """Argument keys of the dict form (`momentum.w1` for state, IR names otherwise)."""
        return [s.key for s in self.specs]

    def __call__(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        arrays = check_inputs(self.specs, inputs, x64=x64_on())
        with x64_enabled(self.needs_x64):
            outputs = self.jitted(*arrays)
            return {name: np.asarray(value) for name, value in zip(self.output_names, outputs)}


def x64_on() -> bool:
    """Whether JAX keeps 64-bit arrays now (`jax_enable_x64`)."""
    return bool(jax.config.jax_enable_x64)  # pyright: ignore[reportAttributeAccessIssue]  # JAX sets its config options as attributes at runtime


def x64_enabled(needed: bool) -> contextlib.AbstractContextManager[object]:
    """A context enabling `jax_enable_x64` when the program has f64 values (no-op otherwise)."""
    if not needed or x64_on():
        return contextlib.nullcontext()
    return jax.enable_x64(True)


def jax_function(module: ModuleOp) -> JaxFunction:
    """The JAX function of a lowered step program (`passes.lower_to_stablehlo.lowered_clone`
    lowers a step-dialect one); a step op left in it is an error naming the op."""
    fn = step_function(module)
    specs = arg_specs(fn)
    names = output_names(fn)
    output_specs = [(tensor_shape(t), tensor_dtype(t)) for t in fn.function_type.outputs.data]
    program = compile_ops(fn)
    needs_x64 = any(
        isinstance(t, TensorType) and isinstance(t.get_element_type(), Float64Type)
        for op in fn.walk()
        for t in [*op.result_types, *(o.type for o in op.operands)]
    ) or any(s.dtype == np.float64 for s in specs)
    return JaxFunction(module, specs, names, output_specs, program, needs_x64)


def compile_ops(fn: func.FuncOp) -> Callable[..., tuple[Any, ...]]:
    """The function body as a pure Python function of positional arrays."""
    body = straight_line(fn)
    where = location_of(fn)
    run = body_function(body)

    def checked(*arrays: Any) -> tuple[Any, ...]:
        if len(arrays) != body.n_args:
            raise StepcError(f"the step function takes {body.n_args} arrays, found {len(arrays)}", where)
        return run(*arrays)

    return checked


def body_function(body: Body) -> Callable[..., tuple[Any, ...]]:
    """A straight-line body as a Python function of positional arrays returning a tuple."""
    size = max((r for ins in body.instructions for r in ins.results), default=body.n_args - 1) + 1

    def run(*arrays: Any) -> tuple[Any, ...]:
        values: list[Any] = [*arrays, *([None] * max(0, size - len(arrays)))]
        for ins in body.instructions:
            out = evaluate(ins.call, [values[i] for i in ins.operands])
            if len(ins.results) == 1:
                values[ins.results[0]] = out
            else:
                for slot, value in zip(ins.results, out, strict=True):
                    values[slot] = value
        return tuple(values[i] for i in body.outputs)

    return run
