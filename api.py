"""The Python API: `stepc.compile`, `stepc.compile_text` and the `Program` they return.

    import stepc
    prog = stepc.compile("examples/mlp_digits.ir")          # a path (str or os.PathLike), contracts checked
    prog = stepc.compile_text(text, filename="step.ir")      # a program held in a string
    loss = prog.forward(params, batch)                       # the program as written
    loss, grads = prog.grad(params, batch)                   # after seed-scalar-loss; grads by parameter name
    state = prog.init_state(params)                          # momentum buffers etc., keyed like `momentum.w1`
    params, state, loss = prog.step(params, state, batch)    # after the whole pipeline

`compile` reads a file and `compile_text` parses a string: neither guesses which it was given
(a str naming no file but looking like a program is an error pointing at `compile_text`; bytes,
None or a number are a `TypeError` saying what is accepted). `trials` must be at least 1 and
`seed` an int from 0 to 2**64 - 1.

`params`, `batch` and `state` are dicts keyed by IR names (state by its `{step.state}` key).
Every method is pure and traceable (`jax.jit`, `vmap`, `grad`, sharding): it reads only the
shapes and dtypes of its arguments, and a missing or extra key, a wrong shape or dtype is a
`StepcError` raised before anything runs.

Labels (an i32 input that `step.cross_entropy` or `step.one_hot` reads as class indices) must
lie in `[0, classes)`, and embedding ids (an i32 input `step.embedding` reads) in `[0, rows)` of
its table. Called eagerly, a label or id outside is a `StepcError` naming it, as `stepc exec`
does. Under `jax.jit` (or `vmap`) the labels are traced and cannot be checked
before the call: a batch holding a label outside its classes then gives NaN for every float
result of that call, the loss, the gradients, the new parameters and state alike, never a
silently wrong loss or gradient (and `stepc run` stops at a NaN loss).

The pipeline runs once; a listener keeps a clone of the program after every pass
(`Program.stages`), from which each method takes its program by its form (the signature
conventions of docs/architecture.md): `forward` the input, `grad` the last program returning
`loss, grad.NAME...` (after seed-scalar-loss), `step` the last one returning new parameters
(after the optimizer's pass, fuse-sgd or fuse-adam: the lowered end of the whole pipeline).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import jax.numpy as jnp
from jax.core import Tracer
from xdsl.dialects.builtin import ModuleOp

from stepc.backends.jax import JaxFunction, jax_function, x64_enabled, x64_on
from stepc.ir.diagnostics import StepcError
from stepc.ir.parse import check_source_text, decode_source, load_text, read_file_bytes
from stepc.ir.program import (
    GRAD_PREFIX,
    LOSS,
    Form,
    Role,
    args,
    check_inputs,
    check_labels,
    initial_state_value,
    label_classes,
    label_range,
    program_form,
    reads_ids,
    step_function,
)
from stepc.passes import optimizer_pass
from stepc.passes.lower_to_stablehlo import lowered_clone
from stepc.pipeline import PassEvent, Pipeline

SEED = "seed-scalar-loss"


def compile(
    path: str | os.PathLike[str],
    *,
    check: bool = True,
    trials: int = 3,
    seed: int = 0,
    until: str | None = None,
    passes: Sequence[str] | None = None,
    check_mode: str = "auto",
) -> Program:
    """Compile the step program in the file at `path` (a str or `os.PathLike`) through the
    default pipeline. For a program held in a string, call `compile_text`: a path is never
    read as text, nor text as a path.

    `check` runs every pass's contract on `trials` random inputs (at least 1) drawn from
    `seed` (0 to 2**64 - 1); `until` stops the default pipeline after that pass (the lowering
    still ends it); `passes` (a list of pass names) replaces the pipeline; `check_mode` says
    where the contracts run: "auto" (reduced shapes for a big program), "full" or "reduced"
    (docs/contracts.md).
    """
    name = _path_name(path)
    if not os.path.exists(name) and _looks_like_text(name):
        shown = name if len(name) <= 40 else name[:37] + "..."
        raise StepcError(
            f"no such file: {shown!r}: stepc.compile takes a path, and this looks like program text; "
            "to compile text, call stepc.compile_text(text)"
        )
    module = load_text(decode_source(read_file_bytes(name), name), name)
    return _compile_module(
        module, name, check=check, trials=trials, seed=seed, until=until, passes=passes, check_mode=check_mode
    )


def compile_text(
    text: str,
    *,
    filename: str = "<string>",
    check: bool = True,
    trials: int = 3,
    seed: int = 0,
    until: str | None = None,
    passes: Sequence[str] | None = None,
    check_mode: str = "auto",
) -> Program:
    """Compile a step program given as text; errors point into `filename` (a name for
    messages and `Program.source`: nothing is read from it). Options as `compile`."""
    if not isinstance(text, str):
        hint = " (decode it first: data.decode('utf-8'))" if isinstance(text, bytes | bytearray) else ""
        raise TypeError(f"stepc.compile_text takes the program as a str, found {type(text).__name__}{hint}; "
                        "for a file, call stepc.compile(path)")  # fmt: skip
    if not isinstance(filename, str):
        raise TypeError(f"stepc.compile_text: filename must be a str, found {type(filename).__name__}")
    check_source_text(text, filename)
    module = load_text(text, filename)
    return _compile_module(
        module, filename, check=check, trials=trials, seed=seed, until=until, passes=passes, check_mode=check_mode
    )


def _path_name(path: object) -> str:
    """A path argument as a str; anything else is a TypeError saying what is accepted."""
    if isinstance(path, str):
        return path
    if isinstance(path, os.PathLike):
        name = os.fspath(cast("os.PathLike[str]", path))
        return name if isinstance(name, str) else os.fsdecode(name)
    what = type(path).__name__
    hint = " (bytes are not a path here: for program text, decode it and call stepc.compile_text)" if isinstance(
        path, bytes | bytearray | memoryview) else ""  # fmt: skip
    raise TypeError(
        f"stepc.compile takes a path (str or os.PathLike) to a program file, found {what}{hint}; "
        "to compile program text, call stepc.compile_text(text)"
    )


def _looks_like_text(name: str) -> bool:
    return "\n" in name or ("func.func" in name and "{" in name)


def _compile_module(
    module: ModuleOp,
    name: str,
    *,
    check: bool,
    trials: int,
    seed: int,
    until: str | None,
    passes: Sequence[str] | None,
    check_mode: str = "auto",
) -> Program:
    if passes is not None:
        if isinstance(passes, str) or not isinstance(passes, Sequence):
            raise TypeError(f"passes must be a list of pass names, found {type(passes).__name__} {passes!r}")
        pipeline = Pipeline(list(passes), check=bool(check), trials=trials, seed=seed, check_mode=check_mode)
    else:
        if until is not None and not isinstance(until, str):
            raise TypeError(f"until must be a pass name (str), found {type(until).__name__}")
        pipeline = Pipeline.default(
            until=until, lower=True, check=bool(check), trials=trials, seed=seed, check_mode=check_mode
        )
    stages: list[tuple[str, ModuleOp]] = []

    def snapshot(event: PassEvent) -> None:
        stages.append((event.name, event.module.clone()))

    pipeline.listeners.append(snapshot)
    pipeline.run(module)
    return Program(name, stages)


def _check_role(role: object) -> None:
    if not isinstance(role, str) or role not in (Form.FORWARD, Form.GRAD, Form.STEP):
        raise StepcError(f"a program's role is 'forward', 'grad' or 'step', not {role!r}")


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
        _check_role(role)
        for _, module in reversed(self.stages):
            if program_form(module) == role:
                return module
        return None

    def module(self, role: str) -> ModuleOp:
        """The `forward`, `grad` or `step` program; a StepcError when the pipeline stopped before it."""
        module = self._module(role)
        if module is None:
            needed = {"forward": "a program as written (one loss)", "grad": f"the pass {SEED}",
                      "step": f"the optimizer's pass {optimizer_pass(self.stages[0][1])}"}[role]  # fmt: skip
            raise StepcError(
                f"Program.{role} needs {needed}, which this compilation did not produce "
                f"(passes: {', '.join(self.passes) or 'none'})"
            )
        return module

    def function(self, role: str) -> JaxFunction:
        """The JAX function of the `forward`, `grad` or `step` program (lowered when it is not yet)."""
        _check_role(role)  # before the cache, which needs a hashable key
        return self._function(role)

    @functools.cache  # noqa: B019 - one Program, a few roles: the cache lives as long as the Program
    def _function(self, role: str) -> JaxFunction:
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
        """One optimizer step (SGD, Adam, AdamW): `(new params, new state, loss)` (the loss at the
        old parameters). Run-time optimizer fields (`{step.hyper = "lr"}`) are in `batch`."""
        jf = self.function(Form.STEP)
        outputs = dict(zip(jf.output_names, self._run(Form.STEP, {"params": params, "batch": batch, "state": state})))
        loss = outputs.pop(LOSS)
        param_names = [s.name for s in jf.specs if s.role == Role.PARAM]
        new_params = {name: outputs.pop(name) for name in param_names}
        return new_params, outputs, loss

    @functools.cached_property
    def label_ranges(self) -> dict[str, int]:
        """The class count of each batch input read as class indices (cross-entropy labels,
        one-hot), by name: its values must lie in `[0, classes)`."""
        fn = step_function(self.stages[0][1])
        return {a.name: label_range(a) for a in args(fn) if a.role == Role.INPUT and label_classes(a)}

    @functools.cached_property
    def id_inputs(self) -> frozenset[str]:
        """The batch inputs among `label_ranges` that hold embedding ids (`reads_ids`): the table's
        rows are their range, and messages call them ids."""
        fn = step_function(self.stages[0][1])
        return frozenset(a.name for a in args(fn) if a.role == Role.INPUT and reads_ids(a))

    def _run(self, role: str, groups: Mapping[str, Mapping[str, Any]]) -> tuple[Any, ...]:
        """Check each dict against its arguments, then run the role's function positionally.

        Labels (`label_ranges`) are checked here when they are concrete values; traced ones
        (under `jax.jit`, `vmap`) cannot be, so an out-of-range traced label makes every float
        result NaN, the loss and the gradients alike (see the module's docstring)."""
        jf = self.function(role)
        arrays: dict[str, Any] = {}
        traced_labels: list[tuple[Any, int]] = []
        for what, values in groups.items():
            specs = [s for s in jf.specs if ROLE_GROUP[s.role] == what]
            for spec, value in zip(specs, check_inputs(specs, values, what, x64=x64_on())):
                arrays[spec.key] = value
                classes = self.label_ranges.get(spec.name) if spec.role == Role.INPUT else None
                if classes is None:
                    continue
                if isinstance(value, Tracer):
                    traced_labels.append((value, classes))
                else:
                    check_labels(spec, value, classes, what, ids=spec.name in self.id_inputs)
        missing = [s for s in jf.specs if s.key not in arrays]
        if missing:
            raise StepcError(
                f"Program.{role} takes no {missing[0].role} argument %{missing[0].name} "
                "(a cotangent is an input of the differentiate program only; use grad or step)"
            )
        with x64_enabled(jf.needs_x64):
            outputs = jf.fn(*(arrays[s.key] for s in jf.specs))
            return _nan_unless_in_range(outputs, traced_labels) if traced_labels else outputs


def _nan_unless_in_range(outputs: Sequence[Any], labels: Sequence[tuple[Any, int]]) -> tuple[Any, ...]:
    """Every float output, or NaN where a traced label lies outside its classes: the loss and
    the gradients of one call agree (the lowered program alone would give the loss of the
    clamped label, and a gradient with no target at all)."""
    valid = functools.reduce(jnp.logical_and, (jnp.all((v >= 0) & (v < classes)) for v, classes in labels))
    return tuple(
        jnp.where(valid, out, jnp.asarray(jnp.nan, out.dtype)) if jnp.issubdtype(out.dtype, jnp.floating) else out
        for out in outputs
    )


# Run-time optimizer fields (`{step.hyper = "lr"}`) are passed with the batch, by IR name.
ROLE_GROUP = {Role.PARAM: "params", Role.INPUT: "batch", Role.STATE: "state", Role.COTANGENT: "cotangent",
              Role.HYPER: "batch"}  # fmt: skip
