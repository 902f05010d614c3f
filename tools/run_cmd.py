"""`stepc run`: train a step program on data, with a progress bar, and report.

    stepc run examples/mlp_digits.ir --out runs/digits          # the bundled 8x8 digits
    stepc run step.ir --data mine.npz --epochs 3 --devices 8

The pieces live in `stepc.tools.data` (data, initialization, batches), `stepc.tools.loop`
(the loop, evaluation, the output files) and `stepc.tools.plot` (the loss picture); this module
wires them to the command line. `--devices N` on a CPU needs N host devices, which XLA creates only when `--xla_force_host_platform_device_count`
is in `XLA_FLAGS` before JAX starts its backends (importing JAX does not start them): so `run`
sets it before anything starts them, once the program is read and the device count is known
to split its batch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import jax
import numpy as np

from stepc.ir.diagnostics import StepcError
from stepc.ir.parse import load_text, read_source
from stepc.tools import data as train_data
from stepc.tools import loop as train_loop
from stepc.tools import schedule as train_schedule

FORCE_DEVICES = "--xla_force_host_platform_device_count"


def xla_flags_for(flags: str, n: int) -> str | None:
    """XLA_FLAGS giving at least `n` host devices, or None when `flags` already do (or n <= 1).

    An existing `--xla_force_host_platform_device_count` is kept if it gives `n` or more; a
    smaller one is replaced."""
    if n <= 1:
        return None
    kept = []
    for flag in flags.split():
        if flag.startswith(FORCE_DEVICES + "="):
            try:
                if int(flag.split("=", 1)[1]) >= n:
                    return None
            except ValueError:
                pass
            continue
        kept.append(flag)
    return " ".join([*kept, f"{FORCE_DEVICES}={n}"])


def jax_started() -> bool:
    """Whether JAX has started its backends in this process (importing JAX alone does not)."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bridge is not None and bool(getattr(bridge, "_backends", True))


def force_host_devices(n: int) -> bool:
    """Ask XLA for `n` CPU devices if JAX's backends have not started yet (XLA reads XLA_FLAGS
    once, when the first backend starts); True when XLA_FLAGS was set here."""
    if jax_started():
        return False
    flags = xla_flags_for(os.environ.get("XLA_FLAGS", ""), n)
    if flags is None:
        return False
    os.environ["XLA_FLAGS"] = flags
    return True


