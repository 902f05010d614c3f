"""The shared contracts: identity (cleanups), VJP (`differentiate`), seed (`seed-scalar-loss`).

Each contract runs the program before and after its pass on the same random inputs
(`random_inputs`) and compares. Programs run on the reference interpreter
(`stepc.ir.interpreter`); the forward-mode derivative the VJP contract pairs with the gradient
comes from `jax.jvp` of the pre-pass program through the JAX backend, an implementation of the
ops that shares no code with the derivative rules.

Tolerances, per element type, compare an output normwise: the largest absolute difference must
be at most `rtol * max|expected| + atol`. Identity and seed contracts run in the program's own
types, so a tolerance allows a few roundings of that type; the VJP contract runs every float
in float64 (`promote_to_f64`), where its inner products agree to about 1e-13.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any
from dataclasses import dataclass, field

import numpy as np
from xdsl.dialects.builtin import Float64Type, ModuleOp, TensorType
from xdsl.ir import Attribute, SSAValue
from xdsl.rewriter import Rewriter

from stepc.ir.dialect import is_float, make_tensor
from stepc.ir.program import args, output_names, params, step_function
from stepc.passes.contract import Contract, ContractReport, random_inputs

Arrays = dict[str, np.ndarray]


# ---------------------------------------------------------------------------------------------
# Tolerances


@dataclass(frozen=True)
class Tolerance:
    """`max|actual - expected| <= rtol * max|expected| + atol`, for one element type."""

    rtol: float
    atol: float

    def holds(self, abs_error: float, scale: float) -> bool:
        return abs_error <= self.rtol * scale + self.atol


# About eight roundings of each type (eps: f16 9.8e-4, bf16 7.8e-3, f32 1.2e-7, f64 2.2e-16).
TOLERANCES: dict[str, Tolerance] = {
    "float16": Tolerance(rtol=8e-3, atol=1e-5),
    "bfloat16": Tolerance(rtol=6e-2, atol=1e-5),
    "float32": Tolerance(rtol=1e-6, atol=1e-12),
    "float64": Tolerance(rtol=1e-12, atol=1e-300),
    "int32": Tolerance(rtol=0.0, atol=0.0),
}
# Between two engines (XLA against the NumPy interpreter), which order sums and fuse differently.
ENGINE_TOLERANCES: dict[str, Tolerance] = {
    "float16": Tolerance(rtol=3e-2, atol=1e-4),
    "bfloat16": Tolerance(rtol=1e-1, atol=1e-4),
    "float32": Tolerance(rtol=2e-5, atol=1e-12),
    "float64": Tolerance(rtol=1e-11, atol=1e-300),
    "int32": Tolerance(rtol=0.0, atol=0.0),
}
SHORT_NAMES = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64", "int32": "i32"}
# `<cotangent, J dx> = <gradient, dx>` in float64, relative to the larger side or to a floor
# (VJP_FLOOR times the size of the terms, see `_add_pairing`) where both cancel to about 0.
VJP_TOLERANCE = Tolerance(rtol=1e-9, atol=0.0)
VJP_FLOOR = 1e-3


def tolerance_for(dtype: np.dtype, tolerances: Mapping[str, Tolerance] = TOLERANCES) -> Tolerance:
    return tolerances[np.dtype(dtype).name]


def tolerance_text(dtypes: set[str], tolerances: Mapping[str, Tolerance] = TOLERANCES) -> str:
    """`f32 1e-06`, or one item per element type."""
    if not dtypes:
        return "-"
    return ", ".join(f"{SHORT_NAMES[d]} {tolerances[d].rtol:.0e}" for d in sorted(dtypes))


# ---------------------------------------------------------------------------------------------
# Comparing outputs


@dataclass
class Comparison:
    """The worst difference seen over outputs and trials, and whether every one was in tolerance."""

    max_abs: float = 0.0
    max_rel: float = 0.0
    ok: bool = True
    worst: str = ""
    dtypes: set[str] = field(default_factory=set)
    # (failed, relative error) of the worst output so far: a failing output outranks any passing one.
    worst_key: tuple[int, float] = (-1, -1.0)

    def add(self, name: str, abs_error: float, scale: float, tolerance: Tolerance, dtype: str) -> None:
        rel = abs_error / scale if scale > 0 else (0.0 if abs_error == 0 else math.inf)
        holds = tolerance.holds(abs_error, scale)
        self.dtypes.add(dtype)
        self.max_abs = max(self.max_abs, abs_error)
        self.max_rel = max(self.max_rel, rel)
        self.ok = self.ok and holds
        self._rank(name, (0 if holds else 1, rel))

    def mismatch(self, name: str) -> None:
        """A structural difference (missing output, wrong shape): fails with an infinite error."""
        self.max_abs = self.max_rel = math.inf
        self.ok = False
        self._rank(name, (1, math.inf))

    def _rank(self, name: str, key: tuple[int, float]) -> None:
        if key > self.worst_key:
            self.worst, self.worst_key = name, key

    def report(self, pass_name: str, contract: str, trials: int, seconds: float, tolerance: str) -> ContractReport:
        return ContractReport(
            pass_name, contract, trials, self.max_abs, self.max_rel, tolerance, self.ok, seconds, self.worst
        )


def array_difference(expected: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """`(max|actual - expected|, max|expected|)` in float64; NaN or inf in the same place on
    both sides counts as agreement (a program that overflows does so before and after)."""
    e = np.asarray(expected).astype(np.float64)
    a = np.asarray(actual).astype(np.float64)
    same_special = (np.isnan(e) & np.isnan(a)) | (np.isinf(e) & (e == a))
    finite = np.isfinite(e) & np.isfinite(a)
    if np.any(~(same_special | finite)):
        return math.inf, float(np.max(np.abs(e[np.isfinite(e)]), initial=0.0))
    diff = np.abs(a[finite] - e[finite])
    return float(np.max(diff, initial=0.0)), float(np.max(np.abs(e[finite]), initial=0.0))


def compare_outputs(
    expected: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    into: Comparison,
    tolerances: Mapping[str, Tolerance] = TOLERANCES,
) -> None:
    """Compare outputs by key, each with the tolerance of its expected element type."""
    for name, e in expected.items():
        if name not in actual:
            into.mismatch(f"{name} (missing after the pass)")
            continue
        a = actual[name]
        if np.shape(a) != np.shape(e):
            into.mismatch(f"{name} (shape {np.shape(e)} became {np.shape(a)})")
            continue
        dtype = np.asarray(e).dtype
        abs_error, scale = array_difference(e, a)
        into.add(name, abs_error, scale, tolerance_for(dtype, tolerances), dtype.name)


# ---------------------------------------------------------------------------------------------
# Running programs


def run_program(module: ModuleOp, inputs: Mapping[str, np.ndarray]) -> Arrays:
    """The reference semantics: outputs keyed by `{step.output}` name."""
    from stepc.ir.interpreter import run_function

    fn = step_function(module)
    names = {a.name for a in args(fn)}
    return run_function(module, {k: v for k, v in inputs.items() if k in names})


def promote_to_f64(module: ModuleOp) -> ModuleOp:
    """A copy of `module` with every float element type float64 (arguments, results, constants).

    `step.convert` between float types becomes an f64 -> f64 cast, the identity; i32 stays.
    """
    module = module.clone()
    fn = step_function(module)
    block = fn.body.blocks.first
    for arg in list(block.args):
        promoted = _promoted(arg.type)
        if promoted is not None:
            location = arg.location
            new = Rewriter.replace_value_with_new_type(arg, promoted)
            new.location = location  # type: ignore[attr-defined]
    for op in list(block.ops):
        for result in list(op.results):
            promoted = _promoted(result.type)
            if promoted is not None:
                Rewriter.replace_value_with_new_type(result, promoted)
    fn.update_function_type()
    return module


def _promoted(t: Attribute) -> TensorType[Attribute] | None:
    if isinstance(t, TensorType):
        element = t.get_element_type()
        if is_float(element) and not isinstance(element, Float64Type):
            return make_tensor(tuple(t.get_shape()), Float64Type())
    return None


# A forward-mode derivative: (inputs, tangents of some float arguments) -> (outputs, tangents of outputs).
ForwardMode = Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], tuple[Arrays, Arrays]]


def jax_forward_mode(module: ModuleOp) -> ForwardMode:
    """`jax.jvp` of a program through the JAX backend, compiled by XLA once per program (the
    tangents of every float argument are inputs; the ones not asked for are zero)."""
    return _forward_mode(module, engine="xla")


def numpy_forward_mode(module: ModuleOp) -> ForwardMode:
    """The same `jax.jvp` through the JAX backend, its jaxpr evaluated with NumPy
    (`stepc.backends.jaxpr_numpy`): no XLA compile, for checking many small programs."""
    return _forward_mode(module, engine="numpy")


def _forward_mode(module: ModuleOp, engine: str) -> ForwardMode:
    """Float64 throughout: x64 is switched on only inside each call (`jax.enable_x64`), so the
    user's x32 default is left alone."""
    import jax

    from stepc.backends.jax import jax_function
    from stepc.backends.jaxpr_numpy import evaluate

    compiled = jax_function(module)
    arg_names = list(compiled.arg_names)
    out_names = list(compiled.output_names)
    fn = step_function(module)
    differentiable = [a.name for a in args(fn) if is_float(a.type.get_element_type())]
    fixed_names = [n for n in arg_names if n not in differentiable]

    def jvp_all(fixed: tuple[Any, ...], primals: tuple[Any, ...], directions: tuple[Any, ...]) -> Any:
        def of_differentiable(*values: Any) -> tuple[Any, ...]:
            env = {**dict(zip(fixed_names, fixed)), **dict(zip(differentiable, values))}
            return tuple(compiled.fn(*(env[n] for n in arg_names)))

        return jax.jvp(of_differentiable, primals, directions)

    jitted = jax.jit(jvp_all) if engine == "xla" else None

    def jvp(inputs: Mapping[str, np.ndarray], tangents: Mapping[str, np.ndarray]) -> tuple[Arrays, Arrays]:
        fixed = tuple(np.asarray(inputs[n]) for n in fixed_names)
        primals = tuple(np.asarray(inputs[n], dtype=np.float64) for n in differentiable)
        directions = tuple(
            np.asarray(tangents[n], dtype=np.float64) if n in tangents else np.zeros_like(p)
            for n, p in zip(differentiable, primals)
        )
        with jax.enable_x64(True):
            if jitted is not None:
                outputs, output_tangents = jitted(fixed, primals, directions)
            else:
                flat = evaluate(jvp_all, fixed, primals, directions)
                outputs, output_tangents = flat[: len(out_names)], flat[len(out_names) :]
        return (
            {n: np.asarray(v) for n, v in zip(out_names, outputs)},
            {n: np.asarray(v) for n, v in zip(out_names, output_tangents)},
        )

    return jvp


