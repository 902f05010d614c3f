"""`stepc exec`: run the compiled step through JAX on named `.npz` inputs, write named outputs.

Keys are the arguments' IR names (state by its `{step.state}` key) and the results'
`{step.output}` keys. Every input is checked before anything runs: missing and extra keys,
shapes and dtypes from the `.npy` headers before any data is read, then that floats are finite
(NaN and inf are refused, as `stepc run` refuses them) and that labels lie in the range of
classes their consumers expect. State
keys left out make a first step (each state's initial value, as `Program.init_state`).
`--steps N` (the whole pipeline only) feeds each step's parameters and state into the next,
on the same batch, and writes the last step's outputs.
"""

from __future__ import annotations

import argparse
import io
import sys
from typing import Any

import jax
import numpy as np
from xdsl.dialects.builtin import ModuleOp

from stepc.backends.jax import JaxFunction, jax_function, x64_enabled
from stepc.ir.diagnostics import StepcError
from stepc.ir.nonfinite import Stages, first_non_finite
from stepc.ir.parse import load
from stepc.ir.program import (
    Role,
    arg_location,
    args,
    check_array,
    check_labels,
    initial_state_value,
    label_classes,
    label_range,
    reads_ids,
    shape_text,
    step_function,
)
from stepc.passes import LOWERING_PASSES, OPTIMIZER_PASSES, optimizer_pass
from stepc.pipeline import PassEvent, Pipeline
from stepc.tools.files import LISTED, NpzArchive, atomic_write_npz, check_finite, name_list, npz_writer

FUSE_SGD = "fuse-sgd"
OPTIMIZER_PASS_NAMES = frozenset({FUSE_SGD, *(name for _, name in OPTIMIZER_PASSES)})


def run(args_: argparse.Namespace) -> int:
    if args_.steps < 1:
        raise StepcError(f"--steps must be at least 1, found {args_.steps}")
    source = load(args_.file)
    with read_npz(args_.inputs) as archive:
        pipeline = Pipeline.default(
            until=args_.until, lower=True, check=not args_.no_check, check_mode=args_.check_mode
        )
        if args_.steps > 1 and not OPTIMIZER_PASS_NAMES & set(pipeline.names_for(source)):
            raise StepcError(
                f"--steps {args_.steps} feeds each step's parameters into the next: it needs the whole pipeline "
                f"(through {optimizer_pass(source)}, the optimizer's pass), not --until {args_.until}"
            )
        before_lowering: list[tuple[str, ModuleOp]] = []

        def keep_step_programs(event: PassEvent) -> None:
            if event.name not in LOWERING_PASSES:
                before_lowering.append((event.name, event.module.clone()))

        pipeline.listeners.append(keep_step_programs)
        pipeline.run(source)
        jf = jax_function(source)
        step_program = before_lowering[-1][1] if before_lowering else source
        arrays = validate_inputs(jf, step_program, archive)
    outputs = run_steps(jf, arrays, args_.steps, stages=Stages.of(before_lowering))
    # member by member: an output named like one of np.savez's own arguments (`file`) is kept
    if args_.output == "-":  # as `-` for a program: stdout, the archive's bytes
        archive_bytes = io.BytesIO()
        npz_writer(outputs)(archive_bytes)
        sys.stdout.buffer.write(archive_bytes.getvalue())
        sys.stdout.buffer.flush()
    else:
        atomic_write_npz(args_.output, outputs, protect=(args_.file, args_.inputs))
    return 0


def read_npz(path: str) -> NpzArchive:
    """The `.npz` of `--inputs`, opened for its headers (`tools.files.NpzArchive`): never
    unpickled, no data read until `validate_inputs` has compared every header with the
    program."""
    return NpzArchive(path, "--inputs")


