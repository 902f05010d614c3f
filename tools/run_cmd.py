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
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from stepc.backends.jax import x64_enabled
from stepc.ir.diagnostics import StepcError
from stepc.ir.nonfinite import Stages, first_non_finite
from stepc.ir.parse import load_text, read_source
from stepc.ir.program import Form
from stepc.tools import checkpoint as checkpoints
from stepc.tools import data as train_data
from stepc.tools import loop as train_loop
from stepc.tools import schedule as train_schedule
from stepc.tools.checkpoint import CHECKPOINT, RECORD, Checkpoint, RunRecord
from stepc.tools.cli import build_parser

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
    """`stepc run` (`_run`); a float64 program turns `jax_enable_x64` on for its training, and
    this puts it back as it was (the CLI may run in a process that goes on: the tests')."""
    previous = bool(jax.config.read("jax_enable_x64"))
    try:
        return _run(args)
    finally:
        jax.config.update("jax_enable_x64", previous)


def _run(args: argparse.Namespace) -> int:
    """Everything a user can get wrong is found before the expensive part (starting JAX with N
    devices, compiling, training): the options, `--out` (writable, no directory where a file
    goes), the program (read once: a path, or `-` for stdin), the device count against the
    batch, the data's headers against the program.

    With `--out DIR` the run records its arguments (`DIR/run.json`) before training and keeps a
    checkpoint (`DIR/checkpoint.npz`: every `--checkpoint-every N` steps, at the end, and at
    Ctrl-C); `--resume DIR` continues it from both (`tools/checkpoint.py`)."""
    started = time.perf_counter()
    record = resumed_record(args) if args.resume is not None else None
    if record is None and args.file is None:
        raise StepcError("stepc run: give STEP.ir, the program to train (or --resume DIR to continue a run)")
    if args.seed < 0:
        raise StepcError(f"--seed must be a non-negative integer, found {args.seed}")
    if args.checkpoint_every is not None and args.out is None:
        raise StepcError(f"--checkpoint-every {args.checkpoint_every}: give --out DIR, where the checkpoints go")
    protect = tuple(p for p in (args.file, args.data, args.init) if p and p != "-")
    if args.out is not None:
        train_loop.check_output_dir(args.out, train_loop.RUN_FILES + train_loop.RESUME_FILES, protect=protect,
                                    option="--out")  # fmt: skip
    text, name = (record.program_text, record.program_name) if record is not None else read_source(args.file)
    module = load_text(text, name)
    spec = train_data.signature(module)
    processes = check_processes(args)
    if args.devices > 1 and jax_started() and processes == 1:
        train_loop.pick_devices(args.devices)  # JAX is up: how many devices there are is known at no cost
    train_loop.check_batch_split(args.devices * processes, spec)
    force_host_devices(args.devices)
    if processes > 1:
        join_processes(args)
    main = jax.process_index() == 0 if processes > 1 else True  # writes --out, prints, shows progress
    if record is not None:
        check_unchanged(record)
    data = train_data.load_data(args.data, spec, args.seed)
    steps = train_data.resolve_steps(args.steps, args.epochs, data.n_train, spec.examples_per_step)
    schedule = train_schedule.run_schedule(args.lr_schedule, module, spec, steps)
    if args.out is not None and record is None:
        record = RunRecord.start(text, name, recorded_options(args, steps))
        if main:
            checkpoints.remove_stale(args.out)
            record.write(args.out, protect=protect)
    checkpoint = None
    if args.resume is not None and record is not None:
        if main:
            checkpoints.remove_temporaries(args.resume)
        checkpoint = checkpoints.read_checkpoint(args.resume, record.run_id)
    if checkpoint is not None:
        params = checkpoint.params
    else:
        params = train_data.load_params(args.init, spec) if args.init else train_data.default_init(module, args.seed)
    devices = jax.devices() if processes > 1 else train_loop.pick_devices(args.devices)

    compile_start = time.perf_counter()
    program = train_loop.compile_step(text, name, check=not args.no_check, check_mode=args.check_mode)
    cut = train_loop.logits_module(module)
    logits_fn = train_loop.logits_function(cut[0]) if cut is not None else None
    compile_seconds = time.perf_counter() - compile_start

    start = checkpoint.step if checkpoint is not None else 0
    micro = train_data.BatchStream(data.train, spec.batch_size, args.seed, checkpoint.position if checkpoint else None)
    per_step = spec.accumulate or 1
    if micro.drawn != start * per_step:
        raise StepcError(f"--resume {args.resume}: the checkpoint of step {start} has drawn {micro.drawn} batches, "
                         f"not {start * per_step}")  # fmt: skip
    batches: Any = train_data.with_keys(micro, spec.keys, args.seed, first_step=micro.drawn)
    if spec.accumulate is not None:
        batches = train_data.stacked(batches, spec.accumulate)
    if schedule is not None:
        batches = train_schedule.with_rates(batches, spec, schedule, first_step=start)
    needs_x64 = program.function(Form.STEP).needs_x64
    if needs_x64:  # a float64 program: its parameters, state and batches stay float64 on the device
        jax.config.update("jax_enable_x64", True)
    placement = None
    if len(devices) > 1:
        placement = train_loop.DataParallel(devices, spec, args.shard)
        with x64_enabled(needs_x64):
            host_state = checkpoint.state if checkpoint else train_loop.host(program.init_state(params))
        step = placement.jit_step(program.step, params, host_state)
        params_on_device = placement.put(params)
        with x64_enabled(needs_x64):
            state = placement.put(host_state)
        stream = (placement.put_batch(b) for b in batches)
    else:
        step = jax.jit(program.step)
        params_on_device = jax.device_put(params, devices[0])
        # committed like the step's outputs, or the second step would compile again
        with x64_enabled(needs_x64):
            state = jax.device_put(checkpoint.state if checkpoint else program.init_state(params_on_device), devices[0])
        stream = batches

    if not args.quiet and main:
        test = f", {data.n_test} held out" if data.test is not None else ""
        micro_text = f" ({spec.accumulate} micro-batches of {spec.batch_size})" if spec.accumulate is not None else ""
        resumed = f", resumed after step {start}" if args.resume is not None else ""
        print(
            f"training @{spec.name} on {data.name} ({data.n_train} examples{test}), batch {spec.examples_per_step}"
            f"{micro_text}, {steps} steps on {len(devices)} device{'s' if len(devices) > 1 else ''}"
            f"{placement_text(placement, params, processes)}{resumed}",
            file=sys.stderr,
        )
    earlier_seconds = checkpoint.train_seconds if checkpoint is not None else 0.0
    session_start = time.perf_counter()

    def take_checkpoint(done: int, host_params: dict[str, Any], host_state: dict[str, Any], losses: list[float]) -> None:
        assert args.out is not None and record is not None
        position = micro.position()
        if position["batches"] != done * per_step:
            raise AssertionError(f"a checkpoint at step {done} with {position['batches']} batches drawn")
        seconds = earlier_seconds + time.perf_counter() - session_start
        if not main:  # process 0 writes; the others have gathered the same values
            return
        checkpoints.write_checkpoint(args.out, Checkpoint(done, host_params, host_state, list(losses), position,
                                                          record.run_id, round(seconds, 4)), protect=protect)  # fmt: skip

    progress = train_loop.Progress(steps, enabled=not args.quiet and main)
    if checkpoint is not None and checkpoint.losses:
        progress.update(start, checkpoint.losses[-1])
    numerics = train_loop.numerics_check() if args.check_numerics else None
    stop_message = f"stopping after this step, then writing a checkpoint to {args.out} (Ctrl-C again stops at once)"
    with train_loop.StopRequests(stop_message) if args.out is not None else contextlib.nullcontext() as stop:
        result = train_loop.train(
            step, params_on_device, state, stream, steps, progress, start=start,
            losses=checkpoint.losses if checkpoint is not None else (),
            snapshot=take_checkpoint if args.checkpoint_every is not None else None, every=args.checkpoint_every,
            numerics=numerics, stop=stop,
        )  # fmt: skip
    if result.interrupted:
        if args.out is not None:
            take_checkpoint(result.steps, train_loop.host(result.params), train_loop.host(result.state), result.losses)
            print(f"interrupted after step {result.steps}: checkpoint written to {Path(args.out) / CHECKPOINT}; "
                  f"continue with: stepc run --resume {args.out}", file=sys.stderr)  # fmt: skip
        raise KeyboardInterrupt
    final_params = train_loop.host(result.params)
    session_steps = result.steps - result.start

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
        "steps_per_second": round(session_steps / result.seconds, 2) if result.seconds > 0 else None,
        "resumed_after_step": start if args.resume is not None else None,
        "processes": processes,
        "shard": args.shard if placement is not None else None,
        "sharded_tensors": placement.sharded_count(params) if placement is not None else 0,
        "checkpoint_every": args.checkpoint_every,
    }
    lines = []
    if numerics is not None:
        per_step_ms = 1000 * result.numerics_seconds / max(session_steps + (result.fault is not None), 1)
        share = result.numerics_seconds / result.seconds if result.seconds > 0 else 0.0
        summary["check_numerics_seconds"] = round(result.numerics_seconds, 6)
        summary["check_numerics_ms_per_step"] = round(per_step_ms, 6)
        lines.append(f"--check-numerics: {per_step_ms:.3f} ms a step, {100 * share:.1f}% of the training time")
    if schedule is not None:
        summary["lr_schedule"] = schedule.text
        summary["first_lr"] = schedule(0)
        summary["last_lr"] = schedule(max(result.steps - 1, 0))
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
    if args.out is not None and main:
        written = train_loop.write_run(args.out, summary, final_params, result.losses, protect=protect)
        print(f"wrote {', '.join(written)} to {args.out}")
    if result.fault is not None:
        raise fault_error(result.fault, program, args.out, args.checkpoint_every)
    return 0


