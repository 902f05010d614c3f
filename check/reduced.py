"""Checking a pass at reduced shapes: the contract's cost independent of the model's size.

The passes are shape-uniform: a rule reads sizes only through the types it copies (and the
few constants it derives from them, such as `1/n` for the derivative of a mean). So a pass is
checked on a copy of its input whose every dimension over `SMALL` is shrunk, and its output
at full size is compared with its output at reduced size, op for op:

1. `dimension_map`: each distinct size over `SMALL` becomes `SMALL + 1`, `SMALL + 2`, ... in
   order (injective: two different sizes stay different, so a rule that reads the wrong one
   is still wrong at reduced size); a size a reshape splits into factors becomes the product
   of their small sizes.
2. The contract runs on `(shrink(before), pass(shrink(before)))` with the full number of trials.
3. The commuting check (`commuting_differences`): `pass(before)` with its sizes renamed must be
   `pass(shrink(before))` op for op, except for numeric literals at the same place (the
   size-dependent constants, which step 2 checked at reduced size and the report counts).

What the reduced mode guarantees: the contract holds on the reduced program, and the pass did
at full size exactly what it did there (same ops, same operands, same attributes, types equal
under the map). What it does not: a rule that is wrong only at large sizes through a constant
it derives from a size (say, `1/n` overflowing a 16-bit type). Where the commuting check fails,
or the program cannot be shrunk, the contract runs at full size instead (`mode` says which).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from xdsl.dialects import func
from xdsl.dialects.builtin import (
    ArrayAttr,
    DenseArrayBase,
    DictionaryAttr,
    FloatAttr,
    FunctionType,
    IntegerAttr,
    ModuleOp,
    StringAttr,
    TensorType,
    UnitAttr,
)
from xdsl.ir import Attribute, Operation, SSAValue
from xdsl.passes import ModulePass

from stepc.check.contract import Contract, ContractReport
from stepc.ir import dialect as step
from stepc.ir import stablehlo as shlo
from stepc.ir.diagnostics import StepcError
from stepc.ir.limits import human_bytes, memory_limit
from stepc.ir.narrow import is_tensor
from stepc.ir.parse import make_context, parse_module, verify
from stepc.ir.printing import op_text
from stepc.ir.stablehlo import is_lowered, module_text

SMALL = 16
# Above this many multiply-adds in the program's matmuls, convolutions and elementwise ops, `auto` checks at
# reduced shapes (the float64 reference with its bounds costs about 10 times the program).
REDUCE_ABOVE = 2_000_000
MODES = ("auto", "full", "reduced")
# Above this many ops, `auto` runs a full-size contract's programs with NumPy rather than XLA
# (`Contract.without_xla`): XLA's CPU compile grows faster than the program's length.
XLA_OPS_AT_MOST = 400


def check_mode_name(mode: object) -> None:
    if mode not in MODES:
        raise StepcError(f"unknown check mode {mode!r} (the modes are: {', '.join(MODES)})")

_TENSOR = re.compile(r"tensor<((?:\d+x)*)([A-Za-z]\w*)>")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def text_of(module: ModuleOp) -> str:
    return module_text(module) if is_lowered(module) else op_text(module)


def _shapes(text: str) -> list[tuple[int, ...]]:
    return [tuple(int(d) for d in m.group(1).split("x") if d) for m in _TENSOR.finditer(text)]


def _reshape_splits(text: str) -> list[tuple[list[int], list[int]]]:
    """Each reshape's sizes that it splits or merges: `(source, target)` with the sizes common to
    both (and 1s) taken out, so that `prod(source) == prod(target)`."""
    splits: list[tuple[list[int], list[int]]] = []
    for line in text.splitlines():
        if "reshape" not in line:
            continue
        shapes = _shapes(line)
        if len(shapes) >= 2:
            source, target = [d for d in shapes[0] if d != 1], [d for d in shapes[-1] if d != 1]
            for d in list(source):
                if d in target:
                    source.remove(d)
                    target.remove(d)
            if source or target:
                splits.append((source, target))
    return splits


def dimension_map(*texts: str, fixed: set[int] | frozenset[int] = frozenset()) -> dict[int, int]:
    """Every size over `SMALL` in the texts -> a small size, injectively: `SMALL + 1`,
    `SMALL + 2`, ... in order, except that a size a reshape splits into factors (2048 into
    16 x 128) becomes the product of its factors' small sizes (16 x 17 = 272), so that every
    reshape stays valid. Sizes whose reshapes are not one size into factors, or whose products
    would collide, keep their full value, as do the `fixed` sizes (`window_sizes`)."""
    sizes = sorted({d for t in texts for shape in _shapes(t) for d in shape if d > SMALL})
    splits = [split for t in texts for split in _reshape_splits(t)]
    composite: dict[int, tuple[int, ...]] = {}  # a size -> the factors a reshape splits it into
    kept: set[int] = set(fixed)
    for source, target in splits:
        if len(source) == 1 and len(target) > 1:
            whole, parts = source[0], tuple(sorted(target))
        elif len(target) == 1 and len(source) > 1:
            whole, parts = target[0], tuple(sorted(source))
        else:
            kept.update(source + target)
            continue
        if composite.setdefault(whole, parts) != parts:
            kept.update((whole, *parts, *composite[whole]))
    changed = True
    while changed:  # a kept size keeps every size it is split into or from
        changed = False
        for whole, parts in list(composite.items()):
            if whole in kept or any(p in kept for p in parts):
                kept.update((whole, *parts))
                del composite[whole]
                changed = True
    mapped = _with_products(sizes, composite, kept)
    if mapped is None:  # products that collide: keep every size a reshape recombines
        kept.update(composite, *composite.values())
        mapped = _with_products(sizes, {}, kept)
        assert mapped is not None
    return mapped


def _with_products(sizes: list[int], composite: dict[int, tuple[int, ...]], kept: set[int]) -> dict[int, int] | None:
    """The map of `dimension_map` for these composites and kept sizes; None if not injective."""
    out = {d: d for d in sizes if d in kept}
    fresh = (v for v in range(SMALL + 1, 1 << 62) if v not in kept)
    for d in sizes:
        if d not in kept and d not in composite:
            out[d] = next(fresh)
    pending = dict(composite)
    while pending:
        ready = {w: ps for w, ps in pending.items() if all(p <= SMALL or (p in out and p not in pending) for p in ps)}
        if not ready:
            return None
        for whole, parts in ready.items():
            out[whole] = math.prod(out.get(p, p) for p in parts)
            del pending[whole]
    values = list(out.values())
    if len(set(values)) != len(values) or any(v <= SMALL for v in values):
        return None
    return out


def window_sizes(module: ModuleOp) -> set[int]:
    """The sizes a convolution ties to its other sizes through its stride, padding and
    dilation (the spatial dims of its input, kernel and output: `(H + 2p - d(K-1) - 1) // s + 1`
    does not survive renaming) and, when grouped, through its groups (the channels). The reduced
    check keeps them at full size and shrinks the rest (the batch above all)."""
    kept: set[int] = set()
    for op in module.walk():
        if isinstance(op, step.ConvOp):
            values = [op.lhs, op.rhs, op.result]
            grouped = op.group_count > 1
            batch: list[tuple[int, int]] = [(0, 0), (2, 0)] if not isinstance(op, step.Conv2dWeightGradOp) else [(0, 0), (1, 0)]
            layouts = [(0, 1, 2, 3)] * 3
        elif isinstance(op, shlo.ConvolutionOp):
            values = [op.lhs, op.rhs, op.result]
            feature_groups, batch_groups = op.groups
            grouped = feature_groups * batch_groups > 1
            lhs_spec, rhs_spec, out_spec = op.dimension_numbers.specs
            layouts = [lhs_spec, rhs_spec, out_spec]
            # the batch of the step op: the lhs's batch (and the output's), or, in the kernel's
            # adjoint, the lhs's feature dim and the rhs's input feature dim
            batch = [(0, 0), (2, 0)] if batch_groups == 1 else [(0, 1), (1, 1)]
        else:
            continue
        for index, (value, layout) in enumerate(zip(values, layouts)):
            shape = shlo.shape_of_any(value)
            roles = range(len(layout)) if grouped else range(2, len(layout))
            kept.update(shape[layout[role]] for role in roles if (index, role) not in batch)
    return kept


def op_count(module: ModuleOp) -> int:
    return sum(1 for _ in module.walk())


def attribute_sizes(module: ModuleOp) -> set[int]:
    """The sizes an op holds in an integer attribute (a slice's starts and limits, a pad's
    widths: the pieces of a `split`), with every dimension of that op's operands and results:
    renaming the types alone would leave them inconsistent, so the reduced check keeps these
    sizes at full size and shrinks the others (the batch, above all)."""
    kept: set[int] = set()
    for op in module.walk():
        held: set[int] = set()
        for attr in (*op.properties.values(), *op.attributes.values()):
            if isinstance(attr, (DenseArrayBase, ArrayAttr)) or attr.name.startswith("stablehlo."):
                held.update(int(n) for n in _INTEGER.findall(_TENSOR.sub("", str(attr))) if int(n) > SMALL)
        if held:
            kept |= held
            for value in (*op.operands, *op.results):
                if is_tensor(value.type):
                    kept.update(shlo.shape_of_any(value))
    return kept


def shrink_text(text: str, sizes: dict[int, int]) -> str:
    def one(m: re.Match[str]) -> str:
        dims = [str(sizes.get(int(d), int(d))) for d in m.group(1).split("x") if d]
        return "tensor<" + "".join(d + "x" for d in dims) + m.group(2) + ">"

    return _TENSOR.sub(one, text)


def work(module: ModuleOp) -> int:
    """About how many multiply-adds one run of the program does (its matmuls' and the size of
    every other result): what the reference with bounds costs, at about 10 times this."""
    total = 0
    for op in module.walk():
        for result in op.results:
            if not is_tensor(result.type):
                continue
            size = math.prod(result.type.get_shape())
            if op.name in ("step.matmul", "stablehlo.dot_general") and op.operands:
                first = op.operands[0].type
                size *= max(first.get_shape()[-1], 1) if is_tensor(first) and first.get_shape() else 1
            size *= max(_convolution_terms(op), 1)
            total += size
    return total


def _convolution_terms(op: Operation) -> int:
    """The products summed into each result element of a convolution (1 for any other op):
    `C/groups KH KW` for `conv2d`, `O/groups KH KW` for its input adjoint, `N OH OW` for its
    kernel adjoint; for `stablehlo.convolution`, the kernel's elements per output feature."""
    if isinstance(op, step.ConvOp):
        lhs, rhs = shlo.shape_of_any(op.lhs), shlo.shape_of_any(op.rhs)
        if isinstance(op, step.Conv2dOp):
            return math.prod(rhs[1:])
        if isinstance(op, step.Conv2dInputGradOp):
            return rhs[0] // op.group_count * rhs[2] * rhs[3]
        return lhs[0] * rhs[2] * rhs[3]
    if isinstance(op, shlo.ConvolutionOp):
        rhs = shlo.shape_of_any(op.rhs)
        return math.prod(rhs) // max(rhs[op.dimension_numbers.specs[1][0]], 1)
    return 1


