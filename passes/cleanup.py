"""Cleanups after differentiation: xDSL's CSE, DCE and canonicalization, checked by stepc's identity contract.

All step ops are `Pure`, so CSE merges duplicates and DCE drops what no result reads. Their
contract is identity: the program computes the same outputs before and after.

A step function is one straight-line block of pure, region-free ops ending in `func.return`.
On such a module each pass takes a direct route that does exactly what xDSL's driver does
there, in one walk with each attribute hashed once (xDSL's drivers are general: scopes,
regions, side effects, a fixpoint, and attribute hashes recomputed per lookup, which made
them a third of the compile time of a 10,000-op program). Any other module goes through
xDSL's driver unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import ClassVar

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Attribute, Block, Operation
from xdsl.irdl import IRDLOperation
from xdsl.passes import ModulePass
from xdsl.traits import HasCanonicalizationPatternsTrait, HasFolder, IsTerminator
from xdsl.transforms.canonicalize import CanonicalizePass
from xdsl.transforms.common_subexpression_elimination import CommonSubexpressionElimination
from xdsl.transforms.dead_code_elimination import DeadCodeElimination, would_be_trivially_dead


class StraightLineCleanup(ModulePass):
    """A cleanup with a direct route per straight-line block (`per_block`), falling back to
    xDSL's own pass (the next class in the MRO) for any other module."""

    per_block: ClassVar[Callable[[Block], None]]

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        blocks = straight_line_blocks(op)
        if blocks is None:
            super().apply(ctx, op)  # type: ignore[safe-super]
            return
        for block in blocks:
            type(self).per_block(block)


class CSE(StraightLineCleanup, CommonSubexpressionElimination):
    @staticmethod
    def per_block(block: Block) -> None:
        merge_duplicates(block)


class DCE(StraightLineCleanup, DeadCodeElimination):
    @staticmethod
    def per_block(block: Block) -> None:
        erase_dead(block)


class Canonicalize(CanonicalizePass):
    def apply(self, ctx: Context, op: ModuleOp) -> None:
        # With no pattern and no folder for any op, xDSL's walk rewrites nothing and its
        # post-walk DCE is all that happens.
        blocks = straight_line_blocks(op)
        if blocks is None or any(_rewritable(type(inner)) for block in blocks for inner in block.ops):
            super().apply(ctx, op)
            return
        for block in blocks:
            erase_dead(block)


def straight_line_blocks(module: ModuleOp) -> list[Block] | None:
    """The body of each function when the module is functions of straight-line pure ops
    (each a single block ending in `func.return`), else None."""
    blocks: list[Block] = []
    for fn in module.body.block.ops:
        if not isinstance(fn, func.FuncOp) or len(fn.body.blocks) != 1:
            return None
        block = fn.body.block
        last = block.last_op
        if not isinstance(last, func.ReturnOp):
            return None
        for inner in block.ops:
            if inner is not last and (inner.regions or not _pure(type(inner))):
                return None
        blocks.append(block)
    return blocks


def merge_duplicates(block: Block) -> None:
    """xDSL's CSE on a straight-line block of pure ops: an op whose results are unused is
    erased; an op equal to an earlier one (name, operands, result types, properties and
    attributes) is replaced by it; the terminator stays."""
    interned = _Interned()
    known: dict[Hashable, Operation] = {}
    erased: list[Operation] = []
    last = block.last_op
    for op in block.ops:
        if op is last:
            continue
        if all(result.first_use is None for result in op.results):
            erased.append(op)
            continue
        key = (
            op.name,
            tuple(op.operands),
            tuple(interned(t) for t in op.result_types),
            frozenset((k, interned(v)) for k, v in op.properties.items()),
            frozenset((k, interned(v)) for k, v in op.attributes.items()),
        )
        existing = known.get(key)
        if existing is None:
            known[key] = op
            continue
        for result, replacement in zip(op.results, existing.results, strict=True):
            result.replace_all_uses_with(replacement)
        erased.append(op)
    for op in reversed(erased):
        block.erase_op(op)


def erase_dead(block: Block) -> None:
    """xDSL's `region_dce` on a straight-line block: an op is live when it has effects (the
    terminator) or a live op reads it; the rest is erased, last first."""
    live: set[Operation] = set()
    dead: list[Operation] = []
    for op in reversed(block.ops):
        if not _pure(type(op)) or any(use.operation in live for result in op.results for use in result.uses):
            live.add(op)
        else:
            dead.append(op)
    for op in dead:
        block.erase_op(op, safe_erase=False)


class _Interned:
    """A number per attribute value, hashing each attribute object once (xDSL attributes hash
    their parameters recursively on every call)."""

    def __init__(self) -> None:
        self._by_value: dict[Attribute, int] = {}
        self._by_identity: dict[int, tuple[Attribute, int]] = {}  # holds the attribute: ids stay its

    def __call__(self, attr: Attribute) -> int:
        entry = self._by_identity.get(id(attr))
        if entry is None:
            number = self._by_value.setdefault(attr, len(self._by_value))
            entry = self._by_identity[id(attr)] = (attr, number)
        return entry[1]


_PURE: dict[type[Operation], bool] = {}


def _pure(cls: type[Operation]) -> bool:
    """Whether every op of `cls` is trivially dead once its results are unused: the step and
    StableHLO ops without regions (pure by declaration, see `LOCAL_VERIFIER`)."""
    pure = _PURE.get(cls)
    if pure is None:
        pure = _PURE[cls] = (
            issubclass(cls, IRDLOperation)
            and bool(getattr(cls, "LOCAL_VERIFIER", False))
            and not cls.get_irdl_definition().regions
            and not cls.has_trait(IsTerminator)
            and would_be_trivially_dead(cls.create())  # its effects, by its traits
        )
    return pure


def _rewritable(cls: type[Operation]) -> bool:
    return cls.has_trait(HasCanonicalizationPatternsTrait) or cls.has_trait(HasFolder)
