"""The derivative table: one vector-Jacobian product rule per step op.

A rule receives a `BackwardBuilder` (which inserts step ops into the backward part of the function,
at the location of the forward op), the forward op, and the cotangent of its result. It
returns one cotangent per operand, of the operand's type, or None for a symbolic zero (an
operand the result does not depend on differentiably: labels, masks). Rules reuse the forward
op's result where the derivative is a function of it (exp, tanh, sigmoid, sqrt, rsqrt, div,
softmax, max) instead of recomputing it; log_softmax's rule takes `softmax` of its input, whose
lowering repeats the forward's row maximum, shifted input, exponentials and their sum, which
XLA's CSE then shares (one divide instead of a second exponential).

Non-smooth points follow PyTorch: relu'(0) = 0 and abs'(0) = 0 (masks from `step.compare`),
`maximum`/`minimum` split the cotangent equally between tied operands, and the `max` reduction
splits it equally among tied maxima (as `torch.amax`). Broadcasting is undone by summing over
the broadcast dims (`shapes.broadcast_dims`) and reshaping back to the operand's shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from xdsl.ir import Operation, SSAValue

from stepc.ir import shapes
from stepc.ir.builder import LocatedBuilder
from stepc.ir.dialect import (
    AbsOp,
    AddOp,
    BroadcastOp,
    CompareOp,
    ConstantOp,
    ConvertOp,
    CrossEntropyOp,
    DivOp,
    DropoutOp,
    ExpOp,
    LogOp,
    LogSoftmaxOp,
    MatmulOp,
    MaximumOp,
    MaxOp,
    MeanOp,
    MinimumOp,
    MseOp,
    MulOp,
    NegOp,
    OneHotOp,
    ReduceOp,
    ReluOp,
    ReshapeOp,
    RsqrtOp,
    SelectOp,
    SigmoidOp,
    SoftmaxOp,
    SqrtOp,
    SquareOp,
    SubOp,
    SumOp,
    TanhOp,
    TransposeOp,
    element_of,
    make_tensor,
    shape_of,
)

Cotangents = Sequence[SSAValue | None]


@dataclass(eq=False)
class BackwardBuilder(LocatedBuilder):
    """Builds the backward ops of one forward op: inserts them before the function's return
    with the forward op's location; calling it with an op inserts it and returns its result."""

    def scalar(self, value: float, like: SSAValue) -> SSAValue:
        """A rank-0 constant of `like`'s element type (it broadcasts against any shape)."""
        return self(ConstantOp(value, make_tensor((), element_of(like))))

    def mask(self, direction: str, lhs: SSAValue, rhs: SSAValue) -> SSAValue:
        """1 where `lhs <direction> rhs`, else 0, in the operands' float type."""
        return self(CompareOp(direction, lhs, rhs))

    def keepdims(self, value: SSAValue, operand_shape: shapes.Shape, dims: Sequence[int] | None) -> SSAValue:
        """A reduced value reshaped with its reduced dims kept as size 1, to broadcast back
        (a rank-0 value broadcasts as it is)."""
        kept = shapes.keepdims(operand_shape, dims)
        if shape_of(value) == kept or shape_of(value) == ():
            return value
        return self(ReshapeOp(value, make_tensor(kept, element_of(value))))

    def unbroadcast(self, cotangent: SSAValue, operand: SSAValue) -> SSAValue:
        """The cotangent of a value NumPy-broadcast to the cotangent's shape: summed back."""
        if shape_of(cotangent) == shape_of(operand):
            return cotangent
        summed, _ = shapes.broadcast_dims(shape_of(operand), shape_of(cotangent))
        if summed:
            cotangent = self(SumOp(cotangent, summed))
        if shape_of(cotangent) != shape_of(operand):
            cotangent = self(ReshapeOp(cotangent, operand.type))
        return cotangent


Rule = Callable[[BackwardBuilder, Operation, SSAValue], Cotangents]
VJP_RULES: dict[type[Operation], Rule] = {}


def vjp(*op_types: type[Operation]) -> Callable[[Rule], Rule]:
    """Register a rule for these op types (the rule sits beside the ops it differentiates)."""

    def register(rule: Rule) -> Rule:
        for op_type in op_types:
            VJP_RULES[op_type] = rule
        return rule

    return register


def binary(op: Operation) -> tuple[SSAValue, SSAValue]:
    return op.operands[0], op.operands[1]


# ---------------------------------------------------------------------------------------------
# Elementwise binary ops: the cotangent of the broadcast result, summed back to each operand


