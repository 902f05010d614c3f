"""`seed-scalar-loss`: the loss's cotangent becomes the constant 1, as `loss.backward()` seeds it.

Runs after `differentiate`. Each `{step.cotangent}` argument belongs to the output at the same
position; the loss's (output `loss`, which must be a rank-0 float tensor) becomes
`step.constant 1.0` of the loss's type, any other output's becomes 0, and the arguments are
removed. The results (`loss`, `grad.NAME`, ...) are unchanged.
"""

from __future__ import annotations

from typing import ClassVar

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation
from xdsl.passes import ModulePass

from stepc.ir.dialect import ConstantOp, is_float
from stepc.ir.diagnostics import error_at
from stepc.ir.program import arg_attrs, args, output_names, returned_values, set_arg_attrs, step_function
from stepc.passes.contract import Contract
from stepc.passes.contracts import SeedContract


def seed_function(fn: func.FuncOp) -> None:
    cotangents = [a for a in args(fn) if a.role == "cotangent"]
    if not cotangents:
        raise error_at(
            fn, "seed-scalar-loss needs the program after differentiate (no {step.cotangent} argument); run differentiate first"
        )
    names = output_names(fn)
    outputs = returned_values(fn)
    block = fn.body.blocks.first
    first_op = block.first_op
    assert first_op is not None
    for index, cotangent in enumerate(cotangents):
        is_loss = names[index] == "loss" if index < len(names) else False
        t = cotangent.type
        if is_loss and not (t.get_shape() == () and is_float(t.get_element_type())):
            where = outputs[0].owner if isinstance(outputs[0].owner, Operation) else fn
            raise error_at(
                where,
                f"seed-scalar-loss needs a rank-0 float loss (as loss.backward() does), found {t}; "
                "reduce the loss to a scalar with step.sum or step.mean",
            )
        seed = ConstantOp(1.0 if is_loss else 0.0, t)
        seed.location = cotangent.value.location
        seed.result.name_hint = cotangent.name
        block.insert_op_before(seed, first_op)
        cotangent.value.replace_all_uses_with(seed.result)
    kept_attrs = [attrs for arg, attrs in zip(args(fn), arg_attrs(fn)) if arg.role != "cotangent"]
    for cotangent in reversed(cotangents):
        block.erase_arg(cotangent.value)
    set_arg_attrs(fn, kept_attrs)
    fn.update_function_type()


class SeedScalarLoss(ModulePass):
    """Seed reverse mode with d loss / d loss = 1: the function returns `(loss, gradients)`."""

    name = "seed-scalar-loss"
    contract: ClassVar[Contract] = SeedContract()

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        seed_function(step_function(op))
