"""Evaluate a jaxpr with NumPy: JAX's transformations without an XLA compile.

`jax.make_jaxpr(jax.jvp(f, ...))` or `jax.make_jaxpr(jax.grad(f))` applies JAX's own
differentiation rules; evaluating the resulting jaxpr here, one NumPy call per `jax.lax`
primitive, gives the same numbers as XLA would (up to rounding) in milliseconds, where XLA
spends a compile per program. Contracts and tests that check thousands of small random programs
use it (`numpy_forward_mode` in `stepc.passes.contracts`); everything else runs XLA.

Only the primitives that the JAX backend and the tests' JAX twins produce are implemented; any
other is a `NotImplementedError` naming it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from stepc.ir.convolution import convolution

Array = np.ndarray


def _dot_general(lhs: Array, rhs: Array, *, dimension_numbers: Any, **_: Any) -> Array:
    (lc, rc), (lb, rb) = dimension_numbers
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    lhs_sub = [next(letters) for _ in range(lhs.ndim)]
    rhs_sub = [""] * rhs.ndim
    for l_dim, r_dim in zip(lb, rb):
        rhs_sub[r_dim] = lhs_sub[l_dim]
    for l_dim, r_dim in zip(lc, rc):
        rhs_sub[r_dim] = lhs_sub[l_dim]
    for i in range(rhs.ndim):
        if not rhs_sub[i]:
            rhs_sub[i] = next(letters)
    batch = [lhs_sub[d] for d in lb]
    lhs_free = [s for i, s in enumerate(lhs_sub) if i not in lb and i not in lc]
    rhs_free = [s for i, s in enumerate(rhs_sub) if i not in rb and i not in rc]
    spec = f"{''.join(lhs_sub)},{''.join(rhs_sub)}->{''.join(batch + lhs_free + rhs_free)}"
    if _is_half(lhs) or _is_half(rhs):  # XLA's dot of f16 and bf16 accumulates in f32, then rounds
        return np.einsum(spec, lhs.astype(np.float32), rhs.astype(np.float32))  # (NumPy has no bf16 einsum)
    return np.einsum(spec, lhs, rhs)


def _conv_general_dilated(lhs: Array, rhs: Array, *, window_strides: Sequence[int], padding: Sequence[tuple[int, int]],
                          lhs_dilation: Sequence[int], rhs_dilation: Sequence[int], dimension_numbers: Any,
                          feature_group_count: int, batch_group_count: int, **_: Any) -> Array:  # fmt: skip
    """XLA's convolution (`stepc.ir.convolution`) in any layout: each operand moved to the
    canonical one, the result moved back."""
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    if _is_half(lhs) or _is_half(rhs):  # accumulates in f32, as the dot
        lhs, rhs = lhs.astype(np.float32), rhs.astype(np.float32)
    out = convolution(np.transpose(lhs, lhs_spec), np.transpose(rhs, rhs_spec), window_strides, padding,
                      lhs_dilation, rhs_dilation, feature_group_count, batch_group_count)  # fmt: skip
    return np.transpose(out, np.argsort(out_spec))


def _reshape(x: Array, *, new_sizes: Sequence[int], dimensions: Sequence[int] | None = None, **_: Any) -> Array:
    """`lax.reshape`: the operand transposed by `dimensions` first (JAX's convolution transposes
    move a feature dim so), then reshaped row-major."""
    return np.reshape(x if dimensions is None else np.transpose(x, dimensions), tuple(new_sizes))


def _is_half(x: Array) -> bool:
    """float16 or bfloat16 (an ml_dtypes type NumPy's kernels do not know)."""
    return x.dtype.name in ("float16", "bfloat16")


def _broadcast_in_dim(x: Array, *, shape: Sequence[int], broadcast_dimensions: Sequence[int], **_: Any) -> Array:
    expanded = [1] * len(shape)
    for i, d in enumerate(broadcast_dimensions):
        expanded[d] = x.shape[i]
    return np.broadcast_to(np.reshape(x, expanded), tuple(shape))


def _window_start(rank: int, indices: Array, batch_index: tuple[int, ...], index_map: Sequence[int],
                  operand_batching_dims: Sequence[int], indices_batching_dims: Sequence[int]) -> list[int]:
    """Where one gather/scatter window starts in the operand: the index vector at `batch_index`
    (in the last dim of `indices`) placed by `index_map`, and the batching dims taken as they are."""
    start = [0] * rank
    for k, d in enumerate(index_map):
        start[d] = int(indices[batch_index + (k,)])
    for operand_dim, indices_dim in zip(operand_batching_dims, indices_batching_dims):
        start[operand_dim] = batch_index[indices_dim]
    return start


def _gather(operand: Array, indices: Array, *, dimension_numbers: Any, slice_sizes: Sequence[int], **_: Any) -> Array:
    """XLA's gather, element by element (the index vector in the last dim of `indices`)."""
    n = dimension_numbers
    batch_shape = indices.shape[:-1]
    offset_dims = tuple(n.offset_dims)
    collapsed = set(n.collapsed_slice_dims) | set(n.operand_batching_dims)
    window_dims = [d for d in range(operand.ndim) if d not in collapsed]
    out_rank = len(batch_shape) + len(offset_dims)
    batch_positions = [d for d in range(out_rank) if d not in offset_dims]
    out_shape = [0] * out_rank
    for pos, size in zip(batch_positions, batch_shape):
        out_shape[pos] = size
    for pos, d in zip(offset_dims, window_dims):
        out_shape[pos] = slice_sizes[d]
    out = np.empty(out_shape, dtype=operand.dtype)
    for out_index in np.ndindex(*out_shape):
        batch_index = tuple(out_index[p] for p in batch_positions)
        start = _window_start(operand.ndim, indices, batch_index, n.start_index_map,
                              n.operand_batching_dims, n.start_indices_batching_dims)
        for d in range(operand.ndim):  # clamp as XLA does
            start[d] = min(max(start[d], 0), operand.shape[d] - slice_sizes[d])
        full = list(start)
        for pos, d in zip(offset_dims, window_dims):
            full[d] += out_index[pos]
        out[out_index] = operand[tuple(full)]
    return out



def _scatter_add(operand: Array, indices: Array, updates: Array, *, dimension_numbers: Any, **_: Any) -> Array:
    """XLA's scatter with an add body, element by element (the index vector in the last dim of
    `indices`); an update whose window falls outside the operand is dropped (FILL_OR_DROP)."""
    n = dimension_numbers
    window_dims = tuple(n.update_window_dims)
    inserted = set(n.inserted_window_dims) | set(n.operand_batching_dims)
    operand_window_dims = [d for d in range(operand.ndim) if d not in inserted]
    scatter_positions = [d for d in range(updates.ndim) if d not in window_dims]
    out = np.array(operand, copy=True)
    for update_index in np.ndindex(*updates.shape):
        batch_index = tuple(update_index[p] for p in scatter_positions)
        start = _window_start(operand.ndim, indices, batch_index, n.scatter_dims_to_operand_dims,
                              n.operand_batching_dims, n.scatter_indices_batching_dims)
        full = list(start)
        for pos, d in zip(window_dims, operand_window_dims):
            full[d] += update_index[pos]
        if all(0 <= full[d] < operand.shape[d] for d in range(operand.ndim)):
            out[tuple(full)] += updates[update_index]
    return out


def _windows(x: Array, fill: float, window_dimensions: Sequence[int], window_strides: Sequence[int],
             padding: Sequence[tuple[int, int]], base_dilation: Sequence[int] | None = None,
             window_dilation: Sequence[int] | None = None) -> Array:  # fmt: skip
    """XLA's windows of `x` padded with `fill`: shape `(outputs..., window...)`."""
    if any(d != 1 for d in (*(base_dilation or ()), *(window_dilation or ()))):
        raise NotImplementedError("jaxpr_numpy: windows with dilation")
    padded = np.pad(x, [tuple(p) for p in padding], constant_values=fill)
    view = np.lib.stride_tricks.sliding_window_view(padded, tuple(window_dimensions))
    return view[tuple(slice(None, None, s) for s in window_strides)]


def _reduce_window(fn: Callable[..., Array], fill: float) -> Callable[..., Array]:
    def run(x: Array, **params: Any) -> Array:
        params = {k: v for k, v in params.items() if k != "out_sharding"}
        windows = _windows(x, fill, **params)
        return fn(windows, axis=tuple(range(x.ndim, windows.ndim)))

    return run


def _select_and_gather_add(tangents: Array, operand: Array, *, select_prim: Any, **params: Any) -> Array:
    """The tangent at the element each window of `operand` selects: the first maximum (`ge`) or
    minimum (`le`) in the window's row-major order (the padding never selected)."""
    first_max = select_prim.name == "ge"
    pick_windows = _windows(operand, -np.inf if first_max else np.inf, **params)
    tangent_windows = _windows(tangents, 0.0, **params)
    out_shape = pick_windows.shape[: operand.ndim]
    flat = pick_windows.reshape(*out_shape, -1)
    chosen = np.argmax(flat, axis=-1) if first_max else np.argmin(flat, axis=-1)
    return np.take_along_axis(tangent_windows.reshape(*out_shape, -1), chosen[..., None], axis=-1)[..., 0]


def _pad(x: Array, value: Array, *, padding_config: Sequence[tuple[int, int, int]], **_: Any) -> Array:
    """`lax.pad`: `interior` values between the elements, `low` before and `high` after (a
    negative edge cuts)."""
    shape = [max(n + max(n - 1, 0) * i, 0) for n, (_, _, i) in zip(x.shape, padding_config)]
    spread = np.full(shape, value, dtype=x.dtype)
    spread[tuple(slice(None, None, i + 1) for _, _, i in padding_config)] = x
    edges = np.pad(spread, [(max(lo, 0), max(hi, 0)) for lo, hi, _ in padding_config], constant_values=value)
    return edges[tuple(slice(max(-lo, 0), n - max(-hi, 0)) for (lo, hi, _), n in zip(padding_config, edges.shape))]


def _slice(x: Array, *, start_indices: Sequence[int], limit_indices: Sequence[int], strides: Sequence[int] | None,
           **_: Any) -> Array:  # fmt: skip
    steps = strides or (1,) * x.ndim
    return x[tuple(slice(*bounds) for bounds in zip(start_indices, limit_indices, steps))]


def _plain(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A NumPy function of arrays only (the primitive's params, such as shardings, ignored)."""
    return lambda *xs, **_: fn(*xs)


def _reduce(fn: Callable[..., Array]) -> Callable[..., Array]:
    return lambda x, *, axes, **_: fn(x, axis=tuple(axes))


def _convert(x: Array, *, new_dtype: Any, **_: Any) -> Array:
    return np.asarray(x).astype(new_dtype)


def _iota(*, dtype: Any, shape: Sequence[int], dimension: int, **_: Any) -> Array:
    index = np.arange(shape[dimension], dtype=dtype)
    expanded = [1] * len(shape)
    expanded[dimension] = shape[dimension]
    return np.broadcast_to(index.reshape(expanded), tuple(shape)).copy()


def _select_n(which: Array, *cases: Array, **_: Any) -> Array:
    return np.choose(np.asarray(which).astype(np.int64), np.broadcast_arrays(*cases))


def _sigmoid(x: Array, **_: Any) -> Array:
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype)


def _dynamic_slice(operand: Array, *starts: Array, slice_sizes: Sequence[int], **_: Any) -> Array:
    """XLA's dynamic slice: each start index clamped so that the slice fits in the operand."""
    index = tuple(
        slice(begin, begin + size)
        for begin, size in (
            (min(max(int(start), 0), dim - size), size) for start, size, dim in zip(starts, slice_sizes, operand.shape)
        )
    )
    return operand[index]


def _while(*args: Array, cond_jaxpr: Any, body_jaxpr: Any, cond_nconsts: int, body_nconsts: int, **_: Any) -> list[Array]:
    """`lax.while_loop`: the body on the carried values while the condition holds (each jaxpr
    takes its constants first)."""
    cond_consts, body_consts = args[:cond_nconsts], args[cond_nconsts : cond_nconsts + body_nconsts]
    carry = list(args[cond_nconsts + body_nconsts :])
    while bool(eval_jaxpr(cond_jaxpr.jaxpr, cond_jaxpr.consts, *cond_consts, *carry)[0]):
        carry = eval_jaxpr(body_jaxpr.jaxpr, body_jaxpr.consts, *body_consts, *carry)
    return carry


_ERF = np.frompyfunc(math.erf, 1, 1)


def _erf(x: Array, **_: Any) -> Array:
    """The error function (libm's, in float64), rounded to x's type."""
    return np.asarray(_ERF(np.asarray(x, dtype=np.float64)), dtype=np.float64).astype(x.dtype)


def _call(jaxpr_param: str) -> Callable[..., list[Array]]:
    def call(*args: Array, **params: Any) -> list[Array]:
        closed = params[jaxpr_param]
        inner = getattr(closed, "jaxpr", closed)
        consts = getattr(closed, "consts", ())
        return eval_jaxpr(inner, consts, *args)

    return call


def _shift(shift: Callable[..., Array], x: Array, n: Array) -> Array:
    """XLA's shifts of unsigned integers: a count of the bit width or more gives 0."""
    bits = np.iinfo(x.dtype).bits
    n = np.asarray(n)
    return np.where(n >= bits, np.zeros((), x.dtype), shift(x, np.minimum(n, bits - 1).astype(x.dtype)))


PRIMITIVES: dict[str, Callable[..., Any]] = {
    "add": _plain(np.add),
    "add_any": _plain(np.add),
    "sub": _plain(np.subtract),
    "mul": _plain(np.multiply),
    "div": _plain(np.divide),
    "neg": _plain(np.negative),
    "max": _plain(np.maximum),
    "min": _plain(np.minimum),
    "exp": _plain(np.exp),
    "exp2": _plain(np.exp2),
    "log": _plain(np.log),
    "log1p": _plain(np.log1p),
    "expm1": _plain(np.expm1),
    "tanh": _plain(np.tanh),
    "logistic": _sigmoid,
    "sqrt": _plain(np.sqrt),
    "rsqrt": lambda x, **_: 1.0 / np.sqrt(x),
    "abs": _plain(np.abs),
    "sign": _plain(np.sign),
    "square": _plain(np.square),
    "integer_pow": lambda x, *, y, **_: np.power(x, y),
    "pow": _plain(np.power),
    "eq": _plain(np.equal),
    "ne": _plain(np.not_equal),
    "lt": _plain(np.less),
    "le": _plain(np.less_equal),
    "gt": _plain(np.greater),
    "ge": _plain(np.greater_equal),
    "and": _plain(np.logical_and),
    "or": _plain(np.bitwise_or),  # (on bools the logical or)
    "not": _plain(np.logical_not),
    "select_n": _select_n,
    "stop_gradient": _plain(lambda x: x),
    "copy": _plain(np.copy),
    "copy_p": _plain(np.copy),
    "convert_element_type": _convert,
    "dot_general": _dot_general,
    "conv_general_dilated": _conv_general_dilated,
    "rev": lambda x, *, dimensions, **_: np.flip(x, tuple(dimensions)),
    "transpose": lambda x, *, permutation, **_: np.transpose(x, permutation),
    "reshape": _reshape,
    "squeeze": lambda x, *, dimensions, **_: np.squeeze(x, axis=tuple(dimensions)),
    "expand_dims": lambda x, *, dimensions, **_: np.expand_dims(x, tuple(dimensions)),
    "broadcast_in_dim": _broadcast_in_dim,
    "reduce_sum": _reduce(np.sum),
    "reduce_max": _reduce(np.max),
    "reduce_min": _reduce(np.min),
    "reduce_prod": _reduce(np.prod),
    "argmax": lambda x, *, axes, index_dtype, **_: np.argmax(x, axis=axes[0]).astype(index_dtype),
    "iota": _iota,
    "gather": _gather,
    "dynamic_slice": _dynamic_slice,
    "while": _while,
    "scatter-add": _scatter_add,
    "reduce_window_max": _reduce_window(np.max, -np.inf),
    "reduce_window_sum": _reduce_window(np.sum, 0.0),
    "select_and_gather_add": _select_and_gather_add,
    "pad": _pad,
    "slice": _slice,
    "concatenate": lambda *xs, dimension, **_: np.concatenate(xs, axis=dimension),
    "pjit": _call("jaxpr"),
    "jit": _call("jaxpr"),
    "closed_call": _call("call_jaxpr"),
    "custom_jvp_call": _call("call_jaxpr"),
    "custom_vjp_call": _call("call_jaxpr"),
    "custom_vjp_call_jaxpr": _call("fun_jaxpr"),
    "erf": _erf,
    "xor": _plain(np.bitwise_xor),
    "shift_left": lambda x, n, **_: _shift(np.left_shift, x, n),
    "shift_right_logical": lambda x, n, **_: _shift(np.right_shift, x, n),
}


def eval_jaxpr(jaxpr: Any, consts: Sequence[Any], *args: Any) -> list[Array]:
    """The outputs of `jaxpr` on NumPy inputs, in float64 where the jaxpr says so."""
    from jax.extend.core import Literal

    env: dict[Any, Array] = {}

    def read(v: Any) -> Array:
        return np.asarray(v.val) if isinstance(v, Literal) else env[v]

    for var, value in zip(jaxpr.constvars, consts):
        env[var] = np.asarray(value)
    for var, value in zip(jaxpr.invars, args):
        env[var] = np.asarray(value)
    with np.errstate(all="ignore"):
        for eqn in jaxpr.eqns:
            rule = PRIMITIVES.get(eqn.primitive.name)
            if rule is None:
                raise NotImplementedError(f"jaxpr_numpy: no NumPy rule for the primitive '{eqn.primitive.name}'")
            outputs = rule(*(read(v) for v in eqn.invars), **eqn.params)
            if not eqn.primitive.multiple_results:
                outputs = [outputs]
            for var, value in zip(eqn.outvars, outputs):
                env[var] = np.asarray(value, dtype=var.aval.dtype).reshape(var.aval.shape)
    return [read(v) for v in jaxpr.outvars]


def evaluate(fn: Callable[..., Any], *args: Any) -> list[Array]:
    """`fn(*args)` traced by JAX (with its transformations) and evaluated with NumPy; the
    outputs flattened (`jax.tree_util.tree_leaves` order)."""
    import jax

    closed = jax.make_jaxpr(fn)(*args)
    return eval_jaxpr(closed.jaxpr, closed.consts, *jax.tree_util.tree_leaves(args))
