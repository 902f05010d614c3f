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

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import DictionaryAttr, Float32Type, Float64Type, ModuleOp, StringAttr, TensorType
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
    check_hyper_inputs,
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
    # The fields given at run time by `{step.hyper = "FIELD"}` arguments: their values above
    # are torch's constructor arguments only (NaN for an unwritten lr), never used.
    runtime: frozenset[str] = field(default=frozenset())

    @staticmethod
    def of(fields: dict[str, float | bool], runtime: frozenset[str] = frozenset()) -> Hyper:
        return Hyper(
            lr=float(fields.get("lr", math.nan)),
            momentum=float(fields["momentum"]),
            dampening=float(fields["dampening"]),
            weight_decay=float(fields["weight_decay"]),
            nesterov=bool(fields["nesterov"]),
            maximize=bool(fields["maximize"]),
            runtime=runtime,
        )

    def nonzero(self, name: str) -> bool:
        """Whether a field may be non-zero: a run-time one may always be."""
        return name in self.runtime or getattr(self, name) != 0.0

    @property
    def has_buffer(self) -> bool:
        return self.nonzero("momentum")

    @property
    def needs_first_step(self) -> bool:
        """A zero buffer does not give torch's first step: the program needs `first_step`."""
        return self.has_buffer and self.nonzero("dampening")


def hyperparameters(fn: func.FuncOp) -> dict[str, Hyper]:
    """Each parameter's resolved SGD fields, by parameter name (errors located, as torch's)."""
    sgd = function_sgd(fn)
    if sgd is None:
        raise error_at(fn, "fuse-sgd needs the function's optimizer: attributes {step.sgd = #step.sgd<lr = 0.1>}")
    runtime = frozenset(check_hyper_inputs(fn))
    if "lr" not in sgd.fields() and "lr" not in runtime:
        raise StepcError(
            "#step.sgd on the function must give lr (the learning rate has no default)", part_location(fn, SGD)
        )
    check_sgd(fn)
    return {p.name: Hyper.of(sgd.resolved(p.sgd_override), runtime) for p in params(fn)}


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


class OptimizerFields(Protocol):
    """One parameter's resolved optimizer fields (`Hyper`, `fuse_adam.AdamHyper`)."""

    @property
    def runtime(self) -> frozenset[str]: ...


def scalar_type(element: Attribute, given: Attribute | None = None) -> Attribute:
    """The type rank-0 optimizer values derived from run-time fields are computed in: f64 when
    the parameter or the run-time input is f64 (torch computes them in Python floats), else f32."""
    return Float64Type() if isinstance(element, Float64Type) or isinstance(given, Float64Type) else Float32Type()


class RunTimeFields:
    """The `{step.hyper = "FIELD"}` arguments as rank-0 values of each element type, converted
    once at the top of the function (`value`), and `1 - FIELD` (`one_minus`), computed in
    `scalar_type` and converted (torch's `1 - dampening` is a Python float)."""

    def __init__(self, arguments: dict[str, BlockArgument], emitter: UpdateBuilder):
        self.arguments = arguments
        self.emitter = emitter
        self.cache: dict[tuple[str, str, Attribute], SSAValue] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.arguments

    def _converted(self, x: SSAValue, element: Attribute) -> SSAValue:
        return x if element_of(x) == element else self.emitter.emit(ConvertOp(x, make_tensor((), element)))

    def value(self, name: str, element: Attribute) -> SSAValue:
        key = ("value", name, element)
        if key not in self.cache:
            self.cache[key] = self._converted(self.arguments[name], element)
        return self.cache[key]

    def one_minus(self, name: str, element: Attribute) -> SSAValue:
        key = ("one_minus", name, element)
        if key not in self.cache:
            e = self.emitter
            x = self.value(name, scalar_type(element, element_of(self.arguments[name])))
            self.cache[key] = self._converted(e.sub(e.constant(1.0, x), x), element)
        return self.cache[key]

    def factor(self, hyper: OptimizerFields, name: str, element: Attribute) -> float | SSAValue:
        """A field as a factor of `UpdateBuilder.scale`: its value, or the run-time input."""
        return self.value(name, element) if name in hyper.runtime else float(getattr(hyper, name))


class _FirstStep:
    """The rank-0 factors of a buffer update in a program that reads `first_step`, made once
    per (element type, momentum, dampening) at the top of the function: `keep * momentum` and
    `first_step + keep * (1 - dampening)`, with `keep = 1 - first_step` (0 or 1, so both are
    exact: `momentum` and `1 - dampening` on a later step, 0 and 1 on a first step)."""

    def __init__(self, flag: BlockArgument, emitter: UpdateBuilder, runtime: RunTimeFields):
        self.flag = flag
        self.emitter = emitter
        self.runtime = runtime
        self.cache: dict[tuple[Attribute, float | str, float | str], tuple[SSAValue, SSAValue]] = {}

    def factors(self, element: Attribute, hyper: Hyper) -> tuple[SSAValue, SSAValue]:
        """`keep * momentum` and `first_step + keep * (1 - dampening)` in `element` (a run-time
        field read from its input; its key in the cache is its name)."""
        momentum_key = "momentum" if "momentum" in hyper.runtime else hyper.momentum
        dampening_key = "dampening" if "dampening" in hyper.runtime else hyper.dampening
        key = (element, momentum_key, dampening_key)
        if key not in self.cache:
            e = self.emitter
            first: SSAValue = self.flag
            if element != FIRST_STEP_TYPE.get_element_type():
                first = e.emit(ConvertOp(first, make_tensor((), element)))
            keep = e.sub(e.constant(1.0, first), first)
            momentum_factor = e.scale(keep, self.runtime.factor(hyper, "momentum", element))
            undamped: float | SSAValue = (
                self.runtime.one_minus("dampening", element) if "dampening" in hyper.runtime else 1.0 - hyper.dampening
            )
            gradient_factor = e.add(first, e.scale(keep, undamped))
            self.cache[key] = (momentum_factor, gradient_factor)
        return self.cache[key]


