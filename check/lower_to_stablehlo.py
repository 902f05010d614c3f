"""The contract of `lower-to-stablehlo`: the JAX function of the lowered module equals the
reference interpreter on random inputs.

XLA orders sums, fuses ops and keeps extra precision as it likes; every element of its results
must lie within the rounding-error bound of the step program (`stepc.ir.error_bounds`), which
holds for any summation order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from stepc.backends.jax import JaxFunction, jax_function
from stepc.check.contract import Comparison, Contract, bounded_program, random_inputs, run_with_numpy
from stepc.ir.program import step_function


@dataclass
class Engines:
    """The step-dialect program (run by the interpreter) and the lowered one as JAX."""

    before: ModuleOp
    lowered: JaxFunction


class LoweringContract(Contract[Engines]):
    """XLA's results of the lowered program equal the interpreter's of the step program."""

    name = "equal results (JAX)"

    def __init__(self, with_xla: bool = True):
        self.with_xla = with_xla

    def without_xla(self) -> LoweringContract:
        """The lowered program's `jax.lax` calls run by NumPy (`backends/jaxpr_numpy.py`): the
        same ops, without an XLA compile."""
        return LoweringContract(with_xla=False)

    def prepare(self, before: ModuleOp, after: ModuleOp, comparison: Comparison) -> Engines:
        return Engines(before, jax_function(after))

    def trial(self, prepared: Engines, rng: np.random.Generator, comparison: Comparison) -> None:
        inputs = random_inputs(step_function(prepared.before), rng)
        program = prepared.lowered
        if self.with_xla:
            found = program({spec.key: inputs[spec.name] for spec in program.specs})
        else:
            found = run_with_numpy(program, inputs)
        comparison.compare_all(bounded_program(prepared.before, inputs), {k: np.asarray(v) for k, v in found.items()})
