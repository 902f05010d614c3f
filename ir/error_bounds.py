"""Running error analysis: each op's reference value in float64 and a bound on the error of
any correct evaluation of the op in its own precision.

`evaluate_with_bounds(fn, inputs)` walks a step function once. Every value carries

- `value`: the op's meaning computed in float64 from the float64 values of its operands (the
  reference; its own float64 rounding is inside the bound, see `unit_roundoff`), and
- `error`: an elementwise bound on `|computed - value|` for ANY evaluation that computes each op
  in the op's element type with any summation order (pairwise, blocked, FMA, tree: the
  deterministic `gamma_n = n u / (1 - n u)` of a length-n sum, Higham, "Accuracy and Stability
  of Numerical Algorithms", 2nd ed., Lemma 3.1 and section 3.1), any placement of the final
  rounding, and any amount of extra precision in between (XLA's CPU compiler keeps f16/bf16
  intermediates in f32 across fused ops: an error of 0 where the model allows a rounding).

The bound of an op is its operands' errors carried through the op (a first-order Lipschitz term
with the second-order term kept: `|b| ea + |a| eb + ea eb` for a product) plus the op's own
rounding: half an ulp (`u |y|`) for the correctly rounded ops (+, -, *, /, sqrt, conversions),
`TRANSCENDENTAL_ULPS` ulps for exp, log, tanh, logistic (XLA and NumPy use polynomial
approximations that are not correctly rounded), `gamma_n |a|.|b|` for a matmul over n and
`gamma_n sum|x|` for a sum. f16 and bf16 matmuls accumulate in f32 (`ACCUMULATOR`) and round
once to the 16-bit type; other sums accumulate in their own type (XLA's CPU backend reduces f16
in f16).

Discontinuities are bounded as well: a comparison whose operands are closer than their errors
could flip, so its 0/1 result gets error 1 there; an op whose operand's interval reaches a pole
or leaves the domain (log of an interval holding 0, 1/x near 0) gets an infinite bound there
(the element is not checked, and reports count such elements).

The bounds are what the contracts compare against (`error / bound <= 1` holds): they are
sound for every summation order, so they never raise a false alarm on a correct program, and
tight enough (typically 10 to 1000 times the observed error) to catch a wrong derivative rule
or a lowering that is off by a fraction of a percent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import ml_dtypes
import numpy as np
from xdsl.dialects import func
from xdsl.ir import Attribute, Block, Operation, SSAValue
from xdsl.traits import IsTerminator

from stepc.ir import convolution
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
    SubOp,
    SumOp,
    TanhOp,
    TransposeOp,
    shape_of,
)
from stepc.ir.interpreter import (
    BINARY,
    COMPARISONS,
    GELU_ALPHA,
    GELU_BETA,
    GELU_KAPPA,
    UNARY,
    gelu,
    gelu_grad,
    log_softmax,
    pool_windows,
    softmax,
)
from stepc.ir.narrow import is_tensor
from stepc.ir.program import args, output_names
from stepc.ir.threefry import dropout_scale, keep_mask
from stepc.ir.values import numpy_dtype

Array = np.ndarray

# Ulps of error of a transcendental function's implementation (XLA's exp/log/tanh/logistic on
# CPU and GPU, NumPy's libm): a few ulps at most; 4 is a margin over the documented 1 to 2.
TRANSCENDENTAL_ULPS = 4.0
# The smallest magnitude an approximation's relative error is measured against (below it, an
# absolute error of that many ulps of the smallest normal number of the type).
U64 = float(np.finfo(np.float64).eps) / 2


def _finfo(dtype: np.dtype) -> Any:
    return ml_dtypes.finfo(dtype)  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]  # ml_dtypes is untyped


def unit_roundoff(dtype: np.dtype) -> float:
    """Half the machine epsilon of a float type (f32 5.96e-8, bf16 3.9e-3), 0 for integers."""
    if dtype.kind == "f" or dtype.name == "bfloat16":
        return float(_finfo(dtype).eps) / 2
    return 0.0


def smallest_normal(dtype: np.dtype) -> float:
    if dtype.kind == "f" or dtype.name == "bfloat16":
        return float(_finfo(dtype).smallest_normal)
    return 0.0


# f16 and bf16 matmuls accumulate in f32 (XLA's dot on CPU and GPU, cuBLAS, the TPU's MXU);
# every other sum accumulates in its own type (XLA's CPU backend reduces f16 in f16).
ACCUMULATOR = {"float16": np.dtype(np.float32), "bfloat16": np.dtype(np.float32)}


def gamma(n: int, u: float) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative bound of an n-term sum in any order
    (infinite where n u >= 1, where no such bound exists)."""
    nu = n * u
    return nu / (1.0 - nu) if nu < 1.0 else np.inf


# The confidence of the probabilistic bound: under the model of independent, mean-zero rounding
# errors (Higham and Mary, "A New Approach to Probabilistic Rounding Error Analysis", SISC 2019),
# an element exceeds LAMBDA times its `sigma` with probability at most 2 exp(-LAMBDA^2 / 2):
# 2.5e-14 for LAMBDA = 8, so one false alarm in about 4e13 elements checked.
LAMBDA = 8.0