def _update(
    e: UpdateBuilder,
    param: SSAValue,
    grad: SSAValue,
    hyper: Hyper,
    buffer: SSAValue | None,
    first_step: _FirstStep | None,
    runtime: RunTimeFields,
) -> tuple[SSAValue, SSAValue | None]:
    """torch's `_single_tensor_sgd` for one parameter: the new parameter and buffer (a run-time
    field read from its input: `runtime.factor`)."""
    element = element_of(param)
    d_p = e.emit(NegOp(grad)) if hyper.maximize else grad
    if hyper.nonzero("weight_decay"):
        d_p = e.add(d_p, e.scale(param, runtime.factor(hyper, "weight_decay", element)))
    new_buffer = None
    if buffer is not None:
        momentum = runtime.factor(hyper, "momentum", element)
        if first_step is not None:  # the program reads the flag: every buffer obeys it
            momentum_factor, gradient_factor = first_step.factors(element, hyper)
            new_buffer = e.add(e.scale(buffer, momentum_factor), e.scale(d_p, gradient_factor))
        else:  # a zero buffer makes the first step exact: momentum * 0 + d_p == d_p
            new_buffer = e.add(e.scale(buffer, momentum), d_p)
        d_p = e.add(d_p, e.scale(new_buffer, momentum)) if hyper.nesterov else new_buffer
    return e.sub(param, e.scale(d_p, runtime.factor(hyper, "lr", element))), new_buffer


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


def state_adder(
    fn: func.FuncOp, attrs: list[DictionaryAttr], pass_name: str
) -> Callable[[str, Attribute, BlockArgument], BlockArgument]:
    """`add_state(key, type, like)`: a new state argument of `fn` named `key` (placed at `like`'s
    location), its `{step.state = key}` appended to `attrs`; a name the program already uses is
    an error."""
    block = entry_block(fn)
    taken = {a.name for a in args(fn)}

    def add_state(key: str, t: Attribute, like: BlockArgument) -> BlockArgument:
        if key in taken:
            raise error_at(fn, f"argument %{key} has the name of the state {pass_name} adds; rename it")
        arg = block.insert_arg(t, len(block.args), like.location)
        arg.name_hint = key  # the state key is the argument's name, as parameters' names are their keys
        attrs.append(DictionaryAttr({STATE: StringAttr(key)}))
        return arg

    return add_state


def fuse_sgd(fn: func.FuncOp) -> None:
    """Replace `fn`'s gradient results by the SGD update of each parameter (in place)."""
    ps = _check_input_form(fn)
    hyper = hyperparameters(fn)
    block = entry_block(fn)
    ret = block.last_op
    assert isinstance(ret, func.ReturnOp)
    loss, *grads = ret.arguments
    attrs = arg_attrs(fn)
    add_state = state_adder(fn, attrs, "fuse-sgd")

    buffers = {p.name: add_state(momentum_key(p.name), p.type, p.value) for p in ps if hyper[p.name].has_buffer}
    top = UpdateBuilder(InsertPoint.at_start(block), location=fn.location)
    runtime = RunTimeFields({name: a.value for name, a in check_hyper_inputs(fn).items()}, top)
    for p in ps:  # every run-time field at the top, in each element type, where each update can read it
        for name in sorted(hyper[p.name].runtime):
            runtime.value(name, p.type.get_element_type())
    first_step = None
    if any(h.needs_first_step for h in hyper.values()):
        flag = add_state(FIRST_STEP, FIRST_STEP_TYPE, ps[0].value)
        first_step = _FirstStep(flag, top, runtime)
        for p in ps:
            h = hyper[p.name]
            if h.has_buffer:
                first_step.factors(p.type.get_element_type(), h)

    new_params: list[SSAValue] = []
    new_buffers: list[SSAValue] = []
    for p, grad in zip(ps, grads):
        # The update follows the op that makes the gradient: it is consumed as soon as it is final.
        owner = grad.owner
        point = InsertPoint.after(owner) if isinstance(owner, Operation) else InsertPoint.before(ret)
        new_param, new_buffer = _update(
            UpdateBuilder(point, location=p.value.location), p.value, grad, hyper[p.name], buffers.get(p.name), first_step,
            runtime,
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