# ---------------------------------------------------------------------------------------------
# The contracts


class IdentityContract(Contract):
    """The pass changes no output: every output before equals the one after (cleanups)."""

    name = "identity"

    def check(self, pass_name: str, before: ModuleOp, after: ModuleOp, *, trials: int, seed: int) -> ContractReport:
        start = time.perf_counter()
        rng = np.random.default_rng(seed)
        comparison = Comparison()
        fn = step_function(before)
        for _ in range(trials):
            inputs = random_inputs(fn, rng)
            compare_outputs(run_program(before, inputs), run_program(after, inputs), comparison)
        seconds = time.perf_counter() - start
        return comparison.report(pass_name, self.name, trials, seconds, tolerance_text(comparison.dtypes))


class SeedContract(Contract):
    """`seed-scalar-loss`: the program after equals the one before run with cotangent 1 for the
    loss (and 0 for any other output's cotangent)."""

    name = "seed: after = before(ct=1)"

    def check(self, pass_name: str, before: ModuleOp, after: ModuleOp, *, trials: int, seed: int) -> ContractReport:
        start = time.perf_counter()
        rng = np.random.default_rng(seed)
        comparison = Comparison()
        fn_before = step_function(before)
        names = output_names(fn_before)
        cotangents = [a for a in args(fn_before) if a.role == "cotangent"]
        for _ in range(trials):
            inputs = random_inputs(step_function(after), rng)
            for index, arg in enumerate(cotangents):
                is_loss = index < len(names) and names[index] == "loss"
                value = np.ones if is_loss else np.zeros
                inputs[arg.name] = value(tuple(arg.type.get_shape()), dtype=_dtype_of(arg.value))
            compare_outputs(run_program(before, inputs), run_program(after, inputs), comparison)
        seconds = time.perf_counter() - start
        return comparison.report(pass_name, self.name, trials, seconds, tolerance_text(comparison.dtypes))


