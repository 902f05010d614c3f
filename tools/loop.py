"""The loop side of `stepc run`: devices, the training loop with its progress bar, evaluation
on the forward program cut at its logits, and the files of a run.

    result = train(step, params, state, batches(data.train, spec.batch_size, seed=0), steps=500)
    cut, head = logits_module(module)            # the `cut-at-logits` pass on a copy
    acc, correct = accuracy(logits_function(cut), params, data.test, head, spec.batch_size)

`train`, `accuracy` and `DataParallel` call the JAX functions they are given: the compiled
step of `stepc.compile`, and the logits function of the cut program. The picture of the loss
is `tools/plot.py`'s.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp

from stepc.api import Program, compile_text
from stepc.backends.jax import jax_function
from stepc.ir.diagnostics import StepcError
from stepc.ir.program import Head, classifier_head, step_function
from stepc.passes.cut_at_logits import CutAtLogits
from stepc.passes.lower_to_stablehlo import lowered_clone
from stepc.tools.checkpoint import CHECKPOINT, RECORD
from stepc.tools.data import Arrays, Signature
from stepc.tools.files import check_output_dir, npz_writer, write_together
from stepc.tools.plot import loss_chart

RUN_FILES = ("summary.json", "params.npz", "loss.png")  # the outputs --out DIR receives at the end
RESUME_FILES = (RECORD, CHECKPOINT)  # the arguments of the run and its checkpoint (`tools/checkpoint.py`)

# ---------------------------------------------------------------------------------------------
# Data parallel placement


class DataParallel:
    """`--devices N` (and every process's devices in a multi-process run): the batch sharded
    along its first dimension over a 1-D mesh (`NamedSharding(mesh, P("batch"))`; with
    `step.accumulate`, along the rows of each micro-batch, `P(None, "batch")`), random keys and
    run-time optimizer fields replicated. Parameters and optimizer state are replicated
    (`shard="data"`), or, with `shard="fsdp"`, sharded along the same axis over their first
    dimension wherever it divides by the mesh size (ZeRO-3 / FSDP: each device holds a slice of
    every large parameter and of its state; XLA's SPMD partitioner all-gathers a parameter where
    the step reads it and reduce-scatters its gradient). The step itself is unchanged.

    Arrays are placed with `jax.make_array_from_callback`, so in a multi-process run each
    process transfers only the slices its own devices hold (of the global batch, which every
    process draws alike, and of the parameters)."""

    def __init__(self, devices: list[Any], spec: Signature, shard: str = "data"):
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        if shard not in ("data", "fsdp"):
            raise StepcError(f"--shard must be data or fsdp, found {shard!r}")
        self.devices = devices
        self.shard = shard
        check_batch_split(len(devices), spec)
        self.mesh = Mesh(np.array(devices), ("batch",))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self._sliced = NamedSharding(self.mesh, PartitionSpec("batch"))
        # K stacked micro-batches (`step.accumulate`): each micro-batch's rows are sharded
        rows = NamedSharding(self.mesh, PartitionSpec("batch") if spec.accumulate is None else PartitionSpec(None, "batch"))
        self.batch = {**{s.name: rows for s in spec.inputs}, **{s.name: self.replicated for s in spec.keys},
                      **{s.name: self.replicated for _, s in spec.hypers}}  # fmt: skip
        self._jax = jax

    def sharding(self, value: Any) -> Any:
        """Where a parameter or state tensor lives: replicated, or (fsdp) sliced over its first dim."""
        shape = np.shape(value)
        if self.shard == "fsdp" and len(shape) >= 1 and shape[0] % len(self.devices) == 0:
            return self._sliced
        return self.replicated

    def shardings(self, tree: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self.sharding(v) for k, v in tree.items()}

    def _put(self, value: Any, sharding: Any) -> Any:
        if self._jax.process_count() == 1:
            return self._jax.device_put(value, sharding)
        array = np.asarray(value)
        return self._jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])

    def put(self, tree: Mapping[str, Any]) -> dict[str, Any]:
        """Parameters or optimizer state, placed as `sharding` says."""
        return {k: self._put(v, self.sharding(v)) for k, v in tree.items()}

    def put_batch(self, batch: Arrays) -> Any:
        return {k: self._put(v, self.batch[k]) for k, v in batch.items()}

    def jit_step(self, step: Callable[..., Any], params: Mapping[str, Any], state: Mapping[str, Any]) -> Callable[..., Any]:
        """The step jitted with the placement's shardings in and out (the next step takes its
        outputs as they are)."""
        p, s = self.shardings(params), self.shardings(state)
        return self._jax.jit(step, in_shardings=(p, s, self.batch), out_shardings=(p, s, self.replicated))

    def sharded_count(self, tree: Mapping[str, Any]) -> int:
        return sum(1 for v in tree.values() if self.sharding(v) is self._sliced)


def check_batch_split(n: int, spec: Signature) -> None:
    """`--devices N` must be at least 1 and divide the batch size; checked before JAX starts
    its backends (asking XLA for 100,000 host devices takes minutes, only to find that a batch
    of 64 does not split over them)."""
    if n < 1:
        raise StepcError(f"--devices must be at least 1, found {n}")
    if spec.batch_size % n:
        raise StepcError(
            f"--devices {n}: the batch size {spec.batch_size} does not split evenly over {n} devices "
            f"(give a divisor of {spec.batch_size})",
            spec.inputs[0].loc,
        )


def pick_devices(n: int) -> list[Any]:
    """N devices of the default backend, else N CPU devices; a clear error when fewer exist."""
    if n < 1:
        raise StepcError(f"--devices must be at least 1, found {n}")
    devices = jax.devices()
    if len(devices) >= n:
        return list(devices[:n])
    cpus = jax.devices("cpu")
    if len(cpus) >= n:
        return list(cpus[:n])
    raise StepcError(
        f"--devices {n}: only {len(devices)} {devices[0].platform} device(s) available. On CPU, start with "
        f"XLA_FLAGS=--xla_force_host_platform_device_count={n} in the environment (XLA reads it when JAX "
        "starts its backends; `stepc run` sets it itself when it is the first to start them)"
    )


# ---------------------------------------------------------------------------------------------
# Evaluation: the forward program cut at its logits


def logits_module(module: ModuleOp) -> tuple[ModuleOp, Head] | None:
    """A copy of the forward program returning its logits (the `cut-at-logits` pass), and
    where its labels come from; None when the loss is not a classifier's."""
    head = classifier_head(step_function(module))
    if head is None:
        return None
    cut = module.clone()
    CutAtLogits().apply(Context(), cut)
    return cut, head