@dataclass
class Bounded:
    """A value in float64 and two elementwise bounds on the error of the program's evaluation:

    - `error`: the worst case, sound for every rounding (`gamma_n`, errors added up linearly);
    - `sigma`: the probabilistic scale (`sqrt(n) u` sums, independent errors added in
      quadrature); `LAMBDA * sigma` bounds the error with the confidence stated at `LAMBDA`.

    `bound()`, the smaller of the two, is what the contracts compare against."""

    value: Array
    error: Array
    sigma: Array

    def bound(self) -> Array:
        return np.minimum(self.error, LAMBDA * self.sigma)


def _rss(*parts: Array | float) -> Array:
    """The root of the sum of squares: independent error scales combined."""
    total: Array = np.zeros(())
    for part in parts:
        total = total + np.square(part)
    return np.sqrt(total)


@dataclass(frozen=True)
class Precision:
    """The rounding of one op: `u` of its result type, `ua` of its accumulator (each plus
    float64's own, for the reference is computed in float64), `tiny` the type's smallest normal
    number (the most a flush of a subnormal to 0 changes a value)."""

    u: float
    ua: float
    tiny: float

    @staticmethod
    @cache
    def of(dtype: np.dtype) -> Precision:
        """The precision of a float type (cached: the reference asks once per op)."""
        u = unit_roundoff(dtype)
        if u == 0.0:
            return Precision(0.0, 0.0, 0.0)
        accumulator = ACCUMULATOR.get(dtype.name, dtype)
        return Precision(u + U64, unit_roundoff(accumulator) + U64, smallest_normal(dtype))

    def rounding(self, y: Array, ulps: float = 0.5) -> Array:
        """`ulps` ulps of |y| (half an ulp is u |y|), plus the smallest normal number: XLA's CPU
        code flushes subnormal results and operands to 0."""
        return 2.0 * ulps * self.u * np.abs(y) + self.tiny


def exact(x: Array) -> Bounded:
    """A value known exactly (an input): its bounds are 0."""
    value = np.asarray(x, dtype=np.float64)
    return Bounded(value, np.zeros_like(value), np.zeros_like(value))


def literal(c: float, dtype: np.dtype) -> Bounded:
    """A rank-0 constant `c` stored in `dtype`: off by its rounding to that type, exactly."""
    off = np.asarray(abs(float(np.asarray(c).astype(dtype)) - c))
    return Bounded(np.asarray(c, dtype=np.float64), off, off.copy())


def plus(a: Bounded, b: Bounded, p: Precision, sign: float = 1.0) -> Bounded:
    """`a + b` (`a - b` with `sign` -1): the errors add, and one rounding."""
    with np.errstate(all="ignore"):  # inf - inf in a bound is "no bound" (`_no_nan`), not a warning
        y = a.value + sign * b.value
        r = p.rounding(y)
        return Bounded(y, _no_nan(a.error + b.error + r), _no_nan(_rss(a.sigma, b.sigma, r)))


def times(a: Bounded, b: Bounded, p: Precision) -> Bounded:
    """`a * b`: `|b| ea + |a| eb + ea eb`, and one rounding."""
    with np.errstate(all="ignore"):  # 0 * inf in a bound is "no bound" (`_no_nan`), not a warning
        y = a.value * b.value
        r = p.rounding(y)
        error = np.abs(b.value) * a.error + np.abs(a.value) * b.error + a.error * b.error + r
        sigma = _rss(b.value * a.sigma, a.value * b.sigma, a.sigma * b.sigma, r)
        return Bounded(y, _no_nan(error), _no_nan(sigma))


def _apply(y: Array, x: Bounded, slope: Array, curvature: float, p: Precision, ulps: float) -> Bounded:
    """A smooth elementwise function: `slope` is |f'(x)|, `curvature` a bound on |f''| / 2 (the
    second-order term), `ulps` the function's own rounding."""
    r = p.rounding(y, ulps)
    return Bounded(y, slope * x.error + curvature * x.error**2 + r, _rss(slope * x.sigma + curvature * x.sigma**2, r))


Rule = Callable[[Operation, list[Bounded], Precision], Bounded]
RULES: dict[type[Operation], Rule] = {}


def rule(*op_types: type[Operation]) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for op_type in op_types:
            RULES[op_type] = fn
        return fn

    return register


# ---------------------------------------------------------------------------------------------
# Elementwise


