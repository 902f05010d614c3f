"""The contract of `fuse-sgd`: the post-pass parameters and state equal torch.optim.SGD's
equation on the pre-pass gradients, computed independently in NumPy float64.

The expected values carry rounding-error bounds: the gradients' from the pre-pass program
(`stepc.ir.error_bounds`), then the equation's own roundings in the parameter's type
(`sgd_equation_bounded`: each hyperparameter rounded to that type, one rounding per + and *).

Each trial draws parameters and a batch, runs the pre-pass program (its loss and gradients),
then the post-pass program twice: as a first step (`first_step` = 1, zero buffers, or random
ones when the program reads the flag, for torch ignores them) and as a later step (random
buffers, `first_step` = 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

import numpy as np
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp

from stepc.check.contract import Arrays, Comparison, Contract, bounded_program, dtype_of, random_inputs, run_program
from stepc.ir.error_bounds import Bounded, Precision, exact, literal, plus, times, unit_roundoff
from stepc.ir.program import (
    FIRST_STEP,
    LOSS,
    Arg,
    Role,
    args_of,
    check_hyper_inputs,
    grad_key,
    momentum_key,
    params,
    step_function,
)
from stepc.passes.fuse_sgd import Hyper, hyperparameters


def sgd_equation_bounded(
    param: np.ndarray, grad: Bounded, buffer: np.ndarray | None, first_step: bool, hyper: Hyper, dtype: np.dtype[Any]
) -> tuple[Bounded, Bounded | None]:
    """torch.optim.SGD's update of one parameter, in float64 with the bound of its evaluation in
    `dtype` (`buffer` is ignored on a first step, where torch's buffer is None): the gradient's
    error carried through, each hyperparameter's rounding to `dtype`, one rounding per operation."""
    p = Precision.of(dtype)
    weights = exact(param)
    d_p = Bounded(-grad.value, grad.error, grad.sigma) if hyper.maximize else grad
    if hyper.weight_decay != 0.0 or "weight_decay" in hyper.runtime:
        d_p = plus(d_p, times(weights, literal(hyper.weight_decay, dtype), p), p)
    new_buffer = None
    if hyper.momentum != 0.0 or "momentum" in hyper.runtime:
        if first_step or buffer is None:
            new_buffer = d_p
        else:
            new_buffer = plus(
                times(exact(buffer), literal(hyper.momentum, dtype), p),
                times(d_p, derived_literal(1.0 - hyper.dampening, dtype, "dampening" in hyper.runtime), p),
                p,
            )
        d_p = plus(d_p, times(new_buffer, literal(hyper.momentum, dtype), p), p) if hyper.nesterov else new_buffer
    return plus(weights, times(d_p, literal(hyper.lr, dtype), p), p, -1.0), new_buffer


RUN_TIME_ULPS = 4.0  # a rank-0 value the program derives from a run-time field (`1 - dampening`)


def derived_literal(value: float, dtype: np.dtype[Any], at_run_time: bool) -> Bounded:
    """`value` rounded to `dtype`, as torch's Python float is; computed by the program from a
    run-time input (in f32, or f64), it is allowed `RUN_TIME_ULPS` more ulps of that type."""
    out = literal(value, dtype)
    if not at_run_time:
        return out
    scalar = np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)
    extra = RUN_TIME_ULPS * 2.0 * unit_roundoff(scalar) * abs(value)
    return Bounded(out.value, out.error + extra, out.sigma + extra)


def with_run_time_fields(hyper: Any, fields: dict[str, str], inputs: Arrays) -> Any:
    """A parameter's resolved fields with each run-time one (`fields`: field -> argument name)
    set to the value the trial feeds its input."""
    return replace(hyper, **{name: float(inputs[arg]) for name, arg in fields.items()})


H = TypeVar("H")


@dataclass
class Fused(Generic[H]):
    """The programs, each parameter's resolved optimizer arguments (`Hyper` for SGD, `AdamHyper`
    for Adam), and the state the pass added: what an optimizer's equation contract prepares."""

    before: ModuleOp
    after: ModuleOp
    hyper: dict[str, H]
    params: list[Arg]
    state: list[Arg]
    run_time: dict[str, str]  # field -> the name of its `{step.hyper}` argument

    @staticmethod
    def of(before: ModuleOp, after: ModuleOp, resolve: Callable[[func.FuncOp], dict[str, H]]) -> Fused[H]:
        """`before` -> `after` of a fusion pass, each parameter's arguments as `resolve` reads them."""
        fn_before = step_function(before)
        state = args_of(step_function(after), Role.STATE)
        run_time = {name: a.name for name, a in check_hyper_inputs(fn_before).items()}
        return Fused(before, after, resolve(fn_before), params(fn_before), state, run_time)


class SGDEquationContract(Contract[Fused[Hyper]]):
    """New parameters and buffers = `sgd_equation_bounded` of the pre-pass gradients, first and later step."""

    name = "SGD equation"
    draws_per_trial = 2

    def prepare(self, before: ModuleOp, after: ModuleOp, comparison: Comparison) -> Fused[Hyper]:
        return Fused.of(before, after, hyperparameters)

    def trial(self, prepared: Fused[Hyper], rng: np.random.Generator, comparison: Comparison) -> None:
        inputs = random_inputs(step_function(prepared.before), rng)
        pre = bounded_program(prepared.before, inputs)
        for first_step in (True, False):
            state = self._state(prepared.state, rng, first_step)
            post = run_program(prepared.after, {**inputs, **state})
            expected = self._expected(prepared, inputs, state, pre, first_step)
            comparison.compare_all(expected, post, "first step" if first_step else "later step")

    @staticmethod
    def _state(state_args: list[Arg], rng: np.random.Generator, first_step: bool) -> Arrays:
        """Random buffers (zero on a first step unless the program reads `first_step`)."""
        has_flag = any(a.state_key == FIRST_STEP for a in state_args)
        state: Arrays = {}
        for arg in state_args:
            key = arg.state_key
            assert key is not None
            dtype = dtype_of(arg)
            shape = tuple(arg.type.get_shape())
            if key == FIRST_STEP:
                state[key] = np.full(shape, 1.0 if first_step else 0.0, dtype=dtype)
            elif first_step and not has_flag:
                state[key] = np.zeros(shape, dtype=dtype)
            else:
                state[key] = rng.standard_normal(shape).astype(dtype)
        return state

    @staticmethod
    def _expected(
        prepared: Fused[Hyper], inputs: Arrays, state: Arrays, pre: dict[str, Bounded], first_step: bool
    ) -> dict[str, Bounded]:
        """Every output the fused program must return, by key, in float64 with its bound."""
        expected: dict[str, Bounded] = {}
        for p in prepared.params:
            key = momentum_key(p.name)
            hyper = with_run_time_fields(prepared.hyper[p.name], prepared.run_time, inputs)
            new_param, new_buffer = sgd_equation_bounded(
                inputs[p.name], pre[grad_key(p.name)], state.get(key), first_step, hyper, dtype_of(p)
            )
            expected[p.name] = new_param
            if new_buffer is not None:
                expected[key] = new_buffer
        if FIRST_STEP in state:
            expected[FIRST_STEP] = exact(np.zeros(()))
        expected[LOSS] = pre[LOSS]
        return expected
