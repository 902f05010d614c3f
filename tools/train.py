"""The training loop behind `stepc run`, as a library: data, initialization, batches, the
loop, evaluation and the files of a run.

    spec = signature(module)                     # parameters, batch inputs, batch size, head
    data = load_data("digits", module)           # train/test dicts keyed by input names
    params = default_init(module, seed=0)        # PyTorch nn.Linear's rule (see `fan_in`)
    result = train(step, params, state, batches(data.train, spec.batch_size, seed=0), steps=500)

Everything here is plain NumPy except `train`, `accuracy` and `DataParallel`, which call the
JAX functions they are given: the compiled step of `stepc.compile`, and the logits function
of the forward program cut at its logits (`logits_module`).
"""

from __future__ import annotations

import io
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from xdsl.dialects import func
from xdsl.dialects.builtin import FunctionType, ModuleOp
from xdsl.ir import BlockArgument, Operation, SSAValue

from stepc.ir.dialect import (
    AddOp,
    BroadcastOp,
    CrossEntropyOp,
    LogSoftmaxOp,
    MatmulOp,
    MulOp,
    SoftmaxOp,
    is_i32,
    shape_of,
)
from stepc.ir.diagnostics import SourceLoc, StepcError, location_of
from stepc.ir.program import arg_location, args, set_output_names, step_function
from stepc.ir.values import numpy_dtype
from stepc.passes.contract import label_range
from stepc.tools.files import atomic_write, atomic_write_npz, check_output_dir, load_npz

DIGITS = "digits"
TEST_FRACTION = 0.2
SPLIT_SEED = 0  # the train/test split never moves with --seed: accuracy is always on the same images
DEFAULT_EPOCHS = 20
RUN_FILES = ("summary.json", "params.npz", "loss.png")  # what --out DIR receives
Arrays = dict[str, np.ndarray]


# ---------------------------------------------------------------------------------------------
# What a step program takes


