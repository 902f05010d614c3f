"""The contract framework: what every pass promises, checked by running programs before and after.

`Contract.check` is the template every contract shares: it times the check, draws random
inputs from a seeded generator, runs `trial` once per trial, compares each output against its
expected value, and returns one `ContractReport` (a row of the check table). A contract writes
only `trial` (and, when it needs one, `prepare`, run once before the trials).

There are no tolerance constants. The expected value of every output comes with its own
elementwise rounding-error bound (`stepc.ir.error_bounds`: running error analysis, each op's
reference rule in float64 plus a bound on the error of any evaluation of the op in its own
precision and any summation order), and the contract holds when `|actual - expected| <= bound`
for every element: the report's `ratio` is the worst `error / bound` (<= 1 holds). Mixed
precision needs no rule of its own: an f64 output computed through f32 ops carries the f32
roundings of those ops in its bound.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp

from stepc.backends.jax import JaxFunction, x64_enabled
from stepc.backends.jaxpr_numpy import evaluate
from stepc.ir.error_bounds import Bounded, evaluate_with_bounds, exact
from stepc.ir.interpreter import run_function
from stepc.ir.program import HYPER_RANGES, Arg, Role, args, fan_in_scale, label_range, step_function
from stepc.ir.values import numpy_dtype

Arrays = dict[str, np.ndarray]


# ---------------------------------------------------------------------------------------------
# Reports


@dataclass
class ContractReport:
    """One row of the check table: the worst `error / bound` over every compared element
    (`ratio`; the contract holds when it is at most 1) and how tight the bounds were."""

    pass_name: str
    contract: str
    trials: int
    ratio: float
    tightness: float  # median over outputs of median(bound / error) where the error is not 0
    model: str  # the precisions the bounds were computed for, e.g. "f32" or "f64, f32"
    ok: bool
    seconds: float
    worst: str = ""  # the output (or parameter) with the largest error / bound
    unchecked: int = 0  # elements whose bound is infinite (a pole or domain edge within the error)
    mode: str = "full"
    max_abs: float = 0.0  # the largest absolute error seen, for the record

    def failure_message(self) -> str:
        return (
            f"contract of pass {self.pass_name} ({self.contract}) does not hold: "
            f"worst output {self.worst or '?'} has error {_ratio_text(self.ratio)} times its rounding-error bound "
            f"(largest absolute error {self.max_abs:.3g}; bounds for {self.model})"
        )


def _ratio_text(ratio: float) -> str:
    return "inf" if math.isinf(ratio) else f"{ratio:.3g}"


def format_table(reports: list[ContractReport]) -> str:
    header = (
        f"{'pass':<20} {'contract':<26} {'trials':>6} {'err/bound':>10} {'tightness':>10} "
        f"{'bounds':<10} {'verdict':<7} {'time':>8}  {'mode'}"
    )
    lines = [header, "-" * len(header)]
    for r in reports:
        tight = "-" if not math.isfinite(r.tightness) else f"{r.tightness:.3g}"
        lines.append(
            f"{r.pass_name:<20} {r.contract:<26} {r.trials:>6} {_ratio_text(r.ratio):>10} {tight:>10} "
            f"{r.model:<10} {'ok' if r.ok else 'FAILED':<7} {r.seconds * 1000:>6.0f}ms  {r.mode}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Comparing outputs against their bounds

SHORT_NAMES = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64", "int32": "i32", "uint32": "ui32"}


@dataclass
class Comparison:
    """The worst `error / bound` seen over outputs and trials.

    `compare(key, expected, actual)` checks every element of one output: `|actual - value| <=
    error` where `expected` is a `Bounded` (its float64 value and its rounding-error bound from
    `stepc.ir.error_bounds`). An element whose bound is 0 must be exact; one whose bound is
    infinite is counted in `unchecked`; NaN or inf on both sides in the same place agrees."""

    ratio: float = 0.0
    max_abs: float = 0.0
    ok: bool = True
    worst: str = ""
    unchecked: int = 0
    models: set[str] = field(default_factory=set[str])
    tightness: list[float] = field(default_factory=list[float])
    # (failed, ratio) of the worst output so far: a failing output outranks any passing one.
    worst_key: tuple[int, float] = (-1, -1.0)

    def add(self, name: str, error: float, bound: float, model: str) -> None:
        """One scalar error against its bound (a pairing of the VJP contract)."""
        ratio = _ratio(np.asarray(error), np.asarray(bound))
        self._record(name, ratio, error, model)
        if error > 0 and 0 < bound < math.inf:
            self.tightness.append(bound / error)

    def mismatch(self, name: str) -> None:
        """A structural difference (missing output, wrong shape): fails with an infinite ratio."""
        self.ratio = self.max_abs = math.inf
        self.ok = False
        self._rank(name, (1, math.inf))

    def _record(self, name: str, ratio: float, max_abs: float, model: str) -> None:
        self.models.add(model)
        self.ratio = max(self.ratio, ratio)
        self.max_abs = max(self.max_abs, max_abs)
        holds = ratio <= 1.0
        self.ok = self.ok and holds
        self._rank(name, (0 if holds else 1, ratio))

    def _rank(self, name: str, key: tuple[int, float]) -> None:
        if key > self.worst_key:
            self.worst, self.worst_key = name, key

    def compare(self, key: str, expected: Bounded, actual: np.ndarray | None, label: str = "", model: str = "") -> None:
        """Compare one output (keyed as the program keys it; `label` adds e.g. the phase)."""
        name = f"{key} ({label})" if label else key
        if actual is None:
            self.mismatch(f"{name}: missing after the pass")
            return
        if np.shape(actual) != np.shape(expected.value):
            self.mismatch(f"{name}: shape {np.shape(expected.value)} became {np.shape(actual)}")
            return
        a = np.asarray(actual)
        error = elementwise_error(expected.value, a)
        bound = expected.bound()
        self.unchecked += int(np.count_nonzero(np.isinf(bound)))
        checked = np.isfinite(bound)
        ratio = _ratio(error[checked], bound[checked])
        finite_error = error[checked & np.isfinite(error)]
        self._record(name, ratio, float(np.max(finite_error, initial=0.0)) if math.isfinite(ratio) else math.inf,
                     model or SHORT_NAMES.get(a.dtype.name, a.dtype.name))  # fmt: skip
        positive = checked & (error > 0) & np.isfinite(error)
        if np.any(positive):
            self.tightness.append(float(np.median(bound[positive] / error[positive])))

    def compare_all(self, expected: Mapping[str, Bounded], actual: Mapping[str, np.ndarray], label: str = "") -> None:
        """Compare outputs by key."""
        for key, value in expected.items():
            self.compare(key, value, actual.get(key), label)

    def compare_exactly(self, expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray]) -> None:
        """Compare outputs by key, each element required equal (a bound of 0: passes that do the
        same roundings as the program before them)."""
        self.compare_all({key: exact(value) for key, value in expected.items()}, actual)

    def absorb(self, other: Comparison) -> None:
        """Fold another comparison's findings into this one."""
        self.ratio = max(self.ratio, other.ratio)
        self.max_abs = max(self.max_abs, other.max_abs)
        self.ok = self.ok and other.ok
        self.unchecked += other.unchecked
        self.models |= other.models
        self.tightness.extend(other.tightness)
        self._rank(other.worst, other.worst_key)

    def median_tightness(self) -> float:
        return float(np.median(self.tightness)) if self.tightness else math.inf


