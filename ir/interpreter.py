"""Reference semantics of the step dialect: every op on NumPy arrays.

The meaning of each op is one row of a table below (elementwise, reductions, comparisons) or
one `@impl` method of `StepFunctions`, registered with xDSL's interpreter framework; `func`
comes from xDSL's own `FuncFunctions`. Contracts, tests and `stepc check` run programs here.

Precision. Every value is a NumPy array in the element type of the value's IR type. f32 and
f64 ops compute natively in that type. f16 and bf16 (bf16 through ml_dtypes) ops compute in
float32 and round the result to the 16-bit type (round to nearest even), once per op: the
precision of an XLA CPU kernel that upcasts, and of PyTorch's CPU bf16/f16 kernels for these ops.

Conventions (PyTorch's): relu(0) = 0; `cross_entropy` is the mean over rows of
`-log_softmax(logits)[row, label]` (labels outside [0, C) are an error, there is no
`ignore_index`); `mse` is the mean of the squared difference; softmax and log_softmax
subtract the maximum first; reductions without `dims` reduce every dim; `max` of an empty
dim is -inf; `one_hot` of a label outside [0, C) is a row of zeros; `compare` gives a 0/1
mask in the operands' float type; `constant` values (kept in float64) are rounded to the
result type; `convert` casts as NumPy's `astype` (round to nearest even, truncation to i32).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp, TensorType
from xdsl.interpreter import (
    Interpreter,
    InterpreterFunctions,
    PythonValues,
    ReturnedValues,
    TerminatorValue,
    impl,
    impl_terminator,
    register_impls,
)
from xdsl.interpreters.func import FuncFunctions
from xdsl.ir import Attribute, Operation

from stepc.ir import convolution
from stepc.ir.diagnostics import StepcError, error_at, location_of
from stepc.ir.dialect import (
    AbsOp,
    AccumulateOp,
    AddOp,
    AvgPool2dOp,
    BroadcastOp,
    CompareOp,
    ConcatOp,
    ConstantOp,
    Conv2dInputGradOp,
    Conv2dOp,
    Conv2dWeightGradOp,
    ConvertOp,
    CrossEntropyOp,
    DivOp,
    DropoutOp,
    EmbeddingGradOp,
    EmbeddingOp,
    ExpOp,
    GeluGradOp,
    GeluOp,
    LayerNormOp,
    LogOp,
    LogSoftmaxOp,
    MatmulOp,
    MaximumOp,
    MaxOp,
    MaxPool2dOp,
    MeanOp,
    MinimumOp,
    MseOp,
    MulOp,
    NegOp,
    OneHotOp,
    PadOp,
    Pool2dOp,
    ReluOp,
    ReshapeOp,
    RsqrtOp,
    SelectOp,
    SigmoidOp,
    SliceOp,
    SoftmaxOp,
    SqrtOp,
    SquareOp,
    StepOp,
    SubOp,
    SumOp,
    TanhOp,
    TransposeOp,
    YieldOp,
)
from stepc.ir.narrow import is_tensor
from stepc.ir.program import arg_location, args, output_names, step_function
from stepc.ir.shapes import fmt
from stepc.ir.threefry import dropout_scale, keep_mask
from stepc.ir.values import numpy_dtype

Array = np.ndarray
NARROW_FLOATS = ("float16", "bfloat16")


# ---------------------------------------------------------------------------------------------
# Precision


def result_dtype(op: Operation, index: int = 0) -> np.dtype:
    t = op.results[index].type
    assert is_tensor(t)
    return numpy_dtype(t.get_element_type())


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype an op computes in: float32 for the 16-bit floats, else the type itself."""
    return np.dtype(np.float32) if dtype.name in NARROW_FLOATS else dtype


def widen(x: Array) -> Array:
    return np.asarray(x).astype(compute_dtype(np.asarray(x).dtype), copy=False)


def rounded(x: Any, dtype: np.dtype) -> Array:
    """A result in its IR type (a rank-0 result stays a 0-d array, never a NumPy scalar)."""
    return np.asarray(x).astype(dtype, copy=False)


# ---------------------------------------------------------------------------------------------
# The tables


def _sigmoid(x: Array) -> Array:
    # 1 / (1 + e^-x) for x >= 0 and e^x / (1 + e^x) below: neither side overflows.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