@dataclass(frozen=True)
class TensorSpec:
    """One argument of the step: its IR name, static shape, NumPy dtype and source location."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    loc: SourceLoc | None
    classes: int | None = None  # for i32 labels read by cross_entropy or one_hot: the class count

    @property
    def example_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def type_text(self) -> str:
        dims = "x".join(str(d) for d in self.shape)
        return f"tensor<{dims + 'x' if dims else ''}{_element_text(self.dtype)}>"


@dataclass(frozen=True)
class Signature:
    """The parameters and batch inputs of a step function, and its static batch size."""

    name: str
    params: tuple[TensorSpec, ...]
    inputs: tuple[TensorSpec, ...]
    batch_size: int
    loc: SourceLoc | None


def signature(module: ModuleOp) -> Signature:
    """Read a forward step program's parameters, batch inputs and batch size.

    The batch size is the leading dimension of the batch inputs, which must all agree: each
    batch input holds one example per row.
    """
    fn = step_function(module)
    params: list[TensorSpec] = []
    inputs: list[TensorSpec] = []
    for arg in args(fn):
        spec = TensorSpec(
            arg.name,
            tuple(arg.type.get_shape()),
            numpy_dtype(arg.type.get_element_type()),
            arg_location(fn, arg.value),
            label_range(fn, arg) if is_i32(arg.type.get_element_type()) and _has_class_reader(arg.value) else None,
        )
        if arg.role == "param":
            params.append(spec)
        elif arg.role == "input":
            inputs.append(spec)
    where = location_of(fn)
    if not inputs:
        raise StepcError("stepc run needs batch inputs to feed: the function has only parameters", where)
    for spec in inputs:
        if not spec.shape:
            raise StepcError(
                f"batch input %{spec.name} is a scalar ({spec.type_text}): stepc run feeds one example per row, "
                "so every batch input needs a leading batch dimension",
                spec.loc,
            )
    batch = inputs[0].shape[0]
    for spec in inputs[1:]:
        if spec.shape[0] != batch:
            raise StepcError(
                f"batch inputs disagree on the batch size: %{inputs[0].name} has {batch} rows, "
                f"%{spec.name} has {spec.shape[0]} ({spec.type_text})",
                spec.loc,
            )
    return Signature(fn.sym_name.data, tuple(params), tuple(inputs), batch, where)


def _has_class_reader(value: BlockArgument) -> bool:
    return any(isinstance(use.operation, CrossEntropyOp) for use in value.uses) or any(
        use.operation.name == "step.one_hot" for use in value.uses
    )


def _element_text(dtype: np.dtype) -> str:
    names = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64", "int32": "i32"}
    return names.get(dtype.name, dtype.name)


# ---------------------------------------------------------------------------------------------
# Initialization


def fan_in(fn: func.FuncOp, param: BlockArgument) -> int:
    """The fan-in of PyTorch's `nn.Linear` init rule for one parameter, in stepc's layouts.

    - a weight (rank >= 2) in the `(in, out)` layout of `x @ w`: its second-to-last dimension
      (the one a matmul contracts), e.g. 64 for `tensor<64x128xf32>`;
    - a bias (rank 1): the fan-in of the weight whose matmul result it is added to
      (`step.add (step.matmul %x, %w), %b`, possibly through a `step.broadcast`); if no such
      weight is found, its own length;
    - a scalar: 1.
    """
    shape = shape_of(param)
    if len(shape) >= 2:
        return shape[-2]
    if not shape:
        return 1
    for user in _users_through_broadcast(param):
        if isinstance(user, AddOp):
            for operand in (user.lhs, user.rhs):
                producer = operand.owner
                if isinstance(producer, MatmulOp) and len(shape_of(producer.rhs)) >= 2:
                    return shape_of(producer.rhs)[-2]
    return shape[-1]


def _users_through_broadcast(value: SSAValue) -> Iterator[Operation]:
    for use in value.uses:
        if isinstance(use.operation, BroadcastOp):
            yield from _users_through_broadcast(use.operation.results[0])
        else:
            yield use.operation


def default_init(module: ModuleOp, seed: int) -> Arrays:
    """PyTorch `nn.Linear`'s default: every parameter drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    with `fan_in` as `fan_in` documents; drawn in parameter order from one NumPy generator
    seeded by `seed` (the same seed gives the same parameters)."""
    fn = step_function(module)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    out: Arrays = {}
    for arg in args(fn):
        if arg.role != "param":
            continue
        bound = 1.0 / math.sqrt(fan_in(fn, arg.value))
        shape = tuple(arg.type.get_shape())
        values = rng.uniform(-bound, bound, size=shape)
        out[arg.name] = values.astype(numpy_dtype(arg.type.get_element_type()))
    return out


def key_problems(arrays: Arrays, required: list[str], allowed: set[str]) -> str:
    """`missing a, b; unknown keys c` for the keys of an .npz file, or "" when they are right."""
    missing = [n for n in required if n not in arrays]
    extra = sorted(k for k in arrays if k not in allowed)
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing)}")
    if extra:
        parts.append(f"unknown keys {', '.join(extra)}")
    return "; ".join(parts)


def finite_numbers(a: np.ndarray, dtype: np.dtype, kinds: str, loc, not_numbers: str, not_finite: str):  # type: ignore[no-untyped-def]
    """`a` as `dtype`, refusing arrays of another kind (NumPy kind letters `kinds`, or bf16)
    and non-finite values, with the given messages at `loc`."""
    if a.dtype.kind not in kinds and a.dtype.name != "bfloat16":
        raise StepcError(not_numbers, loc)
    values = a.astype(dtype)
    if not np.all(np.isfinite(values.astype(np.float64))):
        raise StepcError(not_finite, loc)
    return values


def load_params(path: str | Path, spec: Signature) -> Arrays:
    """`--init FILE.npz`: one array per parameter, keyed by its IR name, of its shape."""
    arrays = _read_npz(path, what="--init")
    names = [p.name for p in spec.params]
    if problems := key_problems(arrays, names, set(names)):
        raise StepcError(
            f"--init {path}: {problems} (the parameters are: {', '.join(names)})",
            spec.params[0].loc if any(n not in arrays for n in names) else None,
        )
    out: Arrays = {}
    for p in spec.params:
        a = arrays[p.name]
        if tuple(a.shape) != p.shape:
            raise StepcError(f"--init {path}: %{p.name} is {p.type_text}, the file holds shape {a.shape}", p.loc)
        out[p.name] = finite_numbers(
            a, p.dtype, "fiu", p.loc,
            f"--init {path}: %{p.name} must hold numbers, the file holds dtype {a.dtype}",
            f"--init {path}: %{p.name} holds non-finite values (NaN or inf)",
        )  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class Dataset:
    """Training and held-out test examples, keyed by the step's input names (one row each)."""

    name: str
    train: Arrays
    test: Arrays | None
    notes: list[str] = field(default_factory=list)

    @property
    def n_train(self) -> int:
        return len(next(iter(self.train.values())))

    @property
    def n_test(self) -> int:
        return 0 if self.test is None else len(next(iter(self.test.values())))


