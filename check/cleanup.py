"""The contract of the cleanups (`cse`, `dce`, `canonicalize`): they change no output.

`cse` and `dce` only merge identical ops and drop unused ones, so the program after computes
every output with the same roundings as the one before: equal bits on the reference
interpreter (`ExactIdentityContract`, also the cheaper check: no bounds to carry).
`canonicalize` may fold and rewrite arithmetic, so its outputs are held to the rounding-error
bound of the program before (`IdentityContract`)."""

from __future__ import annotations

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from stepc.check.contract import Comparison, Contract, Subject, bounded_program, random_inputs, run_program
from stepc.ir.program import step_function


class IdentityContract(Contract[Subject]):
    """Every output after, on the reference interpreter, is within the rounding-error bound of
    the program before (a cleanup may drop or fold an op, changing roundings within the bound)."""

    name = "identity"

    def prepare(self, before: ModuleOp, after: ModuleOp, comparison: Comparison) -> Subject:
        return Subject(before, after)

    def trial(self, prepared: Subject, rng: np.random.Generator, comparison: Comparison) -> None:
        inputs = random_inputs(step_function(prepared.before), rng)
        comparison.compare_all(bounded_program(prepared.before, inputs), run_program(prepared.after, inputs))


class ExactIdentityContract(IdentityContract):
    """Every output after equals the one before bit for bit on the reference interpreter (the
    bound of every element is 0): the pass only merged identical ops or dropped unused ones."""

    name = "identity (exact)"

    def trial(self, prepared: Subject, rng: np.random.Generator, comparison: Comparison) -> None:
        inputs = random_inputs(step_function(prepared.before), rng)
        comparison.compare_exactly(run_program(prepared.before, inputs), run_program(prepared.after, inputs))