def _relu(x: Array) -> Array:
    return np.maximum(x, np.zeros_like(x))  # relu(0) = 0, NaN stays NaN (torch.relu)


def _rsqrt(x: Array) -> Array:
    return np.asarray(1.0 / np.sqrt(x)).astype(x.dtype, copy=False)


def _amax(x: Array, axis: tuple[int, ...]) -> Array:
    return np.max(x, axis=axis, initial=-np.inf)


UNARY: dict[type[StepOp], Callable[[Array], Array]] = {
    ExpOp: np.exp,
    NegOp: np.negative,
    LogOp: np.log,
    TanhOp: np.tanh,
    SigmoidOp: _sigmoid,
    ReluOp: _relu,
    SqrtOp: np.sqrt,
    RsqrtOp: _rsqrt,
    SquareOp: np.square,
    AbsOp: np.abs,
}

# NumPy broadcasting for the elementwise ops; np.matmul has exactly the matmul forms.
BINARY: dict[type[StepOp], Callable[[Array, Array], Array]] = {
    AddOp: np.add,
    SubOp: np.subtract,
    MulOp: np.multiply,
    DivOp: np.divide,
    MaximumOp: np.maximum,
    MinimumOp: np.minimum,
    MatmulOp: np.matmul,
}

REDUCTIONS: dict[type[StepOp], Callable[[Array, tuple[int, ...]], Array]] = {
    SumOp: lambda x, axis: np.sum(x, axis=axis),
    MeanOp: lambda x, axis: np.mean(x, axis=axis),
    MaxOp: _amax,
}

COMPARISONS: dict[str, Callable[[Array, Array], Array]] = {
    "eq": np.equal,
    "ne": np.not_equal,
    "lt": np.less,
    "le": np.less_equal,
    "gt": np.greater,
    "ge": np.greater_equal,
}


def log_softmax(x: Array, axis: int) -> Array:
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def softmax(x: Array, axis: int) -> Array:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


# Layer norm, GELU and embedding: the float64 references (also `error_bounds`') and the id check.

# The constants of PyTorch's GELU kernels (aten/src/ATen/native/cpu/Activation.cpp), in its order.
SQRT1_2 = math.sqrt(0.5)  # M_SQRT1_2
GELU_ALPHA = (2.0 / math.sqrt(math.pi)) * SQRT1_2 * 0.5  # kAlpha = M_2_SQRTPI * M_SQRT1_2 * 0.5 = 1/sqrt(2 pi)
GELU_BETA = math.sqrt(2.0) * (2.0 / math.sqrt(math.pi)) * 0.5  # kBeta = M_SQRT2 * M_2_SQRTPI * 0.5 = sqrt(2/pi)
GELU_KAPPA = 0.044715
_ERF = np.frompyfunc(math.erf, 1, 1)


def erf(x: Array) -> Array:
    """The error function elementwise, in float64 (libm's `erf`, as PyTorch's CPU kernels call it)."""
    return np.asarray(_ERF(np.asarray(x, dtype=np.float64)), dtype=np.float64)


def gelu(x: Array, tanh: bool) -> Array:
    """F.gelu: `x/2 (1 + erf(x/sqrt 2))`, or with `tanh`, `x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`."""
    if tanh:
        return 0.5 * x * (1.0 + np.tanh(GELU_BETA * (x + GELU_KAPPA * (x * x * x))))
    return x * 0.5 * (1.0 + erf(x * SQRT1_2).astype(x.dtype, copy=False))


def gelu_grad(x: Array, tanh: bool) -> Array:
    """The derivative of `gelu`, as PyTorch's `gelu_backward` computes it: `Phi(x) + x phi(x)`, or for
    tanh, `(1 + t)/2 + x/2 (1 - t^2) sqrt(2/pi) (1 + 3 0.044715 x^2)` with `t` the forward's tanh."""
    if tanh:
        x_sq = x * x
        t = np.tanh(GELU_BETA * (x + GELU_KAPPA * (x_sq * x)))
        inner_derivative = GELU_BETA * (1.0 + 3.0 * GELU_KAPPA * x_sq)
        return 0.5 * (1.0 + t) + (0.5 * x) * (1.0 - t * t) * inner_derivative
    cdf = 0.5 * (1.0 + erf(x * SQRT1_2).astype(x.dtype, copy=False))
    pdf = GELU_ALPHA * np.exp(-0.5 * x * x)
    return cdf + x * pdf


