"""`clip-grad-norm`: `torch.nn.utils.clip_grad_norm_` on the gradients, before the optimizer.

Run by the default pipeline right before the optimizer's pass (`fuse-sgd`, `fuse-adam`) for a
function with `step.clip_grad_norm = MAX : f64` (`passes.REQUESTED_PASSES`; after
`accumulate-gradients`, so the mean micro-batch gradient is clipped, as torch's clip after the
backward loop). Input and output: the program after `seed-scalar-loss`, returning
`loss, grad.NAME...`; after the pass each gradient is scaled, as torch's per-tensor path
(`foreach=False`, norm type 2):

    norm_i      = sqrt(sum(grad_i ** 2))                 (each gradient's 2-norm)
    total_norm  = sqrt(sum_i norm_i ** 2)
    clip_coef   = MAX / (total_norm + 1e-6)
    clamped     = min(clip_coef, 1.0)
    grad_i      = grad_i * clamped

The norms are computed in the widest element type of the gradients (torch stacks the per-tensor
norms in one dtype), and `clamped` is converted to each gradient's type. The whole computation
sits right before the return: the gradients are all final there, and the optimizer's update of
each parameter then follows its clipped gradient.

The contract (`check/clip_grad_norm.py`): the post-pass gradients equal the formula above on the
pre-pass gradients, in NumPy float64 with rounding-error bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import Float64Type, FloatAttr, ModuleOp
from xdsl.ir import Attribute, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter

from stepc.ir.diagnostics import StepcError, error_at, part_location
from stepc.ir.dialect import (
    CLIP_GRAD_NORM,
    ConvertOp,
    DivOp,
    MinimumOp,
    SqrtOp,
    SquareOp,
    SumOp,
    element_of,
    make_tensor,
)
from stepc.ir.program import entry_block, step_function
from stepc.passes.fuse_sgd import UpdateBuilder, _check_input_form  # pyright: ignore[reportPrivateUsage]  # the same input form as the optimizer passes

PASS_NAME = "clip-grad-norm"
EPSILON = 1e-6  # torch's clip_coef = max_norm / (total_norm + 1e-6)


def clip_max_norm(fn: func.FuncOp) -> float | None:
    """MAX of `step.clip_grad_norm = MAX : f64` (None without it): a float, not negative nor NaN."""
    attr = fn.attributes.get(CLIP_GRAD_NORM)
    if attr is None:
        return None
    where = part_location(fn, CLIP_GRAD_NORM)
    if not isinstance(attr, FloatAttr):
        raise StepcError(f"step.clip_grad_norm takes the largest gradient norm as a float (step.clip_grad_norm = 1.0 : f64), found {attr}", where)
    value = float(attr.value.data)  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]  # FloatAttr's data is a float
    if not value >= 0.0:
        raise StepcError(f"step.clip_grad_norm = {value}: the largest gradient norm must be >= 0", where)
    return value


def norm_element(elements: list[Attribute]) -> Attribute:
    """The widest of the gradients' element types: where the norms are computed."""
    return max(elements, key=lambda t: 64 if isinstance(t, Float64Type) else getattr(t, "bitwidth", 32))


def clip_gradients(e: UpdateBuilder, grads: list[SSAValue], max_norm: float) -> list[SSAValue]:
    """The gradients scaled by torch's `clip_coef_clamped` (ops inserted by `e`)."""
    wide = norm_element([element_of(g) for g in grads])
    squares: list[SSAValue] = []
    for g in grads:
        x = g if element_of(g) == wide else e.emit(ConvertOp(g, make_tensor(tuple(g.type.get_shape()), wide)))  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType, reportUnknownArgumentType]  # gradients are tensors
        sq = e.emit(SquareOp(x))
        total = e.emit(SumOp(sq)) if len(x.type.get_shape()) > 0 else sq  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType, reportUnknownArgumentType]  # gradients are tensors
        squares.append(e.emit(SquareOp(e.emit(SqrtOp(total)))))  # torch: the norm of each, then the norm of the norms
    acc = squares[0]
    for s in squares[1:]:
        acc = e.add(acc, s)
    total_norm = e.emit(SqrtOp(acc))
    coef = e.emit(DivOp(e.constant(max_norm, total_norm), e.add(total_norm, e.constant(EPSILON, total_norm))))
    clamped = e.emit(MinimumOp(coef, e.constant(1.0, coef)))
    out: list[SSAValue] = []
    for g in grads:
        factor = clamped if element_of(g) == wide else e.emit(ConvertOp(clamped, make_tensor((), element_of(g))))
        out.append(e.scale(g, factor))
    return out


def clip_grad_norm(fn: func.FuncOp) -> None:
    """Scale `fn`'s gradient results as torch.nn.utils.clip_grad_norm_ (in place)."""
    _check_input_form(fn, PASS_NAME)
    max_norm = clip_max_norm(fn)
    if max_norm is None:
        raise error_at(fn, f"{PASS_NAME} needs the function attribute step.clip_grad_norm = MAX : f64")
    if math.isinf(max_norm):
        return  # nothing is ever clipped (clip_coef is inf, clamped to 1: the gradients unchanged)
    ret = entry_block(fn).last_op
    assert isinstance(ret, func.ReturnOp)
    loss, *grads = ret.arguments
    e = UpdateBuilder(InsertPoint.before(ret), location=fn.location)
    clipped = clip_gradients(e, list(grads), max_norm)
    new_ret = func.ReturnOp(loss, *clipped)
    new_ret.location = ret.location
    Rewriter.replace_op(ret, new_ret)


@dataclass(frozen=True)
class ClipGradNorm(ModulePass):
    """torch.nn.utils.clip_grad_norm_ on the gradient program's gradients (see the module docstring)."""

    name = PASS_NAME

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        clip_grad_norm(step_function(op))
