"""`stepc.from_jax`: a JAX loss over a params pytree, and an optimizer attribute, as a checked step program.

    imp = stepc.from_jax(loss_fn, params, batch, "#step.sgd<lr = 0.1, momentum = 0.9>")
    imp.text          # the step IR: one {step.param} argument per leaf of `params`
    imp.names         # {"layer1.w": "layer1.w", "0.b": "_0.b", ...}: key path -> IR name
    imp.params()      # the leaves of `params`, keyed by IR names (NumPy)
    imp.batch(batch)  # a batch dict as the step's batch dict (int64 labels become i32)
    imp.tree(params)  # a dict keyed by IR names (what `prog.step` returns) as the params pytree
    prog = imp.compile()

How: `jax.make_jaxpr(loss_fn)(params, batch)` traces the loss; the calls in the jaxpr (`jit`,
`custom_jvp_call`, `custom_vjp_call`, `checkpoint`, ...) are inlined (`jax.nn.relu`'s custom
derivative is `step.relu`'s, so it becomes one; other custom rules give way to the derivative of
their primal, which the check below compares with JAX's); equations whose inputs are all
constants are evaluated by JAX at import (iotas, causal masks, one-hot tables); the stable-softmax
idiom (`x - stop_gradient(max x)`, `exp`, `sum`, a division or a log) becomes `step.softmax` or
`step.log_softmax`, and exact gelu (`0.5 x erfc(-x / sqrt 2)`) `step.gelu`; every other equation is
written by its rule in `RULES` (the table of `docs/importing.md`).

Names: the leaves of `params` (and of `batch`) are named by their key paths, the dict keys (or
sequence indices) joined by dots: `{"layer1": {"w": ...}}` is `layer1.w`, `{"blocks": [{"w": ...}]}`
is `blocks.0.w`; a name starting with a digit after any underscores gets one more `_` in front
(`0.w` -> `_0.w`), so every name is an IR value name and `jax_name(ir_name(p)) == p`. Keys are
made of letters, digits and `_` (a dot in a key would make two paths one name: refused).

The import is checked like a pass (`check_import`): on random inputs the imported program's loss
and gradients, run as compiled, equal `jax.value_and_grad(loss_fn)` in float64 within the
program's rounding-error bound. What cannot be imported is a `StepcError` at the line of the
user's Python code the equation comes from (jaxpr equations keep their source), never a partial
program.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import jax
import numpy as np
from jax._src import source_info_util
from jax.extend import core as jax_core

from stepc.api import Program, compile_text
from stepc.backends.jax import x64_enabled
from stepc.check.contract import ContractReport
from stepc.frontends.contract import check_against
from stepc.frontends.writer import (
    FLOAT_TYPES,
    BatchInput,
    IRWriter,
    Value,
    ir_value_name,
    numpy_dtype,
    source_name,
    step_batch,
    tensor_type,
)
from stepc.ir.diagnostics import SourceLoc, StepcError, remember_source

# ---------------------------------------------------------------------------------------------
# Names

_KEY = re.compile(r"[A-Za-z0-9_]+")


def ir_name(path: str) -> str:
    """The IR value name of a key path (`layer1.w`): the path itself, with one `_` put in front of
    a path that starts with a digit after any underscores (`0.w` -> `_0.w`, `_1.b` -> `__1.b`)."""
    return ir_value_name(path)


def jax_name(name: str) -> str:
    """The inverse of `ir_name`: the key path of an IR name."""
    return source_name(name)


def path_text(path: Sequence[Any], what: str) -> str:
    """A `jax.tree_util` key path as its dotted text (`layer1.w`, `blocks.0.w`)."""
    parts: list[str] = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            part = key.key
        elif isinstance(key, jax.tree_util.SequenceKey):
            part = str(key.idx)
        elif isinstance(key, jax.tree_util.GetAttrKey):
            part = key.name
        elif isinstance(key, jax.tree_util.FlattenedIndexKey):
            part = str(key.key)
        else:
            part = str(key)
        if not isinstance(part, str) or not _KEY.fullmatch(part):
            raise StepcError(f"{what} has the key {part!r} at {jax.tree_util.keystr(tuple(path))}: stepc names leaves by "
                             "their keys joined by dots, so keys are made of letters, digits and '_' (rename it)")  # fmt: skip
        parts.append(part)
    if not parts:
        raise StepcError(f"{what} must be a dict of arrays (its leaves are named by their keys), found a bare array")
    return ".".join(parts)


# ---------------------------------------------------------------------------------------------
# Types

_DTYPES = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64", "int32": "i32", "int64": "i32",
           "uint32": "ui32", "bool": "bool"}  # fmt: skip


def _dtype(dtype: Any) -> str:
    name = np.dtype(dtype).name
    if name not in _DTYPES:
        raise _Refused(f"a value of dtype {name}")
    return _DTYPES[name]


class _Refused(Exception):
    """An equation the table cannot write (the importer adds the primitive and the user's line)."""


# ---------------------------------------------------------------------------------------------
# The jaxpr, flattened: calls inlined, constant equations evaluated


@dataclass(eq=False)
class _Var:
    """A value of the flattened jaxpr (a fresh one per inlined call, so a jaxpr called twice
    gives two sets)."""

    shape: tuple[int, ...]
    dtype: Any  # a NumPy dtype


@dataclass(frozen=True, eq=False)
class _Const:
    value: Any  # what JAX computed: a NumPy or JAX array


_Atom = _Var | _Const


@dataclass(eq=False)
class _Eqn:
    primitive: str
    inputs: list[_Atom]
    outputs: list[_Var]
    params: dict[str, Any]
    where: Any  # a jax source_info_util.Frame, or None


# Call primitives whose body is inlined (`jit` was `pjit` before JAX 0.7).
_CALLS = {"jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr",
          "remat", "checkpoint", "remat2"}  # fmt: skip


def _flatten(jaxpr: Any, consts: Sequence[Any], inputs: Sequence[_Atom], where: Any, out: list[_Eqn]) -> list[_Atom]:
    """Append `jaxpr`'s equations to `out` with calls inlined and constants folded; its outputs."""
    env: dict[Any, _Atom] = {}
    for var, const in zip(jaxpr.constvars, consts):
        env[var] = _Const(const)
    for var, atom in zip(jaxpr.invars, inputs):
        env[var] = atom

    def read(x: Any) -> _Atom:
        if isinstance(x, jax_core.Literal):
            return _Const(np.asarray(x.val, dtype=cast(Any, x.aval).dtype))
        return env[x]

    for eqn in jaxpr.eqns:
        frame = source_info_util.user_frame(eqn.source_info.traceback) or where
        ins = [read(x) for x in eqn.invars]
        name = eqn.primitive.name
        params = dict(eqn.params)
        if all(isinstance(a, _Const) for a in ins):  # pure: JAX evaluates it now
            values = eqn.primitive.bind(*(a.value for a in ins), **params)  # type: ignore[union-attr]
            values = values if eqn.primitive.multiple_results else [values]
            for var, value in zip(eqn.outvars, values):
                env[var] = _Const(value)
            continue
        synthetic = _synthetic(name, params)
        if synthetic is not None:
            outs = [_Var(tuple(v.aval.shape), v.aval.dtype) for v in eqn.outvars]
            out.append(_Eqn(synthetic[0], ins, outs, synthetic[1], frame))
            env.update(zip(eqn.outvars, outs))
            continue
        if name in _CALLS:
            inner: Any = params.get("jaxpr", params.get("call_jaxpr"))
            inner_jaxpr, inner_consts = (inner.jaxpr, inner.consts) if hasattr(inner, "consts") else (inner, ())
            results = _flatten(inner_jaxpr, inner_consts, ins, frame, out)
            env.update(zip(eqn.outvars, results))
            continue
        outs = [_Var(tuple(v.aval.shape), v.aval.dtype) for v in eqn.outvars]
        out.append(_Eqn(name, ins, outs, params, frame))
        env.update(zip(eqn.outvars, outs))
    return [read(x) for x in jaxpr.outvars]


def _synthetic(name: str, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """A call written whole: `jax.nn.relu` (its custom derivative is `step.relu`'s, 0 at 0) and
    `jnp.take_along_axis` (its gather, and the index wrapping around it, as one op)."""
    if name == "custom_jvp_call" and _is_relu(params["call_jaxpr"].jaxpr):
        return "relu", {}
    if name in ("jit", "pjit") and params.get("name") == "take_along_axis":
        gather = _find_eqn(params["jaxpr"].jaxpr, "gather")
        if gather is not None:
            return "take_along_axis", {"dimension_numbers": gather.params["dimension_numbers"]}
    return None


def _is_relu(jaxpr: Any) -> bool:
    """`jax.nn.relu`'s primal: a `jit` named relu of `max(x, 0)`."""
    if len(jaxpr.eqns) != 1 or jaxpr.eqns[0].primitive.name not in ("jit", "pjit"):
        return False
    call = jaxpr.eqns[0]
    inner = call.params["jaxpr"].jaxpr
    if call.params.get("name") != "relu" or len(inner.eqns) != 1 or inner.eqns[0].primitive.name != "max":
        return False
    operands = inner.eqns[0].invars
    return any(isinstance(a, jax_core.Literal) and np.all(np.asarray(a.val) == 0) for a in operands)


def _find_eqn(jaxpr: Any, primitive: str) -> Any:
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == primitive:
            return eqn
    return None


# ---------------------------------------------------------------------------------------------
# Idioms written as one step op (then dead equations dropped)


def _producers(eqns: Sequence[_Eqn]) -> dict[_Var, _Eqn]:
    return {v: e for e in eqns for v in e.outputs}


def _is_const(atom: _Atom, value: float) -> bool:
    """`atom` is a constant every element of which is `value`."""
    if not isinstance(atom, _Const):
        return False
    array = np.asarray(atom.value)
    return array.size > 0 and bool(np.all(array == value))


def _through(atom: _Atom, producer: Mapping[_Var, _Eqn], *primitives: str) -> _Atom:
    """`atom` with any chain of `primitives` (one-operand) before it skipped."""
    while isinstance(atom, _Var) and atom in producer and producer[atom].primitive in primitives:
        atom = producer[atom].inputs[0]
    return atom


def _made_by(atom: _Atom, producer: Mapping[_Var, _Eqn], primitive: str) -> _Eqn | None:
    if isinstance(atom, _Var) and atom in producer and producer[atom].primitive == primitive:
        return producer[atom]
    return None


def _shift(z: _Atom, producer: Mapping[_Var, _Eqn]) -> tuple[_Var, int] | None:
    """`z = x - stop_gradient(broadcast(max(-inf, reduce_max(x, axis))))`: (x, axis)."""
    sub = _made_by(z, producer, "sub")
    if sub is None:
        return None
    x, shift = sub.inputs
    shift = _through(shift, producer, "stop_gradient", "broadcast_in_dim", "reshape")
    clamp = _made_by(shift, producer, "max")
    if clamp is not None:
        a, b = clamp.inputs
        shift = b if _is_const(a, -math.inf) else a if _is_const(b, -math.inf) else shift
    top = _made_by(shift, producer, "reduce_max")
    if top is None or top.inputs[0] is not x or len(top.params["axes"]) != 1 or not isinstance(x, _Var):
        return None
    return x, int(top.params["axes"][0])


def _sum_of_exp(s: _Atom, z: _Atom, axis: int, producer: Mapping[_Var, _Eqn], *skip: str) -> bool:
    """`s` is `sum(exp(z), axis)` (through `skip` and broadcasts)."""
    total = _made_by(_through(s, producer, "broadcast_in_dim", "reshape", *skip), producer, "reduce_sum")
    if total is None or tuple(total.params["axes"]) != (axis,):
        return False
    exp = _made_by(total.inputs[0], producer, "exp")
    return exp is not None and exp.inputs[0] is z


def _fuse(eqns: list[_Eqn]) -> list[_Eqn]:
    """The stable softmax, log-softmax and exact gelu of `jax.nn` as one equation each."""
    producer = _producers(eqns)
    fused: list[_Eqn] = []
    for e in eqns:
        fused.append(_fused(e, producer) or e)
    return fused


def _fused(e: _Eqn, producer: Mapping[_Var, _Eqn]) -> _Eqn | None:
    if e.primitive == "div":  # softmax: exp(z) / sum(exp(z))
        exp = _made_by(e.inputs[0], producer, "exp")
        shifted = _shift(exp.inputs[0], producer) if exp is not None else None
        if exp is not None and shifted is not None and _sum_of_exp(e.inputs[1], exp.inputs[0], shifted[1], producer):
            return _Eqn("softmax", [shifted[0]], e.outputs, {"axis": shifted[1]}, e.where)
    if e.primitive == "sub":  # log_softmax: z - log(sum(exp(z)))
        shifted = _shift(e.inputs[0], producer)
        log = _made_by(_through(e.inputs[1], producer, "broadcast_in_dim", "reshape"), producer, "log")
        if shifted is not None and log is not None and _sum_of_exp(log.inputs[0], e.inputs[0], shifted[1], producer):
            return _Eqn("log_softmax", [shifted[0]], e.outputs, {"axis": shifted[1]}, e.where)
    if e.primitive == "mul":  # exact gelu: (0.5 x) erfc(-x / sqrt 2)
        for half, tail in (e.inputs, e.inputs[::-1]):
            erfc = _made_by(tail, producer, "erfc")
            scaled = _made_by(half, producer, "mul")
            if erfc is None or scaled is None:
                continue
            inner = _made_by(erfc.inputs[0], producer, "mul")
            if inner is None:
                continue
            for c, neg_x in (inner.inputs, inner.inputs[::-1]):
                neg = _made_by(neg_x, producer, "neg")
                if neg is None or not isinstance(c, _Const) or abs(float(np.asarray(c.value)) * math.sqrt(2) - 1) > 1e-6:
                    continue
                x = neg.inputs[0]
                if any(_is_const(a, 0.5) for a in scaled.inputs) and x in scaled.inputs:
                    assert isinstance(x, _Var)
                    return _Eqn("gelu", [x], e.outputs, {}, e.where)
    return None


def _live(eqns: Sequence[_Eqn], results: Sequence[_Atom]) -> list[_Eqn]:
    """The equations the results depend on (dead code, the remains of fused idioms, dropped)."""
    needed = {a for a in results if isinstance(a, _Var)}
    kept: list[_Eqn] = []
    for e in reversed(eqns):
        if any(v in needed for v in e.outputs):
            kept.append(e)
            needed.update(a for a in e.inputs if isinstance(a, _Var))
    return kept[::-1]


# ---------------------------------------------------------------------------------------------
# The rules: one per primitive

@dataclass(frozen=True, eq=False)
class _Labels:
    """An i32 batch value reshaped and broadcast, written only where an op reads it whole:
    `step.one_hot` (`jax.nn.one_hot`, `take_along_axis`) reads `base` itself."""

    base: Value
    shape: tuple[int, ...]
    before: tuple[int, ...]  # its shape before the broadcast (`shape` when there is none)


Entry = Value | _Const | _Labels


class Context:
    """What a rule sees: the writer, the equation, and the conversions of operands."""

    def __init__(self, writer: IRWriter) -> None:
        self.w = writer
        self.eqn: _Eqn | None = None
        self._constants: dict[tuple[int, str], Value] = {}

    @property
    def out(self) -> _Var:
        assert self.eqn is not None
        return self.eqn.outputs[0]

    @property
    def params(self) -> dict[str, Any]:
        assert self.eqn is not None
        return self.eqn.params

    def float_dtype(self, *entries: Entry) -> str:
        """The float type the op computes in: its output's, else its first float operand's."""
        dtype = _DTYPES.get(np.dtype(self.out.dtype).name)
        if dtype in FLOAT_TYPES:
            return dtype  # type: ignore[return-value]
        for e in entries:
            if isinstance(e, Value) and e.is_float:
                return e.dtype
        return "f32"

    def value(self, entry: Entry, dtype: str | None = None) -> Value:
        """An operand as a program value: a constant written as a `step.constant` of `dtype`
        (booleans as 0/1), a float value of another float type converted to it."""
        if isinstance(entry, Value):
            if dtype is not None and entry.is_float and dtype in FLOAT_TYPES and entry.dtype != dtype:
                return self.w.convert(entry, dtype)
            return entry
        if isinstance(entry, _Labels):
            return self.w.broadcast(self.w.reshape(entry.base, entry.before), entry.shape)
        array = np.asarray(entry.value)
        if dtype is None:
            dtype = _dtype(array.dtype)
            if dtype not in FLOAT_TYPES:
                raise _Refused(f"an integer constant of shape {array.shape} where a program value is read")
        key = (id(entry), dtype)
        if key not in self._constants:
            self._constants[key] = self.w.constant(array.astype(np.float64), dtype, hint="const")
        return self._constants[key]

    def floats(self, *entries: Entry) -> list[Value]:
        dtype = self.float_dtype(*entries)
        for e in entries:
            if isinstance(e, _Labels) or (isinstance(e, Value) and not e.is_float):
                raise _Refused("arithmetic on an integer batch value: step keeps labels and ids for "
                               "indexing (one_hot, take_along_axis)")  # fmt: skip
        return [self.value(e, dtype) for e in entries]


Rule = Callable[..., Entry | list[Entry]]
RULES: dict[str, Rule] = {}


def rule(*primitives: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for p in primitives:
            RULES[p] = fn
        return fn

    return register


# ---- elementwise

_BINARY = {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "max": "maximum", "min": "minimum"}


@rule(*_BINARY)
def _binary(ctx: Context, a: Entry, b: Entry) -> Value:
    """`step.add`, `sub`, `mul`, `div`, `maximum`, `minimum` (`max` and `min`: ties split the gradient in halves, as JAX's)"""
    assert ctx.eqn is not None
    x, y = ctx.floats(a, b)
    return ctx.w.binary(_BINARY[ctx.eqn.primitive], x, y)


_UNARY = {"neg": "neg", "exp": "exp", "log": "log", "tanh": "tanh", "logistic": "sigmoid", "sqrt": "sqrt",
          "rsqrt": "rsqrt", "abs": "abs", "square": "square", "relu": "relu"}  # fmt: skip


@rule(*_UNARY)
def _unary(ctx: Context, a: Entry) -> Value:
    """`step.neg`, `exp`, `log`, `tanh`, `sigmoid` (`logistic`), `sqrt`, `rsqrt`, `abs`, `square`; `jax.nn.relu` is `step.relu`"""
    assert ctx.eqn is not None
    (x,) = ctx.floats(a)
    return ctx.w.unary(_UNARY[ctx.eqn.primitive], x)


def _power(ctx: Context, x: Value, e: float) -> Value:
    if e == 2:
        return ctx.w.unary("square", x)
    if e == 1:
        return x
    if e == 0.5:
        return ctx.w.unary("sqrt", x)
    if e == -0.5:
        return ctx.w.unary("rsqrt", x)
    if e == 0:
        return ctx.w.constant(1.0, x.dtype, x.shape, hint="ones")
    if e == int(e) and abs(e) <= 16:
        result = x
        for _ in range(int(abs(e)) - 1):
            result = ctx.w.binary("mul", result, x)
        return result if e > 0 else ctx.w.binary("div", ctx.value(_Const(np.float64(1.0)), x.dtype), result)
    raise _Refused(f"a power with exponent {e!r} (step writes 2, 0.5, -0.5 and integers up to 16)")


@rule("integer_pow")
def _integer_pow(ctx: Context, a: Entry) -> Value:
    """`step.square` (y = 2), `step.mul`s (other y; `step.div` of 1 for negative y)"""
    (x,) = ctx.floats(a)
    return _power(ctx, x, float(ctx.params["y"]))


@rule("pow")
def _pow(ctx: Context, a: Entry, b: Entry) -> Value:
    """as `integer_pow`, or `step.sqrt`/`step.rsqrt`, for a constant scalar exponent"""
    if not isinstance(b, _Const) or np.asarray(b.value).size != 1:
        raise _Refused("a power whose exponent is a program value (write exp(y * log(x)))")
    (x,) = ctx.floats(a)
    return _power(ctx, x, float(np.asarray(b.value).reshape(())))


@rule("gelu")
def _gelu(ctx: Context, a: Entry) -> Value:
    """`step.gelu` (exact gelu, `jax.nn.gelu(x, approximate=False)`; the tanh form is its elementwise ops)"""
    (x,) = ctx.floats(a)
    return ctx.w.unary("gelu", x)


@rule("erf", "erfc", "erf_inv")
def _erf(ctx: Context, a: Entry) -> Value:
    """refused (exact gelu is recognized whole)"""
    raise _Refused("step has no erf: exact gelu is imported when written as jax.nn.gelu(x, approximate=False); "
                   "other uses of erf are not")  # fmt: skip


# ---- comparisons and masks (a boolean program value is a float 0/1 mask, as step.compare makes it)

_DIRECTIONS = {"eq": "eq", "ne": "ne", "lt": "lt", "le": "le", "gt": "gt", "ge": "ge"}


@rule(*_DIRECTIONS)
def _compare(ctx: Context, a: Entry, b: Entry) -> Value:
    """`step.compare` (a 0/1 float mask); `labels[..., None] == iota` (`jax.nn.one_hot`) is `step.one_hot`"""
    assert ctx.eqn is not None
    if any(_is_int(e) for e in (a, b)):
        return _one_hot(ctx, a, b)
    dtype = next(e.dtype for e in (a, b) if isinstance(e, Value))
    return ctx.w.compare(_DIRECTIONS[ctx.eqn.primitive], ctx.value(a, dtype), ctx.value(b, dtype))


def _is_int(entry: Entry) -> bool:
    return isinstance(entry, _Labels) or (isinstance(entry, Value) and not entry.is_float)


def _as_labels(entry: Entry) -> _Labels:
    assert isinstance(entry, Value | _Labels)
    return entry if isinstance(entry, _Labels) else _Labels(entry, entry.shape, entry.shape)


def _one_hot(ctx: Context, a: Entry, b: Entry) -> Value:
    labels, classes = (a, b) if _is_int(a) else (b, a)
    assert ctx.eqn is not None
    shape = ctx.out.shape
    if ctx.eqn.primitive != "eq" or not isinstance(classes, _Const) or not shape:
        raise _Refused("a comparison of integer batch values (stepc reads labels by one_hot and take_along_axis)")
    c = shape[-1]
    iota = np.broadcast_to(np.arange(c).reshape((1,) * (len(shape) - 1) + (c,)), shape)
    if not np.array_equal(np.broadcast_to(np.asarray(classes.value), shape), iota):
        raise _Refused("a comparison of integer labels with anything but the classes 0..C-1 along the last axis")
    view = _as_labels(labels)
    if view.before[-1:] != (1,) or len(view.before) != len(shape):
        raise _Refused(f"a one-hot of labels of shape {view.before} into {shape}")
    base = ctx.w.reshape(view.base, view.before[:-1])
    rows = tuple(shape[:-1])
    if base.shape != rows:
        base = ctx.w.broadcast(base, rows)
    return ctx.w.op("one_hot", f"step.one_hot {base.ref}", f"{base.type} -> {tensor_type(shape, 'f32')}", shape, "f32")


@rule("not")
def _not(ctx: Context, a: Entry) -> Value:
    """`step.sub` of a mask from 1"""
    mask = ctx.value(a)
    return ctx.w.binary("sub", ctx.value(_Const(np.float64(1.0)), mask.dtype), mask)


@rule("and", "or")
def _and_or(ctx: Context, a: Entry, b: Entry) -> Value:
    """`step.mul` (`and`), `step.maximum` (`or`) of masks"""
    assert ctx.eqn is not None
    if np.dtype(ctx.out.dtype) != np.bool_:
        raise _Refused("bitwise arithmetic on integers")
    dtype = next(e.dtype for e in (a, b) if isinstance(e, Value))
    return ctx.w.binary("mul" if ctx.eqn.primitive == "and" else "maximum", ctx.value(a, dtype), ctx.value(b, dtype))


@rule("select_n")
def _select_n(ctx: Context, predicate: Entry, *cases: Entry) -> Entry:
    """`step.select` (`select_n(p, a, b)` is `b` where `p` holds: `step.select p, b, a`)"""
    if len(cases) != 2:
        raise _Refused(f"a select among {len(cases)} cases (step selects between two)")
    if isinstance(predicate, _Const):
        p = np.asarray(predicate.value)
        if not p.any():
            return cases[0]
        if p.all():
            return cases[1]
    if isinstance(predicate, Value) and not predicate.is_float:
        raise _Refused("a select on an integer batch value")
    on_false, on_true = ctx.floats(*cases)
    return ctx.w.select(ctx.value(predicate, on_true.dtype), on_true, on_false)


@rule("stop_gradient")
def _stop_gradient(ctx: Context, a: Entry) -> Value:
    """refused on a program value (constants are folded; the stable softmax's is recognized)"""
    raise _Refused("stop_gradient of a value computed from the parameters or the batch: the step language has no "
                   "stop-gradient (compute that value outside the loss and pass it in the batch)")  # fmt: skip


@rule("convert_element_type")
def _convert(ctx: Context, a: Entry) -> Entry:
    """`step.convert` between float types (a mask to a float type: the mask)"""
    new = _dtype(ctx.params["new_dtype"])
    if new not in FLOAT_TYPES:
        raise _Refused(f"a conversion to {np.dtype(ctx.params['new_dtype']).name} (step keeps program values float)")
    x = ctx.value(a)
    if not x.is_float:
        raise _Refused("a conversion of an integer batch value to a float (step keeps labels and ids integer)")
    return ctx.w.convert(x, new)


@rule("copy", "copy_p", "optimization_barrier", "reduce_precision")
def _identity(ctx: Context, *a: Entry) -> Entry | list[Entry]:
    """the value itself"""
    return a[0] if len(a) == 1 else list(a)


# ---- shapes

@rule("reshape", "squeeze", "expand_dims")
def _reshape(ctx: Context, a: Entry) -> Entry:
    """`step.reshape` (`reshape`, `squeeze`, `expand_dims`)"""
    assert ctx.eqn is not None
    if ctx.eqn.primitive == "reshape" and ctx.params.get("dimensions") is not None:
        raise _Refused("a reshape with a dimension order (transpose first)")
    shape = ctx.out.shape
    if _is_int(a):
        view = _as_labels(a)
        base = view.base if view.before == view.shape else ctx.value(view)
        return _Labels(base, shape, shape)
    return ctx.w.reshape(ctx.value(a), shape)


@rule("broadcast_in_dim")
def _broadcast_in_dim(ctx: Context, a: Entry, *dynamic: Entry) -> Entry:
    """`step.reshape` then `step.broadcast`"""
    if dynamic:
        raise _Refused("a broadcast to a dynamic shape")
    shape = ctx.out.shape
    if _is_int(a):
        view = _as_labels(a)
        base = view.base if view.before == view.shape else ctx.value(view)
        kept = [1] * len(shape)
        for i, d in enumerate(ctx.params["broadcast_dimensions"]):
            kept[d] = view.shape[i]
        return _Labels(base, shape, tuple(kept))
    x = ctx.value(a)
    kept = [1] * len(shape)
    for i, d in enumerate(ctx.params["broadcast_dimensions"]):
        kept[d] = x.shape[i]
    return ctx.w.broadcast(ctx.w.reshape(x, kept), shape)


@rule("transpose")
def _transpose(ctx: Context, a: Entry) -> Value:
    """`step.transpose`"""
    return ctx.w.transpose(ctx.value(a), ctx.params["permutation"])


@rule("reduce_sum", "reduce_max", "reduce_min")
def _reduce(ctx: Context, a: Entry) -> Value:
    """`step.sum`, `step.max` (ties share the gradient, as JAX's); `reduce_min` as `step.neg` of the max of `step.neg`"""
    assert ctx.eqn is not None
    (x,) = ctx.floats(a)
    axes = [int(d) for d in ctx.params["axes"]]
    if not axes:
        return x
    if ctx.eqn.primitive == "reduce_sum":
        return ctx.w.reduce("sum", x, axes)
    if ctx.eqn.primitive == "reduce_max":
        return ctx.w.reduce("max", x, axes)
    return ctx.w.unary("neg", ctx.w.reduce("max", ctx.w.unary("neg", x), axes))


@rule("random_wrap", "random_unwrap", "random_bits", "random_seed", "random_split", "random_fold_in", "threefry2x32")
def _random(ctx: Context, *a: Entry) -> Value:
    """refused (random draws inside the loss; `step.dropout` is imported from PyTorch)"""
    raise _Refused("a random draw inside the loss: stepc does not import JAX's random functions yet (a uint32[2] key "
                   "in the batch reaches the program, but no draw from it does)")  # fmt: skip


@rule("argmax", "argmin")
def _argmax(ctx: Context, a: Entry) -> Value:
    """refused (an index has no gradient: compute accuracy outside the loss)"""
    raise _Refused("an argmax or argmin inside the loss (its result is an index with no gradient; compute "
                   "accuracy outside the loss)")  # fmt: skip


@rule("softmax", "log_softmax")
def _softmax(ctx: Context, a: Entry) -> Value:
    """`step.softmax`, `step.log_softmax` (`jax.nn.softmax`, `jax.nn.log_softmax` over one axis)"""
    assert ctx.eqn is not None
    (x,) = ctx.floats(a)
    return ctx.w.unary(ctx.eqn.primitive, x, extra=f" axis {int(ctx.params['axis'])}")


@rule("dot_general")
def _dot_general(ctx: Context, a: Entry, b: Entry) -> Value:
    """`step.matmul` (the contraction's dims moved last on the left and first on the right, batch dims leading, by `step.transpose` and `step.reshape` where needed)"""
    (lc, rc), (lb, rb) = ctx.params["dimension_numbers"]
    lc, rc, lb, rb = list(lc), list(rc), list(lb), list(rb)
    dtype = ctx.float_dtype(a, b)
    x, y = ctx.value(a, dtype), ctx.value(b, dtype)
    if not x.is_float or not y.is_float:
        raise _Refused("a dot product of integer values")
    w = ctx.w
    l_free = [d for d in range(len(x.shape)) if d not in lc and d not in lb]
    r_free = [d for d in range(len(y.shape)) if d not in rc and d not in rb]
    batch = [x.shape[d] for d in lb]
    k = math.prod(x.shape[d] for d in lc)
    m_dims = [x.shape[d] for d in l_free]
    n_dims = [y.shape[d] for d in r_free]
    n = math.prod(n_dims)
    out = ctx.out.shape
    x = w.transpose(x, lb + l_free + lc)
    y = w.transpose(y, rb + rc + r_free)
    if not batch and len(lc) == 1 and len(m_dims) >= 1:  # (..., m, k) x (k, n): the shared-right form
        y = w.reshape(y, (k, n))
        return w.reshape(w.matmul(x, y), out)
    x = w.reshape(x, (*batch, math.prod(m_dims), k))
    y = w.reshape(y, (*batch, k, n))
    return w.reshape(w.matmul(x, y), out)


@rule("concatenate")
def _concatenate(ctx: Context, *parts: Entry) -> Value:
    """`step.concat`"""
    return ctx.w.concat(ctx.floats(*parts), int(ctx.params["dimension"]))


@rule("stack")
def _stack(ctx: Context, *parts: Entry) -> Value:
    """`step.reshape` of each operand then `step.concat`"""
    axis = int(ctx.params["axis"])
    values = ctx.floats(*parts)
    return ctx.w.concat([ctx.w.reshape(v, (*v.shape[:axis], 1, *v.shape[axis:])) for v in values], axis)


@rule("split")
def _split(ctx: Context, a: Entry) -> list[Entry]:
    """`step.slice` per piece"""
    x = ctx.value(a)
    axis = int(ctx.params["axis"])
    pieces: list[Entry] = []
    begin = 0
    for size in ctx.params["sizes"]:
        start, limit = [0] * len(x.shape), list(x.shape)
        start[axis], limit[axis] = begin, begin + int(size)
        pieces.append(ctx.w.slice(x, start, limit, [1] * len(x.shape)))
        begin += int(size)
    return pieces


@rule("slice")
def _slice(ctx: Context, a: Entry) -> Value:
    """`step.slice`"""
    x = ctx.value(a)
    strides = ctx.params.get("strides") or [1] * len(x.shape)
    return ctx.w.slice(x, list(ctx.params["start_indices"]), list(ctx.params["limit_indices"]), list(strides))


@rule("dynamic_slice")
def _dynamic_slice(ctx: Context, a: Entry, *starts: Entry) -> Value:
    """`step.slice` (constant start indices, clamped as JAX clamps them)"""
    if not all(isinstance(s, _Const) for s in starts):
        raise _Refused("a dynamic slice whose start depends on the batch or the parameters")
    x = ctx.value(a)
    sizes = [int(s) for s in ctx.params["slice_sizes"]]
    begin = [min(max(int(np.asarray(s.value)), 0), d - n) for s, d, n in zip(starts, x.shape, sizes)]  # type: ignore[union-attr]
    return ctx.w.slice(x, begin, [b + n for b, n in zip(begin, sizes)], [1] * len(sizes))


@rule("take_along_axis")
def _take_along_axis(ctx: Context, a: Entry, indices: Entry) -> Value:
    """`step.one_hot`, `step.mul`, `step.sum` (`jnp.take_along_axis` with one index along the axis)"""
    (x,) = ctx.floats(a)
    if not _is_int(indices):
        raise _Refused("a take_along_axis whose indices are not an integer batch input")
    view = _as_labels(indices)
    idx = view.base if view.before == view.shape else ctx.value(view)
    shape = view.shape
    dn = ctx.params["dimension_numbers"]
    collapsed = tuple(dn.collapsed_slice_dims)
    rank = len(x.shape)
    if (len(collapsed) != 1 or len(shape) != rank
            or set(dn.operand_batching_dims) | set(collapsed) != set(range(rank))):  # fmt: skip
        raise _Refused("a take_along_axis other than one index per row along one axis")
    axis = collapsed[0]
    if shape[axis] != 1 or any(shape[d] != x.shape[d] for d in range(rank) if d != axis):
        raise _Refused(f"a take_along_axis of indices {shape} from {x.shape} (one index per row along the axis)")
    w = ctx.w
    rows = tuple(s for d, s in enumerate(x.shape) if d != axis)
    labels = w.reshape(idx, rows)
    hot_shape = (*rows, x.shape[axis])
    hot = w.op("one_hot", f"step.one_hot {labels.ref}", f"{labels.type} -> {tensor_type(hot_shape, x.dtype)}",
               hot_shape, x.dtype)  # fmt: skip
    perm = [rank - 1 if d == axis else d - (d > axis) for d in range(rank)]
    picked = w.reduce("sum", w.binary("mul", x, w.transpose(hot, perm)), [axis])
    return w.reshape(picked, ctx.out.shape)


# ---------------------------------------------------------------------------------------------
# Where an equation comes from


def _loc(frame: Any) -> SourceLoc | None:
    if frame is None:
        return None
    file, line = frame.file_name, int(frame.start_line)
    code = ""
    try:
        with open(file, encoding="utf-8") as f:
            text = f.read()
        remember_source(file, text)
        lines = text.split("\n")
        code = lines[line - 1] if 1 <= line <= len(lines) else ""
    except OSError:
        pass
    start = int(getattr(frame, "start_column", -1))
    end = int(getattr(frame, "end_column", -1))
    if start >= 0 and getattr(frame, "end_line", line) == line and end > start:
        return SourceLoc(file, line, start + 1, end - start)
    stripped = code.lstrip()
    return SourceLoc(file, line, len(code) - len(stripped) + 1, max(1, len(stripped.rstrip())))


def _comment(frame: Any) -> str | None:
    if frame is None:
        return None
    shown = os.path.relpath(frame.file_name)
    if shown.startswith(".."):
        shown = frame.file_name
    code = ""
    try:
        with open(frame.file_name, encoding="utf-8") as f:
            lines = f.read().split("\n")
        code = lines[frame.start_line - 1].strip() if 1 <= frame.start_line <= len(lines) else ""
    except OSError:
        pass
    return f"{shown}:{frame.start_line}: {code}"


def _user_loc_of_exception(error: BaseException) -> SourceLoc | None:
    last = None
    for f in traceback.extract_tb(error.__traceback__):
        if source_info_util.is_user_filename(f.filename) and not f.filename.startswith(_FRONTENDS):
            last = f
    if last is None:
        return None
    return _loc(source_info_util.Frame(last.filename, last.name, last.lineno or 0, 0, last.lineno or 0, 0))


_FRONTENDS = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------------------------
# The optimizer

_OPTIMIZER = re.compile(r"\s*#step\.(?P<kind>sgd|adam|adamw)<(?P<fields>[^<>{}\n]*)>\s*")


def optimizer_attribute(text: str) -> tuple[str, str]:
    """(kind, the function attribute entry `step.KIND = #step.KIND<...>`) of an attribute's text."""
    if not isinstance(text, str):
        raise TypeError(f"the optimizer is the text of a step optimizer attribute, found {type(text).__name__}")
    m = _OPTIMIZER.fullmatch(text)
    if m is None:
        raise StepcError(f"the optimizer attribute {text!r} is not one stepc reads: write '#step.sgd<lr = 0.1, ...>', "
                         "'#step.adam<lr = 1.0e-3, ...>' or '#step.adamw<lr = 1.0e-3, ...>' (docs/optimizers.md)")  # fmt: skip
    return m["kind"], f"step.{m['kind']} = {text.strip()}"


# ---------------------------------------------------------------------------------------------
# The import


@dataclass(eq=False)
class Imported:
    """An imported training step: its text, its names, and conversions of JAX values."""

    text: str
    names: dict[str, str]  # key path of each params leaf -> IR name
    filename: str
    inputs: list[BatchInput] = field(repr=False)
    optimizer: str = "sgd"
    report: ContractReport | None = None
    seconds: dict[str, float] = field(default_factory=dict[str, float])  # trace, translate, check
    _params: list[np.ndarray] = field(default_factory=list[np.ndarray], repr=False)
    _treedef: Any = field(default=None, repr=False)
    _batch_treedef: Any = field(default=None, repr=False)

    def params(self) -> dict[str, np.ndarray]:
        """The params the import was given, keyed by IR name (copies)."""
        return {ir: np.array(v) for ir, v in zip(self.names.values(), self._params)}

    def tree(self, params: Mapping[str, Any]) -> Any:
        """Parameters keyed by IR name (what `prog.step` returns) as the params pytree."""
        return jax.tree_util.tree_unflatten(self._treedef, [np.asarray(params[ir]) for ir in self.names.values()])

    def batch(self, batch: Any) -> dict[str, np.ndarray]:
        """A batch (the pytree `loss_fn` takes) as the step's batch dict: each leaf under its IR
        name as NumPy, integer labels and ids as int32 (values outside [0, 2**31) refused)."""
        return step_batch(self.inputs, _leaves(batch, "the batch"))

    def compile(self, **options: Any) -> Program:
        """The program compiled as `stepc.compile_text` compiles it (same options)."""
        return compile_text(self.text, filename=self.filename, **options)


def _leaves(tree: Any, what: str) -> dict[str, Any]:
    if not isinstance(tree, Mapping):
        raise TypeError(f"{what} must be a dict of arrays, found {type(tree).__name__}")
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {path_text(path, what): leaf for path, leaf in leaves}


def _function_name(loss_fn: Any) -> str:
    name = re.sub(r"\W", "_", getattr(loss_fn, "__name__", "") or "step").lower() or "step"
    if name == "_lambda_":
        name = "loss"
    return name if re.match(r"[A-Za-z_]", name) else "f" + name


def from_jax(
    loss_fn: Callable[..., Any],
    params: Any,
    batch: Any,
    optimizer_attribute_text: str,
    *,
    check: bool = True,
    trials: int = 2,
    seed: int = 0,
    filename: str | None = None,
) -> Imported:
    """Import `loss_fn(params, batch)` and an optimizer attribute as a step program (module doc)."""
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(params, batch), found {type(loss_fn).__name__}")
    kind, attribute = optimizer_attribute(optimizer_attribute_text)
    param_leaves = _leaves(params, "params")
    batch_leaves = _leaves(batch, "the batch")
    if not param_leaves:
        raise StepcError("params holds no array: the step needs at least one parameter")
    names = {p: ir_name(p) for p in param_leaves}
    param_arrays: list[np.ndarray] = []
    for p, leaf in param_leaves.items():
        array = np.asarray(leaf)
        if array.dtype.name not in ("float16", "bfloat16", "float32", "float64"):
            raise StepcError(f"parameter '{p}' is a {array.dtype.name} array: parameters are float")
        param_arrays.append(array)
    inputs: list[BatchInput] = []
    example: dict[str, Any] = {}
    for p, leaf in batch_leaves.items():
        array = np.asarray(leaf)
        dtype = _DTYPES.get(array.dtype.name)
        if dtype is None or dtype == "bool" or (dtype == "ui32" and array.shape != (2,)):
            raise StepcError(f"batch '{p}' is a {array.dtype.name} array of shape {array.shape}: stepc imports float "
                             "arrays, integer labels or ids, and uint32[2] threefry key data")  # fmt: skip
        if ir_name(p) in names.values():
            raise StepcError(f"batch key '{p}' has the IR name of a parameter; rename the key")
        inputs.append(BatchInput(p, ir_name(p), tuple(array.shape), dtype))
        example[p] = array.astype(np.int32) if dtype == "i32" else array
    _, treedef = jax.tree_util.tree_flatten(params)
    _, batch_treedef = jax.tree_util.tree_flatten(batch)
    example_batch = jax.tree_util.tree_unflatten(batch_treedef, list(example.values()))
    filename = filename or f"{_function_name(loss_fn)}.ir"
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    closed = _trace(loss_fn, jax.tree_util.tree_unflatten(treedef, param_arrays), example_batch)
    seconds["trace"] = time.perf_counter() - start
    start = time.perf_counter()
    text = _translate(closed, loss_fn, names, param_arrays, inputs, attribute, kind)
    seconds["translate"] = time.perf_counter() - start
    imported = Imported(text, names, filename, inputs, kind, seconds=seconds, _params=param_arrays,
                        _treedef=treedef, _batch_treedef=batch_treedef)  # fmt: skip
    start = time.perf_counter()
    try:
        prog = imported.compile(check=False, until="seed-scalar-loss")
    except StepcError as error:
        if error.loc is not None and error.loc.file == filename and "attributes {" in text.split("\n")[error.loc.line - 1]:
            raise StepcError(f"the optimizer attribute {optimizer_attribute_text.strip()!r}: {error.message}") from None
        raise StepcError(f"internal error: the imported program does not verify ({error.message}); "
                         "please report it with the loss") from error  # fmt: skip
    if check:
        imported.report = check_import(imported, prog, loss_fn, trials=trials, seed=seed)
        if not imported.report.ok:
            raise StepcError(imported.report.failure_message().replace("pass import", "the import"))
    seconds["check"] = time.perf_counter() - start
    return imported


def _trace(loss_fn: Callable[..., Any], params: Any, batch: Any) -> Any:
    try:
        return jax.make_jaxpr(loss_fn)(params, batch)
    except StepcError:
        raise
    except Exception as error:  # JAX's own: a Python branch on a traced value, a shape read from data
        first = str(error).strip().split("\n")[0][:400]
        raise StepcError(
            f"jax.make_jaxpr could not trace the loss: {type(error).__name__}: {first}",
            _user_loc_of_exception(error),
            ("stepc imports a step whose ops do not depend on the values of the data (no Python `if` on a "
             "traced value): write it with jnp.where, or compute it outside the loss",),
        ) from None  # fmt: skip


def _translate(closed: Any, loss_fn: Any, names: Mapping[str, str], param_arrays: Sequence[np.ndarray],
               inputs: Sequence[BatchInput], attribute: str, kind: str) -> str:  # fmt: skip
    writer = IRWriter(_function_name(loss_fn))
    arguments: list[_Atom] = []
    for (_, ir), array in zip(names.items(), param_arrays):
        writer.argument(ir, array.shape, _DTYPES[array.dtype.name], "step.param")
        arguments.append(_Var(tuple(array.shape), array.dtype))
    for spec in inputs:
        writer.argument(spec.name, spec.shape, spec.dtype)
        arguments.append(_Var(spec.shape, numpy_dtype(spec.dtype)))
    env: dict[_Var, Entry] = {}
    for atom, (value, _) in zip(arguments, writer.arguments):
        assert isinstance(atom, _Var)
        env[atom] = value
    eqns: list[_Eqn] = []
    results = _flatten(closed.jaxpr, closed.consts, arguments, None, eqns)
    eqns = _live(_fuse(eqns), results)
    ctx = Context(writer)

    def read(atom: _Atom) -> Entry:
        return atom if isinstance(atom, _Const) else env[atom]

    for eqn in eqns:
        rule_fn = RULES.get(eqn.primitive)
        try:
            if rule_fn is None:
                raise _Refused("stepc's jaxpr table has no rule for it (docs/importing.md lists the primitives it imports)")
            comment = _comment(eqn.where)
            if comment is not None:
                writer.comment(comment)
            ctx.eqn = eqn
            result = rule_fn(ctx, *(read(a) for a in eqn.inputs))
        except _Refused as error:
            raise StepcError(f"cannot import the JAX primitive {eqn.primitive}: {error}", _loc(eqn.where),
                             () if eqn.where is not None else ("the jaxpr kept no user source line for it",)) from None  # fmt: skip
        values = result if isinstance(result, list) else [result]
        for var, value in zip(eqn.outputs, values):
            if isinstance(value, Value | _Labels) and tuple(value.shape) != var.shape:
                raise StepcError(f"internal error: the rule of {eqn.primitive} wrote a {tuple(value.shape)} value for a {var.shape} one")
            env[var] = value
    loss = read(results[0]) if len(results) == 1 else None
    if not isinstance(loss, Value) or loss.shape != () or not loss.is_float:
        raise StepcError("loss_fn must return a scalar float computed from the parameters; it returned "
                         + (f"{len(results)} values" if loss is None else "a constant" if isinstance(loss, _Const)
                            else f"a {loss.type}" if isinstance(loss, Value) else "an integer value"))  # fmt: skip
    header = [
        f"Imported from JAX by stepc.from_jax: loss {_where_defined(loss_fn)}, optimizer {kind}.",
        "Parameter names are the params' key paths (`stepc.frontends.jax.ir_name`); `// FILE:LINE` comments give each op's source.",
    ]
    return writer.text(loss, attribute, header)


def _where_defined(fn: Any) -> str:
    name = getattr(fn, "__qualname__", type(fn).__qualname__)
    try:
        return f"{name} ({os.path.basename(inspect.getsourcefile(fn) or '?')}:{inspect.getsourcelines(fn)[1]})"
    except (TypeError, OSError):
        return name


# ---------------------------------------------------------------------------------------------
# The contract


def check_import(imported: Imported, prog: Program, loss_fn: Callable[..., Any], *, trials: int, seed: int) -> ContractReport:
    """The import's contract: on `trials` random draws of parameters and batch, the imported
    program's loss and gradients (its gradient program, run in its own precision by the jaxpr
    evaluator) equal `jax.value_and_grad(loss_fn)` in float64 within the rounding-error bound of
    the program (`stepc.ir.error_bounds`)."""
    with x64_enabled(True):
        value_and_grad = jax.jit(jax.value_and_grad(loss_fn))
        return check_against(prog, lambda inputs: _jax_float64(imported, value_and_grad, inputs), "JAX",
                             trials=trials, seed=seed)  # fmt: skip


def _jax_float64(imported: Imported, value_and_grad: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    params = jax.tree_util.tree_unflatten(
        imported._treedef, [np.asarray(inputs[ir], dtype=np.float64) for ir in imported.names.values()]
    )
    leaves: list[np.ndarray] = []
    for spec in imported.inputs:
        value = np.asarray(inputs[spec.name])
        leaves.append(value if spec.dtype in ("i32", "ui32") else value.astype(np.float64))
    batch = jax.tree_util.tree_unflatten(imported._batch_treedef, leaves)
    loss, grads = value_and_grad(params, batch)
    out = {"loss": np.asarray(loss, dtype=np.float64)}
    for ir, g in zip(imported.names.values(), jax.tree_util.tree_leaves(grads)):
        out[f"grad.{ir}"] = np.asarray(g, dtype=np.float64)
    return out


def rule_table() -> Iterator[tuple[str, str]]:
    """(primitive, the first line of its rule's docstring): the table of `docs/importing.md`."""
    for primitive, fn in RULES.items():
        yield primitive, (fn.__doc__ or "").strip().split("\n")[0]


__all__ = ["RULES", "Imported", "check_import", "from_jax", "ir_name", "jax_name", "optimizer_attribute", "rule_table"]