def layer_norm(x: Array, g: Array, b: Array, axes: tuple[int, ...], eps: float) -> Array:
    """F.layer_norm over `axes` (the trailing dims): `(x - mean) / sqrt(var + eps) * g + b`, biased variance."""
    centered = x - np.mean(x, axis=axes, keepdims=True)
    variance = np.mean(centered * centered, axis=axes, keepdims=True)
    return centered * (1.0 / np.sqrt(variance + np.asarray(eps, dtype=x.dtype))) * g + b


def check_ids(op: Operation, ids: Array, rows: int) -> Array:
    """The ids of an embedding as indices, or a located error naming the first outside `[0, rows)`
    (F.embedding's IndexError)."""
    bad = np.flatnonzero((ids < 0) | (ids >= rows))
    if bad.size:
        index = [int(i) for i in np.unravel_index(int(bad[0]), ids.shape)] if ids.ndim else []
        raise error_at(
            op,
            f"{op.name}: id {int(ids.reshape(-1)[bad[0]])} at {index} is outside the table's {rows} rows [0, {rows}) "
            f"({bad.size} such id{'s' if bad.size > 1 else ''})",
        )
    return ids.astype(np.intp)


def _elementwise(fn: Callable[..., Array]) -> Callable[..., PythonValues]:
    def run(self: InterpreterFunctions, interpreter: Interpreter, op: Operation, values: PythonValues) -> PythonValues:
        return (rounded(fn(*(widen(v) for v in values)), result_dtype(op)),)

    return run


def _reduction(fn: Callable[[Array, tuple[int, ...]], Array]) -> Callable[..., PythonValues]:
    def run(self: InterpreterFunctions, interpreter: Interpreter, op: Operation, values: PythonValues) -> PythonValues:
        assert isinstance(op, (SumOp, MeanOp, MaxOp))
        return (rounded(fn(widen(values[0]), op.axes), result_dtype(op)),)

    return run


def _register_tables(cls: type[InterpreterFunctions]) -> type[InterpreterFunctions]:
    """One `@impl` method per row of UNARY, BINARY and REDUCTIONS (before `register_impls`)."""
    rows: list[tuple[type[StepOp], Callable[..., PythonValues]]] = [
        *((op, _elementwise(fn)) for op, fn in {**UNARY, **BINARY}.items()),
        *((op, _reduction(fn)) for op, fn in REDUCTIONS.items()),
    ]
    for op_type, run in rows:
        setattr(cls, "run_" + op_type.name.removeprefix("step."), impl(op_type)(run))
    return cls


# ---------------------------------------------------------------------------------------------
# The ops with attributes or their own rules