def validate_inputs(jf: JaxFunction, step_program: Any, archive: NpzArchive) -> dict[str, np.ndarray]:
    """Every argument's array, checked; state left out is filled with its initial value.

    Keys, shapes and dtypes are compared with the program from the headers alone (a 4 MB
    file declaring 4 GiB is refused without reading it); then each array is read as stored
    (exactly the program's dtype, so no conversion copy) and checked: floats finite, labels
    within their classes."""
    fn = step_function(step_program)
    located = {a.name: a for a in args(fn)}
    keys = [s.key for s in jf.specs]
    known = set(keys)
    extra = sorted(k for k in archive.keys if k not in known)
    archive.check_headers([*(k for k in keys if k in archive), *extra[:LISTED]])
    if extra:
        raise StepcError(
            f"--inputs: unexpected key{'s' if len(extra) > 1 else ''} {name_list(extra, quote=True)} "
            f"(the program's arguments are: {name_list(keys)})"
        )
    state = [s for s in jf.specs if s.role == Role.STATE]
    given_state = [s.key for s in state if s.key in archive]
    if given_state and len(given_state) != len(state):
        missing = [s.key for s in state if s.key not in archive]
        raise StepcError(
            f"--inputs: state {name_list(given_state)} given but {name_list(missing)} missing "
            "(give all the state to continue a run, or none for a first step)"
        )
    wheres: dict[str, Any] = {}
    for spec in jf.specs:
        arg = located.get(spec.name)
        where = arg_location(fn, arg.value) if arg is not None else None
        wheres[spec.key] = where
        if spec.key not in archive:
            if spec.role == Role.STATE:
                continue
            raise StepcError(
                f"--inputs: missing {spec.role} '{spec.key}' ({shape_text(spec.shape)} {spec.dtype})", where
            )
        check_array(spec, archive.member(spec.key), "--inputs", where=where)  # the declared shape and dtype
    out: dict[str, np.ndarray] = {}
    for spec in jf.specs:
        where = wheres[spec.key]
        if spec.key not in archive:
            out[spec.key] = np.full(spec.shape, initial_state_value(spec.key), dtype=spec.dtype)
            continue
        value = archive.read(spec.key)
        check_array(spec, value, "--inputs", where=where)
        check_finite(spec.key, value, "--inputs", where)
        arg = located.get(spec.name)
        if arg is not None and spec.dtype == np.int32 and label_classes(arg):
            check_labels(spec, value, label_range(arg), "--inputs", where, ids=reads_ids(arg))
        out[spec.key] = value
    return out


def run_steps(jf: JaxFunction, arrays: dict[str, np.ndarray], steps: int, stages: Stages | None = None) -> dict[str, np.ndarray]:
    """Run the program `steps` times, feeding each step's parameters and state into the next.

    An output that is not finite (the loss, a gradient, a new parameter or state) is an error
    pointing at the op where the step's values stop being finite: the step is re-run in the
    reference interpreter on `stages` (`ir.nonfinite`)."""
    carried = [s for s in jf.specs if s.role in (Role.PARAM, Role.STATE)]
    with x64_enabled(jf.needs_x64):
        program = jax.jit(jf.fn)
        outputs: dict[str, np.ndarray] = {}
        for index in range(steps):
            results = program(*(arrays[s.key] for s in jf.specs))
            outputs = {name: np.asarray(v) for name, v in zip(jf.output_names, results)}
            if stages is not None:
                check_outputs_finite(outputs, stages, arrays, index + 1, steps)
            for spec in carried:
                if spec.key in outputs:
                    arrays[spec.key] = outputs[spec.key]
    return outputs


def check_outputs_finite(outputs: dict[str, np.ndarray], stages: Stages, inputs: dict[str, np.ndarray], step: int,
                         steps: int) -> None:  # fmt: skip
    """A located StepcError when an output of step `step` is not finite (see `run_steps`)."""
    bad = [k for k, v in outputs.items() if (v.dtype.kind == "f" or v.dtype.name == "bfloat16")
           and not np.all(np.isfinite(v.astype(np.float64)))]  # fmt: skip
    if not bad:
        return
    which = f"step {step} of --steps {steps}" if steps > 1 else "step 1"
    what = f"{name_list(bad, quote=True)} {'is' if len(bad) == 1 else 'are'} not finite"
    finding = first_non_finite(stages, inputs)
    if finding is None:
        raise StepcError(f"{which}: {what}; re-run in the reference interpreter, every value of the step is finite "
                         "(the non-finite value is the compiled program's alone); no output written")  # fmt: skip
    raise StepcError(f"{which}: {finding.message()}", finding.loc, (
        f"{what}; re-running the step in the reference interpreter (stepc.ir.interpreter) finds the op above first",
        "no output written"))  # fmt: skip