@vjp(AddOp)
def vjp_add(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    a, b = binary(op)
    return emit.unbroadcast(cotangent, a), emit.unbroadcast(cotangent, b)


@vjp(SubOp)
def vjp_sub(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    a, b = binary(op)
    return emit.unbroadcast(cotangent, a), emit.unbroadcast(emit(NegOp(cotangent)), b)


@vjp(MulOp)
def vjp_mul(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    a, b = binary(op)
    return emit.unbroadcast(emit(MulOp(cotangent, b)), a), emit.unbroadcast(emit(MulOp(cotangent, a)), b)


@vjp(DivOp)
def vjp_div(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    # r = a / b: da = ct / b, db = -ct * a / b^2 = -(ct / b) * r
    a, b = binary(op)
    over_b = emit(DivOp(cotangent, b))
    return emit.unbroadcast(over_b, a), emit.unbroadcast(emit(NegOp(emit(MulOp(over_b, op.results[0])))), b)


def _tie_split(first_wins: str) -> Rule:
    """maximum (`gt`) or minimum (`lt`): the winner takes the cotangent, a tie splits it in half."""

    def rule(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
        a, b = binary(op)
        tie_half = emit(MulOp(emit.mask("eq", a, b), emit.scalar(0.5, a)))
        share_a = emit(AddOp(emit.mask(first_wins, a, b), tie_half))
        cotangent_a = emit(MulOp(cotangent, share_a))
        cotangent_b = emit(SubOp(cotangent, cotangent_a))  # ct * (1 - share_a), exact for shares 0, 1/2, 1
        return emit.unbroadcast(cotangent_a, a), emit.unbroadcast(cotangent_b, b)

    return rule


vjp(MaximumOp)(_tie_split("gt"))
vjp(MinimumOp)(_tie_split("lt"))


@vjp(SelectOp)
def vjp_select(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    """`torch.where`'s backward: the cotangent where the mask chose each value, 0 elsewhere;
    none for the mask (a step function of it)."""
    assert isinstance(op, SelectOp)
    zero = emit.scalar(0.0, cotangent)
    to_true = emit(SelectOp(op.mask, cotangent, zero))
    to_false = emit(SelectOp(op.mask, zero, cotangent))
    return None, emit.unbroadcast(to_true, op.on_true), emit.unbroadcast(to_false, op.on_false)


@vjp(DropoutOp)
def vjp_dropout(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    """The same mask and scale on the cotangent: dropout of the cotangent with the same key and
    rate (exact); none for the key (integer data)."""
    assert isinstance(op, DropoutOp)
    return emit(DropoutOp(cotangent, op.key, op.drop_rate)), None


@vjp(CompareOp)
def vjp_compare(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    return None, None  # a step function: zero almost everywhere


# ---------------------------------------------------------------------------------------------
# Elementwise unary ops


@vjp(NegOp)
def vjp_neg(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    return (emit(NegOp(cotangent)),)


@vjp(ExpOp)
def vjp_exp(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    return (emit(MulOp(cotangent, op.results[0])),)


@vjp(LogOp)
def vjp_log(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    return (emit(DivOp(cotangent, op.operands[0])),)


@vjp(TanhOp)
def vjp_tanh(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    # tanh' = 1 - tanh^2, from the output
    y = op.results[0]
    return (emit(MulOp(cotangent, emit(SubOp(emit.scalar(1.0, y), emit(SquareOp(y)))))),)


@vjp(SigmoidOp)
def vjp_sigmoid(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    # sigmoid' = s (1 - s), from the output
    s = op.results[0]
    return (emit(MulOp(cotangent, emit(MulOp(s, emit(SubOp(emit.scalar(1.0, s), s)))))),)


@vjp(ReluOp)
def vjp_relu(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    x = op.operands[0]
    return (emit(MulOp(cotangent, emit.mask("gt", x, emit.scalar(0.0, x)))),)  # relu'(0) = 0


@vjp(AbsOp)
def vjp_abs(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    x = op.operands[0]
    zero = emit.scalar(0.0, x)
    sign = emit(SubOp(emit.mask("gt", x, zero), emit.mask("lt", x, zero)))  # sign(0) = 0
    return (emit(MulOp(cotangent, sign)),)


@vjp(SqrtOp)
def vjp_sqrt(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    # sqrt' = 1 / (2 sqrt(x)), from the output
    y = op.results[0]
    return (emit(DivOp(emit(MulOp(cotangent, emit.scalar(0.5, y))), y)),)


@vjp(RsqrtOp)
def vjp_rsqrt(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    # (x^-1/2)' = -x^-3/2 / 2 = -0.5 * r / x, from the output r
    x, r = op.operands[0], op.results[0]
    return (emit(MulOp(emit(DivOp(emit(MulOp(cotangent, r)), x)), emit.scalar(-0.5, r))),)


@vjp(SquareOp)
def vjp_square(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    x = op.operands[0]
    return (emit(MulOp(cotangent, emit(MulOp(x, emit.scalar(2.0, x))))),)


# ---------------------------------------------------------------------------------------------
# Linear algebra and data movement


def _swap_last_two(rank: int) -> list[int]:
    return [*range(rank - 2), rank - 1, rank - 2]


@vjp(MatmulOp)
def vjp_matmul(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    # r = a b: da = ct b^T; db = a^T ct, summed over the batch when b is shared (rank 2)
    a, b = binary(op)
    rank_a, rank_b = len(shape_of(a)), len(shape_of(b))
    cotangent_a = emit(MatmulOp(cotangent, emit(TransposeOp(b, _swap_last_two(rank_b)))))
    if rank_b == rank_a:
        return cotangent_a, emit(MatmulOp(emit(TransposeOp(a, _swap_last_two(rank_a))), cotangent))
    # (...,m,k) x (k,n): fold the batch into the rows, then one (k, M) x (M, n) product
    k, n = shape_of(b)
    rows = shapes.numel(shape_of(a)) // k
    a_rows = emit(ReshapeOp(a, make_tensor((rows, k), element_of(a))))
    cotangent_rows = emit(ReshapeOp(cotangent, make_tensor((rows, n), element_of(cotangent))))
    return cotangent_a, emit(MatmulOp(emit(TransposeOp(a_rows, [1, 0])), cotangent_rows))


@vjp(TransposeOp)
def vjp_transpose(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    assert isinstance(op, TransposeOp)
    inverse = [0] * len(op.permutation)
    for i, p in enumerate(op.permutation):
        inverse[p] = i
    return (emit(TransposeOp(cotangent, inverse)),)


@vjp(ReshapeOp)
def vjp_reshape(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    return (emit(ReshapeOp(cotangent, op.operands[0].type)),)


@vjp(BroadcastOp)
def vjp_broadcast(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    return (emit.unbroadcast(cotangent, op.operands[0]),)


@vjp(ConvertOp)
def vjp_convert(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    # The cotangent goes back to the operand's type (the driver drops it for an i32 operand).
    return (emit(ConvertOp(cotangent, op.operands[0].type)),)


@vjp(ConstantOp)
def vjp_constant(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    return ()


@vjp(OneHotOp)
def vjp_one_hot(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    return (None,)  # of integer labels


# ---------------------------------------------------------------------------------------------
# Reductions: the cotangent broadcast back over the reduced dims


def _spread(emit: BackwardBuilder, op: ReduceOp, cotangent: SSAValue) -> SSAValue:
    """The cotangent of a reduction's result, broadcast back to the operand's shape."""
    x = op.operands[0]
    kept = emit.keepdims(cotangent, shape_of(x), op.reduced_dims)
    if shape_of(kept) == shape_of(x):
        return kept
    return emit(BroadcastOp(kept, x.type))


@vjp(SumOp)
def vjp_sum(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    assert isinstance(op, SumOp)
    return (_spread(emit, op, cotangent),)


@vjp(MeanOp)
def vjp_mean(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    assert isinstance(op, MeanOp)
    x = op.operands[0]
    count = shapes.numel(tuple(shape_of(x)[d] for d in op.axes))
    return (_spread(emit, op, emit(MulOp(cotangent, emit.scalar(1.0 / count, cotangent)))),)


@vjp(MaxOp)
def vjp_max(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    # Ties share equally (torch.amax): ct / (number of maxima), on each maximum.
    assert isinstance(op, MaxOp)
    x = op.operands[0]
    is_max = emit.mask("eq", x, emit.keepdims(op.results[0], shape_of(x), op.reduced_dims))
    count = emit(SumOp(is_max, op.axes))
    share = emit(DivOp(cotangent, count))
    return (emit(MulOp(is_max, emit.keepdims(share, shape_of(x), op.reduced_dims))),)


# ---------------------------------------------------------------------------------------------
# Softmax family and losses, in their stable forms


@vjp(SoftmaxOp)
def vjp_softmax(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    # s (ct - sum(ct s)), from the output s
    assert isinstance(op, SoftmaxOp)
    s = op.results[0]
    axis = [op.axis_index]
    total = emit.keepdims(emit(SumOp(emit(MulOp(cotangent, s)), axis)), shape_of(s), axis)
    return (emit(MulOp(s, emit(SubOp(cotangent, total)))),)


@vjp(LogSoftmaxOp)
def vjp_log_softmax(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    # ct - softmax(x) * sum(ct): softmax of the input, not exp of the output, so that after
    # lowering XLA's CSE shares the exponentials with the forward (as in jax.grad of log_softmax)
    assert isinstance(op, LogSoftmaxOp)
    y = op.results[0]
    axis = [op.axis_index]
    total = emit.keepdims(emit(SumOp(cotangent, axis)), shape_of(y), axis)
    return (emit(SubOp(cotangent, emit(MulOp(emit(SoftmaxOp(op.operands[0], op.axis_index)), total)))),)


@vjp(CrossEntropyOp)
def vjp_cross_entropy(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    # (softmax(logits) - one_hot(labels)) * ct / N
    assert isinstance(op, CrossEntropyOp)
    logits, labels = op.logits, op.labels
    rows = shape_of(logits)[0]
    probabilities = emit(SoftmaxOp(logits, 1))
    targets = emit(OneHotOp(labels, logits.type))
    scale = emit(MulOp(cotangent, emit.scalar(1.0 / rows, cotangent)))
    return emit(MulOp(emit(SubOp(probabilities, targets)), scale)), None


@vjp(MseOp)
def vjp_mse(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    # mean((a - b)^2): da = (a - b) * 2 ct / n, db = -da
    a, b = binary(op)
    scale = emit(MulOp(cotangent, emit.scalar(2.0 / shapes.numel(shape_of(a)), cotangent)))
    cotangent_a = emit(MulOp(emit(SubOp(a, b)), scale))
    return cotangent_a, emit(NegOp(cotangent_a))
