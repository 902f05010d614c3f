"""Property: on random well-typed programs, `differentiate` and `seed-scalar-loss` keep their
contracts and the gradients equal `jax.grad` of a JAX twin built alongside the IR.

The oracle is `jax.value_and_grad` of the twin, traced by JAX and evaluated with NumPy
(`stepc.backends.jaxpr_numpy`), as is the `jax.jvp` in the VJP contract: JAX's own rules, with
no XLA compile per program, which keeps 300 programs within about two minutes.

The generator draws 5 to 40 ops over parameters and inputs of mixed small shapes, with
broadcasting on both sides of binary ops, values read several times (fan-out), matmuls,
reductions, softmax, losses, constants and f64 -> f32 -> f64 round trips. The loss sums every
value no op reads, so every op reaches it. Each value carries a bound on its magnitude and
positivity, so `exp`, `log`, `div`, `sqrt` and `rsqrt` only see arguments where they are finite
and smooth; kinks (relu, abs) only see values without exact zeros, where every convention agrees.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepc.backends.jaxpr_numpy import evaluate
from stepc.check import contract_for
from stepc.check.differentiate import VJPContract, numpy_forward_mode
from stepc.ir.interpreter import run_function
from stepc.ir.parse import load_text, make_context, verify
from stepc.pipeline import Pipeline

Shape = tuple[int, ...]
REL_TOL = 1e-9
ABS_FLOOR = 1e-3  # below this, errors count as absolute: 1e-12 (values are O(1), BOUND at most)
BOUND = 1e4  # largest magnitude a value may reach (inputs are within +-5)
DIMS = (1, 2, 3)


def tensor_type(shape: Shape, element: str = "f64") -> str:
    return "tensor<" + "".join(f"{d}x" for d in shape) + element + ">"


@dataclass
class Value:
    name: str
    shape: Shape
    hi: float  # |value| <= hi
    lo: float = 0.0  # value >= lo > 0 when positive, else 0
    zeros: bool = False  # may hold exact zeros (a relu's output, say)


@dataclass
class Builder:
    """The IR text and the JAX twin of a random program, built together."""

    args: list[tuple[str, Shape, str]] = field(default_factory=list)  # (name, shape, "param"|"input"|"labels:C")
    lines: list[str] = field(default_factory=list)
    twin: list[tuple[str, Callable[[dict[str, Any]], Any]]] = field(default_factory=list)
    values: list[Value] = field(default_factory=list)
    used: set[str] = field(default_factory=set)
    count: int = 0

    def arg(self, shape: Shape, role: str = "param") -> Value:
        name = f"{'p' if role == 'param' else 'x'}{len(self.args)}"
        self.args.append((name, shape, role))
        value = Value(name, shape, hi=5.0)
        self.values.append(value)
        return value

    def labels(self, rows: int, classes: int) -> str:
        name = f"y{len(self.args)}"
        self.args.append((name, (rows,), f"labels:{classes}"))
        return name

    def op(self, text: str, operands: list[Value], shape: Shape, fn: Callable[..., Any], hi: float,
           lo: float = 0.0, zeros: bool | None = None, extra: tuple[str, ...] = ()) -> Value:  # fmt: skip
        """Append `%vN = <text>` (operands as {0}, {1}, ...; result type as {r})."""
        name = f"v{self.count}"
        self.count += 1
        refs = [f"%{v.name}" for v in operands]
        types = [tensor_type(v.shape) for v in operands]
        self.lines.append(f"%{name} = " + text.format(*refs, r=tensor_type(shape), t=types))
        names = [v.name for v in operands] + list(extra)
        self.twin.append((name, lambda env, fn=fn, names=names: fn(*(env[n] for n in names))))
        self.used.update(v.name for v in operands)
        value = Value(name, shape, hi, lo, any(v.zeros for v in operands) if zeros is None else zeros)
        self.values.append(value)
        return value

    def program(self) -> str:
        ends = [v for v in self.values if v.name not in self.used and not v.name.startswith(("p", "x"))]
        total = None
        for v in ends:
            s = self.op("step.sum {0} : {t[0]} -> {r}", [v], (), jnp.sum, v.hi * math.prod(v.shape))
            total = s if total is None else self.op("step.add {0}, {1} : ({t[0]}, {t[1]}) -> {r}", [total, s], (),
                                                    jnp.add, total.hi + s.hi)  # fmt: skip
        assert total is not None
        self.loss = total.name
        arg_text = ", ".join(
            f"%{n}: {tensor_type(s, 'i32' if r.startswith('labels') else 'f64')}" + (" {step.param}" if r == "param" else "")
            for n, s, r in self.args
        )
        body = "\n".join(f"  {line}" for line in self.lines)
        return (
            f"func.func @random({arg_text}) -> tensor<f64> attributes {{step.sgd = #step.sgd<lr = 0.1>}} {{\n"
            f"{body}\n  func.return %{self.loss} : tensor<f64>\n}}\n"
        )

    def jax_loss(self, inputs: dict[str, np.ndarray]) -> tuple[Callable[..., Any], list[str]]:
        params = [n for n, _, r in self.args if r == "param"]

        def loss(*param_values: Any) -> Any:
            env: dict[str, Any] = {n: jnp.asarray(v) for n, v in inputs.items()}
            env.update(zip(params, param_values))
            for name, fn in self.twin:
                env[name] = fn(env)
            return env[self.loss]

        return loss, params


# ---------------------------------------------------------------------------------------------
# The ops the generator draws from


def pick(draw: Any, b: Builder, ok: Callable[[Value], bool] = lambda v: True) -> Value | None:
    candidates = [v for v in b.values if ok(v)]
    if not candidates:
        return None
    # Half the time the newest candidate: long chains as well as wide fan-out.
    if draw(st.booleans()):
        return candidates[-1]
    return draw(st.sampled_from(candidates))


def partner_shape(draw: Any, shape: Shape) -> Shape:
    """A shape that broadcasts with `shape`: equal, with some dims 1, leading dims dropped, or
    with an extra leading dim (so both sides may be the broadcast one)."""
    kind = draw(st.sampled_from(["same", "ones", "drop", "lead", "scalar"]))
    if kind == "ones":
        return tuple(1 if draw(st.booleans()) else d for d in shape)
    if kind == "drop" and shape:
        return shape[draw(st.integers(1, len(shape))) :]
    if kind == "lead" and len(shape) < 3:
        return (draw(st.sampled_from(DIMS)), *shape)
    if kind == "scalar":
        return ()
    return shape


def binary(draw: Any, b: Builder) -> Value | None:
    a = pick(draw, b)
    assert a is not None
    kind = draw(st.sampled_from(["add", "sub", "mul", "div", "maximum", "minimum"]))
    want = partner_shape(draw, a.shape)

    def fits(v: Value) -> bool:
        if v is a or v.shape != want:
            return False
        if kind == "div":
            return v.lo >= 0.2
        return not (kind in ("maximum", "minimum") and (v.zeros or a.zeros))

    other = pick(draw, b, fits)
    if other is None:
        if kind in ("maximum", "minimum") and a.zeros:
            return None
        other = b.arg(want, draw(st.sampled_from(["param", "input"])))
        if kind == "div":  # a positive denominator: 1 + square
            sq = b.op("step.square {0} : {t[0]}", [other], want, jnp.square, other.hi**2)
            one = b.op("step.constant 1.0 : {r}", [], (), lambda: jnp.asarray(1.0), 1.0, lo=1.0)
            other = b.op("step.add {0}, {1} : ({t[0]}, {t[1]}) -> {r}", [sq, one], want, jnp.add, sq.hi + 1, lo=1.0)
    if draw(st.booleans()):
        a, other = other, a  # the broadcast side may be either
        if kind == "div":
            a, other = other, a
    shape = tuple(np.broadcast_shapes(a.shape, other.shape))
    rule = {
        "add": (jnp.add, a.hi + other.hi, a.lo + other.lo if a.lo and other.lo else 0.0),
        "sub": (jnp.subtract, a.hi + other.hi, 0.0),
        "mul": (jnp.multiply, a.hi * other.hi, a.lo * other.lo),
        "div": (jnp.divide, a.hi / max(other.lo, 1e-9), a.lo / other.hi if other.hi else 0.0),
        "maximum": (jnp.maximum, max(a.hi, other.hi), max(a.lo, other.lo)),
        "minimum": (jnp.minimum, max(a.hi, other.hi), min(a.lo, other.lo)),
    }[kind]
    fn, hi, lo = rule
    if hi > BOUND:
        return None
    return b.op(f"step.{kind} {{0}}, {{1}} : ({{t[0]}}, {{t[1]}}) -> {{r}}", [a, other], shape, fn, hi, lo)


def _abs(x: Any) -> Any:
    return x * jnp.sign(x)  # PyTorch's abs'(0) = 0 (jnp.abs has 1)


def unary(draw: Any, b: Builder) -> Value | None:
    kind = draw(st.sampled_from(["exp", "neg", "log", "tanh", "sigmoid", "relu", "sqrt", "rsqrt", "square", "abs"]))
    needs: dict[str, Callable[[Value], bool]] = {
        "exp": lambda v: v.hi <= 8,
        "log": lambda v: v.lo >= 1e-2,
        "sqrt": lambda v: v.lo >= 1e-2,
        "rsqrt": lambda v: v.lo >= 1e-2,
        "relu": lambda v: not v.zeros,
        "abs": lambda v: not v.zeros,
        "square": lambda v: v.hi <= 100,
    }
    a = pick(draw, b, needs.get(kind, lambda v: True))
    if a is None:
        return None
    h, lo = a.hi, a.lo
    rules: dict[str, Callable[[], tuple[Callable[..., Any], float, float, bool | None]]] = {
        "exp": lambda: (jnp.exp, math.exp(h), math.exp(-h), False),
        "neg": lambda: (jnp.negative, h, 0.0, None),
        "log": lambda: (jnp.log, max(abs(math.log(lo)), abs(math.log(max(h, lo)))), 0.0, None),
        "tanh": lambda: (jnp.tanh, 1.0, 0.0, None),
        "sigmoid": lambda: (jax.nn.sigmoid, 1.0, 1.0 / (1.0 + math.exp(min(h, 700.0))), False),
        "relu": lambda: (jax.nn.relu, h, 0.0, True),
        "sqrt": lambda: (jnp.sqrt, math.sqrt(h), math.sqrt(lo), None),
        "rsqrt": lambda: (jax.lax.rsqrt, 1.0 / math.sqrt(lo), 1.0 / math.sqrt(h), None),
        "square": lambda: (jnp.square, h * h, lo * lo, None),
        "abs": lambda: (_abs, h, lo, None),
    }
    fn, hi, new_lo, zeros = rules[kind]()
    return b.op(f"step.{kind} {{0}} : {{t[0]}}", [a], a.shape, fn, hi, new_lo, zeros)


def matmul(draw: Any, b: Builder) -> Value | None:
    a = pick(draw, b, lambda v: 2 <= len(v.shape) <= 3)
    if a is None:
        return None
    k = a.shape[-1]
    n = draw(st.sampled_from(DIMS))
    batched = len(a.shape) == 3 and draw(st.booleans())
    want = (*a.shape[:-2], k, n) if batched else (k, n)
    other = pick(draw, b, lambda v: v.shape == want and v is not a) or b.arg(want, draw(st.sampled_from(["param", "input"])))
    shape = (*a.shape[:-1], n)
    if k * a.hi * other.hi > BOUND:
        return None
    return b.op("step.matmul {0}, {1} : ({t[0]}, {t[1]}) -> {r}", [a, other], shape, jnp.matmul, k * a.hi * other.hi)


def transpose(draw: Any, b: Builder) -> Value | None:
    a = pick(draw, b, lambda v: len(v.shape) >= 2)
    if a is None:
        return None
    perm = draw(st.permutations(range(len(a.shape))))
    shape = tuple(a.shape[p] for p in perm)
    return b.op(f"step.transpose {{0}} perm {list(perm)} : {{t[0]}} -> {{r}}", [a], shape,
                lambda x, perm=tuple(perm): jnp.transpose(x, perm), a.hi, a.lo)  # fmt: skip


def reshape(draw: Any, b: Builder) -> Value | None:
    a = pick(draw, b)
    assert a is not None
    n = math.prod(a.shape)
    options = [s for s in [(n,), (1, n), (n, 1), *( (d, n // d) for d in DIMS if n % d == 0 ), ()] if math.prod(s) == n]
    shape = draw(st.sampled_from(options))
    return b.op("step.reshape {0} : {t[0]} -> {r}", [a], shape, lambda x, s=shape: jnp.reshape(x, s), a.hi, a.lo)


def broadcast(draw: Any, b: Builder) -> Value | None:
    a = pick(draw, b, lambda v: len(v.shape) <= 2)
    if a is None:
        return None
    shape = tuple(draw(st.sampled_from(DIMS)) if d == 1 else d for d in a.shape)
    if draw(st.booleans()):
        shape = (draw(st.sampled_from(DIMS)), *shape)
    # Broadcast copies tie exactly: a max reduction or maximum over them sits on a kink.
    return b.op("step.broadcast {0} : {t[0]} -> {r}", [a], shape, lambda x, s=shape: jnp.broadcast_to(x, s),
                a.hi, a.lo, zeros=True)  # fmt: skip


def reduction(draw: Any, b: Builder) -> Value | None:
    kind = draw(st.sampled_from(["sum", "mean", "max"]))
    a = pick(draw, b, lambda v: bool(v.shape) and not (kind == "max" and v.zeros))
    if a is None:
        return None
    rank = len(a.shape)
    dims = None if draw(st.booleans()) else sorted(draw(st.sets(st.integers(0, rank - 1), min_size=1)))
    axes = tuple(range(rank)) if dims is None else tuple(dims)
    shape = tuple(d for i, d in enumerate(a.shape) if i not in axes)
    count = math.prod(a.shape[i] for i in axes)
    fn = {"sum": jnp.sum, "mean": jnp.mean, "max": jnp.max}[kind]
    hi = a.hi * count if kind == "sum" else a.hi
    lo = a.lo * (count if kind == "sum" else 1)
    dims_text = "" if dims is None else f" dims {dims}"
    return b.op(f"step.{kind} {{0}}{dims_text} : {{t[0]}} -> {{r}}", [a], shape,
                lambda x, fn=fn, axes=axes: fn(x, axis=axes), hi, lo)  # fmt: skip


def softmax(draw: Any, b: Builder) -> Value | None:
    a = pick(draw, b, lambda v: bool(v.shape) and v.hi <= 50)
    if a is None:
        return None
    axis = draw(st.integers(0, len(a.shape) - 1))
    n = a.shape[axis]
    if draw(st.booleans()):
        return b.op(f"step.softmax {{0}} axis {axis} : {{t[0]}}", [a], a.shape,
                    lambda x, axis=axis: jax.nn.softmax(x, axis=axis), 1.0, math.exp(-2 * a.hi) / n, zeros=False)  # fmt: skip
    return b.op(f"step.log_softmax {{0}} axis {axis} : {{t[0]}}", [a], a.shape,
                lambda x, axis=axis: jax.nn.log_softmax(x, axis=axis), 2 * a.hi + math.log(n) + 1, zeros=False)  # fmt: skip


def _cross_entropy(logits: Any, labels: Any) -> Any:
    targets = jax.nn.one_hot(labels, logits.shape[1], dtype=logits.dtype)
    return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits, axis=1), axis=1))


def loss(draw: Any, b: Builder) -> Value | None:
    if draw(st.booleans()):
        a = pick(draw, b, lambda v: len(v.shape) == 2 and v.hi <= 50)
        if a is None:
            return None
        labels = b.labels(a.shape[0], a.shape[1])
        return b.op(f"step.cross_entropy {{0}}, %{labels} : ({{t[0]}}, {tensor_type(a.shape[:1], 'i32')}) -> {{r}}", [a],
                    (), _cross_entropy, 2 * a.hi + math.log(a.shape[1]) + 1, extra=(labels,), zeros=False)  # fmt: skip
    a = pick(draw, b, lambda v: v.hi <= 100)
    if a is None:
        return None
    other = pick(draw, b, lambda v: v.shape == a.shape and v is not a) or b.arg(a.shape, "input")
    return b.op("step.mse {0}, {1} : ({t[0]}, {t[1]}) -> {r}", [a, other], (),
                lambda x, y: jnp.mean(jnp.square(x - y)), (a.hi + other.hi) ** 2)  # fmt: skip


def constant(draw: Any, b: Builder) -> Value | None:
    a = pick(draw, b)
    assert a is not None
    c = draw(st.sampled_from([0.5, -1.5, 2.0, 3.0]))
    k = b.op(f"step.constant {c} : {{r}}", [], (), lambda c=c: jnp.asarray(c), abs(c), c if c > 0 else 0.0)
    if a.hi * abs(c) > BOUND:
        return None
    return b.op("step.mul {0}, {1} : ({t[0]}, {t[1]}) -> {r}", [a, k], a.shape, jnp.multiply, a.hi * abs(c),
                a.lo * c if c > 0 else 0.0)  # fmt: skip


def convert(draw: Any, b: Builder) -> Value | None:
    a = pick(draw, b)
    assert a is not None
    f32 = tensor_type(a.shape, "f32")
    narrow = b.op(f"step.convert {{0}} : {{t[0]}} -> {f32}", [a], a.shape, lambda x: x.astype(jnp.float32), a.hi, a.lo)
    narrow.shape = a.shape
    b.values.remove(narrow)  # an f32 value: only the convert back reads it
    return b.op(f"step.convert {{0}} : {f32} -> {{r}}", [narrow], a.shape, lambda x: x.astype(jnp.float64),
                a.hi, a.lo)  # fmt: skip


OPS: list[Callable[[Any, Builder], Value | None]] = [
    binary, binary, binary, unary, unary, unary, matmul, transpose, reshape, broadcast, reduction, softmax, loss,
    constant, convert,
]  # fmt: skip
SHAPES = [(), (2,), (3,), (2, 3), (3, 2), (1, 3), (2, 2, 3)]


@st.composite
def programs(draw: Any) -> Builder:
    b = Builder()
    for _ in range(draw(st.integers(1, 3))):
        b.arg(draw(st.sampled_from(SHAPES)))
    target = draw(st.integers(5, 40))
    while b.count < target:
        before = b.count
        made = draw(st.sampled_from(OPS))(draw, b)
        if made is None and b.count == before:
            unary_tanh = b.values[-1]
            b.op("step.tanh {0} : {t[0]}", [unary_tanh], unary_tanh.shape, jnp.tanh, 1.0)
    return b


def random_inputs(b: Builder, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for name, shape, role in b.args:
        if role.startswith("labels:"):
            out[name] = rng.integers(0, int(role.split(":")[1]), size=shape).astype(np.int32)
        else:
            out[name] = np.clip(rng.standard_normal(shape), -5, 5)
    return out


# ---------------------------------------------------------------------------------------------
# The property


def run_checked(module) -> None:  # type: ignore[no-untyped-def]
    """The pipeline up to `seed-scalar-loss`, each pass's contract checked after it (a failure
    raises). `differentiate`'s contract is the pass's own `VJPContract` with its `jax.jvp`
    evaluated by NumPy (`numpy_forward_mode`): an XLA compile per random program would cost
    about a second each."""
    contracts = {"differentiate": VJPContract(forward_mode=numpy_forward_mode)}
    for name in ["differentiate", "cse", "dce", "seed-scalar-loss"]:
        (p,) = Pipeline([name], check=False).passes()
        before = module.clone()
        p.apply(make_context(), module)
        verify(module)
        contract = contracts.get(name) or contract_for(name)
        assert contract is not None
        report = contract.check(name, before, module, trials=2, seed=0)
        assert report.ok, report.failure_message()


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])  # fmt: skip
@given(programs())
def test_contracts_hold_and_gradients_equal_jax_grad(b: Builder) -> None:
    text = b.program()
    module = load_text(text, "random.ir")
    run_checked(module)

    inputs = random_inputs(b, np.random.default_rng(0))
    ours = run_function(module, inputs)
    loss, params = b.jax_loss(inputs)
    values = [np.asarray(inputs[p]) for p in params]
    with jax.enable_x64(True):
        expected_loss, *grads = evaluate(jax.value_and_grad(loss, argnums=tuple(range(len(params)))), *values)
    assert math.isclose(float(ours["loss"]), float(expected_loss), rel_tol=1e-12, abs_tol=1e-12), text
    for p, g in zip(params, grads):
        # Relative, with a floor for gradients that are 0 up to rounding (softmax summed, say).
        scale = max(float(np.max(np.abs(g), initial=0.0)), ABS_FLOOR)
        err = float(np.max(np.abs(ours[f"grad.{p}"] - g), initial=0.0)) / scale
        assert err <= REL_TOL, f"grad.{p}: rel error {err:.3g}\n{text}"
