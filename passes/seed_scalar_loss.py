"""`seed-scalar-loss`: the loss's cotangent becomes the constant 1, as `loss.backward()` seeds it.

Runs after `differentiate`. Each `{step.cotangent}` argument belongs to the output at the same
position; the loss's (output `loss`, which must be a rank-0 float tensor) becomes
`step.constant 1.0` of the loss's type, any other output's becomes 0, and the arguments are
removed. The results (`loss`, `grad.NAME`, ...) are unchanged.
"""

from __future__ import annotations

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint

from stepc.ir.builder import LocatedBuilder
from stepc.ir.diagnostics import error_at
from stepc.ir.dialect import ConstantOp, is_float
from stepc.ir.program import (
    LOSS,
    Role,
    arg_attrs,
    args,
    cotangents,
    entry_block,
    output_names,
    returned_values,
    set_arg_attrs,
    step_function,
)


def seed_function(fn: func.FuncOp) -> None:
    cotangent_args = cotangents(fn)
    if not cotangent_args:
        raise error_at(
            fn, "seed-scalar-loss needs the program after differentiate (no {step.cotangent} argument); run differentiate first"
        )
    names = output_names(fn)
    outputs = returned_values(fn)
    block = entry_block(fn)
    first_op = block.first_op
    assert first_op is not None
    for index, cotangent in enumerate(cotangent_args):
        is_loss = names[index] == LOSS if index < len(names) else False
        t = cotangent.type
        if is_loss and not (t.get_shape() == () and is_float(t.get_element_type())):
            where = outputs[0].owner if isinstance(outputs[0].owner, Operation) else fn
            raise error_at(
                where,
                f"seed-scalar-loss needs a rank-0 float loss (as loss.backward() does), found {t}; "
                "reduce the loss to a scalar with step.sum or step.mean",
            )
        builder = LocatedBuilder(InsertPoint.before(first_op), location=cotangent.value.location)
        seed = builder.emit(ConstantOp(1.0 if is_loss else 0.0, t))
        seed.name_hint = cotangent.name
        cotangent.value.replace_all_uses_with(seed)
    kept_attrs = [attrs for arg, attrs in zip(args(fn), arg_attrs(fn)) if arg.role != Role.COTANGENT]
    for cotangent in reversed(cotangent_args):
        block.erase_arg(cotangent.value)
    set_arg_attrs(fn, kept_attrs)
    fn.update_function_type()


class SeedScalarLoss(ModulePass):
    """Seed reverse mode with d loss / d loss = 1: the function returns `(loss, gradients)`."""

    name = "seed-scalar-loss"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        seed_function(step_function(op))