# Bytes per element the contracts hold at full size: the float64 reference and its two bounds
# (24), the program's own run and the one before (up to 16), XLA's buffers (up to 8).
CONTRACT_BYTES_PER_ELEMENT = 48


def contract_bytes(module: ModuleOp) -> int:
    """About the most memory the contracts of a pass on `module` allocate at full size."""
    elements = 0
    for op in module.walk():
        values = list(op.results)
        if isinstance(op, func.FuncOp):
            values += list(op.body.block.args)
        for value in values:
            if is_tensor(value.type):
                elements += math.prod(value.type.get_shape())
    return elements * CONTRACT_BYTES_PER_ELEMENT


_PLAIN_ATTRIBUTES = (StringAttr, UnitAttr, IntegerAttr, FloatAttr, DenseArrayBase)
_INTEGER = re.compile(r"(?<![\w.])\d+(?![\w.])")


def _sized_attribute(module: ModuleOp, sizes: dict[int, int]) -> str | None:
    """The name of an op whose integer attributes hold a size the map changes (a
    `stablehlo.slice`'s limits, a pad's widths): shrinking only the types would leave it
    inconsistent, so such a program is checked at full size. None if there is none."""
    changed = {d for d, s in sizes.items() if d != s}
    for op in module.walk():
        for attr in (*op.properties.values(), *op.attributes.values()):
            if isinstance(attr, (DenseArrayBase, ArrayAttr)) or attr.name.startswith("stablehlo."):
                text = _TENSOR.sub("", str(attr))
                if any(int(n) in changed for n in _INTEGER.findall(text)):
                    return op.name
    return None


