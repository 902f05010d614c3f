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
    AvgPool2dOp,
    BroadcastOp,
    CompareOp,
    ConcatOp,
    ConstantOp,
    Conv2dInputGradOp,
    Conv2dOp,
    Conv2dWeightGradOp,
    ConvertOp,
    CrossEntropyOp,
    DivOp,
    DropoutOp,
    EmbeddingGradOp,
    EmbeddingOp,
    ExpOp,
    GeluGradOp,
    GeluOp,
    LayerNormOp,
    LogOp,
    LogSoftmaxOp,
    MatmulOp,
    MaximumOp,
    MaxOp,
    MaxPool2dOp,
    MeanOp,
    MinimumOp,
    MseOp,
    MulOp,
    NegOp,
    OneHotOp,
    PadOp,
    Pool2dOp,
    ReduceOp,
    ReluOp,
    ReshapeOp,
    RsqrtOp,
    SelectOp,
    SigmoidOp,
    SliceOp,
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
from stepc.ir.interpreter import GELU_ALPHA, GELU_BETA, GELU_KAPPA

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


# Convolution and its two adjoints: all three are bilinear, and each one's derivative is the
# other two (<conv(x, w), dy> = <x, input_grad(dy, w)> = <w, weight_grad(x, dy)>).


@vjp(Conv2dOp)
def vjp_conv2d(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    """`F.conv2d`'s backward: the input's cotangent is the transposed convolution of the
    cotangent with the kernel, the kernel's the correlation of the input with the cotangent."""
    assert isinstance(op, Conv2dOp)
    x, w = op.lhs, op.rhs
    return (
        emit(Conv2dInputGradOp(cotangent, w, x.type, *op.arguments)),
        emit(Conv2dWeightGradOp(x, cotangent, w.type, *op.arguments)),
    )


@vjp(Conv2dInputGradOp)
def vjp_conv2d_input_grad(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    assert isinstance(op, Conv2dInputGradOp)
    dy, w = op.lhs, op.rhs
    return (
        emit(Conv2dOp(cotangent, w, *op.arguments)),
        emit(Conv2dWeightGradOp(cotangent, dy, w.type, *op.arguments)),
    )


@vjp(Conv2dWeightGradOp)
def vjp_conv2d_weight_grad(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    assert isinstance(op, Conv2dWeightGradOp)
    x, dy = op.lhs, op.rhs
    return (
        emit(Conv2dInputGradOp(dy, cotangent, x.type, *op.arguments)),
        emit(Conv2dOp(x, cotangent, *op.arguments)),
    )


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


# ---------------------------------------------------------------------------------------------
# Layer norm, GELU, embedding


@vjp(LayerNormOp)
def vjp_layer_norm(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    """F.layer_norm's backward (as PyTorch's `layer_norm_backward`): with `xhat = (x - mean) rstd`,
    `rstd = 1 / sqrt(var + eps)` recomputed from x as the forward's lowering computes them,
    `dxhat = ct g`: `dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))` (means over the
    normalized dims), `dg = sum(ct xhat)` and `db = sum(ct)` over the leading dims."""
    assert isinstance(op, LayerNormOp)
    x, shape, axes = op.input, shape_of(op.input), list(op.axes)
    centered = emit(SubOp(x, emit.keepdims(emit(MeanOp(x, axes)), shape, axes)))
    variance = emit(MeanOp(emit(SquareOp(centered)), axes))
    rstd = emit.keepdims(emit(RsqrtOp(emit(AddOp(variance, emit.scalar(op.epsilon, variance))))), shape, axes)
    xhat = emit(MulOp(centered, rstd))
    dxhat = emit(MulOp(cotangent, op.weight))
    mean_dxhat = emit.keepdims(emit(MeanOp(dxhat, axes)), shape, axes)
    mean_dxhat_xhat = emit.keepdims(emit(MeanOp(emit(MulOp(dxhat, xhat)), axes)), shape, axes)
    inner = emit(SubOp(emit(SubOp(dxhat, mean_dxhat)), emit(MulOp(xhat, mean_dxhat_xhat))))
    cotangent_x = emit(MulOp(inner, rstd))
    return cotangent_x, emit.unbroadcast(emit(MulOp(cotangent, xhat)), op.weight), emit.unbroadcast(cotangent, op.bias)


@vjp(GeluOp)
def vjp_gelu(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    """`ct * gelu'(x)` (PyTorch's `gelu_backward`: `dy * (cdf + x pdf)`)."""
    assert isinstance(op, GeluOp)
    return (emit(MulOp(cotangent, emit(GeluGradOp(op.input, op.approximate.data)))),)


@vjp(GeluGradOp)
def vjp_gelu_grad(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    """`ct * gelu''(x)`: `phi(x) (2 - x^2)` for the erf form; for tanh, with `k = beta (x + kappa x^3)`,
    `t = tanh(k)`, `k' = beta (1 + 3 kappa x^2)`: `(1 - t^2) (k' + 3 beta kappa x^2 - x t k'^2)`."""
    assert isinstance(op, GeluGradOp)
    x = op.input
    x_sq = emit(SquareOp(x))
    if not op.tanh:
        pdf = emit(MulOp(emit(ExpOp(emit(MulOp(x_sq, emit.scalar(-0.5, x))))), emit.scalar(GELU_ALPHA, x)))
        return (emit(MulOp(cotangent, emit(MulOp(pdf, emit(SubOp(emit.scalar(2.0, x), x_sq)))))),)
    cube = emit(MulOp(x_sq, x))
    t = emit(TanhOp(emit(MulOp(emit(AddOp(x, emit(MulOp(cube, emit.scalar(GELU_KAPPA, x))))), emit.scalar(GELU_BETA, x)))))
    slope = emit(MulOp(emit(AddOp(emit(MulOp(x_sq, emit.scalar(3.0 * GELU_KAPPA, x))), emit.scalar(1.0, x))),
                       emit.scalar(GELU_BETA, x)))  # fmt: skip
    sech_sq = emit(SubOp(emit.scalar(1.0, x), emit(SquareOp(t))))
    curvature = emit(MulOp(x_sq, emit.scalar(3.0 * GELU_BETA * GELU_KAPPA, x)))
    pull = emit(MulOp(emit(MulOp(x, t)), emit(SquareOp(slope))))
    second = emit(MulOp(sech_sq, emit(SubOp(emit(AddOp(slope, curvature)), pull))))
    return (emit(MulOp(cotangent, second)),)


@vjp(EmbeddingOp)
def vjp_embedding(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    """The table's: each id's cotangent row added into a table of zeros (repeated ids add up);
    none for the ids."""
    assert isinstance(op, EmbeddingOp)
    return emit(EmbeddingGradOp(cotangent, op.ids, shape_of(op.table)[0])), None


@vjp(EmbeddingGradOp)
def vjp_embedding_grad(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    """Linear in its cotangent operand, the transpose of `step.embedding`: the rows of the table's
    cotangent picked by the ids; none for the ids."""
    assert isinstance(op, EmbeddingGradOp)
    return emit(EmbeddingOp(cotangent, op.ids)), None


# ---------------------------------------------------------------------------------------------
# Pieces and windows: slices go back as zero padding, padding as slices, pooling windows as
# padded (strided) placements of their cotangents


def _placing_pad(emit: BackwardBuilder, value: SSAValue, start: Sequence[int], stride: Sequence[int],
                 shape: Sequence[int]) -> SSAValue:  # fmt: skip
    """`value` placed into zeros of `shape` at `start + i * stride` (the transpose of a strided
    slice): a `step.pad` with `start` before, `stride - 1` between and the rest after."""
    high = [n - s - ((m - 1) * st + 1 if m else 0) for n, s, m, st in zip(shape, start, shape_of(value), stride)]
    if list(start) == [0] * len(shape) and not any(high) and all(st == 1 for st in stride):
        return value
    return emit(PadOp(value, make_tensor(shape, element_of(value)), low=start, high=high,
                      interior=[st - 1 for st in stride]))  # fmt: skip


def _cut(emit: BackwardBuilder, value: SSAValue, start: Sequence[int], stride: Sequence[int],
         shape: Sequence[int]) -> SSAValue:  # fmt: skip
    """The elements of `value` at `start + i * stride`, `shape` of them (a strided slice)."""
    limit = [s + ((n - 1) * st + 1 if n else 0) for s, n, st in zip(start, shape, stride)]
    if tuple(shape) == shape_of(value):
        return value
    return emit(SliceOp(value, make_tensor(shape, element_of(value)), start=start, limit=limit, stride=stride))


@vjp(SliceOp)
def vjp_slice(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    """Zeros but where the slice read: the cotangent padded back into the operand's shape."""
    assert isinstance(op, SliceOp)
    return (_placing_pad(emit, cotangent, op.list("start"), op.list("stride"), shape_of(op.input)),)


@vjp(PadOp)
def vjp_pad(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    """The elements the padding surrounds: a strided slice of the cotangent."""
    assert isinstance(op, PadOp)
    stride = [i + 1 for i in op.list("interior")]
    return (_cut(emit, cotangent, op.list("low"), stride, shape_of(op.input)),)


@vjp(ConcatOp)
def vjp_concat(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    """Each operand's piece of the cotangent along the axis."""
    assert isinstance(op, ConcatOp)
    out: list[SSAValue] = []
    offset, axis = 0, op.axis_index
    for operand in op.inputs:
        shape = shape_of(operand)
        start = [offset if d == axis else 0 for d in range(len(shape))]
        out.append(_cut(emit, cotangent, start, [1] * len(shape), shape))
        offset += shape[axis]
    return out


def _spatial(rank: int, pair: Sequence[int], rest: int = 0) -> list[int]:
    """A per-dim list of a pooling input: `rest` for the leading dims, `pair` for the last two."""
    return [rest] * (rank - 2) + list(pair)


def _padded_shape(op: Pool2dOp) -> list[int]:
    _, _, padding = op.window
    shape = shape_of(op.input)
    return [n + 2 * p for n, p in zip(shape, _spatial(len(shape), padding))]


def _unpadded(emit: BackwardBuilder, op: Pool2dOp, padded: SSAValue) -> SSAValue:
    """The operand's part of a cotangent of the padded operand."""
    _, _, padding = op.window
    shape = shape_of(op.input)
    return _cut(emit, padded, _spatial(len(shape), padding), [1] * len(shape), shape)


@vjp(AvgPool2dOp)
def vjp_avg_pool2d(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    """Each window's cotangent / (kh kw) on each of its elements, overlaps adding up: the
    cotangent dilated by the stride and framed by kernel - 1 zeros, average-pooled by the same
    kernel at stride 1 (the window sums of the transpose), then the padding cut off."""
    assert isinstance(op, AvgPool2dOp)
    kernel, stride, _ = op.window
    rank = len(shape_of(op.input))
    padded = _padded_shape(op)
    framed_shape = padded[:-2] + [p + k - 1 for p, k in zip(padded[-2:], kernel)]
    framed = _placing_pad(emit, cotangent, _spatial(rank, [k - 1 for k in kernel]), _spatial(rank, stride, 1), framed_shape)
    summed = emit(AvgPool2dOp(framed, make_tensor(padded, element_of(cotangent)), kernel=kernel, stride=[1, 1],
                              padding=[0, 0]))  # fmt: skip
    return (_unpadded(emit, op, summed),)


@vjp(MaxPool2dOp)
def vjp_max_pool2d(emit: BackwardBuilder, op: Operation, cotangent: SSAValue) -> Cotangents:
    """Each window's cotangent on its first maximum in row-major order (torch's), overlaps adding
    up. One pass per kernel offset (i, j), in row-major order: the operand's elements at that
    offset of every window (a strided slice of the padded operand, NaN in the padding so that
    it is never a maximum) that equal the window's maximum and no earlier offset took, take the
    cotangent, placed back by a strided zero padding; the padding is then cut off."""
    assert isinstance(op, MaxPool2dOp)
    kernel, stride, padding = op.window
    x, y = op.input, op.result
    rank = len(shape_of(x))
    padded = _padded_shape(op)
    if any(padding):
        ones = emit(ConstantOp(1.0, x.type))
        inside = _placing_pad(emit, ones, _spatial(rank, padding), [1] * rank, padded)
        x = emit(SelectOp(inside, _placing_pad(emit, x, _spatial(rank, padding), [1] * rank, padded),
                          emit.scalar(float("nan"), x)))  # fmt: skip
    offsets = [(i, j) for i in range(kernel[0]) for j in range(kernel[1])]
    untaken: SSAValue | None = None  # 1 where no earlier offset held the window's maximum
    total: SSAValue | None = None
    for n, offset in enumerate(offsets):
        at_offset = _cut(emit, x, _spatial(rank, offset), _spatial(rank, stride, 1), shape_of(y))
        hit = emit.mask("eq", at_offset, y)
        if untaken is not None:
            hit = emit(MulOp(hit, untaken))
        if n + 1 < len(offsets):
            untaken = emit(SubOp(untaken if untaken is not None else emit.scalar(1.0, hit), hit))
        placed = _placing_pad(emit, emit(MulOp(cotangent, hit)), _spatial(rank, offset), _spatial(rank, stride, 1), padded)
        total = placed if total is None else emit(AddOp(total, placed))
    assert total is not None
    return (_unpadded(emit, op, total),)
