"""Writing step IR as text: what the importers (`frontends/torch.py`, `frontends/jax.py`) share.

An importer walks a traced graph (a `torch.export` program, a jaxpr) and writes one step op per
node through an `IRWriter`: typed values (`Value`: a name, a shape and an element type), the
function's arguments in order, one line per op with its full type, and a `// FILE:LINE: code`
comment wherever the user's source line changes, so the text reads as the model does. The text
is the importer's only product: it is parsed, verified and compiled exactly as a program a user
wrote, so an importer can produce nothing the language does not check.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stepc.ir.diagnostics import StepcError

FLOAT_TYPES = ("f16", "bf16", "f32", "f64")
_VALID = re.compile(r"[A-Za-z_$.-][\w$.-]*")
_NUMPY_OF = {"f16": np.float16, "f32": np.float32, "f64": np.float64, "i32": np.int32, "ui32": np.uint32}


@dataclass(frozen=True)
class Value:
    """A value of the program being written: `%name : tensor<SHAPExDTYPE>`."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # f16, bf16, f32, f64, i32 or ui32

    @property
    def type(self) -> str:
        return tensor_type(self.shape, self.dtype)

    @property
    def ref(self) -> str:
        return f"%{self.name}"

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_TYPES


_DIGIT_FIRST = re.compile(r"_*\d")


def ir_value_name(name: str) -> str:
    """The IR value name of an imported name (a torch parameter, a JAX key path, a batch key):
    the name itself, dots and all, with one `_` put in front of a name that starts with a digit
    after any underscores (`0.weight` -> `_0.weight`, `_1.bias` -> `__1.bias`). The importers
    first refuse names with characters other than letters, digits, `_` and `.`; for those,
    `source_name(ir_value_name(n)) == n`, and distinct names stay distinct."""
    return "_" + name if _DIGIT_FIRST.match(name) else name


def source_name(name: str) -> str:
    """The inverse of `ir_value_name`."""
    return name[1:] if _DIGIT_FIRST.match(name) and name.startswith("_") else name


@dataclass(frozen=True)
class BatchInput:
    """A batch input of an imported program: the key it has in the framework's batch (a dict
    key, a pytree key path), its IR name, shape and element type."""

    key: str
    name: str
    shape: tuple[int, ...]
    dtype: str