def commuting_differences(full: ModuleOp, reduced: ModuleOp, sizes: dict[int, int]) -> int | None:
    """The commuting check, op for op: the ops of `full` and `reduced` in the same order with
    the same names, the same operands (by position of definition), the same argument names, types
    equal once `sizes` renames the full ones, and the same attributes except for numeric
    literals (the number of ops where those differ is returned); None where anything else
    differs.
    (The programs' texts compared after renaming the full one's sizes, without printing them.)"""
    full_ops, reduced_ops = list(full.walk()), list(reduced.walk())
    if len(full_ops) != len(reduced_ops):
        return None
    ids: tuple[dict[SSAValue, int], dict[SSAValue, int]] = ({}, {})
    constants = 0

    def define(a: Sequence[SSAValue], b: Sequence[SSAValue], named: bool = False) -> bool:
        if len(a) != len(b):
            return False
        for x, y in zip(a, b):
            if (named and x.name_hint != y.name_hint) or not _types_match(x.type, y.type, sizes):
                return False
            ids[0][x], ids[1][y] = len(ids[0]), len(ids[1])
        return True

    for a, b in zip(full_ops, reduced_ops):
        if a.name != b.name or len(a.regions) != len(b.regions) or len(a.successors) != len(b.successors):
            return None
        if [ids[0].get(v) for v in a.operands] != [ids[1].get(v) for v in b.operands]:
            return None
        for ra, rb in zip(a.regions, b.regions):
            blocks_a, blocks_b = list(ra.blocks), list(rb.blocks)
            if len(blocks_a) != len(blocks_b) or not all(
                define(x.args, y.args, named=True) for x, y in zip(blocks_a, blocks_b)
            ):
                return None
        if not define(a.results, b.results):
            return None
        differs = False
        for da, db in ((a.properties, b.properties), (a.attributes, b.attributes)):
            if da.keys() != db.keys():
                return None
            for key, va in da.items():
                match = _attributes_match(va, db[key], sizes)
                if match is None:
                    return None
                differs |= not match
        constants += differs
    return constants


