"""Shape and element-type rules of the step dialect, in one place.

Every rule takes static shapes (tuples of ints) and returns the result shape, or raises
`ShapeError` with a message that says what was expected and what was found. The op
verifiers and the op builders both call these, so a program built by a pass is checked by
the same rule as a program written by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

Shape = tuple[int, ...]


class ShapeError(Exception):
    """A shape rule does not hold; the message is meant for the user."""


def fmt(shape: Sequence[int]) -> str:
    """`(16, 32)` as MLIR writes it: `16x32`, or `scalar` for rank 0."""
    return "x".join(str(d) for d in shape) if shape else "scalar"


def broadcast(lhs: Shape, rhs: Shape) -> Shape:
    """NumPy broadcasting of two shapes."""
    rank = max(len(lhs), len(rhs))
    a = (1,) * (rank - len(lhs)) + tuple(lhs)
    b = (1,) * (rank - len(rhs)) + tuple(rhs)
    out: list[int] = []
    for i, (x, y) in enumerate(zip(a, b)):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            raise ShapeError(
                f"shapes {fmt(lhs)} and {fmt(rhs)} do not broadcast: dimension {i} of the "
                f"broadcast shape is {x} on one side and {y} on the other"
            )
    return tuple(out)


def broadcast_to(source: Shape, target: Shape) -> Shape:
    """`source` must broadcast to exactly `target` (NumPy's `broadcast_to`)."""
    if len(source) > len(target):
        raise ShapeError(f"cannot broadcast rank {len(source)} shape {fmt(source)} to lower rank {fmt(target)}")
    padded = (1,) * (len(target) - len(source)) + tuple(source)
    for i, (s, t) in enumerate(zip(padded, target)):
        if s != t and s != 1:
            raise ShapeError(f"cannot broadcast {fmt(source)} to {fmt(target)}: dimension {i} is {s}, expected 1 or {t}")
    return tuple(target)


def broadcast_dims(source: Shape, target: Shape) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Which dims of `target` broadcasting `source` creates or stretches.

    Returns `(summed, kept_ones)`: the dims a cotangent of `target` is summed over to get back
    to `source`'s elements, and, among those, the ones `source` kept as size 1 (which a reshape
    restores). Used by the derivative of every broadcasting op.
    """
    lead = len(target) - len(source)
    summed = tuple(range(lead)) + tuple(
        lead + i for i, s in enumerate(source) if s == 1 and target[lead + i] != 1
    )
    return summed, tuple(d for d in summed if d >= lead)


def matmul(lhs: Shape, rhs: Shape) -> Shape:
    """`(m,k)x(k,n)`, batched `(...,m,k)x(...,k,n)` with equal batch dims, or `(...,m,k)x(k,n)`."""
    if len(lhs) < 2 or len(rhs) < 2:
        raise ShapeError(f"matmul needs operands of rank 2 or more, found {fmt(lhs)} and {fmt(rhs)}")
    if lhs[-1] != rhs[-2]:
        raise ShapeError(
            f"matmul contraction mismatch: lhs {fmt(lhs)} has k = {lhs[-1]}, rhs {fmt(rhs)} has k = {rhs[-2]}"
        )
    if len(rhs) == 2:
        return tuple(lhs[:-1]) + (rhs[-1],)
    if tuple(lhs[:-2]) != tuple(rhs[:-2]):
        raise ShapeError(
            f"batched matmul needs equal batch dims, found {fmt(lhs[:-2])} and {fmt(rhs[:-2])}"
        )
    return tuple(lhs[:-1]) + (rhs[-1],)


def transpose(shape: Shape, perm: Sequence[int]) -> Shape:
    if sorted(perm) != list(range(len(shape))):
        raise ShapeError(
            f"perm {list(perm)} is not a permutation of the {len(shape)} dims of {fmt(shape)}"
        )
    return tuple(shape[p] for p in perm)


def numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def reshape(source: Shape, target: Shape) -> Shape:
    if numel(source) != numel(target):
        raise ShapeError(
            f"reshape keeps the element count: {fmt(source)} has {numel(source)} elements, "
            f"{fmt(target)} has {numel(target)}"
        )
    return tuple(target)


def normalize_dims(shape: Shape, dims: Sequence[int] | None) -> tuple[int, ...]:
    """The reduced dims, sorted; `None` means all dims."""
    if dims is None:
        return tuple(range(len(shape)))
    for d in dims:
        if not 0 <= d < len(shape):
            raise ShapeError(f"reduction dim {d} is out of range for rank {len(shape)} shape {fmt(shape)}")
    if len(set(dims)) != len(dims):
        raise ShapeError(f"reduction dims {list(dims)} repeat a dim")
    return tuple(sorted(dims))


def reduce(shape: Shape, dims: Sequence[int] | None) -> Shape:
    reduced = normalize_dims(shape, dims)
    return tuple(d for i, d in enumerate(shape) if i not in reduced)


def keepdims(shape: Shape, dims: Sequence[int] | None) -> Shape:
    """The reduced shape with reduced dims kept as size 1 (for broadcasting back)."""
    reduced = normalize_dims(shape, dims)
    return tuple(1 if i in reduced else d for i, d in enumerate(shape))


def axis(shape: Shape, ax: int) -> int:
    if not 0 <= ax < len(shape):
        raise ShapeError(f"axis {ax} is out of range for rank {len(shape)} shape {fmt(shape)}")
    return ax


def cross_entropy(logits: Shape, labels: Shape) -> Shape:
    if len(logits) != 2:
        raise ShapeError(f"cross_entropy takes logits of shape NxC, found {fmt(logits)}")
    if tuple(labels) != (logits[0],):
        raise ShapeError(
            f"cross_entropy takes labels of shape {logits[0]} (one per row of the logits), found {fmt(labels)}"
        )
    return ()


def one_hot(labels: Shape, result: Shape) -> Shape:
    if len(result) != len(labels) + 1 or tuple(result[:-1]) != tuple(labels):
        raise ShapeError(
            f"one_hot of labels {fmt(labels)} gives {fmt(tuple(labels) + ('C',))}, found {fmt(result)}"  # type: ignore[arg-type]
        )
    return tuple(result)


def layer_norm(input: Shape, normalized: Shape) -> Shape:
    """`F.layer_norm(x, g.shape)`: `g`'s shape (at least one dim) is the trailing dims of `x`."""
    if not normalized:
        raise ShapeError("layer_norm normalizes at least one trailing dim: its weight and bias cannot be scalars")
    if len(normalized) > len(input) or tuple(input[len(input) - len(normalized) :]) != tuple(normalized):
        raise ShapeError(
            f"layer_norm normalizes the trailing dims of its input given by its weight's shape: {fmt(normalized)} "
            f"is not a suffix of the input's shape {fmt(input)}"
        )
    return tuple(input)