def digits_path() -> Path:
    """The bundled `data/digits.npz` (see data/README.md), as package data of `stepc`."""
    return Path(str(resources.files("stepc") / "data" / "digits.npz"))


def load_data(source: str | None, spec: Signature) -> Dataset:
    """`--data NAME|FILE.npz`: the bundled `digits` set (the default) or the user's archive."""
    if source is None or source == DIGITS:
        return _digits(spec)
    if not source.endswith(".npz") and not Path(source).exists():
        raise StepcError(f"--data {source}: no such data set (the bundled one is '{DIGITS}') and no such file")
    return _user_data(source, spec)


def _digits(spec: Signature) -> Dataset:
    """The 8x8 digits: features `images / 16` feed the float input with 64 values per example;
    the labels feed an i32 input (class indices) or a float input of 10 per example (one-hot)."""
    archive = _read_npz(digits_path(), what="the bundled digits set")
    images = archive["images"].astype(np.float64) / 16.0
    labels = archive["labels"].astype(np.int32)
    features_input = next(
        (s for s in spec.inputs if s.dtype.kind == "f" and math.prod(s.example_shape) == images.shape[1]), None
    )
    label_input = next((s for s in spec.inputs if s.dtype == np.int32 and s.example_shape == ()), None)
    if label_input is None:
        label_input = next(
            (s for s in spec.inputs if s.dtype.kind == "f" and s.example_shape == (10,) and s is not features_input),
            None,
        )
    others = [s for s in spec.inputs if s is not features_input and s is not label_input]
    if features_input is None or label_input is None or others:
        raise StepcError(
            f"the digits data set (64 pixel features and a label 0..9 per image) does not fit the batch inputs of "
            f"@{spec.name} ({', '.join(f'%{s.name}: {s.type_text}' for s in spec.inputs)}); it needs one float input "
            "of 64 values per example and one label input (i32 per example, or 10 floats one-hot). "
            "Give --data FILE.npz keyed by the input names",
            spec.loc,
        )
    if label_input.classes is not None and label_input.classes < 10:
        raise StepcError(
            f"the digits have 10 classes but %{label_input.name} feeds a classifier of {label_input.classes}",
            label_input.loc,
        )
    columns: Arrays = {
        features_input.name: images.reshape((-1, *features_input.example_shape)).astype(features_input.dtype)
    }
    if label_input.dtype == np.int32:
        columns[label_input.name] = labels
    else:
        columns[label_input.name] = np.eye(10, dtype=label_input.dtype)[labels]
    train, test = _split(columns, spec.batch_size)
    return Dataset(DIGITS, train, test)


def _user_data(path: str, spec: Signature) -> Dataset:
    """An archive keyed by input names (`x`, `labels`), optionally with held-out `test.x`,
    `test.labels`; without them, a fixed 20% is held out when a full batch remains to train."""
    arrays = _read_npz(path, what="--data")
    names = [s.name for s in spec.inputs]
    known = set(names) | {f"test.{n}" for n in names}
    if problems := key_problems(arrays, names, known):
        raise StepcError(
            f"--data {path}: {problems} (the keys are the batch inputs' names: {', '.join(names)}, "
            "and optionally test.NAME for held-out data)",
            spec.loc,
        )
    test_keys = [n for n in names if f"test.{n}" in arrays]
    if test_keys and len(test_keys) != len(names):
        absent = [f"test.{n}" for n in names if n not in test_keys]
        raise StepcError(f"--data {path}: held-out data needs every input; missing {', '.join(absent)}", spec.loc)
    train = _checked_columns(path, spec, {n: arrays[n] for n in names}, prefix="")
    if len(next(iter(train.values()))) < spec.batch_size:
        raise StepcError(
            f"--data {path}: {len(next(iter(train.values())))} examples, fewer than the step's batch size "
            f"{spec.batch_size}",
            spec.inputs[0].loc,
        )
    if test_keys:
        test = _checked_columns(path, spec, {n: arrays[f"test.{n}"] for n in names}, prefix="test.")
        return Dataset(Path(path).name, train, test)
    train_part, test_part = _split(train, spec.batch_size)
    return Dataset(Path(path).name, train_part, test_part)


