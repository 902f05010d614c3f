"""`fuse-sgd`: the `torch.optim.SGD` step fused into the gradient program.

Input: the program after `differentiate` and `seed-scalar-loss` (docs/architecture.md):
arguments are the parameters then the batch inputs; results are `loss`, then `grad.NAME` for
each parameter in parameter order.

Output: each gradient is consumed by its parameter's update right after the op that makes it,
so no gradient leaves the function. The update is `_single_tensor_sgd` of torch 2.13, with the
fields of `#step.sgd` resolved per parameter (the function's, then the parameter's override,
a PyTorch parameter group):

    d_p = -grad if maximize else grad
    d_p = d_p + weight_decay * p                       (when weight_decay != 0)
    buf = momentum * buf + (1 - dampening) * d_p       (when momentum != 0; first step: buf = d_p)
    d_p = d_p + momentum * buf if nesterov else buf    (when momentum != 0)
    p   = p - lr * d_p

Every parameter is updated in its own element type, constants rounded to it.

State. The function gains state arguments after the batch inputs, and returns their next
values; keys are the `{step.state = KEY}` argument attributes and `{step.output = KEY}`:

| key | type | when | initial value (`init_state`) |
| --- | --- | --- | --- |
| `momentum.NAME` | the parameter's | its resolved momentum != 0 | zeros |
| `first_step` | `tensor<f32>` | some parameter has momentum != 0 and dampening != 0 | 1.0 (a first step) |

torch's first step sets the buffer to the gradient (`buf = d_p`). With dampening == 0 a zero
buffer gives exactly that (`momentum * 0 + 1 * d_p == d_p`), so no flag is needed. With
dampening != 0 it does not, and the program reads `first_step` (1.0 on the first step, 0.0
after; the program returns 0.0 for it): with `keep = 1 - first_step`, it computes
`buf = (keep * momentum) * buf + (first_step + keep * (1 - dampening)) * d_p`, which is
exactly `d_p` on a first step (whatever the buffer holds) and torch's later-step update
otherwise. When the flag is there, every buffer obeys it (dampened or not), so that
`first_step = 1` means torch's first step for the whole program. A caller that has the
momentum buffers of an earlier step passes `first_step = 0`; for a caller that leaves state
keys out, `missing_state_value` says what they are: with buffers given, a later step
(`first_step` = 0); with none, a first step (zero buffers, `first_step` = 1).

Results after the pass: the new `NAME` of each parameter (parameter order), the new state
(`momentum.NAME` in parameter order, then `first_step`), then `loss`.

The contract (`check/fuse_sgd.py`): on random parameters, batch and state, the post-pass
parameters and state equal the SGD equation, computed in NumPy float64 from the pre-pass
program's gradients (run with the reference interpreter), for a first and a later step.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import DictionaryAttr, Float32Type, ModuleOp, StringAttr, TensorType
from xdsl.ir import Attribute, BlockArgument, Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter

from stepc.ir.builder import LocatedBuilder
from stepc.ir.diagnostics import StepcError, error_at, part_location
from stepc.ir.dialect import AddOp, ConstantOp, ConvertOp, MulOp, NegOp, SubOp, element_of, make_tensor
from stepc.ir.program import (
    FIRST_STEP,
    LOSS,
    SGD,
    STATE,
    Arg,
    Role,
    arg_attrs,
    args,
    check_sgd,
    entry_block,
    function_sgd,
    grad_key,
    momentum_key,
    output_names,
    params,
    returned_values,
    set_arg_attrs,
    set_output_names,
    step_function,
)

FIRST_STEP_TYPE = make_tensor((), Float32Type())


@dataclass(frozen=True)
class Hyper:
    """One parameter's resolved `torch.optim.SGD` arguments."""

    lr: float
    momentum: float
    dampening: float
    weight_decay: float
    nesterov: bool
    maximize: bool

    @staticmethod
    def of(fields: dict[str, float | bool]) -> Hyper:
        return Hyper(
            lr=float(fields["lr"]),
            momentum=float(fields["momentum"]),
            dampening=float(fields["dampening"]),
            weight_decay=float(fields["weight_decay"]),
            nesterov=bool(fields["nesterov"]),
            maximize=bool(fields["maximize"]),
        )

    @property
    def has_buffer(self) -> bool:
        return self.momentum != 0.0

    @property
    def needs_first_step(self) -> bool:
        """A zero buffer does not give torch's first step: the program needs `first_step`."""
        return self.has_buffer and self.dampening != 0.0


