"""The contract framework: what every pass promises, checked by running programs before and after.

`Contract.check` is the template every contract shares: it times the check, draws random
inputs from a seeded generator, runs `trial` once per trial, compares each output against its
expected value with the tolerance of the lowest precision on that output's data path, and
returns one `ContractReport` (a row of the check table). A contract writes only `trial` (and,
when it needs one, `prepare`, run once before the trials).

Tolerances compare an output normwise: the largest absolute difference must be at most
`rtol * max|expected| + atol`. Which row of a tolerance table applies to an output is decided
by `path_precisions`: the least precise float type any value on the output's data path has, so
an f64 result computed through f32 ops is compared at f32 tolerance.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import ml_dtypes
import numpy as np
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp, TensorType
from xdsl.ir import SSAValue

from stepc.ir.interpreter import run_function
from stepc.ir.program import Arg, args, fan_in_scale, label_range, output_names, returned_values, step_function
from stepc.ir.values import numpy_dtype

Arrays = dict[str, np.ndarray]


# ---------------------------------------------------------------------------------------------
# Reports


@dataclass
class ContractReport:
    """One row of the check table."""

    pass_name: str
    contract: str
    trials: int
    max_abs: float
    max_rel: float
    tolerance: str
    ok: bool
    seconds: float
    worst: str = ""  # the output (or parameter) with the largest error

    def failure_message(self) -> str:
        return (
            f"contract of pass {self.pass_name} ({self.contract}) does not hold: "
            f"worst output {self.worst or '?'} has abs error {self.max_abs:.3g}, rel error {self.max_rel:.3g} "
            f"(tolerance {self.tolerance})"
        )


def format_table(reports: list[ContractReport]) -> str:
    header = (
        f"{'pass':<20} {'contract':<24} {'trials':>6} {'max abs err':>12} {'max rel err':>12} "
        f"{'tolerance':<18} {'verdict':<7} {'time':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in reports:
        lines.append(
            f"{r.pass_name:<20} {r.contract:<24} {r.trials:>6} {r.max_abs:>12.3e} {r.max_rel:>12.3e} "
            f"{r.tolerance:<18} {'ok' if r.ok else 'FAILED':<7} {r.seconds * 1000:>6.0f}ms"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Tolerances


@dataclass(frozen=True)
class Tolerance:
    """`max|actual - expected| <= rtol * max|expected| + atol`, for one element type."""

    rtol: float
    atol: float

    def holds(self, abs_error: float, scale: float) -> bool:
        return abs_error <= self.rtol * scale + self.atol


Tolerances = Mapping[str, Tolerance]

# About eight roundings of each type (eps: f16 9.8e-4, bf16 7.8e-3, f32 1.2e-7, f64 2.2e-16).
TOLERANCES: Tolerances = {
    "float16": Tolerance(rtol=8e-3, atol=1e-5),
    "bfloat16": Tolerance(rtol=6e-2, atol=1e-5),
    "float32": Tolerance(rtol=1e-6, atol=1e-12),
    "float64": Tolerance(rtol=1e-12, atol=1e-300),
    "int32": Tolerance(rtol=0.0, atol=0.0),
}
# Between two engines (XLA against the NumPy interpreter), which order sums and fuse differently.
ENGINE_TOLERANCES: Tolerances = {
    "float16": Tolerance(rtol=3e-2, atol=1e-4),
    "bfloat16": Tolerance(rtol=1e-1, atol=1e-4),
    "float32": Tolerance(rtol=2e-5, atol=1e-12),
    "float64": Tolerance(rtol=1e-11, atol=1e-300),
    "int32": Tolerance(rtol=0.0, atol=0.0),
}
SHORT_NAMES = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64", "int32": "i32"}


def tolerance_text(dtypes: set[str], tolerances: Tolerances = TOLERANCES) -> str:
    """`f32 1e-06`, or one item per element type."""
    if not dtypes:
        return "-"
    return ", ".join(f"{SHORT_NAMES[d]} {tolerances[d].rtol:.0e}" for d in sorted(dtypes))


def _unit_roundoff(dtype: np.dtype[Any]) -> float:
    """Machine epsilon of a float type (bf16 through ml_dtypes), 0 for an integer type."""
    return float(ml_dtypes.finfo(dtype).eps) if dtype.kind == "f" or dtype.name == "bfloat16" else 0.0


def path_precisions(module: ModuleOp) -> dict[str, np.dtype[Any]]:
    """Each output's key -> the least precise float type on its data path (its own type when
    no value it depends on is less precise; i32 outputs stay i32).

    A value's precision is the coarsest of its own type and its operands' precisions, so an f64
    parameter update whose gradient was computed in f32 is f32 (`step.convert` up to f64 does
    not make a value more accurate than the ops that computed it)."""
    fn = step_function(module)
    coarsest: dict[SSAValue, np.dtype[Any]] = {}

    def own(value: SSAValue) -> np.dtype[Any] | None:
        t = value.type
        if not isinstance(t, TensorType):
            return None
        try:
            dtype = numpy_dtype(t.get_element_type())
        except TypeError:  # i1 masks of the lowered program: exact
            return None
        return dtype if _unit_roundoff(dtype) > 0 else None

    def coarser(a: np.dtype[Any] | None, b: np.dtype[Any] | None) -> np.dtype[Any] | None:
        if a is None or b is None:
            return a if b is None else b
        return a if _unit_roundoff(a) >= _unit_roundoff(b) else b

    for arg in fn.body.block.args:
        found = own(arg)
        if found is not None:
            coarsest[arg] = found
    for op in fn.walk():
        if isinstance(op, func.FuncOp | func.ReturnOp):
            continue
        from_operands: np.dtype[Any] | None = None
        for operand in op.operands:
            from_operands = coarser(from_operands, coarsest.get(operand))
        for result in op.results:
            found = own(result)
            # An integer result (a comparison mask, an index) carries no rounding of its own.
            path = coarser(found, from_operands) if found is not None else None
            if path is not None:
                coarsest[result] = path
    out: dict[str, np.dtype[Any]] = {}
    for name, value in zip(output_names(fn), returned_values(fn)):
        t = value.type
        assert isinstance(t, TensorType)
        out[name] = coarsest.get(value, numpy_dtype(t.get_element_type()))
    return out


# ---------------------------------------------------------------------------------------------
# Comparing outputs


@dataclass
class Comparison:
    """The worst difference seen over outputs and trials, and whether every one was in tolerance.

    `precisions` (from `path_precisions`) names, per output key, the type whose tolerance row
    applies; an output missing there is compared at its own element type."""

    tolerances: Tolerances = field(default_factory=lambda: TOLERANCES)
    precisions: Mapping[str, np.dtype[Any]] = field(default_factory=dict[str, np.dtype[Any]])
    max_abs: float = 0.0
    max_rel: float = 0.0
    ok: bool = True
    worst: str = ""
    dtypes: set[str] = field(default_factory=set[str])
    # (failed, relative error) of the worst output so far: a failing output outranks any passing one.
    worst_key: tuple[int, float] = (-1, -1.0)

    def add(self, name: str, abs_error: float, scale: float, dtype: str, tolerance: Tolerance | None = None) -> None:
        """One output's error against `scale` (its largest expected magnitude)."""
        rel = abs_error / scale if scale > 0 else (0.0 if abs_error == 0 else math.inf)
        holds = (tolerance or self.tolerances[dtype]).holds(abs_error, scale)
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

    def compare(self, key: str, expected: np.ndarray, actual: np.ndarray | None, label: str = "") -> None:
        """Compare one output (keyed as the program keys it; `label` adds e.g. the phase)."""
        name = f"{key} ({label})" if label else key
        if actual is None:
            self.mismatch(f"{name}: missing after the pass")
            return
        if np.shape(actual) != np.shape(expected):
            self.mismatch(f"{name}: shape {np.shape(expected)} became {np.shape(actual)}")
            return
        dtype = self.precisions.get(key, np.asarray(actual).dtype)
        abs_error, scale = array_difference(expected, actual)
        self.add(name, abs_error, scale, np.dtype(dtype).name)

    def compare_all(self, expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray], label: str = "") -> None:
        """Compare outputs by key."""
        for key, value in expected.items():
            self.compare(key, value, actual.get(key), label)


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


