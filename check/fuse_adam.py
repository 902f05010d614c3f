"""The contract of `fuse-adam`: the post-pass parameters and state equal torch.optim.Adam's (or
AdamW's) equations on the pre-pass gradients, computed independently in NumPy float64.

The expected values carry rounding-error bounds: the gradients' from the pre-pass program
(`stepc.ir.error_bounds`), then one rounding per operation of the equation in the parameter's
type, each hyperparameter rounded to that type. The bias corrections `1 - beta ** step` are
computed here with Python's `**` (as torch does); the program's own evaluation of them (a tanh in
f32, or f64 for an f64 parameter) is allowed `BIAS_CORRECTION_ULPS` ulps of that type.

Each trial draws parameters and a batch, runs the pre-pass program (its loss and gradients),
then the post-pass program twice: as torch's first step (zero state, `step` = 0) and as a later
one (random moments, `exp_avg_sq` and `max_exp_avg_sq` non-negative, `step` a random count).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation

from stepc.check.contract import Arrays, Comparison, Contract, bounded_program, dtype_of, random_inputs, run_program
from stepc.check.fuse_sgd import Fused, derived_literal, with_run_time_fields
from stepc.ir.dialect import SqrtOp
from stepc.ir.error_bounds import RULES, Bounded, Precision, exact, literal, plus, quotient, times, unit_roundoff
from stepc.ir.program import LOSS, STEP_COUNT, Arg, grad_key, step_function
from stepc.passes.fuse_adam import AdamHyper, adam_hyperparameters, exp_avg_key, exp_avg_sq_key, max_exp_avg_sq_key

# The program's `1 - beta ** step` (tanh, a product, a quotient, each a few ulps) against Python's.
BIAS_CORRECTION_ULPS = 64.0
LATER_STEPS = (1, 2, 7, 100)


def _sqrt(x: Bounded, p: Precision) -> Bounded:
    return RULES[SqrtOp](cast(Operation, None), [x], p)


def _maximum(a: Bounded, b: Bounded) -> Bounded:
    """`max(a, b)`: off by at most the larger error of the two (max is 1-Lipschitz, exact)."""
    return Bounded(np.maximum(a.value, b.value), np.maximum(a.error, b.error), np.maximum(a.sigma, b.sigma))


def _converted(x: Bounded, dtype: np.dtype[Any]) -> Bounded:
    """`x` rounded to `dtype` (one rounding)."""
    r = Precision.of(dtype).rounding(x.value)
    return Bounded(x.value, x.error + r, np.sqrt(x.sigma**2 + r**2))


def bias_correction(beta: float, step: int, dtype: np.dtype[Any]) -> Bounded:
    """`1 - beta ** step` as torch computes it (Python floats), with the program's allowance."""
    value = 1.0 - beta**step
    scalar = np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)
    off = BIAS_CORRECTION_ULPS * 2.0 * unit_roundoff(scalar) * abs(value)
    return Bounded(np.asarray(value), np.asarray(off), np.asarray(off))