def embedding(table: Shape, ids: Shape) -> Shape:
    """`F.embedding(ids, table)`: a `VxD` table, any ids shape, one row of D per id."""
    if len(table) != 2:
        raise ShapeError(f"embedding takes a VxD table (rank 2), found {fmt(table)}")
    return (*ids, table[1])


def conv2d(x: Shape, w: Shape, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
           groups: int) -> Shape:  # fmt: skip
    """`F.conv2d`'s shape: `x` NxCxHxW, `w` OxC/groupsxKHxKW -> NxOxOHxOW with
    `OH = (H + 2 padding - dilation (KH - 1) - 1) // stride + 1`; PyTorch's errors, in its order."""
    for what, values in (("stride", stride), ("padding", padding), ("dilation", dilation)):
        if len(values) != 2:
            raise ShapeError(f"conv2d {what} takes 2 values (one per spatial dim), found {list(values)}")
    if any(s <= 0 for s in stride):
        raise ShapeError(f"conv2d stride must be positive, found {list(stride)} (non-positive stride is not supported)")
    if any(p < 0 for p in padding):
        raise ShapeError(f"conv2d padding must not be negative, found {list(padding)} (negative padding is not supported)")
    if any(d <= 0 for d in dilation):
        raise ShapeError(f"conv2d dilation must be positive, found {list(dilation)} (dilation should be greater than zero)")
    if groups <= 0:
        raise ShapeError(f"conv2d groups must be positive, found {groups} (non-positive groups is not supported)")
    if len(x) != 4:
        raise ShapeError(f"conv2d takes an input of shape NxCxHxW (rank 4), found {fmt(x)}")
    if len(w) != 4:
        raise ShapeError(f"conv2d takes a weight of shape OxC/groupsxKHxKW (rank 4), found {fmt(w)}")
    if w[0] % groups != 0:
        raise ShapeError(
            f"conv2d with groups = {groups} needs the weight's output channels divisible by {groups}, "
            f"found weight {fmt(w)} with {w[0]}"
        )
    if x[1] % groups != 0:
        raise ShapeError(
            f"conv2d with groups = {groups} needs the input channels divisible by {groups}, found input {fmt(x)} "
            f"with {x[1]}"
        )
    if x[1] != w[1] * groups:
        raise ShapeError(
            f"conv2d with groups = {groups} and weight {fmt(w)} expects input {fmt(x)} to have "
            f"{w[1] * groups} channels, but got {x[1]} channels instead"
        )
    padded = [x[2 + i] + 2 * padding[i] for i in range(2)]
    reach = [dilation[i] * (w[2 + i] - 1) + 1 for i in range(2)]
    if any(r > p for r, p in zip(reach, padded)):
        raise ShapeError(
            f"conv2d output size is less than 1: the padded input is {padded[0]}x{padded[1]} per channel and the "
            f"dilated kernel {reach[0]}x{reach[1]} (kernel size can't be greater than actual input size)"
        )
    out = [(p - r) // s + 1 for p, r, s in zip(padded, reach, stride)]
    return (x[0], w[0], out[0], out[1])


# ---------------------------------------------------------------------------------------------
# Windows, pieces and padding (the second op set: pooling, concat, slice, and the pad their
# derivatives write)


def _count_of(what: str, values: Sequence[int], n: int) -> None:
    if len(values) != n:
        raise ShapeError(f"{what} takes {n} values (one per {'spatial ' if n == 2 else ''}dim), found {list(values)}")


def pool2d(shape: Shape, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int]) -> Shape:
    """`F.max_pool2d` / `F.avg_pool2d` (no dilation, `ceil_mode=False`) over the last two dims of a
    `NxCxHxW` or `CxHxW` input, with torch's errors: each spatial output is
    `(size + 2 padding - kernel) // stride + 1`, at least 1."""
    if len(shape) not in (3, 4):
        raise ShapeError(f"2d pooling takes an NxCxHxW or CxHxW input, found {fmt(shape)}")
    for what, values in (("kernel", kernel), ("stride", stride), ("padding", padding)):
        _count_of(what, values, 2)
    if any(k <= 0 for k in kernel):
        raise ShapeError(f"kernel sizes must be greater than zero, found {list(kernel)}")
    if any(s <= 0 for s in stride):
        raise ShapeError(f"strides must be greater than zero, found {list(stride)}")
    if any(p < 0 or 2 * p > k for p, k in zip(padding, kernel)):
        raise ShapeError(
            f"padding should be at most half of the kernel size (as in torch), found padding {list(padding)} "
            f"for kernel {list(kernel)}"
        )
    spatial = tuple((d + 2 * p - k) // s + 1 for d, k, s, p in zip(shape[-2:], kernel, stride, padding))
    if any(o < 1 for o in spatial):
        raise ShapeError(
            f"input {fmt(shape)} gives an output of spatial size {fmt(spatial)} with kernel {list(kernel)}, "
            f"stride {list(stride)} and padding {list(padding)}: output size is too small"
        )
    return tuple(shape[:-2]) + spatial


def concat(shapes: Sequence[Shape], ax: int) -> Shape:
    """`torch.cat` along `ax`: two or more operands of one rank, equal except along `ax`."""
    if len(shapes) < 2:
        raise ShapeError(f"concat takes two or more operands, found {len(shapes)}")
    first = shapes[0]
    if not 0 <= ax < len(first):
        raise ShapeError(f"axis {ax} is out of range for rank {len(first)} shape {fmt(first)}")
    for i, shape in enumerate(shapes[1:], 1):
        if len(shape) != len(first):
            raise ShapeError(f"concat operands have one rank: operand 0 is {fmt(first)}, operand {i} is {fmt(shape)}")
        for d, (a, b) in enumerate(zip(first, shape)):
            if d != ax and a != b:
                raise ShapeError(
                    f"concat along axis {ax}: operand {i} ({fmt(shape)}) differs from operand 0 ({fmt(first)}) "
                    f"in dim {d}"
                )
    return tuple(sum(s[ax] for s in shapes) if d == ax else n for d, n in enumerate(first))


def slice_(shape: Shape, start: Sequence[int], limit: Sequence[int], stride: Sequence[int]) -> Shape:
    """A static strided slice: `x[start:limit:stride]` in each dim, `0 <= start <= limit <= size`,
    strides positive; each dim of the result is `ceil((limit - start) / stride)`."""
    for what, values in (("start", start), ("limit", limit), ("stride", stride)):
        if len(values) != len(shape):
            raise ShapeError(f"slice {what} takes {len(shape)} values (one per dim of {fmt(shape)}), found {list(values)}")
    out: list[int] = []
    for d, (n, s, e, st) in enumerate(zip(shape, start, limit, stride)):
        if st <= 0:
            raise ShapeError(f"slice strides must be positive, found {list(stride)}")
        if not 0 <= s <= n or not 0 <= e <= n:
            raise ShapeError(f"slice [{s}, {e}) of dim {d} is out of range for size {n} ({fmt(shape)})")
        if e < s:
            raise ShapeError(f"slice limit {e} of dim {d} is below its start {s}")
        out.append(-(-(e - s) // st))
    return tuple(out)


def pad(shape: Shape, low: Sequence[int], high: Sequence[int], interior: Sequence[int]) -> Shape:
    """Zero padding (`stablehlo.pad`): `low` before, `high` after and `interior` between the
    elements of each dim, all at least 0."""
    for what, values in (("low", low), ("high", high), ("interior", interior)):
        if len(values) != len(shape):
            raise ShapeError(f"pad {what} takes {len(shape)} values (one per dim of {fmt(shape)}), found {list(values)}")
        if any(v < 0 for v in values):
            raise ShapeError(f"pad {what} values must not be negative, found {list(values)}")
    return tuple(lo + n + max(n - 1, 0) * i + hi for n, lo, hi, i in zip(shape, low, high, interior))