def elementwise_error(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """`|actual - expected|` in float64; NaN or inf in the same place on both sides is 0 (a
    program that overflows does so before and after), any other non-finite difference inf."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.array(np.abs(a - e), dtype=np.float64)
    same_special = (np.isnan(e) & np.isnan(a)) | (np.isinf(e) & (e == a))
    error[same_special] = 0.0
    error[np.isnan(error)] = np.inf
    return error


def _ratio(error: np.ndarray, bound: np.ndarray) -> float:
    """max(error / bound): an error where the bound is 0 is infinitely over it."""
    if error.size == 0:
        return 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(error == 0, 0.0, error / bound)
    return float(np.max(np.nan_to_num(ratios, nan=math.inf)))


# ---------------------------------------------------------------------------------------------
# Inputs and the reference semantics


def random_inputs(fn: func.FuncOp, rng: np.random.Generator, *, scale: float = 1.0) -> Arrays:
    """Random values for every argument of a step function, keyed by argument name.

    Floats are standard normal times `scale` (and `fan_in_scale` for weights) in the argument's
    own dtype; i32 labels are uniform over the classes their consumers expect (`label_range`);
    ui32 keys are uniform uint32 words."""
    out: Arrays = {}
    for arg in args(fn):
        shape = tuple(arg.type.get_shape())
        dtype = numpy_dtype(arg.type.get_element_type())
        if dtype == np.int32:
            out[arg.name] = rng.integers(0, label_range(arg), size=shape).astype(np.int32)
        elif dtype == np.uint32:  # a random key: any two words
            out[arg.name] = rng.integers(0, 2**32, size=shape, dtype=np.uint32)
        elif arg.role == Role.HYPER:  # a run-time optimizer field: a valid value of it
            low, high = HYPER_RANGES.get(arg.hyper_field or "", (0.0, 1.0))
            out[arg.name] = np.asarray(rng.uniform(low, high), dtype=dtype)
        else:
            out[arg.name] = (rng.standard_normal(shape) * scale * fan_in_scale(arg)).astype(dtype)
    return out


def run_program(module: ModuleOp, inputs: Mapping[str, np.ndarray]) -> Arrays:
    """The reference semantics: outputs keyed by `{step.output}` name (extra inputs ignored)."""
    names = {a.name for a in args(step_function(module))}
    return run_function(module, {k: v for k, v in inputs.items() if k in names})


def run_with_numpy(jf: JaxFunction, inputs: Mapping[str, np.ndarray]) -> Arrays:
    """Outputs by key of a JAX function (a lowered program) on inputs keyed by argument name,
    its jaxpr evaluated with NumPy: the ops XLA would run, without an XLA compile."""
    with x64_enabled(jf.needs_x64):
        outputs = evaluate(jf.fn, *(inputs[spec.name] for spec in jf.specs))
    return {name: np.asarray(v) for name, v in zip(jf.output_names, outputs)}


def bounded_program(module: ModuleOp, inputs: Mapping[str, np.ndarray]) -> dict[str, Bounded]:
    """The reference semantics in float64 with each output's rounding-error bound (extra inputs
    ignored): what a pass's result is compared against."""
    fn = step_function(module)
    names = {a.name for a in args(fn)}
    return evaluate_with_bounds(fn, {k: v for k, v in inputs.items() if k in names})


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

    `draws_per_trial` counts the rows a trial checks (the SGD contract checks a first and a
    later step per trial)."""

    name: ClassVar[str]
    draws_per_trial: ClassVar[int] = 1

    def check(self, pass_name: str, before: ModuleOp, after: ModuleOp, *, trials: int, seed: int) -> ContractReport:
        """Run both programs on `trials` random draws and compare: one report row."""
        if trials < 1:
            raise ValueError(f"a contract needs at least one trial (got {trials}): zero trials would check nothing")
        start = time.perf_counter()
        comparison = Comparison()
        rng = np.random.default_rng(seed)
        prepared = self.prepare(before, after, comparison)
        ran = 0
        if comparison.ok:  # a structural mismatch found while preparing: no trial can pass
            for _ in range(trials):
                self.trial(prepared, rng, comparison)
            ran = trials * self.draws_per_trial
        seconds = time.perf_counter() - start
        return ContractReport(
            pass_name, self.name, ran, comparison.ratio, comparison.median_tightness(),
            ", ".join(sorted(comparison.models)) or "-", comparison.ok, seconds, comparison.worst,
            comparison.unchecked, max_abs=comparison.max_abs,
        )  # fmt: skip

    def without_xla(self) -> Contract[Prepared]:
        """The same contract with every program run by NumPy (no XLA compile): what the reduced
        mode runs, where an XLA compile would cost more than the whole check (`check.reduced`)."""
        return self

    @abstractmethod
    def prepare(self, before: ModuleOp, after: ModuleOp, comparison: Comparison) -> Prepared:
        """What the trials share (programs, compiled functions), made once per check."""

    @abstractmethod
    def trial(self, prepared: Prepared, rng: np.random.Generator, comparison: Comparison) -> None:
        """Draw inputs from `rng`, run, and add each output's error to `comparison`."""
