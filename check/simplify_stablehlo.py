"""The contract of `simplify-stablehlo`: the rewritten StableHLO computes what it did.

Both programs run through the JAX backend's `jax.lax` calls on the same random inputs, their
jaxprs evaluated with NumPy (`backends/jaxpr_numpy.py`): the same ops XLA would run, without
two XLA compiles per check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from stepc.backends.jax import JaxFunction, jax_function
from stepc.check.contract import Comparison, Contract, random_inputs, run_with_numpy
from stepc.ir.program import step_function


@dataclass
class Functions:
    """The lowered program before and after the rewrites, as JAX functions."""

    before: ModuleOp
    jax_before: JaxFunction
    jax_after: JaxFunction


class SimplifyContract(Contract[Functions]):
    """Equal results, exactly: the rewrites (a select for a mask product, a scatter for
    `x - one_hot`) do the same roundings, so the bound of every element is 0."""

    name = "identity (JAX)"

    def prepare(self, before: ModuleOp, after: ModuleOp, comparison: Comparison) -> Functions:
        return Functions(before, jax_function(before), jax_function(after))

    def trial(self, prepared: Functions, rng: np.random.Generator, comparison: Comparison) -> None:
        inputs = random_inputs(step_function(prepared.before), rng)
        comparison.compare_exactly(run_with_numpy(prepared.jax_before, inputs), run_with_numpy(prepared.jax_after, inputs))