def step_batch(inputs: Sequence[BatchInput], values: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A framework's batch (`values` by key, arrays or tensors as NumPy) as the step's batch dict:
    the keys the import saw, each of its shape, integer labels and ids as int32 (values outside
    [0, 2**31) refused: the program's own check then holds them to their classes or rows)."""
    expected = {i.key for i in inputs}
    missing, extra = sorted(expected - set(values)), sorted(set(values) - expected)
    if missing or extra:
        raise StepcError(f"the batch's keys differ from the imported program's: missing {missing}, unexpected {extra}")
    out: dict[str, np.ndarray] = {}
    for spec in inputs:
        array = np.asarray(values[spec.key])
        if tuple(array.shape) != spec.shape:
            raise StepcError(f"batch '{spec.key}' has shape {tuple(array.shape)}; the program was imported with {spec.shape}")
        if spec.dtype == "i32":
            if array.size and (array.min() < 0 or array.max() >= 2**31):
                bad = int(array.min()) if array.min() < 0 else int(array.max())
                raise StepcError(f"batch '{spec.key}' holds {bad}: labels and ids must lie in [0, 2**31)")
            out[spec.name] = array.astype(np.int32)
        elif spec.dtype == "ui32":
            out[spec.name] = array.astype(np.uint32)
        else:
            out[spec.name] = array
    return out


def tensor_type(shape: Sequence[int], dtype: str) -> str:
    return "tensor<" + "".join(f"{d}x" for d in shape) + dtype + ">"


def float_text(x: float, dtype: str = "f64") -> str:
    """A float literal the step parser reads back to exactly `x` (NaN and infinities as the bit
    pattern of a float64, 16 hex digits, as the printer writes them)."""
    x = float(x)
    if not math.isfinite(x):
        bits = np.array(x, dtype=np.float64).view(np.uint64)
        return f"0x{int(bits):016X}"
    text = repr(x)
    mantissa, e, exponent = text.partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    return mantissa + (e + exponent if e else "")


def dense_text(array: np.ndarray) -> str:
    """`dense<...>` of an array: a splat when every element is equal, else nested lists."""
    flat = np.asarray(array, dtype=np.float64)
    if flat.size > 0 and (np.all(flat == flat.flat[0]) or np.all(np.isnan(flat))):
        return f"dense<{float_text(float(flat.flat[0]))}>"

    def nested(a: np.ndarray) -> str:
        if a.ndim == 0:
            return float_text(float(a))
        return "[" + ", ".join(nested(x) for x in a) + "]"

    return f"dense<{nested(flat)}>"


def broadcast_shape(*shapes: Sequence[int]) -> tuple[int, ...]:
    return tuple(np.broadcast_shapes(*(tuple(s) for s in shapes)))


class IRWriter:
    """The text of one step function, written argument by argument and op by op."""

    def __init__(self, function_name: str) -> None:
        self.function_name = function_name
        self.arguments: list[tuple[Value, str]] = []  # (value, attribute text or "")
        self.body: list[str] = []
        self._used: set[str] = set()
        self._last_comment: str | None = None

    # ---- names

    def fresh(self, hint: str) -> str:
        """A name no value holds yet, close to `hint` (invalid characters become `_`)."""
        base = re.sub(r"[^\w$.-]", "_", hint) or "v"
        if not _VALID.fullmatch(base):
            base = "v" + base
        name, k = base, 1
        while name in self._used:
            name, k = f"{base}_{k}", k + 1
        self._used.add(name)
        return name

    def reserve(self, name: str) -> None:
        if name in self._used:
            raise ValueError(f"the name {name!r} is taken twice")
        self._used.add(name)

    # ---- arguments and ops

    def holds(self, name: str) -> bool:
        return name in self._used

    def argument(self, name: str, shape: Sequence[int], dtype: str, attribute: str = "", *, reserved: bool = False) -> Value:
        """The next argument (`reserved`: its name came from `fresh`)."""
        if not reserved:
            self.reserve(name)
        value = Value(name, tuple(shape), dtype)
        self.arguments.append((value, attribute))
        return value

    def comment(self, text: str) -> None:
        """A `//` line before the next op, written once per run of ops sharing it."""
        if text != self._last_comment:
            self._last_comment = text
            self.body.append("  // " + text.replace("\n", " "))

    def op(self, hint: str, body: str, type_text: str, shape: Sequence[int], dtype: str) -> Value:
        """`%name = BODY : TYPE_TEXT`, a value of `shape` and `dtype`."""
        value = Value(self.fresh(hint), tuple(shape), dtype)
        self.body.append(f"  {value.ref} = {body} : {type_text}")
        return value

    # ---- the ops, by kind (each checks nothing: the parser and verifier do)

    def unary(self, op: str, a: Value, hint: str = "", extra: str = "") -> Value:
        return self.op(hint or op, f"step.{op} {a.ref}{extra}", a.type, a.shape, a.dtype)

    def binary(self, op: str, a: Value, b: Value, hint: str = "") -> Value:
        shape = broadcast_shape(a.shape, b.shape)
        out = tensor_type(shape, a.dtype)
        return self.op(hint or op, f"step.{op} {a.ref}, {b.ref}", f"({a.type}, {b.type}) -> {out}", shape, a.dtype)

    def compare(self, direction: str, a: Value, b: Value, hint: str = "") -> Value:
        shape = broadcast_shape(a.shape, b.shape)
        out = tensor_type(shape, a.dtype)
        return self.op(hint or "mask", f"step.compare {direction} {a.ref}, {b.ref}", f"({a.type}, {b.type}) -> {out}",
                       shape, a.dtype)  # fmt: skip

    def select(self, mask: Value, a: Value, b: Value, hint: str = "") -> Value:
        shape = broadcast_shape(mask.shape, a.shape, b.shape)
        out = tensor_type(shape, a.dtype)
        return self.op(hint or "select", f"step.select {mask.ref}, {a.ref}, {b.ref}",
                       f"({mask.type}, {a.type}, {b.type}) -> {out}", shape, a.dtype)  # fmt: skip

    def constant(self, value: float | np.ndarray, dtype: str, shape: Sequence[int] = (), hint: str = "c") -> Value:
        array = np.asarray(value, dtype=np.float64)
        shape = tuple(shape) if array.ndim == 0 else tuple(array.shape)
        text = float_text(float(array)) if array.ndim == 0 and not shape else dense_text(array)
        return self.op(hint, f"step.constant {text}", tensor_type(shape, dtype), shape, dtype)

    def reshape(self, a: Value, shape: Sequence[int], hint: str = "") -> Value:
        shape = tuple(shape)
        if shape == a.shape:
            return a
        return self.op(hint or "reshape", f"step.reshape {a.ref}", f"{a.type} -> {tensor_type(shape, a.dtype)}",
                       shape, a.dtype)  # fmt: skip

    def transpose(self, a: Value, perm: Sequence[int], hint: str = "") -> Value:
        perm = [int(p) for p in perm]
        if perm == list(range(len(perm))):
            return a
        shape = tuple(a.shape[p] for p in perm)
        return self.op(hint or "transpose", f"step.transpose {a.ref} perm {perm}",
                       f"{a.type} -> {tensor_type(shape, a.dtype)}", shape, a.dtype)  # fmt: skip

    def broadcast(self, a: Value, shape: Sequence[int], hint: str = "") -> Value:
        shape = tuple(shape)
        if shape == a.shape:
            return a
        return self.op(hint or "broadcast", f"step.broadcast {a.ref}", f"{a.type} -> {tensor_type(shape, a.dtype)}",
                       shape, a.dtype)  # fmt: skip

    def reduce(self, op: str, a: Value, dims: Sequence[int] | None, hint: str = "") -> Value:
        """`step.sum`/`mean`/`max` over `dims` (None: every dim), the dims dropped."""
        dims = list(range(len(a.shape))) if dims is None else sorted({d % max(len(a.shape), 1) for d in dims})
        shape = tuple(s for i, s in enumerate(a.shape) if i not in dims)
        attr = "" if dims == list(range(len(a.shape))) else f" dims {dims}"
        return self.op(hint or op, f"step.{op} {a.ref}{attr}", f"{a.type} -> {tensor_type(shape, a.dtype)}",
                       shape, a.dtype)  # fmt: skip

    def matmul(self, a: Value, b: Value, hint: str = "") -> Value:
        shape = (*a.shape[:-1], b.shape[-1])
        return self.op(hint or "matmul", f"step.matmul {a.ref}, {b.ref}",
                       f"({a.type}, {b.type}) -> {tensor_type(shape, a.dtype)}", shape, a.dtype)  # fmt: skip

    def convert(self, a: Value, dtype: str, hint: str = "") -> Value:
        if dtype == a.dtype:
            return a
        return self.op(hint or "convert", f"step.convert {a.ref}", f"{a.type} -> {tensor_type(a.shape, dtype)}",
                       a.shape, dtype)  # fmt: skip

    def slice(self, a: Value, start: Sequence[int], limit: Sequence[int], stride: Sequence[int], hint: str = "") -> Value:
        shape = tuple(max(0, -(-(hi - lo) // st)) for lo, hi, st in zip(start, limit, stride))
        if shape == a.shape:
            return a
        stride_text = "" if all(s == 1 for s in stride) else f" stride {list(stride)}"
        return self.op(hint or "slice", f"step.slice {a.ref} start {list(start)} limit {list(limit)}{stride_text}",
                       f"{a.type} -> {tensor_type(shape, a.dtype)}", shape, a.dtype)  # fmt: skip

    def concat(self, values: Sequence[Value], axis: int, hint: str = "") -> Value:
        if len(values) == 1:
            return values[0]
        first = values[0]
        shape = list(first.shape)
        shape[axis] = sum(v.shape[axis] for v in values)
        operands = ", ".join(v.ref for v in values)
        types = ", ".join(v.type for v in values)
        return self.op(hint or "concat", f"step.concat {operands} axis {axis}",
                       f"({types}) -> {tensor_type(shape, first.dtype)}", shape, first.dtype)  # fmt: skip

    # ---- the text

    def text(self, result: Value, attributes: str, header: Sequence[str] = ()) -> str:
        lines = [f"// {line}" if line else "//" for line in header]
        indent = " " * len(f"func.func @{self.function_name}(")
        args = []
        for value, attribute in self.arguments:
            attr = f" {{{attribute}}}" if attribute else ""
            args.append(f"{value.ref}: {value.type}{attr}")
        signature = f"func.func @{self.function_name}(" + (",\n" + indent).join(args) + f") -> {result.type}"
        lines.append(signature)
        lines.append(f"    attributes {{{attributes}}} {{")
        lines.extend(self.body)
        lines.append(f"  func.return {result.ref} : {result.type}")
        lines.append("}")
        return "\n".join(lines) + "\n"


def numpy_dtype(dtype: str) -> type:
    """The NumPy type of an element type (bf16 through ml_dtypes)."""
    if dtype == "bf16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return _NUMPY_OF[dtype]
