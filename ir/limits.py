"""How much memory a program's static shapes ask for, checked before anything is allocated.

Shapes are static, so the bytes a step needs are known from its text. A hostile or mistyped
program (`tensor<100000x100000xf32>` is 37 GiB) must get a located error here, not an
out-of-memory kill later in the interpreter, the contracts or XLA.

The estimate is the sum of the bytes of every function argument and every op result: all the
values of the forward program alive at once, the peak of a program that frees nothing. The
limit is `STEPC_MAX_BYTES` (a byte count, or with a K/M/G/T suffix, powers of 1024) when set,
else half the machine's physical memory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from fractions import Fraction

from xdsl.dialects import func
from xdsl.dialects.builtin import TensorType
from xdsl.ir import Attribute, SSAValue

from stepc.ir.diagnostics import SourceLoc, StepcError, location_of
from stepc.ir.narrow import is_tensor
from stepc.ir.shapes import fmt

ENV_VAR = "STEPC_MAX_BYTES"
# A tensor must be countable by a signed 64-bit size (XLA's and NumPy's index type).
MAX_ELEMENTS = 2**63 - 1
FALLBACK_LIMIT = 8 * 1024**3  # where the physical memory cannot be read

# A limit past this is no limit (2**63 - 1 bytes: 8 EiB): 310 digits are accepted and mean it.
MAX_LIMIT = 2**63 - 1
_MAX_DIGITS = 30  # digits read of a count; longer ones are past MAX_LIMIT whatever they say

_SUFFIXES = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_LIMIT_PATTERN = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Footprint:
    """The estimate of one function: total bytes and the single largest value."""

    total_bytes: int
    largest_bytes: int
    largest_name: str  # `%x` or the op that defines it
    largest_type: str
    largest_loc: SourceLoc | None


def element_bytes(element: Attribute) -> int:
    """Bytes of one element: f16/bf16 2, f32/i32 4, f64 8 (the bitwidth of any other type)."""
    width = getattr(element, "bitwidth", None)
    if width is None:
        width = getattr(getattr(element, "width", None), "data", 32)
    return max(1, (int(width) + 7) // 8)


def tensor_bytes(t: TensorType[Attribute], loc: SourceLoc | None, what: str) -> int:
    """The bytes of one static tensor; a shape whose element count overflows is an error."""
    shape = tuple(t.get_shape())
    count = 1
    for dim in shape:
        if dim < 0:  # dynamic dims are the verifier's error, not the estimate's
            return 0
        count *= dim
        if count > MAX_ELEMENTS:
            raise StepcError(
                f"{what} has type {t}: {fmt(shape)} elements overflow a 64-bit size "
                f"(at most {MAX_ELEMENTS} elements per tensor)",
                loc,
            )
    return count * element_bytes(t.get_element_type())


def physical_memory() -> int | None:
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    if pages <= 0 or page_size <= 0:
        return None
    return int(pages) * int(page_size)


def parse_byte_count(text: str) -> int:
    """`8000000000`, `8G`, `512MiB`, `1.5T`: a byte count (suffixes are powers of 1024)."""
    match = _LIMIT_PATTERN.fullmatch(text)
    if match is None:
        raise StepcError(
            f"{ENV_VAR}={text!r} is not a byte count: write a number of bytes, "
            "optionally with a K, M, G or T suffix (8G, 512M)"
        )
    number, suffix = match.groups()
    whole, _, fraction = number.partition(".")
    whole = whole.lstrip("0") or "0"
    if len(whole) > _MAX_DIGITS:  # more bytes than any machine holds: no limit at all, exactly
        return MAX_LIMIT
    # Exact arithmetic: a float of 310 digits is inf, and `int(inf)` an OverflowError.
    value = int(Fraction(f"{whole}.{fraction[:_MAX_DIGITS] or 0}") * _SUFFIXES[suffix.upper()])
    if value <= 0:
        raise StepcError(f"{ENV_VAR}={text!r} must be a positive byte count")
    return min(value, MAX_LIMIT)


def memory_limit() -> int:
    """`STEPC_MAX_BYTES`, else half the physical memory."""
    configured = os.environ.get(ENV_VAR)
    if configured is not None and configured.strip():
        return parse_byte_count(configured)
    physical = physical_memory()
    return physical // 2 if physical else FALLBACK_LIMIT


def human_bytes(n: int) -> str:
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def footprint(fn: func.FuncOp) -> Footprint:
    """Sum the bytes of the function's arguments and of every op result inside it."""
    values: list[tuple[SSAValue, str, SourceLoc | None]] = []
    entry = fn.body.blocks.first
    if entry is not None:
        for arg in entry.args:
            name = f"argument %{arg.name_hint or arg.index}"
            values.append((arg, name, SourceLoc.from_attr(arg.location) or location_of(fn)))
    for op in fn.walk():
        if op is fn:
            continue
        for result in op.results:
            name = f"%{result.name_hint}" if result.name_hint else f"the result of {op.name}"
            values.append((result, name, location_of(op)))
    total = 0
    largest: tuple[int, str, str, SourceLoc | None] = (0, "", "", location_of(fn))
    for value, name, loc in values:
        t = value.type
        if not is_tensor(t):
            continue
        size = tensor_bytes(t, loc, name)
        total += size
        if size > largest[0]:
            largest = (size, name, str(t), loc)
    return Footprint(total, *largest)


def check_memory(fn: func.FuncOp, limit: int | None = None) -> Footprint:
    """A located error when the function's static shapes need more than the memory limit."""
    estimate = footprint(fn)
    limit = memory_limit() if limit is None else limit
    if estimate.total_bytes > limit:
        source = f"{ENV_VAR}" if os.environ.get(ENV_VAR, "").strip() else f"half the physical memory; set {ENV_VAR} to change it"
        raise StepcError(
            f"the program's tensors need about {human_bytes(estimate.total_bytes)}, over the memory limit of "
            f"{human_bytes(limit)} ({source}); the largest is {estimate.largest_name}: "
            f"{estimate.largest_type} ({human_bytes(estimate.largest_bytes)})",
            estimate.largest_loc or location_of(fn),
        )
    return estimate
