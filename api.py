"""The Python API: `stepc.compile` and the `Program` it returns.

    import stepc
    prog = stepc.compile("examples/mlp_digits.ir")          # the default pipeline, contracts checked
    loss = prog.forward(params, batch)                       # the program as written
    loss, grads = prog.grad(params, batch)                   # after seed-scalar-loss; grads by parameter name
    state = prog.init_state(params)                          # momentum buffers etc., keyed like `momentum.w1`
    params, state, loss = prog.step(params, state, batch)    # after the whole pipeline

`params`, `batch` and `state` are dicts keyed by IR names (state by its `{step.state}` key).
Every method is pure and traceable (`jax.jit`, `vmap`, `grad`, sharding): it reads only the
shapes and dtypes of its arguments, and a missing or extra key, a wrong shape or dtype is a
`StepcError` raised before anything runs.

The pipeline runs once; a listener keeps a clone of the program after every pass
(`Program.stages`), from which each method takes its program by its form (the signature
conventions of docs/architecture.md): `forward` the input, `grad` the last program returning
`loss, grad.NAME...` (after seed-scalar-loss), `step` the last one returning new parameters
(after fuse-sgd: the lowered end of the whole pipeline).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax.numpy as jnp
from xdsl.dialects.builtin import ModuleOp

from stepc.backends.jax import JaxFunction, jax_function, x64_enabled, x64_on
from stepc.ir.diagnostics import StepcError
from stepc.ir.parse import load, load_text
from stepc.ir.program import GRAD_PREFIX, LOSS, Form, Role, check_inputs, initial_state_value, program_form
from stepc.passes.lower_to_stablehlo import lowered_clone
from stepc.pipeline import PassEvent, Pipeline

FUSE_SGD = "fuse-sgd"
SEED = "seed-scalar-loss"


def compile(
    source: str | Path,
    *,
    check: bool = True,
    trials: int = 3,
    seed: int = 0,
    until: str | None = None,
    passes: Sequence[str] | None = None,
) -> Program:
    """Compile a step program (a path, or IR text) through the default pipeline.

    `check` runs every pass's contract on `trials` random inputs; `until` stops the default
    pipeline after that pass (the lowering still ends it); `passes` replaces the pipeline.
    """
    module, name = read_program(source)
    if passes is not None:
        pipeline = Pipeline(list(passes), check=check, trials=trials, seed=seed)
    else:
        pipeline = Pipeline.default(until=until, lower=True, check=check, trials=trials, seed=seed)
    stages: list[tuple[str, ModuleOp]] = []

    def snapshot(event: PassEvent) -> None:
        stages.append((event.name, event.module.clone()))

    pipeline.listeners.append(snapshot)
    pipeline.run(module)
    return Program(name, stages)


def read_program(source: str | Path) -> tuple[ModuleOp, str]:
    """A path (or a `Path`) is loaded from disk; a string holding a program is parsed as is."""
    if isinstance(source, Path) or ("func.func" not in source and "\n" not in source):
        return load(source), str(source)
    return load_text(source, "<string>"), "<string>"


@dataclass(eq=False)
class Program:
    """A compiled step: its programs after each pass and their JAX functions."""

    source: str
    stages: list[tuple[str, ModuleOp]] = field(repr=False)

    # ---- the programs

    @property
    def modules(self) -> dict[str, ModuleOp]:
        """The program after each pass by pass name (the last run of a repeated cleanup), and
        `input`; plus `forward`, `grad` and `step` where the pipeline reached them."""
        out = {name: module for name, module in self.stages}
        for role in (Form.FORWARD, Form.GRAD, Form.STEP):
            module = self._module(role)
            if module is not None:
                out[role] = module
        return out

    @property
    def passes(self) -> list[str]:
        return [name for name, _ in self.stages[1:]]

    def _module(self, role: str) -> ModuleOp | None:
        """The last program of the given form (`program_form`); `forward` is the input's."""
        if role == Form.FORWARD:
            module = self.stages[0][1]
            return module if program_form(module) == Form.FORWARD else None
        if role not in (Form.GRAD, Form.STEP):
            raise ValueError(role)
        for _, module in reversed(self.stages):
            if program_form(module) == role:
                return module
        return None

    def module(self, role: str) -> ModuleOp:
        """The `forward`, `grad` or `step` program; a StepcError when the pipeline stopped before it."""
        module = self._module(role)
        if module is None:
            needed = {"forward": "a program as written (one loss)", "grad": f"the pass {SEED}",
                      "step": f"the pass {FUSE_SGD}"}[role]  # fmt: skip
            raise StepcError(
                f"Program.{role} needs {needed}, which this compilation did not produce "
                f"(passes: {', '.join(self.passes) or 'none'})"
            )
        return module

    @functools.cache  # noqa: B019 - one Program, a few roles: the cache lives as long as the Program
    def function(self, role: str) -> JaxFunction:
        """The JAX function of the `forward`, `grad` or `step` program (lowered when it is not yet)."""
        return jax_function(lowered_clone(self.module(role)))

    # ---- names

    def param_names(self) -> list[str]:
        return [s.name for s in self.function(Form.FORWARD).specs if s.role == Role.PARAM]

    def input_names(self) -> list[str]:
        return [s.name for s in self.function(Form.FORWARD).specs if s.role == Role.INPUT]

    def state_keys(self) -> list[str]:
        return [s.key for s in self.function(Form.STEP).specs if s.role == Role.STATE]

    # ---- the functions

    def forward(self, params: Mapping[str, Any], batch: Mapping[str, Any]) -> Any:
        """The loss of the program as written."""
        (loss,) = self._run(Form.FORWARD, {"params": params, "batch": batch})
        return loss

    def grad(self, params: Mapping[str, Any], batch: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        """`(loss, grads)` as `loss.backward()` leaves them; grads keyed by parameter name."""
        jf = self.function(Form.GRAD)
        outputs = dict(zip(jf.output_names, self._run(Form.GRAD, {"params": params, "batch": batch})))
        loss = outputs.pop(LOSS)
        return loss, {key.removeprefix(GRAD_PREFIX): value for key, value in outputs.items()}

    def init_state(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The state of a first step: each state argument's documented initial value
        (`ir.program.STATE_INITIAL_VALUES`, e.g. `first_step` = 1), else zeros."""
        jf = self.function(Form.STEP)
        check_inputs([s for s in jf.specs if s.role == Role.PARAM], params, "params", x64=x64_on())
        with x64_enabled(jf.needs_x64):
            return {
                s.key: jnp.full(s.shape, initial_state_value(s.key), dtype=s.dtype)
                for s in jf.specs
                if s.role == Role.STATE
            }

    def step(
        self, params: Mapping[str, Any], state: Mapping[str, Any], batch: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any], Any]:
        """One SGD step: `(new params, new state, loss)` (the loss at the old parameters)."""
        jf = self.function(Form.STEP)
        outputs = dict(zip(jf.output_names, self._run(Form.STEP, {"params": params, "batch": batch, "state": state})))
        loss = outputs.pop(LOSS)
        param_names = [s.name for s in jf.specs if s.role == Role.PARAM]
        new_params = {name: outputs.pop(name) for name in param_names}
        return new_params, outputs, loss

    def _run(self, role: str, groups: Mapping[str, Mapping[str, Any]]) -> tuple[Any, ...]:
        """Check each dict against its arguments, then run the role's function positionally."""
        jf = self.function(role)
        arrays: dict[str, Any] = {}
        for what, values in groups.items():
            if not isinstance(values, Mapping):
                raise StepcError(f"{what}: expected a dict keyed by IR names, found {type(values).__name__}")
            specs = [s for s in jf.specs if ROLE_GROUP[s.role] == what]
            for spec, value in zip(specs, check_inputs(specs, values, what, x64=x64_on())):
                arrays[spec.key] = value
        missing = [s for s in jf.specs if s.key not in arrays]
        if missing:
            raise StepcError(
                f"Program.{role} takes no {missing[0].role} argument %{missing[0].name} "
                "(a cotangent is an input of the differentiate program only; use grad or step)"
            )
        with x64_enabled(jf.needs_x64):
            return jf.fn(*(arrays[s.key] for s in jf.specs))


ROLE_GROUP = {Role.PARAM: "params", Role.INPUT: "batch", Role.STATE: "state", Role.COTANGENT: "cotangent"}
