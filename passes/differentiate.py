"""`differentiate`: reverse mode over the step function's DAG, as step ops.

The driver walks the forward ops in reverse, asks the rule table (`stepc.passes.vjp`) for each
op whose result reaches an output, and accumulates cotangents with `step.add` where a value
fans out. A value that reaches no output has a symbolic zero cotangent (no ops at all); a
parameter the outputs never read gets an explicit `step.constant 0.0` gradient; integer
operands get none. It knows no op by name: everything op-specific is in the table.

After the pass the function takes one more argument, `%loss_cotangent {step.cotangent}` (one
per output, of the output's type), and returns the outputs, then one gradient per parameter
in parameter order, named `grad.NAME` (`docs/architecture.md`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import DictionaryAttr, ModuleOp, UnitAttr
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass

from stepc.ir.diagnostics import error_at
from stepc.ir.dialect import AddOp, ConstantOp, element_of, is_float
from stepc.ir.program import (
    COTANGENT,
    arg_attrs,
    cotangents,
    entry_block,
    grad_key,
    output_names,
    params,
    set_arg_attrs,
    set_output_names,
    step_function,
)
from stepc.passes import vjp


@dataclass
class CotangentMap:
    """The cotangent of each value reached so far; absent means a symbolic zero."""

    values: dict[SSAValue, SSAValue] = field(default_factory=dict[SSAValue, SSAValue])

    def get(self, value: SSAValue) -> SSAValue | None:
        return self.values.get(value)

    def accumulate(self, emit: vjp.BackwardBuilder, value: SSAValue, cotangent: SSAValue) -> None:
        """Add a contribution to `value`'s cotangent: a value read twice sums both."""
        existing = self.values.get(value)
        self.values[value] = cotangent if existing is None else emit(AddOp(existing, cotangent))


def differentiate_function(fn: func.FuncOp) -> None:
    """Turn `fn(params, inputs) -> outputs` into
    `fn(params, inputs, cotangents) -> (outputs, gradients of the params)`."""
    block = entry_block(fn)
    ret = block.last_op
    if not isinstance(ret, func.ReturnOp):
        raise error_at(fn, "differentiate: the function must end in func.return")
    if cotangents(fn):
        raise error_at(fn, "differentiate: the function is already differentiated (it has a {step.cotangent} argument)")
    outputs = list(ret.arguments)
    names = output_names(fn)
    forward = [op for op in block.ops if op is not ret]
    original_attrs = arg_attrs(fn)

    cotangent_map = CotangentMap()
    for output, name in zip(outputs, names):
        if not is_float(element_of(output)):
            raise error_at(_defining_op(output) or fn, f"differentiate: output '{name}' is not a float tensor ({output.type})")
        owner = _defining_op(output)
        location = owner.location if owner else ret.location
        seed = block.insert_arg(output.type, len(block.args), location)
        seed.name_hint = f"{name}_cotangent"
        cotangent_map.accumulate(vjp.BackwardBuilder.before(ret, location), output, seed)

    active = _active_values(forward, [p.value for p in params(fn)])
    for op in reversed(forward):
        if any(operand in active for operand in op.operands):
            _backward(op, ret, cotangent_map, active)

    param_args = params(fn)
    gradients: list[SSAValue] = []
    for param in param_args:
        gradient = cotangent_map.get(param.value)
        if gradient is None:  # the outputs never read this parameter
            gradient = vjp.BackwardBuilder.before(ret, param.value.location).emit(ConstantOp(0.0, param.type))
        gradients.append(gradient)
    _name_cotangents(forward, [p.value for p in param_args], cotangent_map)

    ret.operands = [*outputs, *gradients]
    fn.update_function_type()
    cotangent_attrs = [DictionaryAttr({COTANGENT: UnitAttr()}) for _ in outputs]
    set_arg_attrs(fn, [*original_attrs, *cotangent_attrs])
    set_output_names(fn, [*names, *(grad_key(p.name) for p in param_args)])


def _backward(op: Operation, anchor: Operation, cotangents: CotangentMap, active: set[SSAValue]) -> None:
    """The backward ops of one forward op, inserted before `anchor`; cotangents are kept for
    its `active` operands only (a rule may emit a few ops for the others: DCE's to drop)."""
    result_cotangents = [cotangents.get(r) for r in op.results]
    if all(c is None for c in result_cotangents):
        return  # its results reach no output: a symbolic zero, nothing to emit
    rule = vjp.VJP_RULES.get(type(op))
    if rule is None:
        raise error_at(op, f"differentiate: no derivative rule for '{op.name}' (add one to passes/vjp.py)")
    if len(op.results) != 1:
        raise error_at(op, f"differentiate: '{op.name}' has {len(op.results)} results; rules take one")
    cotangent = result_cotangents[0]
    assert cotangent is not None
    emit = vjp.BackwardBuilder.before(anchor, op.location)
    operand_cotangents = list(rule(emit, op, cotangent))
    if len(operand_cotangents) != len(op.operands):
        raise AssertionError(f"the rule of {op.name} gave {len(operand_cotangents)} cotangents for {len(op.operands)} operands")
    for operand, operand_cotangent in zip(op.operands, operand_cotangents):
        if operand_cotangent is None or operand not in active or not is_float(element_of(operand)):
            continue
        if operand_cotangent.type != operand.type:
            raise AssertionError(
                f"the rule of {op.name} gave a cotangent of type {operand_cotangent.type} for an operand of type {operand.type}"
            )
        cotangents.accumulate(emit, operand, operand_cotangent)


def _active_values(forward: list[Operation], parameters: list[SSAValue]) -> set[SSAValue]:
    """The values that depend on a parameter: only their cotangents are worth computing (the
    rest would be dead code for DCE to remove)."""
    active = set(parameters)
    for op in forward:
        if any(operand in active for operand in op.operands):
            active.update(op.results)
    return active


def _defining_op(value: SSAValue) -> Operation | None:
    return value.owner if isinstance(value.owner, Operation) else None


def _name_cotangents(forward: list[Operation], arguments: list[SSAValue], cotangents: CotangentMap) -> None:
    """`%h_cotangent` for the cotangent of `%h`, where the backward part computed it, so the
    dump reads as the forward program does. Later values first: where one cotangent serves
    several values (`step.add` passes it through), it is named after the value it belongs to."""
    forward_ops = set(forward)
    values = [*arguments, *(r for op in forward for r in op.results)]
    for value in reversed(values):
        cotangent = cotangents.get(value)
        if cotangent is None or value.name_hint is None or cotangent.name_hint is not None:
            continue
        if isinstance(cotangent.owner, Operation) and cotangent.owner not in forward_ops:
            cotangent.name_hint = f"{value.name_hint}_cotangent"


class Differentiate(ModulePass):
    """Reverse mode: the function gains the loss's cotangent and returns the loss and the
    gradient of every parameter."""

    name = "differentiate"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        differentiate_function(step_function(op))
