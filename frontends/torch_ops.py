"""The ATen table: one rule per ATen op, from a `torch.export` graph node to step ops.

The importer (`frontends/torch.py`) exports the user's loss with `torch.export`, decomposes it to
core ATen except for the ops in `KEPT` (ops with a step op of their own: keeping
`aten.cross_entropy_loss` writes one `step.cross_entropy`, where core ATen would write a gather,
three compares and two wheres), and writes each remaining node through the rule `RULES` holds for
its op. A rule reads its operands (`Value`s of the program being written, constant tensors, or
Python scalars), writes step ops through the `IRWriter` and returns the node's value (a tuple for
an op with several results). The first line of each rule's docstring is its row in the table of
`docs/importing.md` (`tests/test_import_torch.py` checks the two agree).

Booleans: a mask computed from program values (a comparison) is a float 0/1 tensor of its
operands' type, as `step.compare` makes it; a boolean constant (a causal-mask buffer, say) is
folded by torch and written as a float 0/1 constant where an op reads it. Integer tensors are the
batch's i32 labels and ids, which only indexing ops (`embedding`, the losses) and shape ops read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stepc.frontends.writer import FLOAT_TYPES, IRWriter, Value, float_text, tensor_type

aten = torch.ops.aten

# Ops kept whole through the decompositions: each has a step op (or a short sequence) of its own.
KEPT = (
    aten.cross_entropy_loss.default, aten.nll_loss_nd.default, aten.nll_loss_forward.default,
    aten.mse_loss.default, aten.linear.default, aten.matmul.default, aten.softmax.int,
    aten.log_softmax.int, aten.layer_norm.default, aten.max_pool2d.default,
)  # fmt: skip

DTYPES = {torch.float16: "f16", torch.bfloat16: "bf16", torch.float32: "f32", torch.float64: "f64",
          torch.int64: "i32", torch.int32: "i32"}  # fmt: skip


class ImportError_(Exception):
    """A node the table cannot write (the importer adds the op and the user's line)."""


@dataclass(frozen=True)
class Unusable:
    """A result no step op gives (a max pool's indices, a dropout's mask): an error when read."""

    what: str


Entry = Any  # a Value, a constant torch.Tensor, a Python scalar, a tuple of entries, or Unusable


class Context:
    """What a rule sees: the writer, the node's output metadata, and the conversions of operands."""

    def __init__(self, writer: IRWriter, new_key: Callable[[], Value]) -> None:
        self.w = writer
        self.new_key = new_key
        self.node: Any = None
        self._constants: dict[tuple[int, str], Value] = {}

    # ---- the node being written

    @property
    def out(self) -> Any:
        val = self.node.meta.get("val")
        return val[0] if isinstance(val, list | tuple) else val

    def out_shape(self, index: int | None = None) -> tuple[int, ...]:
        val = self.node.meta.get("val")
        if index is not None:
            val = val[index]
        elif isinstance(val, list | tuple):
            val = val[0]
        return tuple(int(d) for d in val.shape)

    def out_dtype(self) -> str:
        dtype = self.out.dtype
        if dtype == torch.bool:
            raise ImportError_("a boolean result computed from the batch or the parameters")
        if dtype not in DTYPES:
            raise ImportError_(f"a result of dtype {dtype}")
        return DTYPES[dtype]

    def float_dtype(self, *entries: Entry) -> str:
        """The float type the op computes in: its output's, else its first float operand's."""
        dtype = self.out.dtype
        if dtype in DTYPES and DTYPES[dtype] in FLOAT_TYPES:
            return DTYPES[dtype]
        for e in entries:
            if isinstance(e, Value) and e.is_float:
                return e.dtype
        return "f32"

    # ---- operands as values

    def value(self, entry: Entry, dtype: str | None = None) -> Value:
        """An operand as a program value; constants and scalars written as `step.constant` of
        `dtype` (booleans as 0/1), a float value of another float type converted to it."""
        if isinstance(entry, Unusable):
            raise ImportError_(f"reading {entry.what}, which no step op gives")
        if isinstance(entry, Value):
            if dtype is not None and entry.is_float and dtype in FLOAT_TYPES and entry.dtype != dtype:
                return self.w.convert(entry, dtype)
            return entry
        if isinstance(entry, bool | int | float):
            return self.w.constant(float(entry), dtype or "f32", hint="c")
        if isinstance(entry, torch.Tensor):
            if dtype is None:
                dtype = DTYPES.get(entry.dtype, "f32")
                if dtype == "i32":
                    raise ImportError_("an integer constant tensor read by a float op")
            key = (id(entry), dtype)
            if key not in self._constants:
                array = entry.detach().to(torch.float64).cpu().numpy()
                self._constants[key] = self.w.constant(array, dtype, hint="const")
            return self._constants[key]
        raise ImportError_(f"an operand of type {type(entry).__name__}")

    def floats(self, *entries: Entry) -> list[Value]:
        dtype = self.float_dtype(*entries)
        return [self.value(e, dtype) for e in entries]


Rule = Callable[..., Entry]
RULES: dict[Any, Rule] = {}


def rule(*targets: Any) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for t in targets:
            RULES[t] = fn
        return fn

    return register


def _dim(d: int, rank: int) -> int:
    return d % rank if rank else 0


def _dims(dims: Sequence[int] | int | None, rank: int) -> list[int] | None:
    if dims is None:
        return None
    if isinstance(dims, int):
        dims = [dims]
    if len(dims) == 0:  # torch reduces every dim for dim=[]
        return None
    return sorted({_dim(int(d), rank) for d in dims})


def _pair(ints: Any, n: int = 2) -> list[int]:
    if isinstance(ints, int):
        return [ints] * n
    ints = [int(i) for i in ints]
    return ints * n if len(ints) == 1 else ints


# ---------------------------------------------------------------------------------------------
# Elementwise


def _scaled(ctx: Context, b: Value, alpha: float) -> Value:
    return b if alpha == 1 else ctx.w.binary("mul", b, ctx.value(alpha, b.dtype))


@rule(aten.add.Tensor, aten.add.Scalar)
def _add(ctx: Context, a: Entry, b: Entry, *, alpha: float = 1) -> Value:
    """`step.add` (`alpha` a `step.mul` of the second operand)"""
    x, y = ctx.floats(a, b)
    return ctx.w.binary("add", x, _scaled(ctx, y, alpha))


@rule(aten.sub.Tensor, aten.sub.Scalar)
def _sub(ctx: Context, a: Entry, b: Entry, *, alpha: float = 1) -> Value:
    """`step.sub`"""
    x, y = ctx.floats(a, b)
    return ctx.w.binary("sub", x, _scaled(ctx, y, alpha))


@rule(aten.rsub.Scalar, aten.rsub.Tensor)
def _rsub(ctx: Context, a: Entry, b: Entry, *, alpha: float = 1) -> Value:
    """`step.sub` (operands swapped)"""
    x, y = ctx.floats(a, b)
    return ctx.w.binary("sub", y, _scaled(ctx, x, alpha))


@rule(aten.mul.Tensor, aten.mul.Scalar)
def _mul(ctx: Context, a: Entry, b: Entry) -> Value:
    """`step.mul`"""
    x, y = ctx.floats(a, b)
    return ctx.w.binary("mul", x, y)


@rule(aten.div.Tensor, aten.div.Scalar)
def _div(ctx: Context, a: Entry, b: Entry) -> Value:
    """`step.div` (true division; `rounding_mode` is refused)"""
    x, y = ctx.floats(a, b)
    return ctx.w.binary("div", x, y)


@rule(aten.div.Tensor_mode, aten.div.Scalar_mode)
def _div_mode(ctx: Context, a: Entry, b: Entry, *, rounding_mode: str | None = None) -> Value:
    """`step.div` when `rounding_mode` is None"""
    if rounding_mode is not None:
        raise ImportError_(f"division with rounding_mode={rounding_mode!r} (floor and trunc have no step op)")
    return _div(ctx, a, b)


@rule(aten.reciprocal.default)
def _reciprocal(ctx: Context, a: Entry) -> Value:
    """`step.div` of 1"""
    (x,) = ctx.floats(a)
    return ctx.w.binary("div", ctx.value(1.0, x.dtype), x)


@rule(aten.maximum.default)
def _maximum(ctx: Context, a: Entry, b: Entry) -> Value:
    """`step.maximum`"""
    x, y = ctx.floats(a, b)
    return ctx.w.binary("maximum", x, y)


@rule(aten.minimum.default)
def _minimum(ctx: Context, a: Entry, b: Entry) -> Value:
    """`step.minimum`"""
    x, y = ctx.floats(a, b)
    return ctx.w.binary("minimum", x, y)


@rule(aten.clamp_min.default, aten.clamp_max.default, aten.clamp.default)
def _clamp(ctx: Context, a: Entry, low: float | None = None, high: float | None = None) -> Value:
    """`step.maximum` / `step.minimum` with constants (`clamp`, `clamp_min`, `clamp_max`)"""
    if ctx.node.target == aten.clamp_max.default:
        low, high = None, low
    (x,) = ctx.floats(a)
    if low is not None:
        x = ctx.w.binary("maximum", x, ctx.value(low, x.dtype))
    if high is not None:
        x = ctx.w.binary("minimum", x, ctx.value(high, x.dtype))
    return x


def _unary(op: str, doc: str) -> Rule:
    def write(ctx: Context, a: Entry) -> Value:
        (x,) = ctx.floats(a)
        return ctx.w.unary(op, x)

    write.__doc__ = doc
    return write


for _target, _op in [
    (aten.neg.default, "neg"), (aten.exp.default, "exp"), (aten.log.default, "log"),
    (aten.tanh.default, "tanh"), (aten.sigmoid.default, "sigmoid"), (aten.relu.default, "relu"),
    (aten.sqrt.default, "sqrt"), (aten.rsqrt.default, "rsqrt"), (aten.abs.default, "abs"),
]:  # fmt: skip
    RULES[_target] = _unary(_op, f"`step.{_op}`")


@rule(aten.silu.default)
def _silu(ctx: Context, a: Entry) -> Value:
    """`step.mul` of x and `step.sigmoid` x"""
    (x,) = ctx.floats(a)
    return ctx.w.binary("mul", x, ctx.w.unary("sigmoid", x))


@rule(aten.pow.Tensor_Scalar)
def _pow(ctx: Context, a: Entry, exponent: float) -> Value:
    """`step.square`, `step.sqrt`, `step.rsqrt`, `step.mul`s or `step.div` (exponents 2, 0.5, -0.5, small integers)"""
    (x,) = ctx.floats(a)
    e = float(exponent)
    if e == 2:
        return ctx.w.unary("square", x)
    if e == 0.5:
        return ctx.w.unary("sqrt", x)
    if e == -0.5:
        return ctx.w.unary("rsqrt", x)
    if e == 1:
        return x
    if e == int(e) and 1 <= abs(e) <= 8:
        result = x
        for _ in range(int(abs(e)) - 1):
            result = ctx.w.binary("mul", result, x)
        return result if e > 0 else ctx.w.binary("div", ctx.value(1.0, x.dtype), result)
    raise ImportError_(f"pow with exponent {exponent!r} (step writes the exponents 2, 0.5, -0.5 and integers up to 8)")


@rule(aten.gelu.default)
def _gelu(ctx: Context, a: Entry, *, approximate: str = "none") -> Value:
    """`step.gelu` (both forms)"""
    (x,) = ctx.floats(a)
    return ctx.w.unary("gelu", x, extra=" approximate tanh" if approximate == "tanh" else "")


_DIRECTIONS = {
    aten.gt.Tensor: "gt", aten.gt.Scalar: "gt", aten.lt.Tensor: "lt", aten.lt.Scalar: "lt",
    aten.ge.Tensor: "ge", aten.ge.Scalar: "ge", aten.le.Tensor: "le", aten.le.Scalar: "le",
    aten.eq.Tensor: "eq", aten.eq.Scalar: "eq", aten.ne.Tensor: "ne", aten.ne.Scalar: "ne",
}  # fmt: skip


@rule(*_DIRECTIONS)
def _compare(ctx: Context, a: Entry, b: Entry) -> Value:
    """`step.compare` (a 0/1 float mask)"""
    if any(isinstance(e, Value) and not e.is_float for e in (a, b)):
        raise ImportError_("a comparison of integer batch values (only float values are compared)")
    dtype = next((e.dtype for e in (a, b) if isinstance(e, Value)), "f32")
    return ctx.w.compare(_DIRECTIONS[ctx.node.target], ctx.value(a, dtype), ctx.value(b, dtype))


@rule(aten.bitwise_not.default, aten.logical_not.default)
def _not(ctx: Context, a: Entry) -> Value:
    """`step.sub` from 1 of a mask"""
    mask = ctx.value(a)
    return ctx.w.binary("sub", ctx.value(1.0, mask.dtype), mask)


@rule(aten.logical_and.default, aten.bitwise_and.Tensor)
def _and(ctx: Context, a: Entry, b: Entry) -> Value:
    """`step.mul` of masks"""
    dtype = next((e.dtype for e in (a, b) if isinstance(e, Value)), "f32")
    return ctx.w.binary("mul", ctx.value(a, dtype), ctx.value(b, dtype))


@rule(aten.logical_or.default, aten.bitwise_or.Tensor)
def _or(ctx: Context, a: Entry, b: Entry) -> Value:
    """`step.maximum` of masks"""
    dtype = next((e.dtype for e in (a, b) if isinstance(e, Value)), "f32")
    return ctx.w.binary("maximum", ctx.value(a, dtype), ctx.value(b, dtype))


@rule(aten.where.self, aten.where.ScalarSelf, aten.where.ScalarOther, aten.where.Scalar)
def _where(ctx: Context, cond: Entry, a: Entry, b: Entry) -> Value:
    """`step.select` (the condition a mask)"""
    x, y = ctx.floats(a, b)
    return ctx.w.select(ctx.value(cond, x.dtype), x, y)


@rule(aten.masked_fill.Scalar, aten.masked_fill.Tensor)
def _masked_fill(ctx: Context, a: Entry, mask: Entry, fill: Entry) -> Value:
    """`step.select` of a constant (`-inf` included) where the mask holds"""
    (x,) = ctx.floats(a)
    return ctx.w.select(ctx.value(mask, x.dtype), ctx.value(fill, x.dtype), x)


@rule(aten._to_copy.default)
def _to_copy(ctx: Context, a: Entry, **kwargs: Any) -> Entry:
    """`step.convert` between float types (a device or layout copy is the value itself)"""
    dtype = kwargs.get("dtype")
    if dtype is None or (isinstance(a, Value) and DTYPES.get(dtype) == a.dtype):
        return a
    if dtype not in DTYPES or DTYPES[dtype] not in FLOAT_TYPES:
        raise ImportError_(f"a conversion to {dtype}")
    x = ctx.value(a)
    if not x.is_float:
        raise ImportError_("a conversion of an integer batch value to a float (step keeps labels and ids integer)")
    return ctx.w.convert(x, DTYPES[dtype])


@rule(aten.clone.default, aten.alias.default, aten.contiguous.default, aten.lift_fresh_copy.default)
def _identity(ctx: Context, a: Entry, **_: Any) -> Entry:
    """the value itself"""
    return a


# ---------------------------------------------------------------------------------------------
# Shapes


@rule(aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.unsqueeze.default,
      aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.flatten.using_ints)  # fmt: skip
def _reshape(ctx: Context, a: Entry, *_: Any) -> Value:
    """`step.reshape` (`view`, `reshape`, `unsqueeze`, `squeeze`, `flatten`)"""
    return ctx.w.reshape(ctx.value(a), ctx.out_shape())


@rule(aten.expand.default)
def _expand(ctx: Context, a: Entry, *_: Any, **__: Any) -> Value:
    """`step.broadcast`"""
    return ctx.w.broadcast(ctx.value(a), ctx.out_shape())


@rule(aten.permute.default)
def _permute(ctx: Context, a: Entry, dims: Sequence[int]) -> Value:
    """`step.transpose`"""
    x = ctx.value(a)
    return ctx.w.transpose(x, [_dim(int(d), len(x.shape)) for d in dims])


@rule(aten.t.default, aten.numpy_T.default)
def _t(ctx: Context, a: Entry) -> Value:
    """`step.transpose` perm [1, 0]"""
    x = ctx.value(a)
    return ctx.w.transpose(x, list(reversed(range(len(x.shape)))))


@rule(aten.transpose.int)
def _transpose(ctx: Context, a: Entry, d0: int, d1: int) -> Value:
    """`step.transpose` of two dims"""
    x = ctx.value(a)
    perm = list(range(len(x.shape)))
    i, j = _dim(d0, len(perm)), _dim(d1, len(perm))
    perm[i], perm[j] = perm[j], perm[i]
    return ctx.w.transpose(x, perm)


def _pieces(ctx: Context, x: Value, dim: int, sizes: Sequence[int]) -> tuple[Value, ...]:
    out = []
    start = 0
    for size in sizes:
        lo = [0] * len(x.shape)
        hi = list(x.shape)
        lo[dim], hi[dim] = start, start + size
        out.append(ctx.w.slice(x, lo, hi, [1] * len(x.shape)))
        start += size
    return tuple(out)


@rule(aten.split_with_sizes.default, aten.split.Tensor, aten.split.sizes)
def _split(ctx: Context, a: Entry, sizes: int | Sequence[int], dim: int = 0) -> tuple[Value, ...]:
    """`step.slice` per piece (`split`, `chunk`)"""
    x = ctx.value(a)
    dim = _dim(dim, len(x.shape))
    if isinstance(sizes, int):
        sizes = [min(sizes, x.shape[dim] - s) for s in range(0, x.shape[dim], sizes)]
    return _pieces(ctx, x, dim, [int(s) for s in sizes])


@rule(aten.unbind.int)
def _unbind(ctx: Context, a: Entry, dim: int = 0) -> tuple[Value, ...]:
    """`step.slice` and `step.reshape` per piece"""
    x = ctx.value(a)
    dim = _dim(dim, len(x.shape))
    shape = x.shape[:dim] + x.shape[dim + 1 :]
    return tuple(ctx.w.reshape(p, shape) for p in _pieces(ctx, x, dim, [1] * x.shape[dim]))


@rule(aten.slice.Tensor)
def _slice(ctx: Context, a: Entry, dim: int = 0, start: int | None = None, end: int | None = None, step: int = 1) -> Value:
    """`step.slice` (static bounds, a positive step)"""
    x = ctx.value(a)
    dim = _dim(dim, len(x.shape))
    lo_d, hi_d, st = slice(start, end, step).indices(x.shape[dim])
    lo = [0] * len(x.shape)
    hi = list(x.shape)
    stride = [1] * len(x.shape)
    lo[dim], hi[dim], stride[dim] = lo_d, max(lo_d, hi_d), st
    return ctx.w.slice(x, lo, hi, stride)


@rule(aten.select.int)
def _select(ctx: Context, a: Entry, dim: int, index: int) -> Value:
    """`step.slice` and `step.reshape`"""
    x = ctx.value(a)
    dim = _dim(dim, len(x.shape))
    index = index % x.shape[dim]
    lo = [0] * len(x.shape)
    hi = list(x.shape)
    lo[dim], hi[dim] = index, index + 1
    piece = ctx.w.slice(x, lo, hi, [1] * len(x.shape))
    return ctx.w.reshape(piece, ctx.out_shape())


@rule(aten.cat.default)
def _cat(ctx: Context, tensors: Sequence[Entry], dim: int = 0) -> Value:
    """`step.concat`"""
    values = [ctx.value(t) for t in tensors]
    values = [v for v in values if math.prod(v.shape) > 0 or len(v.shape) > 1]
    return ctx.w.concat(values, _dim(dim, len(values[0].shape)))


# ---------------------------------------------------------------------------------------------
# Products


def _matmul(ctx: Context, a: Value, b: Value) -> Value:
    """np.matmul semantics through step.matmul's three forms."""
    w = ctx.w
    if len(a.shape) == 1 and len(b.shape) == 1:
        return w.reduce("sum", w.binary("mul", a, b), None)
    if len(a.shape) == 1:
        r = _matmul(ctx, w.reshape(a, (1, a.shape[0])), b)
        return w.reshape(r, (*r.shape[:-2], r.shape[-1]))
    if len(b.shape) == 1:
        r = _matmul(ctx, a, w.reshape(b, (b.shape[0], 1)))
        return w.reshape(r, r.shape[:-1])
    if len(b.shape) == 2:
        return w.matmul(a, b)
    batch = tuple(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    a = w.broadcast(a, (*batch, *a.shape[-2:]))
    b = w.broadcast(b, (*batch, *b.shape[-2:]))
    return w.matmul(a, b)


@rule(aten.mm.default, aten.bmm.default, aten.matmul.default)
def _mm(ctx: Context, a: Entry, b: Entry) -> Value:
    """`step.matmul` (`@`, `mm`, `bmm`; batch dims broadcast)"""
    return _matmul(ctx, *ctx.floats(a, b))


@rule(aten.addmm.default)
def _addmm(ctx: Context, bias: Entry, a: Entry, b: Entry, *, beta: float = 1, alpha: float = 1) -> Value:
    """`step.matmul` and `step.add`"""
    c, x, y = ctx.floats(bias, a, b)
    product = _scaled(ctx, ctx.w.matmul(x, y), alpha)
    return ctx.w.binary("add", product, _scaled(ctx, c, beta))


@rule(aten.linear.default)
def _linear(ctx: Context, a: Entry, weight: Entry, bias: Entry = None) -> Value:
    """`step.transpose` of the weight, `step.matmul`, `step.add` of the bias"""
    x, wt = ctx.floats(a, weight)
    y = _matmul(ctx, x, ctx.w.transpose(wt, [1, 0]) if len(wt.shape) == 2 else wt)
    return y if bias is None else ctx.w.binary("add", y, ctx.value(bias, x.dtype))


# ---------------------------------------------------------------------------------------------
# Reductions and normalizations


def _keep(ctx: Context, value: Value) -> Value:
    return ctx.w.reshape(value, ctx.out_shape())


@rule(aten.sum.dim_IntList, aten.sum.default)
def _sum(ctx: Context, a: Entry, dim: Sequence[int] | None = None, keepdim: bool = False, **_: Any) -> Value:
    """`step.sum`"""
    (x,) = ctx.floats(a)
    return _keep(ctx, ctx.w.reduce("sum", x, _dims(dim, len(x.shape))))


@rule(aten.mean.dim, aten.mean.default)
def _mean(ctx: Context, a: Entry, dim: Sequence[int] | None = None, keepdim: bool = False, **_: Any) -> Value:
    """`step.mean`"""
    (x,) = ctx.floats(a)
    return _keep(ctx, ctx.w.reduce("mean", x, _dims(dim, len(x.shape))))


@rule(aten.amax.default)
def _amax(ctx: Context, a: Entry, dim: Sequence[int] = (), keepdim: bool = False) -> Value:
    """`step.max`"""
    (x,) = ctx.floats(a)
    return _keep(ctx, ctx.w.reduce("max", x, _dims(dim, len(x.shape))))


@rule(aten.max.dim)
def _max_dim(ctx: Context, a: Entry, dim: int, keepdim: bool = False) -> tuple[Entry, ...]:
    """`step.max` (the values; reading the indices is refused)"""
    (x,) = ctx.floats(a)
    values = ctx.w.reshape(ctx.w.reduce("max", x, [_dim(dim, len(x.shape))]), ctx.out_shape(0))
    return values, Unusable("the indices of a max")


@rule(aten.var.correction)
def _var(ctx: Context, a: Entry, dim: Sequence[int] | None = None, *, correction: float = 1, keepdim: bool = False) -> Value:
    """`step.mean` of the `step.square`d deviations, times n / (n - correction)"""
    (x,) = ctx.floats(a)
    w = ctx.w
    dims = _dims(dim, len(x.shape)) or list(range(len(x.shape)))
    kept = tuple(1 if i in dims else s for i, s in enumerate(x.shape))
    mean = w.reshape(w.reduce("mean", x, dims), kept)
    var = w.reduce("mean", w.unary("square", w.binary("sub", x, mean)), dims)
    n = math.prod(x.shape[i] for i in dims)
    if correction:
        var = w.binary("mul", var, ctx.value(n / (n - float(correction)), x.dtype))
    return _keep(ctx, var)


@rule(aten._softmax.default, aten.softmax.int)
def _softmax(ctx: Context, a: Entry, dim: int, *_: Any) -> Value:
    """`step.softmax`"""
    (x,) = ctx.floats(a)
    return ctx.w.unary("softmax", x, extra=f" axis {_dim(dim, len(x.shape))}")


@rule(aten._log_softmax.default, aten.log_softmax.int)
def _log_softmax(ctx: Context, a: Entry, dim: int, *_: Any) -> Value:
    """`step.log_softmax`"""
    (x,) = ctx.floats(a)
    return ctx.w.unary("log_softmax", x, extra=f" axis {_dim(dim, len(x.shape))}")


def _layer_norm(ctx: Context, a: Entry, shape: Sequence[int], weight: Entry, bias: Entry, eps: float) -> Value:
    (x,) = ctx.floats(a)
    shape = tuple(int(s) for s in shape)
    g = ctx.value(weight, x.dtype) if weight is not None else ctx.w.constant(np.ones(shape), x.dtype, hint="ones")
    b = ctx.value(bias, x.dtype) if bias is not None else ctx.w.constant(np.zeros(shape), x.dtype, hint="zeros")
    return ctx.w.op("layer_norm", f"step.layer_norm {x.ref}, {g.ref}, {b.ref} eps {float_text(eps)}",
                    f"({x.type}, {g.type}, {b.type}) -> {x.type}", x.shape, x.dtype)  # fmt: skip


@rule(aten.native_layer_norm.default)
def _native_layer_norm(ctx: Context, a: Entry, shape: Sequence[int], weight: Entry, bias: Entry, eps: float) -> tuple[Entry, ...]:
    """`step.layer_norm` (a missing weight or bias a constant 1 or 0; the mean and rstd unreadable)"""
    return _layer_norm(ctx, a, shape, weight, bias, eps), Unusable("layer norm's mean"), Unusable("layer norm's rstd")


@rule(aten.layer_norm.default)
def _layer_norm_kept(ctx: Context, a: Entry, shape: Sequence[int], weight: Entry = None, bias: Entry = None,
                     eps: float = 1e-5, *_: Any) -> Value:  # fmt: skip
    """`step.layer_norm`"""
    return _layer_norm(ctx, a, shape, weight, bias, eps)


# ---------------------------------------------------------------------------------------------
# Embeddings, convolutions, pooling, dropout


@rule(aten.embedding.default)
def _embedding(ctx: Context, table: Entry, ids: Entry, padding_idx: int = -1, scale_grad_by_freq: bool = False,
               sparse: bool = False) -> Value:  # fmt: skip
    """`step.embedding` (no `padding_idx`, no `scale_grad_by_freq`)"""
    if padding_idx is not None and padding_idx >= 0:
        raise ImportError_(f"an embedding with padding_idx={padding_idx} (its row gets no gradient; step has no such rule)")
    if scale_grad_by_freq:
        raise ImportError_("an embedding with scale_grad_by_freq=True")
    t = ctx.value(table)
    i = ctx.value(ids)
    if i.dtype != "i32":
        raise ImportError_("an embedding whose ids are not an integer batch input")
    shape = (*i.shape, t.shape[1])
    return ctx.w.op("embedding", f"step.embedding {t.ref}, {i.ref}", f"({t.type}, {i.type}) -> {tensor_type(shape, t.dtype)}",
                    shape, t.dtype)  # fmt: skip


def _conv(ctx: Context, a: Entry, weight: Entry, bias: Entry, stride: Any, padding: Any, dilation: Any, groups: int) -> Value:
    x, wt = ctx.floats(a, weight)
    w = ctx.w
    if isinstance(padding, str):
        raise ImportError_(f"a convolution with padding={padding!r} (write the padding as numbers)")
    one_d = len(x.shape) == 3
    if one_d:  # conv1d as a conv2d of height 1
        x = w.reshape(x, (x.shape[0], x.shape[1], 1, x.shape[2]))
        wt = w.reshape(wt, (wt.shape[0], wt.shape[1], 1, wt.shape[2]))
        stride, padding, dilation = [1, *_pair(stride, 1)], [0, *_pair(padding, 1)], [1, *_pair(dilation, 1)]
    if len(x.shape) != 4:
        raise ImportError_(f"a convolution over {len(x.shape) - 2} spatial dims (step writes 1 and 2)")
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    n, _, h, wd = x.shape
    o, _, kh, kw = wt.shape
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    shape = (n, o, oh, ow)
    y = w.op("conv", f"step.conv2d {x.ref}, {wt.ref} stride {stride} padding {padding} dilation {dilation} groups {int(groups)}",
             f"({x.type}, {wt.type}) -> {tensor_type(shape, x.dtype)}", shape, x.dtype)  # fmt: skip
    if bias is not None:
        b = ctx.value(bias, x.dtype)
        y = w.binary("add", y, w.reshape(b, (b.shape[0], 1, 1)))
    return w.reshape(y, ctx.out_shape()) if one_d else y


@rule(aten.convolution.default)
def _convolution(ctx: Context, a: Entry, weight: Entry, bias: Entry, stride: Any, padding: Any, dilation: Any,
                 transposed: bool, output_padding: Any, groups: int) -> Value:  # fmt: skip
    """`step.conv2d` and `step.add` of the bias (`nn.Conv1d` as a conv2d of height 1; not transposed)"""
    if transposed:
        raise ImportError_("a transposed convolution (ConvTranspose) has no step op")
    return _conv(ctx, a, weight, bias, stride, padding, dilation, groups)


@rule(aten.conv2d.default, aten.conv1d.default)
def _conv2d(ctx: Context, a: Entry, weight: Entry, bias: Entry = None, stride: Any = 1, padding: Any = 0,
            dilation: Any = 1, groups: int = 1) -> Value:  # fmt: skip
    """`step.conv2d`"""
    return _conv(ctx, a, weight, bias, stride, padding, dilation, groups)


def _pool(ctx: Context, op: str, a: Entry, kernel: Any, stride: Any, padding: Any) -> Value:
    (x,) = ctx.floats(a)
    kernel = _pair(kernel)
    stride = _pair(stride) if stride not in (None, [], ()) else kernel
    padding = _pair(padding)
    shape = ctx.out_shape()
    return ctx.w.op(op, f"step.{op} {x.ref} kernel {kernel} stride {stride} padding {padding}",
                    f"{x.type} -> {tensor_type(shape, x.dtype)}", shape, x.dtype)  # fmt: skip


@rule(aten.max_pool2d_with_indices.default, aten.max_pool2d.default)
def _max_pool(ctx: Context, a: Entry, kernel: Any, stride: Any = (), padding: Any = 0, dilation: Any = 1,
              ceil_mode: bool = False) -> Entry:  # fmt: skip
    """`step.max_pool2d` (no dilation, no `ceil_mode`; the indices unreadable)"""
    if _pair(dilation) != [1, 1]:
        raise ImportError_(f"a max pool with dilation={dilation}")
    if ceil_mode:
        raise ImportError_("a max pool with ceil_mode=True")
    y = _pool(ctx, "max_pool2d", a, kernel, stride, padding)
    if ctx.node.target == aten.max_pool2d.default:
        return y
    return y, Unusable("the indices of a max pool")


@rule(aten.avg_pool2d.default)
def _avg_pool(ctx: Context, a: Entry, kernel: Any, stride: Any = (), padding: Any = 0, ceil_mode: bool = False,
              count_include_pad: bool = True, divisor_override: int | None = None) -> Value:  # fmt: skip
    """`step.avg_pool2d` (`count_include_pad=True` where it pads; no `ceil_mode`, no `divisor_override`)"""
    if ceil_mode or divisor_override is not None:
        raise ImportError_("an average pool with ceil_mode or divisor_override")
    if not count_include_pad and any(p != 0 for p in _pair(padding)):
        raise ImportError_("an average pool with count_include_pad=False and padding")
    return _pool(ctx, "avg_pool2d", a, kernel, stride, padding)


@rule(aten._adaptive_avg_pool2d.default, aten.adaptive_avg_pool2d.default)
def _adaptive_avg_pool(ctx: Context, a: Entry, output_size: Sequence[int]) -> Value:
    """`step.avg_pool2d` (output sizes that divide the input's)"""
    (x,) = ctx.floats(a)
    h, wd = x.shape[-2:]
    oh, ow = _pair(output_size)
    if h % oh or wd % ow:
        raise ImportError_(f"an adaptive average pool from {h}x{wd} to {oh}x{ow} (the output must divide the input)")
    return _pool(ctx, "avg_pool2d", x, [h // oh, wd // ow], [h // oh, wd // ow], 0)


def _dropout(ctx: Context, a: Entry, p: float, train: bool | None) -> Value:
    (x,) = ctx.floats(a)
    if not train or p == 0:
        return x
    key = ctx.new_key()
    return ctx.w.op("dropout", f"step.dropout {x.ref}, {key.ref} rate {float_text(p)}", f"({x.type}, {key.type}) -> {x.type}",
                    x.shape, x.dtype)  # fmt: skip


@rule(aten.native_dropout.default)
def _native_dropout(ctx: Context, a: Entry, p: float, train: bool | None) -> tuple[Entry, ...]:
    """`step.dropout` with a key input of its own in training mode, the value itself in eval mode"""
    return _dropout(ctx, a, p, train), Unusable("a dropout's mask")


@rule(aten.dropout.default)
def _dropout_kept(ctx: Context, a: Entry, p: float, train: bool) -> Value:
    """`step.dropout` (training mode), the value itself (eval mode)"""
    return _dropout(ctx, a, p, train)


# ---------------------------------------------------------------------------------------------
# Losses

_REDUCTIONS = {0: "none", 1: "mean", 2: "sum"}


def _reduced(ctx: Context, mean_loss: Value, reduction: int, count: int, what: str) -> Value:
    if reduction == 1:
        return mean_loss
    if reduction == 2:
        return ctx.w.binary("mul", mean_loss, ctx.value(float(count), mean_loss.dtype))
    raise ImportError_(f"{what} with reduction='{_REDUCTIONS.get(reduction, reduction)}' (the loss must be a scalar)")


def _rows(ctx: Context, x: Value, t: Value) -> tuple[Value, Value]:
    """(N, C, d...) logits and (N, d...) targets as (N d..., C) and (N d...)."""
    if len(x.shape) <= 2:
        return x, t
    perm = [0, *range(2, len(x.shape)), 1]
    xt = ctx.w.transpose(x, perm)
    rows = math.prod(xt.shape[:-1])
    return ctx.w.reshape(xt, (rows, x.shape[1])), ctx.w.reshape(t, (rows,))


@rule(aten.cross_entropy_loss.default)
def _cross_entropy(ctx: Context, a: Entry, target: Entry, weight: Entry = None, reduction: int = 1,
                   ignore_index: int = -100, label_smoothing: float = 0.0) -> Value:  # fmt: skip
    """`step.cross_entropy` (class indices; probabilities as `step.log_softmax`, `step.mul`, `step.sum`; label smoothing; no class weights)"""
    if weight is not None:
        raise ImportError_("cross_entropy with class weights")
    (x,) = ctx.floats(a)
    target = _one_hot_constant(target, x)
    t = ctx.value(target, x.dtype if isinstance(target, torch.Tensor) else None)
    w = ctx.w
    if t.is_float:  # class probabilities, one row per example
        if len(x.shape) != 2:
            raise ImportError_("cross_entropy with class probabilities over more than (N, C) logits")
        t = ctx.value(target, x.dtype)
        logp = w.unary("log_softmax", x, extra=" axis 1")
        if label_smoothing:  # torch: the target mixed with the uniform distribution
            eps = float(label_smoothing)
            t = w.binary("add", w.binary("mul", t, ctx.value(1.0 - eps, x.dtype)), ctx.value(eps / x.shape[1], x.dtype))
        per_row = w.reduce("sum", w.binary("mul", t, logp), [1])
        loss = w.unary("neg", w.reduce("mean", per_row, None))
        rows = math.prod(per_row.shape)
    else:
        x, t = _rows(ctx, x, t)
        rows = x.shape[0]
        loss = w.op("loss", f"step.cross_entropy {x.ref}, {t.ref}", f"({x.type}, {t.type}) -> {tensor_type((), x.dtype)}",
                    (), x.dtype)  # fmt: skip
        if label_smoothing:
            logp = w.unary("log_softmax", x, extra=" axis 1")
            smooth = w.unary("neg", w.reduce("mean", logp, None))
            eps = float(label_smoothing)
            loss = w.binary("add", w.binary("mul", loss, ctx.value(1.0 - eps, x.dtype)),
                            w.binary("mul", smooth, ctx.value(eps, x.dtype)))  # fmt: skip
    return _reduced(ctx, loss, reduction, rows, "cross_entropy")


def _one_hot_constant(target: Entry, logits: Value) -> Entry:
    """Constant class indices (labels written in the loss) as a constant one-hot float tensor."""
    if isinstance(target, torch.Tensor) and not target.is_floating_point():
        if len(logits.shape) != 2:
            raise ImportError_("constant class indices over more than (N, C) logits")
        return F.one_hot(target.long(), logits.shape[1]).to(torch.float64)
    return target


def _nll(ctx: Context, a: Entry, target: Entry, weight: Entry, reduction: int) -> Value:
    if weight is not None:
        raise ImportError_("nll_loss with class weights")
    (x,) = ctx.floats(a)
    w = ctx.w
    target = _one_hot_constant(target, x)
    if isinstance(target, torch.Tensor):
        one_hot = ctx.value(target, x.dtype)
    else:
        x, t = _rows(ctx, x, ctx.value(target))
        one_hot = w.op("one_hot", f"step.one_hot {t.ref}", f"{t.type} -> {tensor_type(x.shape, x.dtype)}", x.shape, x.dtype)
    picked = w.reduce("sum", w.binary("mul", x, one_hot), [1])
    loss = w.unary("neg", w.reduce("mean", picked, None))
    return _reduced(ctx, loss, reduction, x.shape[0], "nll_loss")


@rule(aten.nll_loss_nd.default)
def _nll_nd(ctx: Context, a: Entry, target: Entry, weight: Entry = None, reduction: int = 1, ignore_index: int = -100) -> Value:
    """`step.one_hot`, `step.mul`, `step.sum`, `step.mean` (no class weights)"""
    return _nll(ctx, a, target, weight, reduction)


@rule(aten.nll_loss_forward.default)
def _nll_forward(ctx: Context, a: Entry, target: Entry, weight: Entry, reduction: int, ignore_index: int) -> tuple[Entry, ...]:
    """`step.one_hot`, `step.mul`, `step.sum`, `step.mean` (no class weights)"""
    return _nll(ctx, a, target, weight, reduction), Unusable("nll_loss's total weight")


@rule(aten.mse_loss.default)
def _mse(ctx: Context, a: Entry, b: Entry, reduction: int = 1) -> Value:
    """`step.mse` (operands broadcast first)"""
    x, y = ctx.floats(a, b)
    shape = tuple(np.broadcast_shapes(x.shape, y.shape))
    x, y = ctx.w.broadcast(x, shape), ctx.w.broadcast(y, shape)
    loss = ctx.w.op("mse", f"step.mse {x.ref}, {y.ref}", f"({x.type}, {y.type}) -> {tensor_type((), x.dtype)}", (), x.dtype)
    return _reduced(ctx, loss, reduction, math.prod(shape), "mse_loss")


# Ops that assert and return nothing the program reads.
IGNORED = {aten._assert_tensor_metadata.default, aten._assert_scalar.default, aten.sym_constrain_range_for_size.default}
# Ops whose results are random: never folded even with constant operands.
RANDOM = {aten.native_dropout.default, aten.dropout.default, aten.bernoulli.default, aten.bernoulli.p,
          aten.rand.default, aten.randn.default, aten.rand_like.default, aten.randn_like.default}  # fmt: skip
