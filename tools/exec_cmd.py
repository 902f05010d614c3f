"""`stepc exec`: run the compiled step through JAX on named `.npz` inputs, write named outputs.

Keys are the arguments' IR names (state by its `{step.state}` key) and the results'
`{step.output}` keys. Every input is checked before anything runs: missing and extra keys,
shapes, dtypes, and that labels lie in the range of classes their consumers expect. State
keys left out make a first step (each state's initial value, as `Program.init_state`).
`--steps N` (the whole pipeline only) feeds each step's parameters and state into the next,
on the same batch, and writes the last step's outputs.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from xdsl.dialects.builtin import ModuleOp

from stepc.backends.jax import JaxFunction, jax_function, x64_enabled
from stepc.ir.diagnostics import StepcError
from stepc.ir.parse import load
from stepc.ir.program import (
    ArgSpec,
    Role,
    arg_location,
    args,
    check_array,
    initial_state_value,
    label_classes,
    label_range,
    shape_text,
    step_function,
)
from stepc.passes import LOWERING_PASSES
from stepc.pipeline import PassEvent, Pipeline
from stepc.tools.files import atomic_write, load_npz

FUSE_SGD = "fuse-sgd"


def run(args_: argparse.Namespace) -> int:
    if args_.steps < 1:
        raise StepcError(f"--steps must be at least 1, found {args_.steps}")
    source = load(args_.file)
    inputs = read_npz(args_.inputs)
    pipeline = Pipeline.default(until=args_.until, lower=True, check=not args_.no_check)
    if args_.steps > 1 and FUSE_SGD not in pipeline.names:
        raise StepcError(
            f"--steps {args_.steps} feeds each step's parameters into the next: it needs the whole pipeline "
            f"(through {FUSE_SGD}), not --until {args_.until}"
        )
    before_lowering: list[ModuleOp] = []

    def keep_last_step_program(event: PassEvent) -> None:
        if event.name not in LOWERING_PASSES:
            before_lowering[:] = [event.module.clone()]

    pipeline.listeners.append(keep_last_step_program)
    pipeline.run(source)
    jf = jax_function(source)
    step_program = before_lowering[-1] if before_lowering else source
    arrays = validate_inputs(jf, step_program, inputs)
    outputs = run_steps(jf, arrays, args_.steps)
    buffer = io.BytesIO()
    named: dict[str, Any] = dict(outputs)  # keys are IR names, not savez's keyword options
    np.savez(buffer, **named)
    atomic_write(args_.output, buffer.getvalue(), protect=(args_.file, args_.inputs))
    return 0


def read_npz(path: str) -> dict[str, np.ndarray]:
    """The arrays of an `.npz` file: never unpickled, headers checked against the memory limit
    before any data is read (`tools.files.load_npz`)."""
    return load_npz(path, option="--inputs")


def validate_inputs(jf: JaxFunction, step_program: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every argument's array, checked; state left out is filled with its initial value."""
    fn = step_function(step_program)
    located = {a.name: a for a in args(fn)}
    keys = [s.key for s in jf.specs]
    extra = sorted(k for k in inputs if k not in keys)
    if extra:
        raise StepcError(
            f"--inputs: unexpected key{'s' if len(extra) > 1 else ''} {', '.join(repr(k) for k in extra)} "
            f"(the program's arguments are: {', '.join(keys)})"
        )
    state = [s for s in jf.specs if s.role == Role.STATE]
    given_state = [s.key for s in state if s.key in inputs]
    if given_state and len(given_state) != len(state):
        missing = [s.key for s in state if s.key not in inputs]
        raise StepcError(
            f"--inputs: state {', '.join(given_state)} given but {', '.join(missing)} missing "
            "(give all the state to continue a run, or none for a first step)"
        )
    out: dict[str, np.ndarray] = {}
    for spec in jf.specs:
        arg = located.get(spec.name)
        where = arg_location(fn, arg.value) if arg is not None else None
        if spec.key not in inputs:
            if spec.role == Role.STATE:
                out[spec.key] = np.full(spec.shape, initial_state_value(spec.key), dtype=spec.dtype)
                continue
            raise StepcError(
                f"--inputs: missing {spec.role} '{spec.key}' ({shape_text(spec.shape)} {spec.dtype})", where
            )
        value = inputs[spec.key]
        check_array(spec, value, "--inputs", where=where)
        if arg is not None and spec.dtype == np.int32 and label_classes(arg):
            check_labels(spec, value, label_range(arg), where)
        out[spec.key] = value
    return out


def check_labels(spec: ArgSpec, value: np.ndarray, classes: int, where: Any) -> None:
    bad = np.flatnonzero((value < 0) | (value >= classes))
    if bad.size:
        index = tuple(int(i) for i in np.unravel_index(int(bad[0]), value.shape)) if value.ndim else ()
        raise StepcError(
            f"--inputs: label '{spec.key}'{list(index)} is {int(value[index])}, outside the {classes} classes "
            f"[0, {classes}) ({bad.size} such value{'s' if bad.size > 1 else ''})",
            where,
        )


def run_steps(jf: JaxFunction, arrays: dict[str, np.ndarray], steps: int) -> dict[str, np.ndarray]:
    """Run the program `steps` times, feeding each step's parameters and state into the next."""
    carried = [s for s in jf.specs if s.role in (Role.PARAM, Role.STATE)]
    with x64_enabled(jf.needs_x64):
        program = jax.jit(jf.fn)
        outputs: dict[str, np.ndarray] = {}
        for _ in range(steps):
            results = program(*(arrays[s.key] for s in jf.specs))
            outputs = {name: np.asarray(v) for name, v in zip(jf.output_names, results)}
            for spec in carried:
                if spec.key in outputs:
                    arrays[spec.key] = outputs[spec.key]
    return outputs