def check_processes(args: argparse.Namespace) -> int:
    """`--coordinator HOST:PORT --num-processes N --process-id I`: all three or none (the number
    of processes, 1 without them), checked before JAX starts."""
    given = [args.coordinator is not None, args.num_processes is not None, args.process_id is not None]
    if not any(given):
        return 1
    if not all(given):
        raise StepcError("a multi-process run needs --coordinator HOST:PORT, --num-processes N and --process-id I, all three")
    host, sep, port = args.coordinator.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise StepcError(f"--coordinator must be HOST:PORT (a port from 1 to 65535), found {args.coordinator!r}")
    if args.num_processes < 1 or not 0 <= args.process_id < args.num_processes:
        raise StepcError(f"--process-id must lie in [0, {args.num_processes}) for --num-processes {args.num_processes}, "
                         f"found {args.process_id}")  # fmt: skip
    return args.num_processes


def join_processes(args: argparse.Namespace) -> None:
    """Join the JAX multi-process job (`jax.distributed.initialize`) before any backend starts;
    on CPU the processes' collectives go through gloo. Each process then sees every process's
    devices (`jax.devices()`), `--devices` of them its own."""
    if jax_started():
        raise StepcError("a multi-process run must join its job before JAX starts its backends (run it as its own process)")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # the CPU devices' collectives
    try:
        jax.distributed.initialize(args.coordinator, num_processes=args.num_processes, process_id=args.process_id,
                                   initialization_timeout=int(os.environ.get("STEPC_JOIN_TIMEOUT", "300")))  # fmt: skip
    except Exception as error:  # the coordinator unreachable, a process id taken twice, a timeout
        raise StepcError(f"could not join the multi-process job at {args.coordinator} as process {args.process_id} of "
                         f"{args.num_processes}: {type(error).__name__}: {str(error).splitlines()[0][:300]}") from None


