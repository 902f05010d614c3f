"""The data side of `stepc run`: what a step program takes, its initial parameters, the data
set and its batches, all plain NumPy.

    spec = signature(module)                     # parameters, batch inputs, batch size
    data = load_data("digits", spec)             # train/test dicts keyed by input names
    params = default_init(module, seed=0)        # PyTorch nn.Linear's rule (see `fan_in`)
    stream = batches(data.train, spec.batch_size, seed=0)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import BlockArgument, Operation, SSAValue

from stepc.ir.diagnostics import SourceLoc, StepcError, location_of
from stepc.ir.dialect import (
    AddOp,
    BroadcastOp,
    CrossEntropyOp,
    MatmulOp,
    is_i32,
    shape_of,
)
from stepc.ir.program import Role, arg_location, args, label_range, step_function
from stepc.ir.values import numpy_dtype
from stepc.tools.files import load_npz

DIGITS = "digits"
TEST_FRACTION = 0.2
SPLIT_SEED = 0  # the train/test split never moves with --seed: accuracy is always on the same images
DEFAULT_EPOCHS = 20
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
            label_range(arg) if is_i32(arg.type.get_element_type()) and _has_class_reader(arg.value) else None,
        )
        if arg.role == Role.PARAM:
            params.append(spec)
        elif arg.role == Role.INPUT:
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
    n_test = round(n * TEST_FRACTION)
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
