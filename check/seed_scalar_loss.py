"""The contract of `seed-scalar-loss`: the program after equals the one before run with
cotangent 1 for the loss (and 0 for any other output's cotangent)."""

from __future__ import annotations

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from stepc.check.contract import Comparison, Contract, Subject, bounded_program, dtype_of, random_inputs, run_program
from stepc.ir.program import LOSS, cotangents, output_names, step_function


class SeedContract(Contract[Subject]):
    """`after(x) = before(x, ct_loss = 1, ct_other = 0)` on the reference interpreter, within
    the rounding-error bound of the program before."""

    name = "seed: after = before(ct=1)"

    def prepare(self, before: ModuleOp, after: ModuleOp, comparison: Comparison) -> Subject:
        return Subject(before, after)

    def trial(self, prepared: Subject, rng: np.random.Generator, comparison: Comparison) -> None:
        fn_before = step_function(prepared.before)
        names = output_names(fn_before)
        inputs = random_inputs(step_function(prepared.after), rng)
        for index, arg in enumerate(cotangents(fn_before)):
            is_loss = index < len(names) and names[index] == LOSS
            inputs[arg.name] = np.full(tuple(arg.type.get_shape()), 1.0 if is_loss else 0.0, dtype=dtype_of(arg))
        comparison.compare_all(bounded_program(prepared.before, inputs), run_program(prepared.after, inputs))