# ---------------------------------------------------------------------------------------------
# Inputs and the reference semantics


def random_inputs(fn: func.FuncOp, rng: np.random.Generator, *, scale: float = 1.0) -> Arrays:
    """Random values for every argument of a step function, keyed by argument name.

    Floats are standard normal times `scale` (and `fan_in_scale` for weights) in the argument's
    own dtype; i32 labels are uniform over the classes their consumers expect (`label_range`)."""
    out: Arrays = {}
    for arg in args(fn):
        shape = tuple(arg.type.get_shape())
        dtype = numpy_dtype(arg.type.get_element_type())
        if dtype == np.int32:
            out[arg.name] = rng.integers(0, label_range(arg), size=shape).astype(np.int32)
        else:
            out[arg.name] = (rng.standard_normal(shape) * scale * fan_in_scale(arg)).astype(dtype)
    return out


def run_program(module: ModuleOp, inputs: Mapping[str, np.ndarray]) -> Arrays:
    """The reference semantics: outputs keyed by `{step.output}` name (extra inputs ignored)."""
    names = {a.name for a in args(step_function(module))}
    return run_function(module, {k: v for k, v in inputs.items() if k in names})


def dtype_of(arg: Arg) -> np.dtype[Any]:
    return numpy_dtype(arg.type.get_element_type())