@register_impls
@_register_tables
class StepFunctions(InterpreterFunctions):
    """The step ops; the rows of the tables above are added by `_register_tables`."""

    @impl(CompareOp)
    def run_compare(self, interpreter: Interpreter, op: CompareOp, values: PythonValues) -> PythonValues:
        lhs, rhs = (widen(v) for v in values)
        return (rounded(COMPARISONS[op.direction.data](lhs, rhs), result_dtype(op)),)

    @impl(SelectOp)
    def run_select(self, interpreter: Interpreter, op: SelectOp, values: PythonValues) -> PythonValues:
        mask, on_true, on_false = (np.asarray(v) for v in values)  # torch.where(m != 0, a, b): exact
        chosen: Array = np.where(mask != 0, on_true, on_false)
        return (np.ascontiguousarray(np.broadcast_to(chosen, _shape(op.result.type))),)

    @impl(DropoutOp)
    def run_dropout(self, interpreter: Interpreter, op: DropoutOp, values: PythonValues) -> PythonValues:
        """Kept elements times the scale (rounded to x's type), one rounding; dropped ones +0."""
        x, key = np.asarray(values[0]), np.asarray(values[1])
        dtype = result_dtype(op)
        keep = keep_mask(key, op.drop_rate, x.shape)
        scale = widen(np.asarray(dropout_scale(op.drop_rate)).astype(dtype))
        scaled = rounded(widen(x) * scale, dtype)
        return (np.where(keep, scaled, np.zeros((), dtype)).astype(dtype, copy=False),)

    @impl(TransposeOp)
    def run_transpose(self, interpreter: Interpreter, op: TransposeOp, values: PythonValues) -> PythonValues:
        return (np.ascontiguousarray(np.transpose(values[0], op.permutation)),)

    @impl(ReshapeOp)
    def run_reshape(self, interpreter: Interpreter, op: ReshapeOp, values: PythonValues) -> PythonValues:
        return (np.reshape(values[0], _shape(op.result.type)).copy(),)

    @impl(BroadcastOp)
    def run_broadcast(self, interpreter: Interpreter, op: BroadcastOp, values: PythonValues) -> PythonValues:
        return (np.broadcast_to(values[0], _shape(op.result.type)).copy(),)

    @impl(SoftmaxOp)
    def run_softmax(self, interpreter: Interpreter, op: SoftmaxOp, values: PythonValues) -> PythonValues:
        return (rounded(softmax(widen(values[0]), op.axis_index), result_dtype(op)),)

    @impl(LogSoftmaxOp)
    def run_log_softmax(self, interpreter: Interpreter, op: LogSoftmaxOp, values: PythonValues) -> PythonValues:
        return (rounded(log_softmax(widen(values[0]), op.axis_index), result_dtype(op)),)

    @impl(CrossEntropyOp)
    def run_cross_entropy(self, interpreter: Interpreter, op: CrossEntropyOp, values: PythonValues) -> PythonValues:
        logits, labels = widen(values[0]), np.asarray(values[1])
        classes = logits.shape[1]
        bad = np.flatnonzero((labels < 0) | (labels >= classes))
        if bad.size:
            row = int(bad[0])
            raise error_at(
                op, f"step.cross_entropy: label {int(labels[row])} of row {row} is outside [0, {classes})"
            )
        picked = np.take_along_axis(log_softmax(logits, 1), labels.astype(np.intp)[:, None], axis=1)
        return (rounded(-np.mean(picked), result_dtype(op)),)

    @impl(MseOp)
    def run_mse(self, interpreter: Interpreter, op: MseOp, values: PythonValues) -> PythonValues:
        lhs, rhs = (widen(v) for v in values)
        return (rounded(np.mean(np.square(lhs - rhs)), result_dtype(op)),)

    @impl(ConstantOp)
    def run_constant(self, interpreter: Interpreter, op: ConstantOp, values: PythonValues) -> PythonValues:
        shape = _shape(op.result.type)
        data = np.asarray(op.values, dtype=np.float64).astype(result_dtype(op))
        return (np.broadcast_to(data[0], shape).copy() if data.size == 1 else data.reshape(shape),)

    @impl(ConvertOp)
    def run_convert(self, interpreter: Interpreter, op: ConvertOp, values: PythonValues) -> PythonValues:
        return (np.asarray(values[0]).astype(result_dtype(op)),)

    @impl(OneHotOp)
    def run_one_hot(self, interpreter: Interpreter, op: OneHotOp, values: PythonValues) -> PythonValues:
        classes = _shape(op.result.type)[-1]
        labels = np.asarray(values[0])
        return ((labels[..., None] == np.arange(classes)).astype(result_dtype(op)),)

    @impl(LayerNormOp)
    def run_layer_norm(self, interpreter: Interpreter, op: LayerNormOp, values: PythonValues) -> PythonValues:
        x, g, b = (widen(v) for v in values)
        return (rounded(layer_norm(x, g, b, op.axes, op.epsilon), result_dtype(op)),)

    @impl(GeluOp)
    def run_gelu(self, interpreter: Interpreter, op: GeluOp, values: PythonValues) -> PythonValues:
        return (rounded(gelu(widen(values[0]), op.tanh), result_dtype(op)),)

    @impl(GeluGradOp)
    def run_gelu_grad(self, interpreter: Interpreter, op: GeluGradOp, values: PythonValues) -> PythonValues:
        return (rounded(gelu_grad(widen(values[0]), op.tanh), result_dtype(op)),)

    @impl(EmbeddingOp)
    def run_embedding(self, interpreter: Interpreter, op: EmbeddingOp, values: PythonValues) -> PythonValues:
        table = np.asarray(values[0])  # exact: a copy of rows
        ids = check_ids(op, np.asarray(values[1]), table.shape[0])
        return (np.ascontiguousarray(np.take(table, ids, axis=0)),)

    @impl(EmbeddingGradOp)
    def run_embedding_grad(self, interpreter: Interpreter, op: EmbeddingGradOp, values: PythonValues) -> PythonValues:
        cotangent = widen(values[0])
        rows, width = _shape(op.result.type)
        ids = check_ids(op, np.asarray(values[1]), rows)
        table = np.zeros((rows, width), dtype=cotangent.dtype)
        np.add.at(table, ids.reshape(-1), cotangent.reshape(-1, width))  # repeated ids add up, in order
        return (rounded(table, result_dtype(op)),)

    @impl(Conv2dOp)
    def run_conv2d(self, interpreter: Interpreter, op: Conv2dOp, values: PythonValues) -> PythonValues:
        x, w = (widen(v) for v in values)  # one matmul per group, in the operands' type (as step.matmul)
        return (rounded(convolution.conv2d(x, w, *op.arguments), result_dtype(op)),)

    @impl(Conv2dInputGradOp)
    def run_conv2d_input_grad(self, interpreter: Interpreter, op: Conv2dInputGradOp, values: PythonValues) -> PythonValues:
        cotangent, w = (widen(v) for v in values)
        dx = convolution.conv2d_input_grad(cotangent, w, _shape(op.result.type), *op.arguments)
        return (rounded(dx, result_dtype(op)),)

    @impl(Conv2dWeightGradOp)
    def run_conv2d_weight_grad(self, interpreter: Interpreter, op: Conv2dWeightGradOp, values: PythonValues) -> PythonValues:
        x, cotangent = (widen(v) for v in values)
        dw = convolution.conv2d_weight_grad(x, cotangent, _shape(op.result.type), *op.arguments)
        return (rounded(dw, result_dtype(op)),)

    @impl(MaxPool2dOp)
    def run_max_pool2d(self, interpreter: Interpreter, op: MaxPool2dOp, values: PythonValues) -> PythonValues:
        windows = pool_windows(widen(values[0]), op, -np.inf)  # -inf padding: never a maximum
        return (rounded(np.max(windows, axis=(-2, -1)), result_dtype(op)),)

    @impl(AvgPool2dOp)
    def run_avg_pool2d(self, interpreter: Interpreter, op: AvgPool2dOp, values: PythonValues) -> PythonValues:
        (kh, kw), _, _ = op.window
        windows = pool_windows(widen(values[0]), op, 0.0)  # count_include_pad: zeros, divided by kh kw
        return (rounded(np.sum(windows, axis=(-2, -1)) / (kh * kw), result_dtype(op)),)

    @impl(ConcatOp)
    def run_concat(self, interpreter: Interpreter, op: ConcatOp, values: PythonValues) -> PythonValues:
        return (np.concatenate([np.asarray(v) for v in values], axis=op.axis_index),)

    @impl(SliceOp)
    def run_slice(self, interpreter: Interpreter, op: SliceOp, values: PythonValues) -> PythonValues:
        return (np.ascontiguousarray(np.asarray(values[0])[op.index]),)

    @impl(PadOp)
    def run_pad(self, interpreter: Interpreter, op: PadOp, values: PythonValues) -> PythonValues:
        x = np.asarray(values[0])
        out = np.zeros(_shape(op.result.type), dtype=x.dtype)
        out[op.placement] = x
        return (out,)

    @impl(AccumulateOp)
    def run_accumulate(self, interpreter: Interpreter, op: AccumulateOp, values: PythonValues) -> PythonValues:
        """The body once per micro-batch k = 0..K-1 on `operand[k]`, each result the sum of the
        yielded values in that order, one rounding to the result's type per addition."""
        sums: list[Array] = []
        for k in range(op.count):
            micro = tuple(np.ascontiguousarray(np.asarray(v)[k]) for v in values)
            yielded = interpreter.run_ssacfg_region(op.body, micro, "step.accumulate")
            if k == 0:
                sums = [np.array(y, copy=True) for y in yielded]
            else:
                sums = [rounded(widen(s) + widen(y), s.dtype) for s, y in zip(sums, yielded)]
        return tuple(sums)

    @impl_terminator(YieldOp)
    def run_yield(
        self, interpreter: Interpreter, op: YieldOp, values: PythonValues
    ) -> tuple[TerminatorValue, PythonValues]:
        return ReturnedValues(values), ()