def hyperparameters(fn: func.FuncOp) -> dict[str, Hyper]:
    """Each parameter's resolved SGD fields, by parameter name (errors located, as torch's)."""
    sgd = function_sgd(fn)
    if sgd is None:
        raise error_at(fn, "fuse-sgd needs the function's optimizer: attributes {step.sgd = #step.sgd<lr = 0.1>}")
    if "lr" not in sgd.fields():
        raise StepcError(
            "#step.sgd on the function must give lr (the learning rate has no default)", part_location(fn, SGD)
        )
    check_sgd(fn)
    return {p.name: Hyper.of(sgd.resolved(p.sgd_override)) for p in params(fn)}


def state_layout(fn: func.FuncOp) -> list[tuple[str, TensorType[Attribute]]]:
    """The state keys and types the pass adds for a (pre-pass) step function, in order."""
    hyper = hyperparameters(fn)
    layout = [(momentum_key(p.name), p.type) for p in params(fn) if hyper[p.name].has_buffer]
    if any(h.needs_first_step for h in hyper.values()):
        layout.append((FIRST_STEP, FIRST_STEP_TYPE))
    return layout


# ---------------------------------------------------------------------------------------------
# The pass


@dataclass(eq=False)
class UpdateBuilder(LocatedBuilder):
    """Inserts the step ops of an update in order at its insertion point, with a location."""

    def constant(self, value: float, like: SSAValue) -> SSAValue:
        return self.emit(ConstantOp(value, make_tensor((), element_of(like))))

    def scale(self, x: SSAValue, factor: float | SSAValue) -> SSAValue:
        """`factor * x` (a rank-0 factor, a constant in x's element type when given as a float)."""
        if not isinstance(factor, SSAValue):
            factor = self.constant(factor, x)
        return self.emit(MulOp(x, factor))

    def add(self, a: SSAValue, b: SSAValue) -> SSAValue:
        return self.emit(AddOp(a, b))

    def sub(self, a: SSAValue, b: SSAValue) -> SSAValue:
        return self.emit(SubOp(a, b))


class _FirstStep:
    """The rank-0 factors of a buffer update in a program that reads `first_step`, made once
    per (element type, momentum, dampening) at the top of the function: `keep * momentum` and
    `first_step + keep * (1 - dampening)`, with `keep = 1 - first_step` (0 or 1, so both are
    exact: `momentum` and `1 - dampening` on a later step, 0 and 1 on a first step)."""

    def __init__(self, flag: BlockArgument, emitter: UpdateBuilder):
        self.flag = flag
        self.emitter = emitter
        self.cache: dict[tuple[Attribute, float, float], tuple[SSAValue, SSAValue]] = {}

    def factors(self, element: Attribute, momentum: float, dampening: float) -> tuple[SSAValue, SSAValue]:
        key = (element, momentum, dampening)
        if key not in self.cache:
            e = self.emitter
            first: SSAValue = self.flag
            if element != FIRST_STEP_TYPE.get_element_type():
                first = e.emit(ConvertOp(first, make_tensor((), element)))
            keep = e.sub(e.constant(1.0, first), first)
            momentum_factor = e.scale(keep, momentum)
            gradient_factor = e.add(first, e.scale(keep, 1.0 - dampening))
            self.cache[key] = (momentum_factor, gradient_factor)
        return self.cache[key]


def _update(
    e: UpdateBuilder,
    param: SSAValue,
    grad: SSAValue,
    hyper: Hyper,
    buffer: SSAValue | None,
    first_step: _FirstStep | None,
) -> tuple[SSAValue, SSAValue | None]:
    """torch's `_single_tensor_sgd` for one parameter: the new parameter and buffer."""
    d_p = e.emit(NegOp(grad)) if hyper.maximize else grad
    if hyper.weight_decay != 0.0:
        d_p = e.add(d_p, e.scale(param, hyper.weight_decay))
    new_buffer = None
    if buffer is not None:
        if first_step is not None:  # the program reads the flag: every buffer obeys it
            element = element_of(param)
            momentum_factor, gradient_factor = first_step.factors(element, hyper.momentum, hyper.dampening)
            new_buffer = e.add(e.scale(buffer, momentum_factor), e.scale(d_p, gradient_factor))
        else:  # a zero buffer makes the first step exact: momentum * 0 + d_p == d_p
            new_buffer = e.add(e.scale(buffer, hyper.momentum), d_p)
        d_p = e.add(d_p, e.scale(new_buffer, hyper.momentum)) if hyper.nesterov else new_buffer
    return e.sub(param, e.scale(d_p, hyper.lr)), new_buffer