def placement_text(placement: train_loop.DataParallel | None, params: Any, processes: int) -> str:
    if placement is None:
        return ""
    where = f" in {processes} processes" if processes > 1 else ""
    if placement.shard == "fsdp":
        return f"{where} (fsdp: {placement.sharded_count(params)} of {len(params)} parameters sharded)"
    return where


def fault_error(fault: train_loop.Fault, program: Any, out: str | None, every: int | None) -> StepcError:
    """The error of a run stopped by a non-finite value: the step re-run in the reference
    interpreter (`ir.nonfinite`), pointing at the op where a value first stops being finite."""
    inputs = {**train_loop.host(fault.params), **train_loop.host(fault.state), **train_loop.host(fault.batch)}
    finding = first_non_finite(Stages.of(program.stages), inputs)
    kept = f"kept the parameters from before step {fault.step}"
    if out is not None:
        kept += f" (params.npz in {out}"
        kept += "; the last checkpoint, of finite values, is kept)" if every is not None else ")"
    if finding is None:
        return StepcError(
            f"training stopped at step {fault.step}: {fault.what}; re-run in the reference interpreter, every value "
            f"of that step is finite (the non-finite value is the compiled program's alone); {kept}"
        )
    notes = (f"{fault.what} at step {fault.step}; re-running that step in the reference interpreter "
             "(stepc.ir.interpreter) finds the op above first", kept)  # fmt: skip
    return StepcError(f"training stopped at step {fault.step}: {finding.message()}", finding.loc, notes)