def pool_windows(x: Array, op: Pool2dOp, fill: float) -> Array:
    """The pooling windows of `x` (its last two dims padded with `fill`): shape `(..., OH, OW, KH, KW)`."""
    (kh, kw), (sh, sw), (ph, pw) = op.window
    padded = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(ph, ph), (pw, pw)], constant_values=fill)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(-2, -1))
    return windows[..., ::sh, ::sw, :, :]


def _fits(value: Array, dtype: np.dtype) -> bool:
    """Integers for a ui32 key that it holds exactly (a Python list of ints is int64)."""
    if value.dtype.kind not in "iu" or dtype.kind != "u":
        return False
    info = np.iinfo(dtype)
    return value.size == 0 or bool(info.min <= value.min() and value.max() <= info.max)


def _shape(t: Attribute) -> tuple[int, ...]:
    assert isinstance(t, TensorType)
    return tuple(t.get_shape())


# ---------------------------------------------------------------------------------------------
# Running a step function


def run_function(
    module_or_func: ModuleOp | func.FuncOp, inputs: Mapping[str, Any], listeners: Sequence[Interpreter.Listener] = ()
) -> dict[str, Array]:
    """Run a step function on named inputs; the outputs keyed by `output_names(fn)`.

    Inputs are keyed by argument name and converted to each argument's dtype when NumPy's
    `same_kind` casting allows (float64 data for an f32 argument, int64 labels for i32);
    missing or unknown keys, wrong shapes and lossy kinds (floats for i32) are `StepcError`s.
    `listeners` (xDSL's `Interpreter.Listener`) see every op run, those of regions included.
    """
    fn = step_function(module_or_func) if isinstance(module_or_func, ModuleOp) else module_or_func
    arguments = _check_inputs(fn, inputs)
    module = fn.parent_op()
    interpreter = Interpreter(module if isinstance(module, ModuleOp) else ModuleOp([]), listeners=tuple(listeners))
    interpreter.register_implementations(FuncFunctions())
    interpreter.register_implementations(StepFunctions())
    with np.errstate(all="ignore"):  # log(-1) is NaN, 1/0 is inf, as in PyTorch: no warnings
        results = interpreter.call_op(fn, tuple(arguments))
    names = output_names(fn)
    return {name: np.array(value, copy=True) for name, value in zip(names, results)}