# ---------------------------------------------------------------------------------------------
# The template


Prepared = TypeVar("Prepared")


@dataclass
class Subject:
    """The two programs a contract compares; `prepare` may derive more from them."""

    before: ModuleOp
    after: ModuleOp


class Contract(ABC, Generic[Prepared]):
    """A before/after property of one pass: `check` is the template, `trial` the step that differs.

    `tolerances` is the table of `Comparison`; `draws_per_trial` counts the rows a trial checks
    (the SGD contract checks a first and a later step per trial)."""

    name: ClassVar[str]
    tolerances: ClassVar[Tolerances] = TOLERANCES
    draws_per_trial: ClassVar[int] = 1

    def check(self, pass_name: str, before: ModuleOp, after: ModuleOp, *, trials: int, seed: int) -> ContractReport:
        """Run both programs on `trials` random draws and compare: one report row."""
        start = time.perf_counter()
        comparison = Comparison(self.tolerances, path_precisions(after))
        rng = np.random.default_rng(seed)
        prepared = self.prepare(before, after, comparison)
        ran = 0
        if comparison.ok:  # a structural mismatch found while preparing: no trial can pass
            for _ in range(trials):
                self.trial(prepared, rng, comparison)
            ran = trials * self.draws_per_trial
        seconds = time.perf_counter() - start
        return ContractReport(
            pass_name, self.name, ran, comparison.max_abs, comparison.max_rel, self.tolerance_text(comparison),
            comparison.ok, seconds, comparison.worst,
        )  # fmt: skip

    @abstractmethod
    def prepare(self, before: ModuleOp, after: ModuleOp, comparison: Comparison) -> Prepared:
        """What the trials share (programs, compiled functions), made once per check."""

    @abstractmethod
    def trial(self, prepared: Prepared, rng: np.random.Generator, comparison: Comparison) -> None:
        """Draw inputs from `rng`, run, and add each output's error to `comparison`."""

    def tolerance_text(self, comparison: Comparison) -> str:
        return tolerance_text(comparison.dtypes, self.tolerances)