def _checked_columns(path: str, spec: Signature, columns: Mapping[str, np.ndarray], prefix: str) -> Arrays:
    """Shapes, dtypes, finiteness and label range of each input's column, cast to the IR's dtype."""
    out: Arrays = {}
    count: tuple[str, int] | None = None
    for s in spec.inputs:
        key = prefix + s.name
        a = columns[s.name]
        expected = ("N", *s.example_shape)
        if a.ndim != len(s.shape) or tuple(a.shape[1:]) != s.example_shape:
            raise StepcError(
                f"--data {path}: '{key}' has shape {tuple(a.shape)}; %{s.name} is {s.type_text}, so the file "
                f"needs shape ({', '.join(str(d) for d in expected)}) with one example per row",
                s.loc,
            )
        if count is not None and a.shape[0] != count[1]:
            raise StepcError(
                f"--data {path}: '{key}' has {a.shape[0]} examples but '{count[0]}' has {count[1]}", s.loc
            )
        count = (key, a.shape[0])
        if s.dtype == np.int32:
            out[s.name] = _labels(path, key, s, a)
        else:
            out[s.name] = finite_numbers(
                a, s.dtype, "fiub", s.loc,
                f"--data {path}: '{key}' has dtype {a.dtype}; %{s.name} needs numbers",
                f"--data {path}: '{key}' holds non-finite values (NaN or inf)",
            )  # fmt: skip
    return out


def _labels(path: str, key: str, s: TensorSpec, a: np.ndarray) -> np.ndarray:
    if a.dtype.kind not in "iu":
        raise StepcError(
            f"--data {path}: '{key}' has dtype {a.dtype}; %{s.name} is {s.type_text}, so it needs integers",
            s.loc,
        )
    if a.size:
        low, high = int(a.min()), int(a.max())
        if s.classes is not None and (low < 0 or high >= s.classes):
            raise StepcError(
                f"--data {path}: '{key}' holds labels {low}..{high}; %{s.name} feeds a classifier of "
                f"{s.classes} classes, so labels must lie in 0..{s.classes - 1}",
                s.loc,
            )
        if low < np.iinfo(np.int32).min or high > np.iinfo(np.int32).max:
            raise StepcError(f"--data {path}: '{key}' holds values outside int32", s.loc)
    return a.astype(np.int32)


def _split(columns: Arrays, batch_size: int) -> tuple[Arrays, Arrays | None]:
    """A fixed 80/20 split (seed `SPLIT_SEED`), or everything for training when the training
    part would hold less than one batch."""
    n = len(next(iter(columns.values())))
    n_test = int(round(n * TEST_FRACTION))
    if n_test == 0 or n - n_test < batch_size:
        return columns, None
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    test_rows, train_rows = order[:n_test], order[n_test:]
    return {k: v[train_rows] for k, v in columns.items()}, {k: v[test_rows] for k, v in columns.items()}


def _read_npz(path: str | Path, what: str) -> Arrays:
    """An untrusted archive through `files.load_npz` (no pickle, headers checked first)."""
    return load_npz(path, option=what)


# ---------------------------------------------------------------------------------------------
# Batches and the number of steps