# Options `--resume DIR` takes from DIR/run.json: given again, they are an error
RECORDED_OPTIONS = ("file", "data", "steps", "epochs", "seed", "init", "lr_schedule", "devices", "shard", "no_check",
                    "check_mode", "checkpoint_every", "check_numerics", "out")  # fmt: skip


def recorded_options(args: argparse.Namespace, steps: int) -> dict[str, Any]:
    """The options of a run as `--resume` takes them again: files by absolute path and hash,
    the number of steps resolved (from `--epochs` too)."""
    options: dict[str, Any] = {
        "data": args.data, "steps": steps, "seed": args.seed, "init": args.init, "lr_schedule": args.lr_schedule,
        "devices": args.devices, "shard": args.shard, "no_check": args.no_check, "check_mode": args.check_mode,
        "checkpoint_every": args.checkpoint_every, "check_numerics": args.check_numerics,
    }  # fmt: skip
    for key in ("data", "init"):
        path = args.__dict__[key]
        if path is not None and path not in (train_data.DIGITS, train_data.COPY) and Path(path).is_file():
            options[key] = str(Path(path).resolve())
            options[f"{key}_sha256"] = checkpoints.sha256_of_file(path)
    return options


def resumed_record(args: argparse.Namespace) -> RunRecord:
    """`--resume DIR`: the run's record, its options put into `args` (which may give none of
    them again: they would be silently different otherwise)."""
    defaults = vars(_run_defaults())
    given = [name for name in RECORDED_OPTIONS if getattr(args, name) != defaults[name]]
    if given:
        shown = ", ".join("STEP.ir" if n == "file" else "--" + n.replace("_", "-") for n in given)
        raise StepcError(f"--resume {args.resume} continues the run with the arguments it was started with "
                         f"(recorded in {Path(args.resume) / RECORD}): leave out {shown}")  # fmt: skip
    if not Path(args.resume).is_dir():
        raise StepcError(f"--resume {args.resume}: no such directory (give the --out DIR of the run to continue)")
    record = RunRecord.read(args.resume)
    options = record.options
    for key in ("data", "steps", "seed", "init", "lr_schedule", "devices", "shard", "no_check", "check_mode",
                "checkpoint_every", "check_numerics"):  # fmt: skip
        setattr(args, key, options.get(key, defaults[key]))
    args.epochs = None
    args.file = None
    args.out = args.resume
    return record


def check_unchanged(record: RunRecord) -> None:
    """The data and `--init` files of a resumed run are the ones it started with."""
    for key in ("data", "init"):
        path, digest = record.options.get(key), record.options.get(f"{key}_sha256")
        if path is None or digest is None:
            continue
        if not Path(path).is_file():
            raise StepcError(f"--resume: the run's --{key} file {path} is gone (a resumed run reads the same file)")
        if checkpoints.sha256_of_file(path) != digest:
            raise StepcError(f"--resume: the run's --{key} file {path} changed since the run started "
                             f"(sha256 {digest[:16]}... then); a resumed run must read the same file")  # fmt: skip


def _run_defaults() -> argparse.Namespace:
    """The defaults of `stepc run`'s options, as its parser has them."""
    return build_parser().parse_args(["run", "--resume", "DIR"])


def _host_logits(logits_fn: Any) -> Any:
    return lambda params, batch: np.asarray(logits_fn(params, batch))