def run(args: argparse.Namespace) -> int:
    """Everything a user can get wrong is found before the expensive part (starting JAX with N
    devices, compiling, training): the options, `--out` (writable, no directory where a file
    goes), the program (read once: a path, or `-` for stdin), the device count against the
    batch, the data's headers against the program."""
    started = time.perf_counter()
    if args.seed < 0:
        raise StepcError(f"--seed must be a non-negative integer, found {args.seed}")
    protect = tuple(p for p in (args.file, args.data, args.init) if p)
    if args.out is not None:
        train_loop.check_output_dir(args.out, train_loop.RUN_FILES, protect=protect, option="--out")
    text, name = read_source(args.file)
    module = load_text(text, name)
    spec = train_data.signature(module)
    if args.devices > 1 and jax_started():
        train_loop.pick_devices(args.devices)  # JAX is up: how many devices there are is known at no cost
    train_loop.check_batch_split(args.devices, spec)
    force_host_devices(args.devices)
    data = train_data.load_data(args.data, spec, args.seed)
    steps = train_data.resolve_steps(args.steps, args.epochs, data.n_train, spec.examples_per_step)
    schedule = train_schedule.run_schedule(args.lr_schedule, module, spec, steps)
    params = train_data.load_params(args.init, spec) if args.init else train_data.default_init(module, args.seed)
    devices = train_loop.pick_devices(args.devices)

    compile_start = time.perf_counter()
    program = train_loop.compile_step(text, name, check=not args.no_check, check_mode=args.check_mode)
    cut = train_loop.logits_module(module)
    logits_fn = train_loop.logits_function(cut[0]) if cut is not None else None
    compile_seconds = time.perf_counter() - compile_start

    batches = train_data.with_keys(train_data.batches(data.train, spec.batch_size, args.seed), spec.keys, args.seed)
    if spec.accumulate is not None:
        batches = train_data.stacked(batches, spec.accumulate)
    if schedule is not None:
        batches = train_schedule.with_rates(batches, spec, schedule)
    if len(devices) > 1:
        placement = train_loop.DataParallel(devices, spec)
        step = placement.jit_step(program.step)
        params_on_device = placement.put_replicated(params)
        state = placement.put_replicated(program.init_state(params_on_device))
        stream = (placement.put_batch(b) for b in batches)
    else:
        step = jax.jit(program.step)
        params_on_device = jax.device_put(params, devices[0])
        # committed like the step's outputs, or the second step would compile again
        state = jax.device_put(program.init_state(params_on_device), devices[0])
        stream = batches

    if not args.quiet:
        test = f", {data.n_test} held out" if data.test is not None else ""
        micro = f" ({spec.accumulate} micro-batches of {spec.batch_size})" if spec.accumulate is not None else ""
        print(
            f"training @{spec.name} on {data.name} ({data.n_train} examples{test}), batch {spec.examples_per_step}"
            f"{micro}, {steps} steps on {len(devices)} device{'s' if len(devices) > 1 else ''}",
            file=sys.stderr,
        )
    progress = train_loop.Progress(steps, enabled=not args.quiet)
    result = train_loop.train(step, params_on_device, state, stream, steps, progress)
    final_params = {k: _host(v) for k, v in result.params.items()}

    summary: dict[str, Any] = {
        "program": name,
        "function": spec.name,
        "data": data.name,
        "train_examples": data.n_train,
        "test_examples": data.n_test,
        "batch_size": spec.batch_size,
        "accumulate": spec.accumulate or 1,
        "examples_per_step": spec.examples_per_step,
        "steps": result.steps,
        "steps_requested": steps,
        "epochs": round(result.steps * spec.examples_per_step / data.n_train, 4),
        "final_loss": result.losses[-1] if result.losses else None,
        "first_loss": result.losses[0] if result.losses else None,
        "stopped": result.stopped,
        "seed": args.seed,
        "init": args.init or "pytorch-linear",
        "devices": len(devices),
        "device_kind": devices[0].platform,
        "compile_seconds": round(compile_seconds, 4),
        "first_step_seconds": round(result.first_step_seconds, 4),
        "train_seconds": round(result.seconds, 4),
        "steps_per_second": round(result.steps / result.seconds, 2) if result.seconds > 0 else None,
    }
    if schedule is not None:
        summary["lr_schedule"] = schedule.text
        summary["first_lr"] = schedule(0)
        summary["last_lr"] = schedule(max(result.steps - 1, 0))
    lines = []
    if logits_fn is not None and cut is not None:
        head = cut[1]
        evaluate = _host_logits(logits_fn)
        train_acc, _, _ = train_loop.accuracy(evaluate, final_params, data.train, head, spec.batch_size)
        summary["train_accuracy"] = round(train_acc, 6)
        if data.test is not None:
            test_acc, correct, total = train_loop.accuracy(evaluate, final_params, data.test, head, spec.batch_size)
            summary["accuracy"] = round(test_acc, 6)
            summary["test_correct"] = correct
            summary["test_predictions"] = total
            what = "held-out examples" if total == data.n_test else f"tokens of {data.n_test} held-out examples"
            lines.append(f"test accuracy {test_acc:.4f} ({correct}/{total} {what})")
        else:
            lines.append(f"training accuracy {train_acc:.4f} (no held-out data)")
    summary["seconds"] = round(time.perf_counter() - started, 4)
    summary["losses"] = result.losses

    final = f"{result.losses[-1]:.6g}" if result.losses else "none"
    print(f"{result.steps} steps in {result.seconds:.2f} s, final loss {final}")
    for line in lines:
        print(line)
    if args.out is not None:
        written = train_loop.write_run(args.out, summary, final_params, result.losses, protect=protect)
        print(f"wrote {', '.join(written)} to {args.out}")
    if result.stopped:
        written_to = f"; written to {args.out}" if args.out is not None else ""
        raise StepcError(f"training stopped: {result.stopped}{written_to}")
    return 0


def _host(value: Any) -> Any:
    return np.asarray(value)


def _host_logits(logits_fn: Any) -> Any:
    return lambda params, batch: np.asarray(logits_fn(params, batch))