def batches(data: Arrays, batch_size: int, seed: int) -> Iterator[Arrays]:
    """Shuffled minibatches forever: each epoch a fresh permutation; the last partial batch of
    an epoch is dropped (the step's batch size is static)."""
    n = len(next(iter(data.values())))
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise StepcError(f"{n} training examples, fewer than the step's batch size {batch_size}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    while True:
        order = rng.permutation(n)
        for i in range(per_epoch):
            rows = order[i * batch_size : (i + 1) * batch_size]
            yield {k: v[rows] for k, v in data.items()}


def resolve_steps(steps: int | None, epochs: float | None, n_train: int, batch_size: int) -> int:
    """`--steps` or `--epochs` (not both); neither: `DEFAULT_EPOCHS` epochs."""
    if steps is not None and epochs is not None:
        raise StepcError("give --steps or --epochs, not both")
    if steps is not None:
        if steps < 1:
            raise StepcError(f"--steps must be at least 1, found {steps}")
        return steps
    if epochs is not None and not (epochs > 0 and math.isfinite(epochs)):
        raise StepcError(f"--epochs must be a positive number, found {epochs}")
    per_epoch = n_train // batch_size
    return max(1, math.ceil((DEFAULT_EPOCHS if epochs is None else epochs) * per_epoch))


# ---------------------------------------------------------------------------------------------
# Data parallel placement


class DataParallel:
    """`--devices N`: the batch sharded along its first dimension over a 1-D mesh of N
    devices (`NamedSharding(mesh, P("batch"))`); parameters and state replicated. XLA's SPMD
    partitioner inserts the all-reduce of the gradients; the step itself is unchanged."""

    def __init__(self, devices: list[Any], spec: Signature):
        import jax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        self.devices = devices
        n = len(devices)
        if spec.batch_size % n:
            raise StepcError(
                f"--devices {n}: the batch size {spec.batch_size} does not split evenly over {n} devices",
                spec.inputs[0].loc,
            )
        self.mesh = Mesh(np.array(devices), ("batch",))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.batch = NamedSharding(self.mesh, PartitionSpec("batch"))
        self._jax = jax

    def put_replicated(self, tree: Any) -> Any:
        return self._jax.device_put(tree, self.replicated)

    def put_batch(self, batch: Arrays) -> Any:
        return self._jax.device_put(batch, self.batch)

    def jit_step(self, step: Callable[..., Any]) -> Callable[..., Any]:
        r = self.replicated
        return self._jax.jit(step, in_shardings=(r, r, self.batch), out_shardings=(r, r, r))


def pick_devices(n: int) -> list[Any]:
    """N devices of the default backend, else N CPU devices; a clear error when fewer exist."""
    import jax

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


@dataclass(frozen=True)
class Head:
    """Where a classifier's logits come from and which batch input holds its labels."""

    labels: str  # the batch input's name
    one_hot: bool  # labels given as one-hot float rows (argmax gives the class)
    classes: int


def logits_module(module: ModuleOp) -> tuple[ModuleOp, Head] | None:
    """A copy of the forward program returning its logits (key `logits`) instead of the loss,
    or None when the loss is not a classifier's.

    The logits are found as the operand of `step.cross_entropy %logits, %labels` whose labels
    are a batch input, or as the operand of a last-axis `step.log_softmax`/`step.softmax` whose
    result is multiplied by a float batch input (one-hot targets, as in
    examples/softmax_regression.ir). The return is replaced by that value and the ops it no
    longer needs are erased; arguments are kept, so the cut program takes the same batch.
    """
    cut = module.clone()
    fn = step_function(cut)
    found = _find_head(fn)
    if found is None:
        return None
    logits, head = found
    block = fn.body.blocks.first
    ret = block.last_op
    assert isinstance(ret, func.ReturnOp)
    new_ret = func.ReturnOp(logits)
    new_ret.location = ret.location
    block.insert_op_before(new_ret, ret)
    ret.detach()
    ret.erase()
    for op in reversed(list(block.ops)):
        if op is not new_ret and all(not r.uses for r in op.results):
            op.detach()
            op.erase()
    fn.function_type = FunctionType.from_lists(list(fn.function_type.inputs.data), [logits.type])
    set_output_names(fn, ["logits"])
    return cut, head


def _find_head(fn: func.FuncOp) -> tuple[SSAValue, Head] | None:
    input_names = {a.value: a.name for a in args(fn) if a.role == "input"}
    for op in fn.walk():
        if isinstance(op, CrossEntropyOp) and op.labels in input_names:
            return op.logits, Head(input_names[op.labels], False, shape_of(op.logits)[-1])
    for op in fn.walk():
        if isinstance(op, (LogSoftmaxOp, SoftmaxOp)) and op.axis_index in (-1, len(shape_of(op.input)) - 1):
            for use in op.result.uses:
                user = use.operation
                if isinstance(user, MulOp):
                    other = user.rhs if use.index == 0 else user.lhs
                    if other in input_names and shape_of(other) == shape_of(op.input):
                        return op.input, Head(input_names[other], True, shape_of(op.input)[-1])
    return None


def logits_function(cut: ModuleOp) -> Callable[[Arrays, Arrays], Any]:
    """`logits(params, batch)` of a `logits_module` cut, through the JAX backend (jitted)."""
    import jax

    from stepc.backends.jax import jax_function

    jf = jax_function(cut)
    names = jf.arg_names

    def logits(params: Mapping[str, Any], batch: Mapping[str, Any]) -> Any:
        values = {**params, **batch}
        return jf.fn(*(values[n] for n in names))[0]

    return jax.jit(logits)


def compile_step(path: str, check: bool = True) -> Any:
    """The compiled training step of `stepc.compile` (the default pipeline)."""
    import stepc

    return stepc.compile(path, check=check)


def accuracy(logits_fn: Callable[[Arrays, Arrays], Any], params: Any, data: Arrays, head: Head,
             batch_size: int) -> tuple[float, int]:
    """The fraction of examples whose argmax logit is the label, over every example of `data`:
    the last partial batch is padded by repeating its last row and the padding ignored.
    Returns (accuracy, number correct)."""
    n = len(next(iter(data.values())))
    correct = 0
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(start + batch_size, n))
        used = len(rows)
        rows = np.concatenate([rows, np.full(batch_size - used, rows[-1])])
        batch = {k: v[rows] for k, v in data.items()}
        logits = np.asarray(logits_fn(params, batch), dtype=np.float64)[:used]
        labels = batch[head.labels][:used]
        truth = np.argmax(labels, axis=-1) if head.one_hot else labels
        correct += int(np.sum(np.argmax(logits, axis=-1) == truth))
    return (correct / n if n else float("nan")), correct


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
class TrainResult:
    params: Any
    state: Any
    losses: list[float]
    seconds: float
    first_step_seconds: float
    stopped: str | None = None  # why the run ended early (a non-finite loss), else None

    @property
    def steps(self) -> int:
        return len(self.losses)