def adam_equation_bounded(
    param: np.ndarray,
    grad: Bounded,
    state: list[np.ndarray],
    step: int,
    hyper: AdamHyper,
    dtype: np.dtype[Any],
) -> tuple[Bounded, list[Bounded]]:
    """torch's `_single_tensor_adam` for one parameter at step count `step` (before the increment),
    in float64 with the bound of its evaluation in `dtype`: the new parameter and state."""
    p = Precision.of(dtype)
    scalar = np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)
    ps = Precision.of(scalar)
    weights = exact(param)
    g = Bounded(-grad.value, grad.error, grad.sigma) if hyper.maximize else grad
    run_time = hyper.runtime
    if hyper.weight_decay != 0.0 or "weight_decay" in run_time:
        if hyper.decoupled:
            decay = derived_literal(1.0 - hyper.lr * hyper.weight_decay, dtype, bool({"lr", "weight_decay"} & run_time))
            weights = times(weights, decay, p)
        else:
            g = plus(g, times(exact(param), literal(hyper.weight_decay, dtype), p), p)
    exp_avg, exp_avg_sq = exact(state[0]), exact(state[1])
    w = 1.0 - hyper.beta1
    beta1_at_run_time = "beta1" in run_time
    if w < 0.5:
        new_exp_avg = plus(exp_avg, times(plus(g, exp_avg, p, -1.0), derived_literal(w, dtype, beta1_at_run_time), p), p)
    else:
        weight = derived_literal(1.0 - w, dtype, beta1_at_run_time)
        new_exp_avg = plus(g, times(plus(g, exp_avg, p, -1.0), weight, p), p, -1.0)
    one_minus_beta2 = derived_literal(1.0 - hyper.beta2, dtype, "beta2" in run_time)
    new_exp_avg_sq = plus(
        times(exp_avg_sq, literal(hyper.beta2, dtype), p), times(times(g, one_minus_beta2, p), g, p), p
    )
    new_state = [new_exp_avg, new_exp_avg_sq]
    second = new_exp_avg_sq
    if hyper.amsgrad:
        second = _maximum(exact(state[2]), new_exp_avg_sq)
        new_state.append(second)
    t = step + 1
    bc1 = bias_correction(hyper.beta1, t, dtype)
    bc2 = bias_correction(hyper.beta2, t, dtype)
    step_size = _converted(quotient(literal(hyper.lr, scalar), bc1, ps), dtype)
    bc2_sqrt = _converted(_sqrt(bc2, ps), dtype)
    denom = plus(quotient(_sqrt(second, p), bc2_sqrt, p), literal(hyper.eps, dtype), p)
    new_param = plus(weights, quotient(times(new_exp_avg, step_size, p), denom, p), p, -1.0)
    return new_param, new_state


class AdamEquationContract(Contract[Fused[AdamHyper]]):
    """New parameters and state = `adam_equation_bounded` of the pre-pass gradients, first and later step."""

    name = "Adam equation"
    draws_per_trial = 2

    def prepare(self, before: ModuleOp, after: ModuleOp, comparison: Comparison) -> Fused[AdamHyper]:
        return Fused.of(before, after, adam_hyperparameters)

    def trial(self, prepared: Fused[AdamHyper], rng: np.random.Generator, comparison: Comparison) -> None:
        inputs = random_inputs(step_function(prepared.before), rng)
        pre = bounded_program(prepared.before, inputs)
        for first_step in (True, False):
            step = 0 if first_step else int(rng.choice(LATER_STEPS))
            state = self._state(prepared.state, rng, first_step, step)
            post = run_program(prepared.after, {**inputs, **state})
            expected = self._expected(prepared, inputs, state, pre, step)
            comparison.compare_all(expected, post, "first step" if first_step else f"step {step + 1}")

    @staticmethod
    def _state(state_args: list[Arg], rng: np.random.Generator, first_step: bool, step: int) -> Arrays:
        """Torch's state before its first step (zeros), or random moments after `step` steps."""
        state: Arrays = {}
        for arg in state_args:
            key = arg.state_key
            assert key is not None
            dtype = dtype_of(arg)
            shape = tuple(arg.type.get_shape())
            if key == STEP_COUNT:
                state[key] = np.full(shape, float(step), dtype=dtype)
            elif first_step:
                state[key] = np.zeros(shape, dtype=dtype)
            elif key.startswith("exp_avg."):
                state[key] = rng.standard_normal(shape).astype(dtype)
            else:  # second moments are never negative
                state[key] = np.abs(rng.standard_normal(shape)).astype(dtype)
        return state

    @staticmethod
    def _expected(
        prepared: Fused[AdamHyper], inputs: Arrays, state: Arrays, pre: dict[str, Bounded], step: int
    ) -> dict[str, Bounded]:
        """Every output the fused program must return, by key, in float64 with its bound."""
        expected: dict[str, Bounded] = {}
        for p in prepared.params:
            hyper = with_run_time_fields(prepared.hyper[p.name], prepared.run_time, inputs)
            keys = [exp_avg_key(p.name), exp_avg_sq_key(p.name)]
            if hyper.amsgrad:
                keys.append(max_exp_avg_sq_key(p.name))
            new_param, new_state = adam_equation_bounded(
                inputs[p.name], pre[grad_key(p.name)], [state[k] for k in keys], step, hyper, dtype_of(p)
            )
            expected[p.name] = new_param
            expected.update(zip(keys, new_state))
        expected[STEP_COUNT] = exact(np.asarray(float(step + 1)))
        expected[LOSS] = pre[LOSS]
        return expected