def _types_match(a: Attribute, b: Attribute, sizes: dict[int, int]) -> bool:
    if isinstance(a, TensorType) and isinstance(b, TensorType):
        shape = tuple(sizes.get(d, d) for d in a.get_shape())
        return shape == b.get_shape() and a.element_type == b.element_type
    return a == b


def _attributes_match(a: Attribute, b: Attribute, sizes: dict[int, int]) -> bool | None:
    """True: equal (types renamed); False: equal except for numeric literals; None: different."""
    if isinstance(a, TensorType) or isinstance(b, TensorType):
        return _types_match(a, b, sizes) or None
    if isinstance(a, FunctionType) and isinstance(b, FunctionType):
        ins, outs = a.inputs.data, a.outputs.data
        same = len(ins) == len(b.inputs.data) and len(outs) == len(b.outputs.data) and all(
            _types_match(x, y, sizes) for x, y in zip((*ins, *outs), (*b.inputs.data, *b.outputs.data))
        )
        return same or None
    if isinstance(a, ArrayAttr) and isinstance(b, ArrayAttr):
        if len(a.data) != len(b.data):
            return None
        found = [_attributes_match(x, y, sizes) for x, y in zip(a.data, b.data)]  # pyright: ignore[reportUnknownArgumentType, reportUnknownVariableType]
        return None if None in found else all(found)
    if isinstance(a, DictionaryAttr) and isinstance(b, DictionaryAttr):
        if a.data.keys() != b.data.keys():
            return None
        found = [_attributes_match(v, b.data[k], sizes) for k, v in a.data.items()]
        return None if None in found else all(found)
    if a == b and isinstance(a, _PLAIN_ATTRIBUTES):
        return True
    # Anything else (a dense constant, a dialect's attribute) as printed, its types renamed.
    full_text, reduced_text = shrink_text(str(a), sizes), str(b)
    if full_text == reduced_text:
        return True
    return False if _NUMBER.sub("#", full_text) == _NUMBER.sub("#", reduced_text) else None


