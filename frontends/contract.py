"""The importers' contract (`check_import` of `torch.py` and `jax.py`): the imported program's
loss and gradients against the framework's own, computed in float64 by an oracle.

On `trials` random draws of parameters and batch (`random_inputs`), the imported program's
gradient program (after `seed-scalar-loss`) runs in its own precision by the jaxpr evaluator,
and each output is compared with the oracle's value within the program's rounding-error bound
(`stepc.ir.error_bounds`: what any evaluation of its ops in its precision may differ from their
exact value; the oracle's float64 stands for the exact one).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np

from stepc.api import Program
from stepc.check.contract import Comparison, ContractReport, bounded_program, random_inputs, run_with_numpy
from stepc.ir.error_bounds import Bounded
from stepc.ir.program import step_function

# inputs keyed by IR name -> {"loss": ..., "grad.NAME": ...} in float64
Oracle = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


def check_against(prog: Program, oracle: Oracle, framework: str, *, trials: int, seed: int) -> ContractReport:
    """One row `import | loss, grads = FRAMEWORK f64` of the check table."""
    if trials < 1:
        raise ValueError(f"the import check needs at least one trial (got {trials})")
    start = time.perf_counter()
    grad_module = prog.modules["seed-scalar-loss"]  # the step ops (the grad role is the lowered program)
    fn = step_function(grad_module)
    jf = prog.function("grad")
    comparison = Comparison()
    rng = np.random.default_rng(seed)
    for _ in range(trials):
        inputs = random_inputs(fn, rng)
        bounded = bounded_program(grad_module, inputs)
        actual = run_with_numpy(jf, inputs)
        expected = oracle(inputs)
        for key, b in bounded.items():
            if key not in expected:
                comparison.mismatch(f"{key}: {framework} has no such value")
                continue
            comparison.compare(key, Bounded(expected[key], b.error, b.sigma), actual.get(key))
    return ContractReport(
        "import", f"loss, grads = {framework.lower()} f64", trials, comparison.ratio, comparison.median_tightness(),
        ", ".join(sorted(comparison.models)) or "-", comparison.ok, time.perf_counter() - start, comparison.worst,
        comparison.unchecked, max_abs=comparison.max_abs,
    )  # fmt: skip
