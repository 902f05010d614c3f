"""The contract of `accumulate-gradients`: the post-pass program equals the mean over the
micro-batches of the pre-pass program, each micro-batch run on its own.

Each trial draws K-stacked inputs for the post-pass program (`random_inputs`: parameters, and
each batch input with its leading axis of K), runs the pre-pass program (one micro-batch, no
loop) on each micro-batch k (`x[k]`, the parameters as they are) in float64 with its
rounding-error bounds (`bounded_program`), adds the K results up and divides by K, with the
bound of that sum and division in the output's type (`mean_bounded`), and compares the
post-pass program, run by the reference interpreter, with it. A loop that drops or repeats a
micro-batch, a sum left undivided, a loss not averaged, micro-batches cut along the wrong
axis: each is far above its bound.

The signature is checked first: the post-pass program takes the pre-pass arguments (the same
names, roles and element types), each batch input with a leading axis of K, and returns the
same keys; a difference fails before any trial. Without `step.accumulate` the pass changes
nothing, and the contract is identity within the bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from stepc.check.contract import Arrays, Comparison, Contract, bounded_program, random_inputs, run_program
from stepc.ir.error_bounds import Bounded, Precision, SumTerms, literal, quotient, summed
from stepc.ir.narrow import is_tensor
from stepc.ir.program import Role, accumulate_count, arg_specs, output_names, step_function
from stepc.ir.values import numpy_dtype


def mean_bounded(terms: SumTerms, count: int, dtype: np.dtype[Any]) -> Bounded:
    """The mean of K terms as the accumulated program computes it in `dtype`: their sum in
    any order (`summed`), then one division by K (K rounded to `dtype`)."""
    p = Precision.of(dtype)
    return quotient(summed(terms, p), literal(float(count), dtype), p)


@dataclass
class Accumulation:
    """The programs, K (None without the attribute), the batch inputs' names and each output's dtype."""

    before: ModuleOp
    after: ModuleOp
    count: int | None
    batch: frozenset[str]
    dtypes: dict[str, np.dtype[Any]]


class AccumulationContract(Contract[Accumulation]):
    """Post-pass outputs = the mean over k of the pre-pass outputs on micro-batch k."""

    name = "mean over micro-batches"

    def prepare(self, before: ModuleOp, after: ModuleOp, comparison: Comparison) -> Accumulation:
        fn_before, fn_after = step_function(before), step_function(after)
        count = accumulate_count(fn_before)
        expected = [
            (s.name, s.role, (count, *s.shape) if count is not None and s.role == Role.INPUT else s.shape, s.dtype)
            for s in arg_specs(fn_before)
        ]
        found = [(s.name, s.role, s.shape, s.dtype) for s in arg_specs(fn_after)]
        if found != expected:
            comparison.mismatch(f"arguments: expected {_listed(expected)}, found {_listed(found)}")
        if output_names(fn_after) != output_names(fn_before):
            comparison.mismatch(
                f"outputs: expected ({', '.join(output_names(fn_before))}), found ({', '.join(output_names(fn_after))})"
            )
        dtypes: dict[str, np.dtype[Any]] = {}
        for key, t in zip(output_names(fn_before), fn_before.function_type.outputs.data):
            assert is_tensor(t)
            dtypes[key] = numpy_dtype(t.get_element_type())
        batch = frozenset(s.name for s in arg_specs(fn_before) if s.role == Role.INPUT)
        return Accumulation(before, after, count, batch, dtypes)

    def trial(self, prepared: Accumulation, rng: np.random.Generator, comparison: Comparison) -> None:
        inputs = random_inputs(step_function(prepared.after), rng)
        actual = run_program(prepared.after, inputs)
        if prepared.count is None:
            comparison.compare_all(bounded_program(prepared.before, inputs), actual)
            return
        terms: dict[str, SumTerms] = {}
        for k in range(prepared.count):
            micro: Arrays = {name: value[k] if name in prepared.batch else value for name, value in inputs.items()}
            for key, value in bounded_program(prepared.before, micro).items():
                if key in terms:
                    terms[key].add(value)
                else:
                    terms[key] = SumTerms.first(value)
        expected = {key: mean_bounded(t, prepared.count, prepared.dtypes[key]) for key, t in terms.items()}
        comparison.compare_all(expected, actual)


def _listed(specs: list[tuple[str, Role, tuple[int, ...], np.dtype[Any]]]) -> str:
    return ", ".join(f"%{name} ({role}, {tuple(shape)}, {dtype.name})" for name, role, shape, dtype in specs)
