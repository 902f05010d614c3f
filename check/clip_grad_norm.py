"""The contract of `clip-grad-norm`: the post-pass gradients equal
`torch.nn.utils.clip_grad_norm_` of the pre-pass ones, computed independently in NumPy float64.

Each trial draws parameters and a batch twice: at the program's own scale, and with the batch
scaled so that the total gradient norm lands on the other side of MAX from the first draw's
(one trial clips, one does not, whatever MAX is). The expected gradients carry the pre-pass
program's rounding-error bounds, then one rounding per operation of the formula in the norm's
type (`Precision`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation

from stepc.check.contract import Comparison, Contract, bounded_program, dtype_of, random_inputs, run_program
from stepc.ir.dialect import SqrtOp
from stepc.ir.error_bounds import RULES, Bounded, Precision, _sum, literal, plus, quotient, times  # pyright: ignore[reportPrivateUsage]  # the sum's bound
from stepc.ir.program import LOSS, Arg, grad_key, params, step_function
from stepc.passes.clip_grad_norm import EPSILON, clip_max_norm


def _sqrt(x: Bounded, p: Precision) -> Bounded:
    return RULES[SqrtOp](cast(Operation, None), [x], p)


def _converted(x: Bounded, dtype: np.dtype[Any]) -> Bounded:
    r = Precision.of(dtype).rounding(x.value)
    return Bounded(x.value, x.error + r, np.sqrt(x.sigma**2 + r**2))


def clip_equation_bounded(grads: list[Bounded], dtypes: list[np.dtype[Any]], max_norm: float) -> list[Bounded]:
    """torch's clip_grad_norm_ (norm type 2) on `grads`, with the bound of its evaluation in the
    widest of `dtypes` (the clamp to 1 is exact and 1-Lipschitz: the coefficient's bound carries)."""
    wide = max(dtypes, key=lambda d: d.itemsize)
    p = Precision.of(wide)
    total: Bounded | None = None
    for g, dtype in zip(grads, dtypes):
        x = g if dtype == wide else _converted(g, wide)
        square = times(x, x, p)
        summed = _sum(square, tuple(range(square.value.ndim)), p) if square.value.ndim else square
        norm = _sqrt(summed, p)
        term = times(norm, norm, p)
        total = term if total is None else plus(total, term, p)
    assert total is not None
    total_norm = _sqrt(total, p)
    coef = quotient(literal(max_norm, wide), plus(total_norm, literal(EPSILON, wide), p), p)
    clamped = Bounded(np.minimum(coef.value, 1.0), coef.error, coef.sigma)
    out: list[Bounded] = []
    for g, dtype in zip(grads, dtypes):
        factor = clamped if dtype == wide else _converted(clamped, dtype)
        out.append(times(g, factor, Precision.of(dtype)))
    return out


@dataclass
class Clipped:
    before: ModuleOp
    after: ModuleOp
    max_norm: float
    params: list[Arg]


class ClipContract(Contract[Clipped]):
    """Post-pass gradients = `clip_equation_bounded` of the pre-pass ones, clipped and not."""

    name = "clip_grad_norm equation"
    draws_per_trial = 2

    def prepare(self, before: ModuleOp, after: ModuleOp, comparison: Comparison) -> Clipped:
        fn = step_function(before)
        max_norm = clip_max_norm(fn)
        assert max_norm is not None
        return Clipped(before, after, max_norm, params(fn))

    def trial(self, prepared: Clipped, rng: np.random.Generator, comparison: Comparison) -> None:
        fn = step_function(prepared.before)
        inputs = random_inputs(fn, rng)
        for label in ("drawn", "rescaled"):
            pre = bounded_program(prepared.before, inputs)
            grads = [pre[grad_key(p.name)] for p in prepared.params]
            norm = float(np.sqrt(sum(float(np.sum(np.square(g.value))) for g in grads)))
            post = run_program(prepared.after, inputs)
            dtypes = [dtype_of(p) for p in prepared.params]
            expected = dict(zip((grad_key(p.name) for p in prepared.params), clip_equation_bounded(grads, dtypes, prepared.max_norm)))
            expected[LOSS] = pre[LOSS]
            comparison.compare_all(expected, post, label)
            # The second draw: parameters scaled so the norm crosses MAX (roughly x4 or /4 of it).
            if norm > 0.0 and np.isfinite(norm) and prepared.max_norm > 0.0:
                factor = 4.0 * prepared.max_norm / norm if norm <= prepared.max_norm else prepared.max_norm / (4.0 * norm)
                inputs = {k: (v * np.asarray(factor, dtype=v.dtype) if v.dtype.kind == "f" else v) for k, v in inputs.items()}