def _check_inputs(fn: func.FuncOp, inputs: Mapping[str, Any]) -> list[Array]:
    fn_args = args(fn)
    names = [a.name for a in fn_args]
    missing = [n for n in names if n not in inputs]
    unknown = sorted(str(k) for k in inputs if k not in names)
    where = location_of(fn)
    if missing or unknown:
        parts: list[str] = []
        if missing:
            parts.append("missing " + ", ".join(f"%{n}" for n in missing))
        if unknown:
            parts.append("unknown " + ", ".join(f"'{n}'" for n in unknown))
        raise StepcError(
            f"inputs of @{fn.sym_name.data}: {'; '.join(parts)} (the arguments are "
            + ", ".join(f"%{n}" for n in names)
            + ")",
            where,
        )
    out: list[Array] = []
    for arg in fn_args:
        loc = arg_location(fn, arg.value)
        expected_shape = tuple(arg.type.get_shape())
        dtype = numpy_dtype(arg.type.get_element_type())
        try:
            value = np.asarray(inputs[arg.name])
        except Exception as e:  # ragged lists and the like
            raise StepcError(f"input %{arg.name} is not an array: {e}", loc) from None
        if value.shape != expected_shape:
            raise StepcError(
                f"input %{arg.name}: expected shape {fmt(expected_shape)} ({arg.type}), found {fmt(value.shape)}", loc
            )
        if value.dtype != dtype and not (np.can_cast(value.dtype, dtype, "same_kind") or _fits(value, dtype)):
            raise StepcError(f"input %{arg.name}: expected {dtype.name} values ({arg.type}), found {value.dtype}", loc)
        out.append(value.astype(dtype, copy=True))
    return out