def train(step: Callable[..., Any], params: Any, state: Any, batch_stream: Iterator[Any], steps: int,
          progress: Progress | None = None) -> TrainResult:
    """Run `steps` steps of `params, state, loss = step(params, state, batch)`.

    The loss of each step is read back at once; a non-finite loss stops the run with a
    message naming the step (counted from 1), and the result keeps the parameters that step
    started from (the last ones with a finite loss) rather than its update.
    """
    losses: list[float] = []
    start = time.perf_counter()
    first = 0.0
    for i in range(steps):
        new_params, new_state, loss = step(params, state, next(batch_stream))
        value = float(loss)
        if i == 0:
            first = time.perf_counter() - start
        if not math.isfinite(value):
            if progress:
                progress.close()
            return TrainResult(params, state, losses, time.perf_counter() - start, first,
                               stopped=f"the loss is {value} at step {i + 1}; kept the parameters from before it")
        params, state = new_params, new_state
        losses.append(value)
        if progress:
            progress.update(i + 1, value)
    if progress:
        progress.close()
    return TrainResult(params, state, losses, time.perf_counter() - start, first)


# ---------------------------------------------------------------------------------------------
# The files of a run


def loss_png(losses: list[float], title: str) -> bytes | None:
    """The loss curve (raw and a moving average) as PNG bytes; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="loss per step")
    window = max(1, len(losses) // 50)
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, lw=1.6, label=f"moving average of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    if losses and min(losses) > 0:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write_run(out_dir: str | Path, summary: Mapping[str, Any], params: Mapping[str, Any], losses: list[float],
              protect: tuple[str | Path, ...] = ()) -> list[str]:
    """`--out DIR`: summary.json, params.npz and loss.png, each written atomically; returns
    the names written."""
    out = check_output_dir(out_dir, RUN_FILES, protect=protect, option="--out")
    written = []
    atomic_write_npz(out / "params.npz", {k: np.asarray(v) for k, v in params.items()}, protect=protect)
    written.append("params.npz")
    png = loss_png(losses, f"{summary.get('program', '')} on {summary.get('data', '')}")
    if png is not None:
        atomic_write(out / "loss.png", png, protect=protect)
        written.append("loss.png")
    atomic_write(out / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n", protect=protect)
    written.append("summary.json")
    return written
