"""The contract of `lower-to-stablehlo`: the JAX function of the lowered module equals the
reference interpreter on random inputs.

Two engines (XLA and NumPy) order sums and fuse differently, so the tolerance is that of
`ENGINE_TOLERANCES`: a few ulps of the type times the depth of the sums, normwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from stepc.backends.jax import JaxFunction, jax_function
from stepc.check.contract import ENGINE_TOLERANCES, Comparison, Contract, random_inputs, run_program
from stepc.ir.program import step_function


@dataclass
class Engines:
    """The step-dialect program (run by the interpreter) and the lowered one as JAX."""

    before: ModuleOp
    lowered: JaxFunction


class LoweringContract(Contract[Engines]):
    """XLA's results of the lowered program equal the interpreter's of the step program."""

    name = "equal results (JAX)"
    tolerances = ENGINE_TOLERANCES

    def prepare(self, before: ModuleOp, after: ModuleOp, comparison: Comparison) -> Engines:
        return Engines(before, jax_function(after))

    def trial(self, prepared: Engines, rng: np.random.Generator, comparison: Comparison) -> None:
        inputs = random_inputs(step_function(prepared.before), rng)
        program = prepared.lowered
        found = program({spec.key: inputs[spec.name] for spec in program.specs})
        comparison.compare_all(run_program(prepared.before, inputs), {k: np.asarray(v) for k, v in found.items()})