class VJPContract(Contract):
    """`differentiate`: the primal outputs are unchanged, and for every parameter p,
    `<cotangent, J_p dx> = <gradient_p, dx>` with `J_p dx` from an independent forward-mode
    computation (`forward_mode(before)`, by default `jax.jvp` through the JAX backend), all in
    float64 on random `(x, dx, cotangent)`. One check per parameter per trial, so a failure
    names the gradient (`grad.w1`) that is wrong."""

    name = "vjp: <ct,J dx>=<grad,dx>"

    def __init__(self, forward_mode: Callable[[ModuleOp], ForwardMode] = jax_forward_mode):
        self.forward_mode = forward_mode

    def check(self, pass_name: str, before: ModuleOp, after: ModuleOp, *, trials: int, seed: int) -> ContractReport:
        start = time.perf_counter()
        rng = np.random.default_rng(seed)
        comparison = Comparison()
        before64, after64 = promote_to_f64(before), promote_to_f64(after)
        fn_before, fn_after = step_function(before64), step_function(after64)
        primal_names = output_names(fn_before)
        after_names = output_names(fn_after)
        cotangents = [a for a in args(fn_after) if a.role == "cotangent"]
        param_args = params(fn_before)
        expected = [*primal_names, *(f"grad.{p.name}" for p in param_args)]
        if after_names != expected or len(cotangents) != len(primal_names):
            comparison.mismatch(
                f"outputs {after_names} with {len(cotangents)} cotangent argument(s), "
                f"expected {expected} with {len(primal_names)}"
            )
            return comparison.report(pass_name, self.name, 0, time.perf_counter() - start, "f64")
        jvp = self.forward_mode(before64)
        for _ in range(trials):
            inputs = random_inputs(fn_after, rng)
            outputs = run_program(after64, inputs)
            for param in param_args:
                dx = rng.standard_normal(tuple(param.type.get_shape()))
                primal, tangent = jvp(inputs, {param.name: dx})
                compare_outputs(primal, {n: outputs[n] for n in primal_names}, comparison)
                _add_pairing(
                    comparison, f"grad.{param.name}", [inputs[c.name] for c in cotangents],
                    [tangent[n] for n in primal_names], outputs[f"grad.{param.name}"], dx,
                )  # fmt: skip
        seconds = time.perf_counter() - start
        return comparison.report(pass_name, self.name, trials, seconds, _vjp_tolerance_text())


