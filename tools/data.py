"""The data side of `stepc run`: what a step program takes, its initial parameters, the data
set and its batches, all plain NumPy.

    spec = signature(module)                     # parameters, batch inputs, batch size
    data = load_data("digits", spec)             # train/test dicts keyed by input names
    params = default_init(module, seed=0)        # PyTorch nn.Linear's rule (see `fan_in`)
    stream = batches(data.train, spec.batch_size, seed=0)
    stream = stacked(stream, spec.accumulate)    # with `step.accumulate = K`: K micro-batches a step
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import BlockArgument, Operation, SSAValue

from stepc.ir.diagnostics import SourceLoc, StepcError, location_of
from stepc.ir.dialect import (
    AddOp,
    BroadcastOp,
    MatmulOp,
    is_i32,
    shape_of,
)
from stepc.ir.limits import human_bytes, memory_limit
from stepc.ir.program import (
    Role,
    arg_location,
    args,
    check_accumulation,
    classifier_head,
    label_classes,
    label_range,
    reads_ids,
    step_function,
)
from stepc.ir.values import numpy_dtype
from stepc.tools.files import CHUNK_BYTES, LISTED, NpzArchive, load_npz, name_list

DIGITS = "digits"
COPY = "copy"
COPY_PERIOD = 4
COPY_EXAMPLES = 4096
TEST_FRACTION = 0.2
SPLIT_SEED = 0  # the train/test split never moves with --seed: accuracy is always on the same images
DEFAULT_EPOCHS = 20
KEY_SHAPE = (2,)  # a threefry key's data: two uint32 words
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
    ids: bool = False  # i32 embedding ids (`reads_ids`): `classes` is then the table's rows

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
    inputs: tuple[TensorSpec, ...]  # the data: one example per row
    batch_size: int
    loc: SourceLoc | None
    keys: tuple[TensorSpec, ...] = ()  # random keys (`tensor<2xui32>`, for step.dropout): fresh each step
    labels: str | None = None  # the input a classifier's loss reads its labels from (`classifier_head`)
    # `step.accumulate = K`: each step takes K micro-batches of `batch_size` rows, stacked along a
    # leading axis of K (`stacked`); None without the attribute (one batch per step, unstacked)
    accumulate: int | None = None
    # Run-time optimizer fields (`{step.hyper = "lr"}`): (field, argument), fed by the run, not the data
    hypers: tuple[tuple[str, TensorSpec], ...] = ()

    @property
    def examples_per_step(self) -> int:
        """The examples one step reads: the batch size, times K with accumulation."""
        return self.batch_size * (self.accumulate or 1)


def signature(module: ModuleOp) -> Signature:
    """Read a forward step program's parameters, batch inputs and batch size.

    The batch size is the leading dimension of the batch inputs, which must all agree: each
    batch input holds one example per row. With `step.accumulate = K` the program is written
    for one micro-batch of that size, and each step takes K of them (`Signature.accumulate`).
    """
    fn = step_function(module)
    params: list[TensorSpec] = []
    inputs: list[TensorSpec] = []
    keys: list[TensorSpec] = []
    hypers: list[tuple[str, TensorSpec]] = []
    for arg in args(fn):
        spec = TensorSpec(
            arg.name,
            tuple(arg.type.get_shape()),
            numpy_dtype(arg.type.get_element_type()),
            arg_location(fn, arg.value),
            label_range(arg) if is_i32(arg.type.get_element_type()) and label_classes(arg) else None,
            reads_ids(arg),
        )
        if arg.role == Role.PARAM:
            params.append(spec)
        elif arg.role == Role.HYPER and arg.hyper_field is not None:
            hypers.append((arg.hyper_field, spec))
        elif arg.role == Role.INPUT and spec.dtype == np.uint32:
            if spec.shape != KEY_SHAPE:
                raise StepcError(
                    f"batch input %{spec.name} is {spec.type_text}: stepc run feeds a ui32 input a fresh random key "
                    "each step, which is tensor<2xui32> (threefry key data); other ui32 inputs it cannot feed",
                    spec.loc,
                )
            keys.append(spec)
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
    head = classifier_head(fn)
    return Signature(fn.sym_name.data, tuple(params), tuple(inputs), batch, where, tuple(keys),
                     head.labels if head is not None else None, check_accumulation(fn), tuple(hypers))  # fmt: skip


def _element_text(dtype: np.dtype) -> str:
    names = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64", "int32": "i32"}
    return names.get(dtype.name, dtype.name)


# ---------------------------------------------------------------------------------------------
# Initialization


def fan_in(fn: func.FuncOp, param: BlockArgument) -> int:
    """The fan-in of PyTorch's `nn.Linear` / `nn.Conv2d` init rule for one parameter, in
    stepc's layouts.

    - a convolution kernel (`OxC/groupsxKHxKW`, the second operand of `step.conv2d`): the
      product of its last three dimensions, as `nn.Conv2d`;
    - a bias added to a convolution's result (`16x1x1` for 16 channels): that kernel's fan-in;
    - a weight (rank >= 2) in the `(in, out)` layout of `x @ w`: its second-to-last dimension
      (the one a matmul contracts), e.g. 64 for `tensor<64x128xf32>`;
    - a bias (rank 1): the fan-in of the weight whose matmul result it is added to
      (`step.add (step.matmul %x, %w), %b`, possibly through a `step.broadcast`); if no such
      weight is found, its own length;
    - a scalar: 1.
    """
    shape = shape_of(param)
    if any(use.operation.name == CONV and use.index == 1 for use in param.uses):
        return math.prod(shape[1:])
    for user in _users_through_broadcast(param):
        if isinstance(user, AddOp):
            for operand in (user.lhs, user.rhs):
                producer = operand.owner
                if isinstance(producer, Operation) and producer.name == CONV:
                    return math.prod(shape_of(producer.operands[1])[1:])
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


CONV = "step.conv2d"
LAYER_NORM = "step.layer_norm"
EMBEDDING = "step.embedding"


def init_rule(fn: func.FuncOp, param: BlockArgument) -> tuple[str, float]:
    """How `default_init` draws one parameter, as PyTorch's modules do: a layer norm's gain
    (`step.layer_norm`'s second operand) `("constant", 1.0)` and its bias `("constant", 0.0)`
    (`nn.LayerNorm`); an embedding table (`step.embedding`'s first operand) `("normal", 1.0)`
    (`nn.Embedding`: N(0, 1)); every other parameter `("uniform", 1/sqrt(fan_in))`
    (`nn.Linear`, `nn.Conv2d`: see `fan_in`)."""
    for use in param.uses:
        if use.operation.name == LAYER_NORM and use.index in (1, 2):
            return "constant", 1.0 if use.index == 1 else 0.0
        if use.operation.name == EMBEDDING and use.index == 0:
            return "normal", 1.0
    return "uniform", 1.0 / math.sqrt(fan_in(fn, param))


def _users_through_broadcast(value: SSAValue) -> Iterator[Operation]:
    for use in value.uses:
        if isinstance(use.operation, BroadcastOp):
            yield from _users_through_broadcast(use.operation.results[0])
        else:
            yield use.operation


def default_init(module: ModuleOp, seed: int) -> Arrays:
    """PyTorch's default initialization of each parameter (`init_rule`: `nn.Linear`'s
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases, `nn.LayerNorm`'s ones and zeros,
    `nn.Embedding`'s N(0, 1)); drawn in parameter order from one NumPy generator seeded by
    `seed` (the same seed gives the same parameters)."""
    fn = step_function(module)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    out: Arrays = {}
    for arg in args(fn):
        if arg.role != "param":
            continue
        kind, scale = init_rule(fn, arg.value)
        shape = tuple(arg.type.get_shape())
        if kind == "constant":
            values = np.full(shape, scale)
        elif kind == "normal":
            values = rng.normal(0.0, scale, size=shape)
        else:
            values = rng.uniform(-scale, scale, size=shape)
        out[arg.name] = values.astype(numpy_dtype(arg.type.get_element_type()))
    return out


def key_problems(keys: Iterable[str], required: list[str], allowed: set[str], hint: str = "") -> str:
    """`missing a, b; unknown keys c` for the keys of an .npz file, or "" when they are right
    (at most `files.LISTED` names of each kind, then `and N more`)."""
    present = set(keys)
    missing = [n for n in required if n not in present]
    extra = sorted(k for k in present if k not in allowed)
    parts = []
    if missing:
        parts.append(f"missing {name_list(missing)}")
    if extra:
        parts.append(f"unknown keys {name_list(extra)}{hint if any(k.startswith(OLD_HELD_OUT) for k in extra) else ''}")
    return "; ".join(parts)


def _finite_check(where: str, dtype: np.dtype, loc: SourceLoc | None) -> Callable[[np.ndarray, np.ndarray], None]:
    """A chunk check for `NpzArchive.read_as`: the converted values must be finite; NaN and inf
    in the file, and finite values too large for `dtype` (they would become inf), are refused."""

    def check(converted: np.ndarray, original: np.ndarray) -> None:
        if np.all(np.isfinite(converted)):
            return
        if original.dtype.kind == "f" and not np.all(np.isfinite(original)):
            raise StepcError(f"{where} holds non-finite values (NaN or inf)", loc)
        largest = float(np.finfo(dtype).max) if dtype.kind == "f" else float("inf")
        raise StepcError(
            f"{where} holds values too large for {dtype.name} (over {largest:.4g}: they would become inf)", loc
        )

    return check


def _headers_first(archive: NpzArchive, used: Iterable[str]) -> None:
    """The headers of the members a caller uses, and of the unknown ones its message would
    name: object arrays (pickles) are refused before anything else is said or read."""
    used = [k for k in used if k in archive]
    unknown = [k for k in sorted(archive.keys) if k not in set(used)]
    archive.check_headers([*used, *unknown[:LISTED]])


def load_params(path: str | Path, spec: Signature) -> Arrays:
    """`--init FILE.npz`: one array per parameter, keyed by its IR name, of its shape. Every
    header is compared with the parameters before any data is read."""
    names = [p.name for p in spec.params]
    with NpzArchive(path, "--init") as archive:
        _headers_first(archive, names)
        if problems := key_problems(archive.keys, names, set(names)):
            raise StepcError(
                f"--init {path}: {problems} (the parameters are: {name_list(names)})",
                spec.params[0].loc if any(n not in archive for n in names) else None,
            )
        for p in spec.params:
            member = archive.member(p.name)
            if member.shape != p.shape:
                raise StepcError(f"--init {path}: %{p.name} is {p.type_text}, the file holds shape {member.shape}", p.loc)
            if member.dtype.kind not in "fiu":
                raise StepcError(f"--init {path}: %{p.name} must hold numbers, the file holds dtype {member.dtype}", p.loc)
        return {
            p.name: archive.read_as(p.name, p.dtype, check=_finite_check(f"--init {path}: %{p.name}", p.dtype, p.loc))
            for p in spec.params
        }


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


def load_data(source: str | None, spec: Signature, seed: int = 0) -> Dataset:
    """`--data NAME|FILE.npz`: a bundled set (`digits`, the default, or the generated `copy`
    sequences, drawn from `seed`) or the user's archive."""
    if source is None or source == DIGITS:
        return _digits(spec)
    if source == COPY:
        return _copy(spec, seed)
    if not source.endswith(".npz") and not Path(source).exists():
        raise StepcError(
            f"--data {source}: no such data set (the bundled ones are '{DIGITS}' and '{COPY}') and no such file"
        )
    return _user_data(source, spec)


def _copy(spec: Signature, seed: int) -> Dataset:
    """`--data copy`: next-token prediction on sequences that repeat a random pattern.

    Each example is a pattern of `COPY_PERIOD` tokens drawn uniformly from the vocabulary,
    repeated to `T + 1` tokens; the step's `BxT` token input gets the first `T` and its `BxT`
    targets (the per-token labels of its cross-entropy, whose class count is the vocabulary
    `V`) the last `T`. Only the first `COPY_PERIOD - 1` targets of a sequence are unpredictable,
    so a model that learns to copy the token `COPY_PERIOD` back reaches a loss of
    `(COPY_PERIOD - 1) / T * ln V`, against `ln V` for a uniform guess. `COPY_EXAMPLES`
    sequences drawn from `SeedSequence([seed, 4])`, a fifth held out."""
    targets = next((s for s in spec.inputs if s.name == spec.labels and s.dtype == np.int32
                    and len(s.example_shape) == 1), None)  # fmt: skip
    tokens = None
    if targets is not None:
        tokens = next((s for s in spec.inputs if s is not targets and s.dtype == np.int32
                       and s.example_shape == targets.example_shape), None)  # fmt: skip
    if targets is None or tokens is None or len(spec.inputs) != 2:
        raise StepcError(
            f"the copy data set (next-token prediction: token ids and per-token targets, both BxT) does not fit the "
            f"batch inputs of @{spec.name} ({', '.join(f'%{s.name}: {s.type_text}' for s in spec.inputs)}); it needs "
            "two i32 inputs of one shape BxT: the token ids, and the targets read as labels by the loss "
            "(e.g. `step.cross_entropy` of the logits reshaped to (B*T)xV and the targets reshaped to B*T)",
            spec.loc,
        )
    vocab = targets.classes
    assert vocab is not None
    if tokens.classes is not None and tokens.classes < vocab:
        raise StepcError(
            f"the copy data's tokens range over the targets' {vocab} classes, but %{tokens.name} reads ids below "
            f"{tokens.classes} only",
            tokens.loc,
        )
    length = targets.example_shape[0]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 4]))
    pattern = rng.integers(0, vocab, size=(COPY_EXAMPLES, COPY_PERIOD), dtype=np.int32)
    sequences = np.tile(pattern, (1, length // COPY_PERIOD + 2))[:, : length + 1]
    columns: Arrays = {tokens.name: sequences[:, :-1].copy(), targets.name: sequences[:, 1:].copy()}
    train, test = _split(columns, spec.batch_size)
    return Dataset(COPY, train, test)


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
            "Give --data FILE.npz keyed by the input names"
            + (" (or --data copy: the bundled next-token task, for a language model over i32 tokens and targets)"
               if sum(s.dtype == np.int32 and len(s.example_shape) == 1 for s in spec.inputs) == 2 else ""),
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


HELD_OUT = "test/"  # held-out data for the input NAME: the key `test/NAME` ('/' is in no IR name)
OLD_HELD_OUT = "test."  # `test.NAME`, accepted too while no batch input's name begins with `test.`


def held_out_prefixes(names: Iterable[str]) -> tuple[str, ...]:
    """The prefixes that mark held-out keys for batch inputs named `names`: `test/`, and
    `test.` unless an input's own name begins with it (then `test.t` is that input, not the
    held-out `t`: ambiguous, so only `test/` holds held-out data)."""
    names = list(names)
    if any(n.startswith(OLD_HELD_OUT) for n in names):
        return (HELD_OUT,)
    return (HELD_OUT, OLD_HELD_OUT)


def _data_keys(path: str, archive: NpzArchive, spec: Signature) -> dict[str, str] | None:
    """Which key holds the held-out data of each input (None: no held-out data); the keys of
    the file checked first: missing inputs and unknown keys are errors."""
    names = [s.name for s in spec.inputs]
    prefixes = held_out_prefixes(names)
    held: dict[str, str] = {}
    for name in names:
        spelled = [p + name for p in prefixes if p + name in archive]
        if len(spelled) > 1:
            raise StepcError(
                f"--data {path}: the held-out data of %{name} is given both as '{spelled[0]}' and as '{spelled[1]}'",
                spec.loc,
            )
        if spelled:
            held[name] = spelled[0]
    known = set(names) | {p + n for p in prefixes for n in names}
    _headers_first(archive, [*names, *held.values()])
    hint = (" (held-out data goes under test/NAME: an input's name begins with 'test.', so test.NAME would be "
            "ambiguous)") if OLD_HELD_OUT not in prefixes else ""  # fmt: skip
    if problems := key_problems(archive.keys, names, known, hint):
        raise StepcError(
            f"--data {path}: {problems} (the keys are the batch inputs' names: {name_list(names)}, "
            f"and optionally {HELD_OUT}NAME for held-out data)",
            spec.loc,
        )
    if held and len(held) != len(names):
        prefix = OLD_HELD_OUT if all(k.startswith(OLD_HELD_OUT) for k in held.values()) else HELD_OUT
        absent = [prefix + n for n in names if n not in held]
        raise StepcError(f"--data {path}: held-out data needs every input; missing {name_list(absent)}", spec.loc)
    return held or None


def _declared_rows(path: str, archive: NpzArchive, spec: Signature, keys: Mapping[str, str]) -> int:
    """The number of examples the members `keys` (input name -> key) declare, their shapes and
    dtypes checked against the inputs from the headers alone."""
    count: tuple[str, int] | None = None
    for s in spec.inputs:
        key = keys[s.name]
        member = archive.member(key)
        shape = member.shape
        expected = ("N", *s.example_shape)
        if len(shape) != len(s.shape) or shape[1:] != s.example_shape:
            raise StepcError(
                f"--data {path}: '{key}' has shape {shape}; %{s.name} is {s.type_text}, so the file "
                f"needs shape ({', '.join(str(d) for d in expected)}) with one example per row",
                s.loc,
            )
        if count is not None and shape[0] != count[1]:
            raise StepcError(f"--data {path}: '{key}' has {shape[0]} examples but '{count[0]}' has {count[1]}", s.loc)
        count = (key, shape[0])
        if s.dtype == np.int32 and member.dtype.kind not in "iu":
            raise StepcError(
                f"--data {path}: '{key}' has dtype {member.dtype}; %{s.name} is {s.type_text}, so it needs integers",
                s.loc,
            )
        if s.dtype != np.int32 and member.dtype.kind not in "fiub":
            raise StepcError(f"--data {path}: '{key}' has dtype {member.dtype}; %{s.name} needs numbers", s.loc)
    return 0 if count is None else count[1]


def _user_data(path: str, spec: Signature) -> Dataset:
    """An archive keyed by input names (`x`, `labels`), optionally with held-out `test/x`,
    `test/labels` (or `test.x`, `test.labels`: see `held_out_prefixes`); without them, a fixed
    20% is held out when a full batch remains to train.

    Keys, shapes and dtypes are checked from the headers, and what the data needs in memory
    as the program takes it (`data_bytes`) against `STEPC_MAX_BYTES`, before any data is read;
    then each column is read in chunks, converted to its input's dtype, checked (finite,
    labels in range) and put in its place in the split as it comes."""
    with NpzArchive(path, "--data") as archive:
        held = _data_keys(path, archive, spec)
        n = _declared_rows(path, archive, spec, {s.name: s.name for s in spec.inputs})
        if n < spec.batch_size:
            raise StepcError(
                f"--data {path}: {n} examples, fewer than the step's batch size {spec.batch_size}", spec.inputs[0].loc
            )
        n_held = _declared_rows(path, archive, spec, held) if held else 0
        if held and n_held == 0:
            raise StepcError(
                f"--data {path}: the held-out set ({name_list(held.values())}) holds no examples: give at least one, "
                "or leave its keys out (a fifth of the examples is then held out when a full batch remains to train)",
                spec.loc,
            )
        n_test = 0 if held else round(n * TEST_FRACTION)
        split = n_test > 0 and n - n_test >= spec.batch_size
        keys = [*(s.name for s in spec.inputs), *(held.values() if held else ())]
        fortran = max((archive.member(k).nbytes for k in keys if archive.member(k).fortran_order), default=0)
        need = data_bytes(spec, n + n_held, n if split else 0, n - n_test if split else n) + fortran
        limit = memory_limit()
        if need > limit:
            raise StepcError(
                f"--data {path}: the data needs about {human_bytes(need)} in memory ({n + n_held} examples as "
                f"@{spec.name} takes them), over the memory limit of {human_bytes(limit)} (STEPC_MAX_BYTES); "
                "nothing was read",
                spec.loc,
            )
        places = _split_places(n, n_test) if split else None
        columns = {s.name: _read_column(path, archive, s.name, s, places) for s in spec.inputs}
        del places
        if split:
            train = {k: v[n_test:] for k, v in columns.items()}
            test: Arrays | None = {k: v[:n_test] for k, v in columns.items()}
        else:
            train = columns
            test = {s.name: _read_column(path, archive, held[s.name], s, None) for s in spec.inputs} if held else None
    return Dataset(Path(path).name, train, test)


def data_bytes(spec: Signature, rows: int, split_rows: int, train_rows: int) -> int:
    """What `stepc run --data` holds in memory for `rows` examples: every column in its
    input's dtype, the split's index arrays (8 bytes a row of `split_rows`) or the epochs'
    permutation (4 bytes a training row), and the chunks of a read in flight."""
    columns = sum(rows * math.prod(s.example_shape) * s.dtype.itemsize for s in spec.inputs)
    return columns + max(8 * split_rows, 4 * train_rows) + 3 * CHUNK_BYTES


def _read_column(path: str, archive: NpzArchive, key: str, s: TensorSpec, places: np.ndarray | None) -> np.ndarray:
    """One input's column, converted to its dtype chunk by chunk; row r lands at `places[r]`."""
    where = f"--data {path}: '{key}'"
    if s.dtype != np.int32:
        return archive.read_as(key, s.dtype, rows=places, check=_finite_check(where, s.dtype, s.loc))
    seen: list[int] = []

    def track(converted: np.ndarray, original: np.ndarray) -> None:
        low, high = int(original.min()), int(original.max())
        seen[:] = [min(seen[0], low), max(seen[1], high)] if seen else [low, high]

    values = archive.read_as(key, np.dtype(np.int32), rows=places, check=track)
    if seen:
        low, high = seen
        if s.classes is not None and s.ids and (low < 0 or high >= s.classes):
            raise StepcError(
                f"{where} holds ids {low}..{high}; %{s.name} indexes an embedding table of "
                f"{s.classes} rows, so ids must lie in 0..{s.classes - 1}",
                s.loc,
            )
        if s.classes is not None and (low < 0 or high >= s.classes):
            raise StepcError(
                f"{where} holds labels {low}..{high}; %{s.name} feeds a classifier of "
                f"{s.classes} classes, so labels must lie in 0..{s.classes - 1}",
                s.loc,
            )
        if low < np.iinfo(np.int32).min or high > np.iinfo(np.int32).max:
            raise StepcError(f"{where} holds values outside int32", s.loc)
    return values


def _split_places(n: int, n_test: int) -> np.ndarray:
    """Where each row goes for the fixed split: the rows of `permutation(n)` (seed
    `SPLIT_SEED`) in order, the first `n_test` of them held out; row r of the file lands at
    `places[r]`. Index arrays in int32 where they fit (8 bytes a row at most, at once)."""
    order = _permutation(np.random.default_rng(SPLIT_SEED), n)
    places = np.empty(n, order.dtype)
    step = max(1, CHUNK_BYTES // order.dtype.itemsize)
    for start in range(0, n, step):
        stop = min(n, start + step)
        places[order[start:stop]] = np.arange(start, stop, dtype=order.dtype)
    return places


def _permutation(rng: np.random.Generator, n: int) -> np.ndarray:
    """`rng.permutation(n)` (the same numbers, the same draws), in int32 when `n` fits."""
    order = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
    rng.shuffle(order)
    return order


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


def batches(data: Arrays, batch_size: int, seed: int) -> BatchStream:
    """Shuffled minibatches forever: each epoch a fresh permutation; the last partial batch of
    an epoch is dropped (the step's batch size is static). See `BatchStream`."""
    return BatchStream(data, batch_size, seed)


class BatchStream:
    """The minibatches of `batches`, with the position a checkpoint records and resumes from.

    Epoch `e`'s order is the `e`-th permutation drawn from one generator seeded by
    `SeedSequence([seed, 2])`. `position()` is the number of batches drawn and the generator's
    state at the start of the epoch the next batch comes from; `BatchStream(..., position=p)`
    continues exactly where the stream that gave `p` stood (the same batches in the same order),
    without drawing the earlier epochs again."""

    def __init__(self, data: Arrays, batch_size: int, seed: int, position: Mapping[str, Any] | None = None):
        self.data = data
        self.batch_size = batch_size
        self.n = len(next(iter(data.values())))
        self.per_epoch = self.n // batch_size
        if self.per_epoch == 0:
            raise StepcError(f"{self.n} training examples, fewer than the step's batch size {batch_size}")
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
        self.drawn = 0  # batches yielded so far
        self.order: np.ndarray | None = None  # the current epoch's permutation
        self.epoch_state: Mapping[str, Any] = self.rng.bit_generator.state  # before the current epoch's permutation
        if position is not None:
            self._restore(position)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Arrays:
        within = self.drawn % self.per_epoch
        if within == 0 or self.order is None:
            self.epoch_state = self.rng.bit_generator.state
            self.order = _permutation(self.rng, self.n)
        rows = self.order[within * self.batch_size : (within + 1) * self.batch_size]
        self.drawn += 1
        return {k: v[rows] for k, v in self.data.items()}

    def position(self) -> dict[str, Any]:
        """Where the stream stands: `batches` drawn, the `epoch` and `batch_in_epoch` of the next
        one, and `shuffle_rng`, the generator's state (NumPy's `bit_generator.state`) before
        that epoch's permutation; plain JSON."""
        starting = self.drawn % self.per_epoch == 0  # the next epoch's permutation is not drawn yet
        return {
            "batches": self.drawn,
            "epoch": self.drawn // self.per_epoch,
            "batch_in_epoch": self.drawn % self.per_epoch,
            "examples": self.n,
            "batch_size": self.batch_size,
            "shuffle_rng": dict(self.rng.bit_generator.state if starting else self.epoch_state),
        }

    def _restore(self, position: Mapping[str, Any]) -> None:
        try:
            drawn = int(position["batches"])
            if (position["examples"], position["batch_size"]) != (self.n, self.batch_size) or drawn < 0:
                raise ValueError(f"it was taken on {position['examples']} examples in batches of {position['batch_size']}")
            self.rng.bit_generator.state = dict(position["shuffle_rng"])
        except (KeyError, TypeError, ValueError) as e:
            raise StepcError(
                f"the checkpoint's data position does not fit the data ({self.n} examples in batches of "
                f"{self.batch_size}): {e}"
            ) from None
        self.drawn = drawn
        if drawn % self.per_epoch:  # resuming within an epoch: its permutation, drawn again
            self.epoch_state = self.rng.bit_generator.state
            self.order = _permutation(self.rng, self.n)


def step_key(seed: int, key_index: int, step: int) -> np.ndarray:
    """The random key `stepc run` feeds its `key_index`-th key input (in argument order) at
    step `step` (counted from 0): two uint32 words of NumPy's `SeedSequence([seed, 3,
    key_index, step])`. A pure function of the three, so a run resumed at any step, or a run
    on more devices, feeds the same keys; different steps and different key inputs get
    independent ones."""
    return np.random.SeedSequence([seed, 3, key_index, step]).generate_state(2, np.uint32)


def with_keys(stream: Iterator[Arrays], keys: Sequence[TensorSpec], seed: int, first_step: int = 0) -> Iterator[Arrays]:
    """Each batch of `stream` with a fresh key (`step_key`) for every key input."""
    for step, batch in enumerate(stream, start=first_step):
        yield {**batch, **{s.name: step_key(seed, i, step) for i, s in enumerate(keys)}}


def stacked(stream: Iterator[Arrays], count: int) -> Iterator[Arrays]:
    """The batches of an accumulated step (`step.accumulate = K`): each K consecutive batches of
    `stream` (keys included) stacked along a new leading axis, micro-batch k at index k. So an
    accumulated run reads the very micro-batches, keys and order of a run without
    accumulation, K to a step."""
    while True:
        group = [next(stream) for _ in range(count)]
        yield {key: np.stack([batch[key] for batch in group]) for key in group[0]}


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