@rule(AddOp, SubOp)
def _add(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    return plus(a[0], a[1], p, -1.0 if isinstance(op, SubOp) else 1.0)


@rule(MulOp)
def _mul(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    return times(a[0], a[1], p)


@rule(DivOp)
def _div(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    return quotient(a[0], a[1], p)


def quotient(x: Bounded, z: Bounded, p: Precision) -> Bounded:
    """`x / z`: `(ex + |y| ez) / (|z| - ez)` (infinite where the divisor's interval reaches 0),
    and one rounding."""
    y = x.value / z.value
    r = p.rounding(y)
    with np.errstate(divide="ignore", invalid="ignore"):
        margin = np.abs(z.value) - z.error
        error = np.where(margin > 0, (x.error + np.abs(y) * z.error) / margin, np.inf)
        sigma_margin = np.abs(z.value) - LAMBDA * z.sigma
        sigma = np.where(sigma_margin > 0, _rss(x.sigma, y * z.sigma) / sigma_margin, np.inf)
    return Bounded(y, error + r, _rss(sigma, r))


@rule(MaximumOp, MinimumOp)
def _extremum(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    y = BINARY[type(op)](a[0].value, a[1].value)  # type: ignore[index]
    zero = np.zeros_like(y)
    return Bounded(y, np.maximum(a[0].error, a[1].error) + zero, np.maximum(a[0].sigma, a[1].sigma) + zero)


@rule(NegOp, AbsOp)
def _lipschitz_one_exact(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    """Exact ops with Lipschitz constant 1: the error carries over unchanged."""
    return Bounded(UNARY[type(op)](a[0].value), a[0].error.copy(), a[0].sigma.copy())  # type: ignore[index]


@rule(ReluOp)
def _relu(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    """Exact and 1-Lipschitz; below 0 by more than the error, both sides are exactly 0."""
    x = a[0]
    y = UNARY[ReluOp](x.value)
    error = np.where(x.value >= 0, x.error, np.minimum(x.error, np.maximum(x.value + x.error, 0.0)))
    sigma = np.where(x.value + LAMBDA * x.sigma <= 0, 0.0, x.sigma)
    return Bounded(y, error, sigma)


@rule(ExpOp)
def _exp(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    x = a[0]
    y = np.exp(x.value)
    r = p.rounding(y, TRANSCENDENTAL_ULPS)
    # exp(x + d) - exp(x) = y expm1(d): the scale at LAMBDA sigma, divided back by LAMBDA.
    return Bounded(y, y * np.expm1(x.error) + r, _rss(y * np.expm1(LAMBDA * x.sigma) / LAMBDA, r))


@rule(LogOp)
def _log(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    x = a[0]
    y = np.log(x.value)
    # log is accurate relative to max(|y|, 1): near x = 1 its absolute error is about u.
    r = p.rounding(np.maximum(np.abs(y), 1.0), TRANSCENDENTAL_ULPS)
    with np.errstate(divide="ignore", invalid="ignore"):
        error = np.where(x.value > x.error, -np.log1p(-x.error / x.value), np.inf)
        low = x.value - LAMBDA * x.sigma
        sigma = np.where(low > 0, x.sigma / np.where(low > 0, low, 1.0), np.inf)
    return Bounded(y, error + r, _rss(sigma, r))


@rule(TanhOp)
def _tanh(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    y = np.tanh(a[0].value)
    result = _apply(y, a[0], 1.0 - y * y, 0.4, p, TRANSCENDENTAL_ULPS)  # |tanh''| <= 0.77
    return Bounded(y, np.minimum(result.error, 2.0), result.sigma)


@rule(SigmoidOp)
def _sigmoid(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    y = UNARY[SigmoidOp](a[0].value)
    result = _apply(y, a[0], y * (1.0 - y), 0.05, p, TRANSCENDENTAL_ULPS)  # |sigmoid''| <= 0.0963
    return Bounded(y, np.minimum(result.error, 1.0), result.sigma)


@rule(SqrtOp)
def _sqrt(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    x = a[0]
    y = np.sqrt(x.value)
    r = p.rounding(y)
    with np.errstate(divide="ignore", invalid="ignore"):
        low = x.value - x.error
        error = np.where(low >= 0, x.error / (y + np.sqrt(np.maximum(low, 0.0))), np.inf)
        error = np.where(x.error == 0, 0.0, error)
        low_sigma = x.value - LAMBDA * x.sigma
        sigma = np.where(low_sigma > 0, x.sigma / (2.0 * np.sqrt(np.where(low_sigma > 0, low_sigma, 1.0))), np.inf)
        sigma = np.where(x.sigma == 0, 0.0, sigma)
    return Bounded(y, error + r, _rss(sigma, r))


@rule(RsqrtOp)
def _rsqrt(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    x = a[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        y = 1.0 / np.sqrt(x.value)
        r = p.rounding(y, 2.0)  # 1/sqrt: two roundings
        low = x.value - x.error
        error = np.where(low > 0, 1.0 / np.sqrt(np.where(low > 0, low, 1.0)) - y, np.inf)
        error = np.where(x.error == 0, 0.0, error)
        low_sigma = x.value - LAMBDA * x.sigma
        safe = np.where(low_sigma > 0, low_sigma, 1.0)
        sigma = np.where(low_sigma > 0, 0.5 * x.sigma / (safe * np.sqrt(safe)), np.inf)
        sigma = np.where(x.sigma == 0, 0.0, sigma)
    return Bounded(y, error + r, _rss(sigma, r))


@rule(SquareOp)
def _square(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    x = a[0]
    return _apply(x.value * x.value, x, 2.0 * np.abs(x.value), 1.0, p, 0.5)


@rule(CompareOp)
def _compare(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    assert isinstance(op, CompareOp)
    x, z = a
    y = COMPARISONS[op.direction.data](x.value, z.value).astype(np.float64)
    # Operands closer than their errors: the engine may decide either way (error 1 of a 0/1 mask).
    # A flip is not a small mean-zero rounding: the probabilistic bound carries it at full size
    # (sigma 1, so LAMBDA sigma covers up to LAMBDA^2 flips that add up with one sign; with
    # sigma 1/LAMBDA, a 24-layer bf16 MLP's flipped relu masks gave 1.77 times the bound).
    gap = np.abs(x.value - z.value)
    undecided = gap <= x.error + z.error
    maybe = gap <= LAMBDA * _rss(x.sigma, z.sigma)
    if op.direction.data in ("eq", "ne"):
        undecided &= (x.error + z.error) > 0
        maybe &= (x.sigma + z.sigma) > 0
    return Bounded(y, undecided.astype(np.float64), maybe.astype(np.float64))


# ---------------------------------------------------------------------------------------------
# Shapes, constants, conversions


def _each(x: Bounded, fn: Callable[[Array], Array]) -> Bounded:
    return Bounded(fn(x.value), fn(x.error), fn(x.sigma))


@rule(SelectOp)
def _select(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    """Exact: the chosen value's bounds; where the mask may be 0 or not (|m| within its error),
    either value may be chosen, so the bound also spans their difference (at full size in the
    probabilistic bound too, as a flipped comparison)."""
    m, x, z = a
    shape = shape_of(op.results[0].type)
    chosen = m.value != 0
    spread = np.abs(x.value - z.value)
    # m may be 0 and may be not: within its error of 0, and either nonzero or with more error than
    # the flush-to-zero allowance every rounding carries (an exact 0 stays 0 in every evaluation)
    tiny = Precision.of(_dtype(op.operands[0].type)).tiny
    undecided = (np.abs(m.value) <= m.error) & ((m.value != 0) | (m.error > tiny))
    maybe = (np.abs(m.value) <= LAMBDA * m.sigma) & ((m.value != 0) | (m.sigma > tiny))
    error = np.where(chosen, x.error, z.error) + np.where(undecided, spread + np.maximum(x.error, z.error), 0.0)
    sigma = np.where(chosen, x.sigma, z.sigma) + np.where(maybe, spread + np.maximum(x.sigma, z.sigma), 0.0)
    value: Array = np.where(chosen, x.value, z.value)
    out = [np.broadcast_to(v, shape).astype(np.float64) for v in (value, error, sigma)]
    return Bounded(out[0], out[1], out[2])


@rule(DropoutOp)
def _dropout(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    """Kept elements: a product with the scale rounded to x's type (its rounding a literal's
    error); dropped ones exactly 0 (the mask is exact: integer arithmetic on the key)."""
    assert isinstance(op, DropoutOp)
    x, key = a
    keep = keep_mask(np.asarray(key.value).astype(np.uint32), op.drop_rate, x.value.shape)
    if not keep.any():
        return exact(np.zeros_like(x.value))
    kept = times(x, literal(dropout_scale(op.drop_rate), _dtype(op.results[0].type)), p)
    return Bounded(*(np.where(keep, v, 0.0) for v in (kept.value, kept.error, kept.sigma)))


@rule(TransposeOp)
def _transpose(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    assert isinstance(op, TransposeOp)
    return _each(a[0], lambda v: np.transpose(v, op.permutation).copy())


@rule(ReshapeOp)
def _reshape(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    shape = shape_of(op.results[0].type)
    return _each(a[0], lambda v: np.reshape(v, shape).copy())


@rule(BroadcastOp)
def _broadcast(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    shape = shape_of(op.results[0].type)
    return _each(a[0], lambda v: np.broadcast_to(v, shape).copy())


@rule(ConstantOp)
def _constant(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    assert isinstance(op, ConstantOp)
    shape = shape_of(op.result.type)
    data = np.asarray(op.values, dtype=np.float64)
    exact_value = np.broadcast_to(data[0], shape) if data.size == 1 else data.reshape(shape)
    stored = exact_value.astype(_dtype(op.result.type)).astype(np.float64)
    with np.errstate(invalid="ignore"):
        off = np.where(stored == exact_value, 0.0, np.abs(stored - exact_value))  # the literal's rounding, exactly
    # (where equal, 0: an infinity is stored exactly, and inf - inf would read as no bound)
    return Bounded(exact_value.copy(), off, off.copy())


@rule(ConvertOp)
def _convert(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    target, source = _dtype(op.results[0].type), _dtype(op.operands[0].type)
    x = a[0]
    if target.kind in "iu":  # truncation toward zero: exact unless the interval crosses an integer
        flips = np.abs(np.trunc(x.value + x.error) - np.trunc(x.value - x.error))
        maybe = np.abs(np.trunc(x.value + LAMBDA * x.sigma) - np.trunc(x.value - LAMBDA * x.sigma))
        return Bounded(np.trunc(x.value), flips, maybe)  # a flip at full size, as `_compare`
    if source.kind in "iu" or unit_roundoff(target) > unit_roundoff(source):  # a rounding to the target
        r = p.rounding(x.value)
        return Bounded(x.value.copy(), x.error + r, _rss(x.sigma, r))
    return _each(x, np.copy)  # to a wider float: exact


@rule(OneHotOp)
def _one_hot(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    classes = shape_of(op.results[0].type)[-1]
    return exact((np.asarray(a[0].value)[..., None] == np.arange(classes)).astype(np.float64))


# ---------------------------------------------------------------------------------------------
# Contractions and reductions


def _bilinear(product: Callable[[Array, Array], Array], n: int, x: Bounded, z: Bounded, p: Precision) -> Bounded:
    """A bilinear map whose every element is a sum of at most n products of an element of each
    operand (a matmul, a convolution), accumulated in any order in `p`'s accumulator."""
    y = product(x.value, z.value)
    ax, az = np.abs(x.value), np.abs(z.value)
    magnitude = product(ax, az)
    r = p.rounding(y)  # the final rounding of a 16-bit result (inside gamma_n otherwise)
    error = gamma(n, p.ua) * magnitude + r
    sigma = _rss(np.sqrt(n) * p.ua * magnitude, r)
    if np.any(x.error) or np.any(z.error):  # |x| ez + ex |z| + ex ez = (|x| + ex)(|z| + ez) - |x||z|
        error = error + np.maximum(product(ax + x.error, az + z.error) - magnitude, 0.0)
        sx, sz = np.square(x.sigma), np.square(z.sigma)
        carried = product(np.square(x.value), sz) + product(sx, np.square(z.value)) + product(sx, sz)
        sigma = _rss(sigma, np.sqrt(carried))
    return Bounded(y, error, sigma)


@rule(MatmulOp)
def _matmul(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    x, z = a
    n = x.value.shape[-1] if x.value.ndim else 1
    return _bilinear(np.matmul, n, x, z, p)


def _conv_products(op: Operation) -> tuple[Callable[[Array, Array], Array], int]:
    """The bilinear map of a convolution op on float64 operands, and the length of its longest
    sum (`C/groups KH KW` taps for `conv2d`, `O/groups KH KW` for its input adjoint, which at a
    stride sums fewer, `N OH OW` for its kernel adjoint)."""
    assert isinstance(op, Conv2dOp | Conv2dInputGradOp | Conv2dWeightGradOp)
    lhs, rhs, out = shape_of(op.lhs), shape_of(op.rhs), shape_of(op.result)
    arguments = op.arguments
    if isinstance(op, Conv2dOp):
        return (lambda x, w: convolution.conv2d(x, w, *arguments)), rhs[1] * rhs[2] * rhs[3]
    if isinstance(op, Conv2dInputGradOp):
        return (lambda dy, w: convolution.conv2d_input_grad(dy, w, out, *arguments)), rhs[0] // op.group_count * rhs[2] * rhs[3]
    return (lambda x, dy: convolution.conv2d_weight_grad(x, dy, out, *arguments)), lhs[0] * rhs[2] * rhs[3]


@rule(Conv2dOp, Conv2dInputGradOp, Conv2dWeightGradOp)
def _conv(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    """As a matmul (each result element a sum of products, accumulated as the matmul's): the
    bilinear map of the magnitudes in place of `|x|.|z|`, over the longest sum's length."""
    product, n = _conv_products(op)
    return _bilinear(product, n, a[0], a[1], p)


def _reduced(op: Operation) -> tuple[int, ...]:
    assert isinstance(op, SumOp | MeanOp | MaxOp)
    return op.axes


def _count(shape: tuple[int, ...], axes: tuple[int, ...]) -> int:
    return int(np.prod([shape[d] for d in axes])) if axes else 1


def _sum(x: Bounded, axes: tuple[int, ...], p: Precision) -> Bounded:
    return summed(
        SumTerms(
            np.asarray(np.sum(x.value, axis=axes)),
            np.asarray(np.sum(np.abs(x.value), axis=axes)),
            np.asarray(np.sum(x.error, axis=axes)),
            np.asarray(np.sum(np.square(x.sigma), axis=axes)),
            _count(x.value.shape, axes),
        ),
        p,
    )


@dataclass
class SumTerms:
    """The n terms of a sum, as its bound reads them: the sum of their values, of their
    magnitudes, of their errors and of their squared sigmas (each elementwise)."""

    value: Array
    magnitude: Array
    error: Array
    sigma_squared: Array
    n: int

    @staticmethod
    def first(x: Bounded) -> SumTerms:
        return SumTerms(x.value.copy(), np.abs(x.value), x.error.copy(), np.square(x.sigma), 1)

    def add(self, x: Bounded) -> None:
        """One more term (a running sum: the terms need not be held together)."""
        self.value = self.value + x.value
        self.magnitude = self.magnitude + np.abs(x.value)
        self.error = self.error + x.error
        self.sigma_squared = self.sigma_squared + np.square(x.sigma)
        self.n += 1


def summed(terms: SumTerms, p: Precision) -> Bounded:
    """A sum of n terms accumulated in its own type, in any order: the terms' errors, and
    `gamma_n` of their magnitudes (`sqrt(n) u` in the probabilistic bound)."""
    r = p.rounding(terms.value)
    error = terms.error + gamma(terms.n, p.u) * terms.magnitude + r
    sigma = _rss(np.sqrt(terms.sigma_squared), np.sqrt(terms.n) * p.u * terms.magnitude, r)
    return Bounded(terms.value, np.asarray(error), np.asarray(sigma))


def _mean(x: Bounded, axes: tuple[int, ...], p: Precision) -> Bounded:
    n = _count(x.value.shape, axes)
    total = _sum(x, axes, p)
    y = total.value / n
    r = p.rounding(y, 1.0)  # the division (or 1/n and a product)
    return Bounded(y, total.error / n + r, _rss(total.sigma / n, r))


@rule(SumOp)
def _sum_op(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    return _sum(a[0], _reduced(op), p)


@rule(MeanOp)
def _mean_op(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    return _mean(a[0], _reduced(op), p)


@rule(MaxOp)
def _max_op(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    axes = _reduced(op)
    x = a[0]
    y = np.asarray(np.max(x.value, axis=axes, initial=-np.inf))
    return Bounded(y, np.asarray(np.max(x.error, axis=axes, initial=0.0)), np.asarray(np.max(x.sigma, axis=axes, initial=0.0)))


def _log_softmax_on(x: Bounded, p: Precision, axis: int = 1) -> Bounded:
    """`log_softmax` along `axis` with its bounds (also the cross-entropy's inner step).

    Carried: log-sum-exp is 1-Lipschitz in the max norm (its gradient is the softmax), so the
    worst case is `e_i + max_j e_j`, the probabilistic `s_i + sqrt(sum_j (p_j s_j)^2)`.
    Rounding, however it is decomposed: `x - max` (u |x - max|), each `exp` (its ulps), their sum
    (relative `gamma_n`, or `sqrt(n) u`), the `log` and the final subtraction."""
    y = log_softmax(x.value, axis)
    shifted = x.value - np.max(x.value, axis=axis, keepdims=True)
    weights = softmax(x.value, axis)
    n = x.value.shape[axis]
    # Each step's result is in the op's type (u: a 16-bit lowering rounds every intermediate),
    # and so is the sum's accumulator.
    # An exact -inf (a masked score: `step.select` of a -inf constant) is exactly -inf after any
    # rounding, its exp exactly 0: it adds nothing to the sum and its own result is an exact -inf.
    masked = np.isneginf(x.value) & (x.error == 0) & (x.sigma == 0)
    finite_shift = np.where(masked, 0.0, shifted)
    term = np.where(masked, 0.0, p.u * np.abs(finite_shift) + 2.0 * TRANSCENDENTAL_ULPS * p.u)
    with np.errstate(invalid="ignore"):
        lse = np.where(masked, 0.0, np.abs(y - shifted))  # |log sum exp(x - max)|
    own = np.where(masked, 0.0, 2.0 * TRANSCENDENTAL_ULPS * p.u * lse + p.rounding(np.where(masked, 0.0, y), 1.0)
                   + p.u * np.abs(finite_shift))  # fmt: skip

    def log_of(relative: Array) -> Array:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(relative < 1.0, -np.log1p(-np.minimum(relative, 1.0)), np.inf)

    weighted = np.sum(weights * term, axis=axis, keepdims=True) + p.u
    error = x.error + np.max(x.error, axis=axis, keepdims=True) + log_of(weighted + gamma(n, p.u)) + own
    lse_sigma = np.sqrt(np.sum(np.square(weights * x.sigma), axis=axis, keepdims=True))
    sigma = _rss(x.sigma + lse_sigma, log_of(weighted + np.sqrt(n) * p.u), own)
    return Bounded(y, error, sigma)


@rule(LogSoftmaxOp)
def _log_softmax(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    assert isinstance(op, LogSoftmaxOp)
    return _log_softmax_on(a[0], p, op.axis_index)


@rule(SoftmaxOp)
def _softmax(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    """exp of `log_softmax` (the bound of log y carried through exp), and the final rounding."""
    assert isinstance(op, SoftmaxOp)
    logs = _log_softmax_on(a[0], p, op.axis_index)
    y = softmax(a[0].value, op.axis_index)
    r = p.rounding(y, 1.0)
    return Bounded(y, y * np.expm1(logs.error) + r, _rss(y * np.expm1(LAMBDA * logs.sigma) / LAMBDA, r))


@rule(CrossEntropyOp)
def _cross_entropy(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    labels = np.asarray(a[1].value).astype(np.intp)[:, None]
    ls = _log_softmax_on(a[0], p)

    def pick(v: Array) -> Array:
        return np.take_along_axis(v, labels, axis=1)[:, 0]

    return _mean(Bounded(-pick(ls.value), pick(ls.error), pick(ls.sigma)), (0,), p)


@rule(MseOp)
def _mse(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    d = plus(a[0], a[1], p, -1.0)
    squared = _apply(d.value * d.value, d, 2.0 * np.abs(d.value), 1.0, p, 0.5)
    return _mean(squared, tuple(range(d.value.ndim)), p)


# ---------------------------------------------------------------------------------------------
# Layer norm, GELU, embedding


def _kept(x: Bounded, axes: tuple[int, ...]) -> Bounded:
    """A value reduced over `axes`, with those dims kept as size 1 (to broadcast back)."""
    return _each(x, lambda v: np.expand_dims(v, axes))


@rule(LayerNormOp)
def _layer_norm(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    """The bounds of its steps, as the interpreter and the lowering take them: the mean, `x - mean`,
    the mean of its squares, `+ eps` (eps rounded to the type), rsqrt, the product, `* g`, `+ b`."""
    assert isinstance(op, LayerNormOp)
    x, g, b = a
    axes = op.axes
    centered = plus(x, _kept(_mean(x, axes, p), axes), p, -1.0)
    variance = _mean(times(centered, centered, p), axes, p)
    rstd = _rsqrt(op, [plus(variance, literal(op.epsilon, _dtype(op.results[0].type)), p)], p)
    return plus(times(times(centered, _kept(rstd, axes), p), g, p), b, p)


# |gelu''| / 2 and |gelu'''| / 2 are at most 0.399 and 0.389 (both forms, at x = 0 and near it).
GELU_CURVATURE = 0.4
GELU_GRAD_CURVATURE = 0.4


def _smooth(y: Array, x: Bounded, slope: Array, curvature: float, r: Array) -> Bounded:
    """`_apply` with the function's own rounding `r` given (absolute, not relative to |y|)."""
    return Bounded(y, slope * x.error + curvature * x.error**2 + r, _rss(slope * x.sigma + curvature * x.sigma**2, r))


@rule(GeluOp)
def _gelu(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    """`(x/2) (1 + f)` with `f` erf or tanh (|f| <= 1): f's ulps, the roundings of its argument
    (erf' and (1 - tanh^2) k are below 1/2) and of `1 + f`, each an absolute error near 1 that
    the product scales by |x|/2 (where `1 + f` cancels, it is large relative to |y|)."""
    assert isinstance(op, GeluOp)
    x = a[0]
    y = gelu(x.value, op.tanh)
    r = 2.0 * (TRANSCENDENTAL_ULPS + 4.0) * p.u * np.abs(x.value) + p.rounding(y)
    return _smooth(y, x, np.abs(gelu_grad(x.value, op.tanh)), GELU_CURVATURE, r)


def _gelu_second(x: Array, tanh: bool) -> Array:
    """|gelu''(x)|, the slope of `gelu_grad`."""
    x_sq = x * x
    if not tanh:
        return np.abs(GELU_ALPHA * np.exp(-0.5 * x_sq) * (2.0 - x_sq))
    t = np.tanh(GELU_BETA * (x + GELU_KAPPA * x_sq * x))
    slope = GELU_BETA * (1.0 + 3.0 * GELU_KAPPA * x_sq)
    return np.abs((1.0 - t * t) * (slope + 3.0 * GELU_BETA * GELU_KAPPA * x_sq - x * t * slope * slope))


@rule(GeluGradOp)
def _gelu_grad(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    """Erf form `cdf + x pdf`: the cdf's absolute error (as `_gelu`'s, near 1), and `x pdf`'s
    relative one (exp's ulps and its argument's roundings, `x^2 u`). Tanh form: `(1 + t)/2`,
    absolute as the cdf, and `(x/2) (1 - t^2) k'`, where `1 - t^2` carries t's absolute error
    (about `(4 ulps + 6) u`: large relative to it where t is near +-1) scaled by `|x k'|/2`."""
    assert isinstance(op, GeluGradOp)
    x = a[0]
    d = gelu_grad(x.value, op.tanh)
    near_one = 2.0 * (TRANSCENDENTAL_ULPS + 4.0) * p.u
    if op.tanh:
        slope = GELU_BETA * (1.0 + 3.0 * GELU_KAPPA * x.value * x.value)
        own = near_one + (4.0 * TRANSCENDENTAL_ULPS + 8.0) * p.u * 0.5 * np.abs(x.value * slope)
    else:
        x_pdf = np.abs(x.value * GELU_ALPHA * np.exp(-0.5 * x.value * x.value))
        own = near_one + (2.0 * TRANSCENDENTAL_ULPS + 6.0 + x.value * x.value) * p.u * x_pdf
    return _smooth(d, x, _gelu_second(x.value, op.tanh), GELU_GRAD_CURVATURE, own + p.rounding(d))


def _ids(bounded: Bounded, rows: int) -> Array:
    """Embedding ids as row indices (one outside `[0, rows)` clamped, as XLA's gather: the
    interpreter refuses it)."""
    return np.clip(np.asarray(bounded.value).astype(np.intp), 0, rows - 1)


@rule(EmbeddingOp)
def _embedding(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    """Exact: each id's row, with its bounds."""
    table, ids = a
    picked = _ids(ids, table.value.shape[0])
    return _each(table, lambda v: np.take(v, picked, axis=0))


@rule(EmbeddingGradOp)
def _embedding_grad(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    """Row v is a sum of the cotangent rows of the n_v ids equal to v, in any order: `summed`'s
    bound with `gamma_{n_v}` per row (a row no id reaches is an exact 0)."""
    cotangent, ids = a
    rows, width = shape_of(op.results[0].type)
    picked = np.asarray(ids.value).astype(np.intp).reshape(-1)
    keep = (picked >= 0) & (picked < rows)  # XLA drops an update outside the table
    picked = picked[keep]

    def add_up(v: Array) -> Array:
        out = np.zeros((rows, width))
        np.add.at(out, picked, v.reshape(-1, width)[keep])
        return out

    value, magnitude = add_up(cotangent.value), add_up(np.abs(cotangent.value))
    counts = np.bincount(picked, minlength=rows).astype(np.float64)[:, None]
    nu = counts * p.u
    gammas = np.where(nu < 1.0, nu / np.maximum(1.0 - nu, 1e-300), np.inf)
    r = np.where(counts > 1, p.rounding(value), 0.0)
    error = add_up(cotangent.error) + gammas * magnitude + r
    sigma = _rss(np.sqrt(add_up(np.square(cotangent.sigma))), np.sqrt(counts) * p.u * magnitude, r)
    return Bounded(value, error, sigma)


# ---------------------------------------------------------------------------------------------
# Windows and pieces


@rule(MaxPool2dOp)
def _max_pool2d(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    """Exact, and 1-Lipschitz in each window: the largest error in the window (the padding is
    -inf, exactly)."""
    assert isinstance(op, Pool2dOp)
    x = a[0]
    y = np.max(pool_windows(x.value, op, -np.inf), axis=(-2, -1))
    error, sigma = (np.max(pool_windows(v, op, 0.0), axis=(-2, -1)) for v in (x.error, x.sigma))
    return Bounded(y, error, sigma)


@rule(AvgPool2dOp)
def _avg_pool2d(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    """A sum of kh kw terms per window (the zero padding exact), then a division by kh kw, as
    `_mean` bounds a mean."""
    assert isinstance(op, Pool2dOp)
    x = a[0]
    (kh, kw), _, _ = op.window
    n = kh * kw

    def windows(v: Array) -> Array:
        return np.sum(pool_windows(v, op, 0.0), axis=(-2, -1))

    total = summed(SumTerms(windows(x.value), windows(np.abs(x.value)), windows(x.error), windows(np.square(x.sigma)), n), p)
    y = total.value / n
    r = p.rounding(y, 1.0)  # the division (or 1/n and a product)
    return Bounded(y, total.error / n + r, _rss(total.sigma / n, r))


@rule(ConcatOp)
def _concat(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    assert isinstance(op, ConcatOp)
    axis = op.axis_index
    parts = [np.concatenate([getattr(x, field) for x in a], axis=axis) for field in ("value", "error", "sigma")]
    return Bounded(parts[0], parts[1], parts[2])


@rule(SliceOp)
def _slice(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    assert isinstance(op, SliceOp)
    return _each(a[0], lambda v: np.ascontiguousarray(v[op.index]))


@rule(PadOp)
def _pad(op: Operation, a: list[Bounded], p: Precision) -> Bounded:
    """Exact: the values and their bounds placed among exact zeros."""
    assert isinstance(op, PadOp)
    shape = shape_of(op.results[0].type)

    def placed(v: Array) -> Array:
        out = np.zeros(shape)
        out[op.placement] = v
        return out

    return _each(a[0], placed)


# ---------------------------------------------------------------------------------------------
# Walking a function


def _dtype(t: Attribute) -> np.dtype:
    assert is_tensor(t)
    return numpy_dtype(t.get_element_type())


def _no_nan(bound: Array) -> Array:
    bound = np.asarray(bound, dtype=np.float64)
    return np.where(np.isnan(bound), np.inf, bound)


def evaluate_with_bounds(fn: func.FuncOp, inputs: Mapping[str, Array]) -> dict[str, Bounded]:
    """Each output of `fn` (keyed as `output_names`) in float64 with its error bound, for inputs
    keyed by argument name (exact in their types: the bound of an input is 0)."""
    env: dict[SSAValue, Bounded] = {}
    for arg in args(fn):
        env[arg.value] = exact(np.asarray(inputs[arg.name]).astype(np.float64))
    with np.errstate(all="ignore"):
        outputs = evaluate_block(fn.body.block, env)
    return dict(zip(output_names(fn), outputs))


def evaluate_block(block: Block, env: dict[SSAValue, Bounded]) -> list[Bounded]:
    """Run the ops of `block` on `env` (its arguments and every value it reads from outside
    bound there), returning what its terminator returns (`func.return`, `step.yield`). The
    block's own values are dropped from `env` once no later op reads them (the peak stays
    small); values from outside are left as they are."""
    free_after: dict[Operation, list[SSAValue]] = {}
    last_use: dict[SSAValue, Operation] = {}
    own: set[SSAValue] = set(block.args)
    for op in block.ops:
        own.update(op.results)
        for inner in op.walk() if op.regions else (op,):  # a use inside a region is a use by the op that holds it
            for operand in inner.operands:
                last_use[operand] = op
    for value, op in last_use.items():
        if value in own:
            free_after.setdefault(op, []).append(value)
    for op in block.ops:
        if op.has_trait(IsTerminator):
            return [env[v] for v in op.operands]
        operands = [env[v] for v in op.operands]
        region_rule = REGION_RULES.get(type(op))
        if region_rule is not None:
            results = region_rule(op, operands, env)
        else:
            found = RULES.get(type(op))
            if found is None:
                raise NotImplementedError(f"no error-bound rule for {op.name}")
            results = [found(op, operands, Precision.of(_dtype(op.results[0].type)))]
        for value, result in zip(op.results, results, strict=True):
            # NaN in a bound (inf - inf, 0 * inf) means "no bound": infinite, never a silent pass.
            env[value] = Bounded(np.asarray(result.value, dtype=np.float64), _no_nan(result.error), _no_nan(result.sigma))
        for value in free_after.get(op, ()):  # free what no later op reads
            env.pop(value, None)
    raise ValueError("a block without a terminator")


# Rules of the ops that hold a region: the op, its operands' bounds and the values visible to
# its region (to run it) -> one `Bounded` per result.
RegionRule = Callable[[Operation, list[Bounded], dict[SSAValue, Bounded]], list[Bounded]]
REGION_RULES: dict[type[Operation], RegionRule] = {}


def _accumulate(op: Operation, a: list[Bounded], env: dict[SSAValue, Bounded]) -> list[Bounded]:
    """`step.accumulate`: the body's values and bounds on each micro-batch (`operand[k]`, with
    the operand's bounds of that slice), then each result a sum of K terms in its own type:
    the terms' bounds added up and `gamma_K` of their magnitudes (`summed`)."""
    assert isinstance(op, AccumulateOp)
    block = op.body.block
    sums: list[SumTerms] = []
    for k in range(op.count):
        for arg, x in zip(block.args, a):
            env[arg] = Bounded(x.value[k], x.error[k], x.sigma[k])
        yielded = evaluate_block(block, env)
        if k == 0:
            sums = [SumTerms.first(y) for y in yielded]
        else:
            for terms, y in zip(sums, yielded):
                terms.add(y)
    for arg in block.args:
        env.pop(arg, None)
    return [summed(terms, Precision.of(_dtype(r.type))) for terms, r in zip(sums, op.results)]


REGION_RULES[AccumulateOp] = _accumulate