def _add_pairing(
    comparison: Comparison, name: str, cotangents: list[np.ndarray], tangents: list[np.ndarray],
    gradient: np.ndarray, dx: np.ndarray,
) -> None:  # fmt: skip
    """Compare `<cotangent, J dx>` with `<gradient, dx>`.

    Relative to the larger side, or, when both nearly cancel to 0 (a gradient that is 0 up to
    rounding), to a floor of 1e-3 times the size of the terms: the sum of |products| plus
    ||cotangent|| ||dx||. So rounding noise around a true 0 passes, and any real error fails.
    """
    lhs = float(sum(np.sum(c * t) for c, t in zip(cotangents, tangents)))
    rhs = float(np.sum(gradient * dx))
    if not (math.isfinite(lhs) and math.isfinite(rhs)):
        if lhs == rhs or (math.isnan(lhs) and math.isnan(rhs)):
            return
        comparison.mismatch(f"{name} (<ct, J dx> = {lhs}, <grad, dx> = {rhs})")
        return
    terms = float(sum(np.sum(np.abs(c * t)) for c, t in zip(cotangents, tangents)) + np.sum(np.abs(gradient * dx)))
    sizes = float(sum(np.linalg.norm(c) for c in cotangents) * np.linalg.norm(dx))
    scale = max(abs(lhs), abs(rhs), VJP_FLOOR * (terms + sizes))
    comparison.add(name, abs(lhs - rhs), scale, VJP_TOLERANCE, "float64")


def _vjp_tolerance_text() -> str:
    return f"f64 {VJP_TOLERANCE.rtol:.0e}"


def _dtype_of(value: SSAValue) -> np.dtype:
    from stepc.ir.values import numpy_dtype

    t = value.type
    assert isinstance(t, TensorType)
    return numpy_dtype(t.get_element_type())