def logits_function(cut: ModuleOp) -> Callable[[Arrays, Arrays], Any]:
    """`logits(params, batch)` of a `logits_module` cut, through the JAX backend (jitted)."""
    jf = jax_function(lowered_clone(cut))
    names = jf.arg_names
    # The cut evaluates dropout as the identity: its key inputs are read by nothing, and the data
    # (which holds no keys) feeds them any key.
    unused_keys = {s.name: np.zeros(s.shape, s.dtype) for s in jf.specs if s.dtype == np.uint32}

    def logits(params: Mapping[str, Any], batch: Mapping[str, Any]) -> Any:
        values = {**unused_keys, **params, **batch}
        return jf.fn(*(values[n] for n in names))[0]

    return jax.jit(logits)


def compile_step(text: str, filename: str, check: bool = True, check_mode: str = "auto") -> Program:
    """The compiled training step of `stepc.compile_text` (the default pipeline), from the
    program's text as read once by the caller; errors point into `filename`."""
    return compile_text(text, filename=filename, check=check, check_mode=check_mode)


def accuracy(logits_fn: Callable[[Arrays, Arrays], Any], params: Any, data: Arrays, head: Head,
             batch_size: int) -> tuple[float, int, int]:
    """The fraction of predictions whose argmax logit is the label, over every example of `data`:
    the last partial batch is padded by repeating its last row and the padding ignored.
    Per-token labels (a `BxT` input flattened with the logits to `B*T` rows, as a language
    model's loss) count one prediction per token: the logits' rows are read in the labels'
    row-major order, as `logits.view(-1, V)` and `targets.view(-1)` pair them.
    Returns (accuracy, number correct, number of predictions)."""
    n = len(next(iter(data.values())))
    correct = total = 0
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(start + batch_size, n))
        used = len(rows)
        rows = np.concatenate([rows, np.full(batch_size - used, rows[-1])])
        batch = {k: v[rows] for k, v in data.items()}
        labels = batch[head.labels]
        truth = (np.argmax(labels, axis=-1) if head.one_hot else labels)[:used]
        logits = np.asarray(logits_fn(params, batch), dtype=np.float64)
        logits = logits.reshape((batch_size, *truth.shape[1:], logits.shape[-1]))[:used]
        correct += int(np.sum(np.argmax(logits, axis=-1) == truth))
        total += truth.size
    return (correct / total if total else float("nan")), correct, total


