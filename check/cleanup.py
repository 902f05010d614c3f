"""The contract of the cleanups (`cse`, `dce`, `canonicalize`): they change no output."""

from __future__ import annotations

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from stepc.check.contract import Comparison, Contract, Subject, random_inputs, run_program
from stepc.ir.program import step_function


class IdentityContract(Contract[Subject]):
    """Every output before equals the one after, on the reference interpreter."""

    name = "identity"

    def prepare(self, before: ModuleOp, after: ModuleOp, comparison: Comparison) -> Subject:
        return Subject(before, after)

    def trial(self, prepared: Subject, rng: np.random.Generator, comparison: Comparison) -> None:
        inputs = random_inputs(step_function(prepared.before), rng)
        comparison.compare_all(run_program(prepared.before, inputs), run_program(prepared.after, inputs))