def _check_input_form(fn: func.FuncOp, pass_name: str = "fuse-sgd") -> list[Arg]:
    """The pre-pass form: no cotangent or state arguments, results `loss, grad.NAME...`."""
    all_args = args(fn)
    for arg in all_args:
        if arg.role == Role.COTANGENT:
            raise error_at(
                fn,
                f"{pass_name} needs the seeded program: run seed-scalar-loss first "
                f"(the cotangent argument %{arg.name} is still there)",
            )
        if arg.role == Role.STATE:
            raise error_at(fn, f"{pass_name} has already run on this function (state argument %{arg.name})")
    ps = [a for a in all_args if a.role == Role.PARAM]
    expected = [LOSS] + [grad_key(p.name) for p in ps]
    found = output_names(fn)
    if found != expected:
        raise StepcError(
            f"{pass_name} needs the program after differentiate and seed-scalar-loss, returning "
            f"({', '.join(expected)}); found ({', '.join(found)})",
            part_location(fn, "results"),
        )
    for p, grad in zip(ps, returned_values(fn)[1:]):
        if grad.type != p.type:
            raise error_at(fn, f"the gradient of %{p.name} has type {grad.type}, expected {p.type}")
    return ps


def fuse_sgd(fn: func.FuncOp) -> None:
    """Replace `fn`'s gradient results by the SGD update of each parameter (in place)."""
    ps = _check_input_form(fn)
    hyper = hyperparameters(fn)
    block = entry_block(fn)
    ret = block.last_op
    assert isinstance(ret, func.ReturnOp)
    loss, *grads = ret.arguments
    attrs = arg_attrs(fn)
    taken = {a.name for a in args(fn)}

    def add_state(key: str, t: Attribute, like: BlockArgument) -> BlockArgument:
        if key in taken:
            raise error_at(fn, f"argument %{key} has the name of the state fuse-sgd adds; rename it")
        arg = block.insert_arg(t, len(block.args), like.location)
        arg.name_hint = key  # the state key is the argument's name, as parameters' names are their keys
        attrs.append(DictionaryAttr({STATE: StringAttr(key)}))
        return arg

    buffers = {p.name: add_state(momentum_key(p.name), p.type, p.value) for p in ps if hyper[p.name].has_buffer}
    first_step = None
    if any(h.needs_first_step for h in hyper.values()):
        flag = add_state(FIRST_STEP, FIRST_STEP_TYPE, ps[0].value)
        first_step = _FirstStep(flag, UpdateBuilder(InsertPoint.at_start(block), location=fn.location))
        for p in ps:
            h = hyper[p.name]
            if h.has_buffer:
                first_step.factors(p.type.get_element_type(), h.momentum, h.dampening)

    new_params: list[SSAValue] = []
    new_buffers: list[SSAValue] = []
    for p, grad in zip(ps, grads):
        # The update follows the op that makes the gradient: it is consumed as soon as it is final.
        owner = grad.owner
        point = InsertPoint.after(owner) if isinstance(owner, Operation) else InsertPoint.before(ret)
        new_param, new_buffer = _update(
            UpdateBuilder(point, location=p.value.location), p.value, grad, hyper[p.name], buffers.get(p.name), first_step
        )
        new_params.append(new_param)
        if new_buffer is not None:
            new_buffers.append(new_buffer)

    results = [*new_params, *new_buffers]
    names = [p.name for p in ps] + [momentum_key(name) for name in buffers]
    if first_step is not None:
        after_first = UpdateBuilder(InsertPoint.before(ret), location=fn.location)
        results.append(after_first.constant(0.0, first_step.flag))
        names.append(FIRST_STEP)
    results.append(loss)
    names.append(LOSS)

    new_ret = func.ReturnOp(*results)
    new_ret.location = ret.location
    Rewriter.replace_op(ret, new_ret)
    set_arg_attrs(fn, attrs)
    fn.update_function_type()
    set_output_names(fn, names)


@dataclass(frozen=True)
class FuseSGD(ModulePass):
    """Fuse the torch.optim.SGD step into the gradient program (see the module docstring)."""

    name = "fuse-sgd"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        fuse_sgd(step_function(op))