# ---------------------------------------------------------------------------------------------
# The loop


class Progress:
    """A one-line progress bar with the loss on stderr (redrawn at most 10 times a second on a
    terminal; otherwise a line at every tenth of the run)."""

    def __init__(self, total: int, enabled: bool = True, stream: Any = None):
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.first: tuple[int, float] | None = None  # (steps, time) at the first update: after compiling
        self.last_draw = 0.0
        self.next_line = 0

    def update(self, done: int, loss: float) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.first is None:
            self.first = (done, now)
        if self.tty:
            if now - self.last_draw < 0.1 and done < self.total:
                return
            self.last_draw = now
            self.stream.write("\r" + self.line(done, loss, now))
            self.stream.flush()
        elif done >= self.next_line or done == self.total:
            self.stream.write(self.line(done, loss, now) + "\n")
            self.stream.flush()
            self.next_line = done + max(1, self.total // 10)

    def line(self, done: int, loss: float, now: float) -> str:
        width = 30
        filled = int(width * done / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        text = f"step {done:>{len(str(self.total))}}/{self.total} [{bar}] loss {loss:.4f}"
        if self.first is not None and done > self.first[0]:
            text += f"  {(done - self.first[0]) / max(now - self.first[1], 1e-9):,.0f} steps/s"
        return text

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


@dataclass
class Fault:
    """The step (counted from 1) whose results are not finite, and what it started from: the
    last parameters and state known to be finite, and its batch."""

    step: int
    params: Any
    state: Any
    batch: Any
    what: str  # "the loss is nan", "the updated parameters or optimizer state are not finite"


@dataclass
class TrainResult:
    params: Any
    state: Any
    losses: list[float]  # one per step done, those of earlier sessions (a resumed run) first
    seconds: float
    first_step_seconds: float
    stopped: str | None = None  # why the run ended early (a non-finite value), else None
    fault: Fault | None = None  # the step that made a non-finite value
    interrupted: bool = False  # stopped by Ctrl-C (between two steps)
    start: int = 0  # the steps done before this session
    numerics_seconds: float = 0.0  # the time `--check-numerics` took, in all

    @property
    def steps(self) -> int:
        return len(self.losses)


Saver = Callable[[int, Any, Any, list[float]], None]  # (steps done, host params, host state, losses)


def to_host(value: Any) -> np.ndarray:
    """An array read back to this process: in a multi-process run, an array sharded over other
    processes' devices is gathered from them (a collective: every process calls it alike)."""
    if isinstance(value, jax.Array) and not value.is_fully_addressable and not value.is_fully_replicated:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(value, tiled=True))
    if isinstance(value, jax.Array) and not value.is_fully_addressable:  # replicated: any local copy
        return np.asarray(value.addressable_data(0))
    return np.asarray(value)


def finite_on_host(*trees: Mapping[str, Any]) -> bool:
    """Whether every float array of the dicts is finite (read back to the host)."""
    for tree in trees:
        for value in tree.values():
            a = to_host(value)
            if (a.dtype.kind == "f" or a.dtype.name == "bfloat16") and not np.all(np.isfinite(a.astype(np.float64))):
                return False
    return True


def host(tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: to_host(v) for k, v in tree.items()}


def numerics_check() -> Callable[[Any, Any], Any]:
    """`--check-numerics`: a jitted `all(isfinite)` over the new parameters and state (the
    gradients' running averages and the updates made from them), one boolean read back."""

    def all_finite(params: Any, state: Any) -> Any:
        leaves = [x for x in jax.tree_util.tree_leaves((params, state)) if jax.numpy.issubdtype(x.dtype, jax.numpy.floating)]
        return jax.numpy.all(jax.numpy.stack([jax.numpy.all(jax.numpy.isfinite(x)) for x in leaves])) if leaves else True

    return jax.jit(all_finite)


def train(step: Callable[..., Any], params: Any, state: Any, batch_stream: Iterator[Any], steps: int,
          progress: Progress | None = None, *, start: int = 0, losses: Sequence[float] = (),
          snapshot: Saver | None = None, every: int | None = None, numerics: Callable[[Any, Any], Any] | None = None,
          stop: Callable[[], bool] | None = None) -> TrainResult:  # fmt: skip
    """Run steps `start + 1` to `steps` of `params, state, loss = step(params, state, batch)`.

    The loss of each step is read back at once. A non-finite loss stops the run; so does, with
    `numerics` (`--check-numerics`), a non-finite new parameter or state; the result's `fault`
    names the step and keeps what it started from (the last finite parameters) rather than its
    update. Without `numerics` an update that is not finite shows in the next step's loss (or
    when parameters are read back: a checkpoint, the end): the fault is then that update's step,
    whose inputs are kept for it (one step back). `snapshot(done, params, state, losses)` (a checkpoint) is called
    every `every` steps and at the end, with finite host copies; `stop()` true ends the run
    between two steps (Ctrl-C), the result `interrupted`.
    """
    losses = list(losses)
    began = time.perf_counter()
    first = checking = 0.0
    done = start
    previous: tuple[Any, Any, Any] | None = None  # the last step's inputs: its update may be what broke

    def result(**more: Any) -> TrainResult:
        if progress:
            progress.close()
        return TrainResult(params, state, losses, time.perf_counter() - began, first, start=start,
                           numerics_seconds=checking, **more)  # fmt: skip

    def update_fault() -> TrainResult:
        """The last update made a non-finite parameter: step `done` is the fault."""
        nonlocal params, state, done
        assert previous is not None
        fault = Fault(done, *previous, "the updated parameters or optimizer state are not finite")
        params, state = previous[0], previous[1]
        losses.pop()
        done -= 1
        return result(stopped=f"{fault.what} at step {fault.step}; kept the parameters from before it", fault=fault)

    while done < steps:
        if stop is not None and stop():
            return result(interrupted=True)
        batch = next(batch_stream)
        new_params, new_state, loss = step(params, state, batch)
        value = float(to_host(loss))
        if done == start:
            first = time.perf_counter() - began
        finite = math.isfinite(value)
        if finite and numerics is not None:
            tick = time.perf_counter()
            finite = bool(to_host(numerics(new_params, new_state)))
            checking += time.perf_counter() - tick
        if not finite:
            if numerics is None and previous is not None and not finite_on_host(params, state):
                return update_fault()
            what = f"the loss is {value}" if not math.isfinite(value) else "the updated parameters or optimizer state are not finite"
            fault = Fault(done + 1, params, state, batch, what)
            return result(stopped=f"{what} at step {fault.step}; kept the parameters from before it", fault=fault)
        previous = (params, state, batch) if numerics is None else None
        params, state = new_params, new_state
        losses.append(value)
        done += 1
        if progress:
            progress.update(done, value)
        if snapshot is not None and ((every and done % every == 0) or done == steps):
            host_params, host_state = host(params), host(state)
            if numerics is None and previous is not None and not finite_on_host(host_params, host_state):
                return update_fault()
            snapshot(done, host_params, host_state, losses)
    if numerics is None and previous is not None and snapshot is None and not finite_on_host(params, state):
        return update_fault()
    return result()


class StopRequests:
    """Ctrl-C during training: the first asks the loop to stop after the step running (so that
    a checkpoint of a whole step can be written); a second stops at once (KeyboardInterrupt).
    A context manager installing the SIGINT handler (main thread only); call it for the flag."""

    def __init__(self, message: str = ""):
        self.requested = False
        self.message = message
        self._previous: Any = None

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.message:
            print(f"\n{self.message}", file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# ---------------------------------------------------------------------------------------------
# The files of a run


def write_run(out_dir: str | Path, summary: Mapping[str, Any], params: Mapping[str, Any], losses: list[float],
              protect: tuple[str | Path, ...] = ()) -> list[str]:
    """`--out DIR`: params.npz, loss.png and summary.json, written together
    (`files.write_together`): every file's content is made and written to a temporary first,
    then all are renamed into place, so that DIR ends holding this run's three files or,
    on any failure (a full disk, Ctrl-C), the ones it held before; never a mix of two runs.
    Other files in DIR are left alone. Returns the names written.

    The summary is strict JSON: a non-finite number in it (there should be none) is written
    as null."""
    out = check_output_dir(out_dir, RUN_FILES, protect=protect, option="--out")
    text = json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n"
    chart = loss_chart(losses, f"{summary.get('program', '')} on {summary.get('data', '')}")
    files = [
        ("params.npz", npz_writer({k: np.asarray(v) for k, v in params.items()})),
        ("loss.png", chart.png),
        ("summary.json", text.encode("utf-8")),
    ]
    write_together([(out / name, content) for name, content in files], protect=protect)
    return [name for name, _ in files]


def _json_safe(value: Any) -> Any:
    """`value` with every non-finite float (NaN, inf) replaced by None, for strict JSON."""
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value