@dataclass
class ContractRunner:
    """Runs each pass's contract in the pipeline's order, at full or reduced shapes (`mode`).

    In reduced mode it carries the reduced program from pass to pass (the output of one pass
    at reduced size is the input of the next), so each program is printed and parsed once."""

    mode: str = "auto"
    _small: ModuleOp | None = None  # the previous pass's output at reduced size
    _sizes: dict[int, int] = field(default_factory=dict[int, int])

    def __post_init__(self) -> None:
        check_mode_name(self.mode)

    def check(
        self, contract: Contract[Any], pass_: ModulePass, before: ModuleOp, after: ModuleOp, *, trials: int, seed: int
    ) -> ContractReport:
        """The contract of `pass_` on `before` -> `after` (the pipeline's own programs)."""
        start = time.perf_counter()
        needs = max(contract_bytes(before), contract_bytes(after))
        limit = memory_limit()
        small_enough = work(before) <= REDUCE_ABOVE and needs <= limit // 2
        if self.mode == "full" or (self.mode == "auto" and small_enough):
            self._small = None
            self._fits(pass_, needs, limit, "")
            return self._full(contract, pass_, before, after, trials=trials, seed=seed)
        reduced = self._reduced_pair(pass_, before, after)
        if isinstance(reduced, str):
            self._fits(pass_, needs, limit, f" (it cannot run at reduced shapes: {reduced})")
            report = self._full(contract, pass_, before, after, trials=trials, seed=seed)
            return replace(report, mode=f"{report.mode} ({reduced})", seconds=time.perf_counter() - start)
        small_before, small_after, constants = reduced
        report = contract.without_xla().check(pass_.name, small_before, small_after, trials=trials, seed=seed)
        note = f"reduced, {constants} constant{'s' if constants != 1 else ''} differ" if constants else "reduced"
        return replace(report, mode=note, seconds=time.perf_counter() - start)

    def _full(self, contract: Contract[Any], pass_: ModulePass, before: ModuleOp, after: ModuleOp, *, trials: int,
              seed: int) -> ContractReport:  # fmt: skip
        """The contract at full size; in `auto` mode, a long program's programs run by NumPy
        (XLA's CPU compile grows faster than a program's length: 1,000 ops of small tensors took
        it longer than the whole check on NumPy)."""
        if self.mode == "auto" and op_count(before) > XLA_OPS_AT_MOST:
            report = contract.without_xla().check(pass_.name, before, after, trials=trials, seed=seed)
            return replace(report, mode="full, NumPy")
        return contract.check(pass_.name, before, after, trials=trials, seed=seed)

    @staticmethod
    def _fits(pass_: ModulePass, needs: int, limit: int, why: str) -> None:
        """The memory limit bounds what the contracts allocate too (`STEPC_MAX_BYTES`)."""
        if needs > limit:
            raise StepcError(
                f"the contract of pass {pass_.name} at full size needs about {human_bytes(needs)}, over the "
                f"memory limit of {human_bytes(limit)}{why}; check at reduced shapes (--check-mode auto) "
                f"or compile without checks (--no-check)"
            )

    def _reduced_pair(self, pass_: ModulePass, before: ModuleOp, after: ModuleOp) -> tuple[ModuleOp, ModuleOp, int] | str:
        """`(small before, pass(small before), constants)`, or why the reduced check cannot stand
        in for the full one (then the next pass starts again from its own input)."""
        small_before, self._small = self._small, None
        if small_before is None:  # the first pass, or the one after a fallback: print and shrink
            before_text, after_text = text_of(before), text_of(after)
            # (the sizes in the attributes a pass writes are matched under the map by the commuting check)
            fixed = window_sizes(before) | window_sizes(after) | attribute_sizes(before)
            self._sizes = dimension_map(before_text, after_text, fixed=fixed)
            if all(d == s for d, s in self._sizes.items()):
                return "nothing to shrink"
            sized = _sized_attribute(before, self._sizes)
            if sized is not None:
                return f"{sized} holds a size in an attribute"
            try:
                small_before = parse_module(shrink_text(before_text, self._sizes), "<reduced>")
                verify(small_before)
            except Exception:  # a program that is only valid at full size: check it there
                return "not shrinkable"
        try:
            small_after = small_before.clone()
            pass_.apply(make_context(), small_after)
            verify(small_after)
        except Exception:
            return "the pass fails at reduced size"
        constants = commuting_differences(after, small_after, self._sizes)
        if constants is None:
            return "the pass's output depends on sizes"
        self._small = small_after
        return small_before, small_after, constants
