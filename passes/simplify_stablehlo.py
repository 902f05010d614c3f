"""`simplify-stablehlo`: peephole rewrites of the lowered program, as `jax.grad` would emit it.

Each rewrite is an xDSL `RewritePattern` (pinned by `tests/filecheck/passes/simplify_stablehlo.mlir`):

- `MaskProductToSelect`: a product with a 0/1 mask (a lowered `step.compare`, as the
  derivatives of relu and abs make) is `select(pred, x, 0)`, as `jax.grad` of relu emits: no
  multiply per element, and 0 rather than NaN where the mask is 0 (torch's threshold_backward).
- `OneHotDifferenceToScatter`: `x - one_hot(labels)` (N x C, i32 labels; the cross-entropy
  gradient) is a scatter-add of -1 at `x[i, labels[i]]`, as `jax.grad` of a picked
  log-probability gives (a label out of range adds nothing, as its one-hot row is zero).
- `EraseDeadOp`: an op nothing reads any more (the mask or one-hot a rewrite replaced) goes.

Contract (`check/simplify_stablehlo.py`): equal results through the JAX backend.
"""

from __future__ import annotations

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp, TensorType, i32
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    GreedyRewritePatternApplier,
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)

from stepc.ir import stablehlo as shlo
from stepc.passes.lower_to_stablehlo import StableHLOBuilder, row_indices


def mask_predicate(value: SSAValue) -> SSAValue | None:
    """The i1 predicate of a 0/1 mask `convert(compare(...))`, seen through one
    `broadcast_in_dim` of the mask (the predicate then has the unbroadcast shape), or None."""
    owner = value.owner
    broadcast = owner if isinstance(owner, shlo.BroadcastInDimOp) else None
    if broadcast is not None:
        owner = broadcast.operand.owner
    if not (isinstance(owner, shlo.ConvertOp) and isinstance(owner.operand.owner, shlo.CompareOp)):
        return None
    return owner.operand


class MaskProductToSelect(RewritePattern):
    """`multiply(mask, x)` or `multiply(x, mask)` with a 0/1 mask -> `select(pred, x, 0)`."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: shlo.MultiplyOp, rewriter: PatternRewriter) -> None:
        for mask, other in ((op.rhs, op.lhs), (op.lhs, op.rhs)):
            pred = mask_predicate(mask)
            if pred is None:
                continue
            b = StableHLOBuilder.before(op)
            shape = shlo.shape_of_any(op.result)
            if shlo.shape_of_any(pred) != shape:
                mask_op = mask.owner
                assert isinstance(mask_op, shlo.BroadcastInDimOp)  # `mask_predicate` saw through it
                pred_type = TensorType(shlo.element_of_any(pred), list(shape))
                pred = b.emit(shlo.BroadcastInDimOp(pred, mask_op.dims, pred_type))
            zero = b.constant(0.0, shlo.element_of_any(op.result), shape)
            rewriter.replace(op, [], [b.emit(shlo.SelectOp(pred, other, zero))])
            return


def one_hot_labels(value: SSAValue) -> SSAValue | None:
    """The i32 labels [N] of a lowered rank-2 `step.one_hot`
    (`convert(compare EQ (broadcast_in_dim(labels, [0]), iota 1))`), else None."""
    convert = value.owner
    if not isinstance(convert, shlo.ConvertOp) or not isinstance(convert.operand.owner, shlo.CompareOp):
        return None
    compare = convert.operand.owner
    labels, classes = compare.lhs.owner, compare.rhs.owner
    if (
        compare.direction != shlo.ComparisonDirection.EQ
        or not isinstance(labels, shlo.BroadcastInDimOp)
        or not isinstance(classes, shlo.IotaOp)
        or classes.dimension != 1
        or labels.dims != (0,)
        or len(shlo.shape_of_any(value)) != 2
        or shlo.element_of_any(labels.operand) != i32
    ):
        return None
    return labels.operand


class OneHotDifferenceToScatter(RewritePattern):
    """`subtract(x, one_hot(labels))` (N x C) -> scatter-add of -1 at `x[i, labels[i]]`."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: shlo.SubtractOp, rewriter: PatternRewriter) -> None:
        labels = one_hot_labels(op.rhs)
        shape = shlo.shape_of_any(op.lhs)
        element = shlo.element_of_any(op.lhs)
        if labels is None or len(shape) != 2 or shlo.shape_of_any(op.rhs) != shape or shlo.element_of_any(op.rhs) != element:
            return
        b = StableHLOBuilder.before(op)
        indices = row_indices(b, labels)
        updates = b.constant(-1.0, element, [shape[0]])
        numbers = shlo.ScatterAttr.make(
            update_window_dims=[],
            inserted_window_dims=[1],
            input_batching_dims=[0],
            scatter_indices_batching_dims=[0],
            scatter_dims_to_operand_dims=[1],
            index_vector_dim=1,
        )
        rewriter.replace(op, [], [b.emit(shlo.ScatterOp(op.lhs, indices, updates, numbers, shlo.AddOp))])


class EraseDeadOp(RewritePattern):
    """A StableHLO op (all of ours are pure) whose results nothing reads is erased."""

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter, /) -> None:
        if op.dialect_name() in shlo.LOWERED_DIALECTS and op.results and not any(r.uses for r in op.results):
            rewriter.erase(op)


class SimplifyStableHLO(ModulePass):
    """The rewrites above, applied to a fixed point."""

    name = "simplify-stablehlo"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        patterns = GreedyRewritePatternApplier([MaskProductToSelect(), OneHotDifferenceToScatter(), EraseDeadOp()])
        PatternRewriteWalker(patterns).rewrite_module(op)
