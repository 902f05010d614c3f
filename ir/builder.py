"""The one way passes insert ops: xDSL's `Builder` at an `InsertPoint`, stamping a location.

Every op a pass creates carries the source location of the op it comes from (the forward op
for a derivative, the step op for its StableHLO, the parameter for its update), so a verifier
or run-time error in any later stage points at the user's line. Passes extend `LocatedBuilder`
with the helpers of their own op vocabulary (the lowering's broadcasts, the backward pass's
unbroadcast), like MLIR's `OpBuilder` subclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Self

from xdsl.builder import Builder
from xdsl.dialects.builtin import LocationAttr, UnknownLoc
from xdsl.ir import Operation, SSAValue
from xdsl.rewriter import InsertPoint


@dataclass(eq=False)
class LocatedBuilder(Builder):
    """Inserts ops at `insertion_point`, each stamped with `location`; returns the first result."""

    location: LocationAttr = field(default_factory=UnknownLoc)

    def emit(self, op: Operation) -> SSAValue:
        op.location = self.location
        self.insert(op)
        return op.results[0]

    __call__ = emit

    @classmethod
    def before(cls, anchor: Operation, location: LocationAttr | None = None) -> Self:
        """A builder inserting before `anchor`, at `location` (by default the anchor's)."""
        return cls(InsertPoint.before(anchor), location=anchor.location if location is None else location)
