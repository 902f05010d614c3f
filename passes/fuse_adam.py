"""`fuse-adam`: the `torch.optim.Adam` and `torch.optim.AdamW` step fused into the gradient program.

The optimizer pass of a function with `#step.adam` or `#step.adamw`: the default pipeline runs it
at `fuse-sgd`'s place (`passes.requested_passes`). Input and output forms are those of `fuse-sgd`
(the program after `seed-scalar-loss`; after the pass: new parameters, new state, loss). The
update is `_single_tensor_adam` of torch 2.13 with `capturable=False`, the fields resolved per
parameter (the function's attribute, then the parameter's own: a PyTorch parameter group):

    step = step + 1
    g    = -grad if maximize else grad
    p    = p * (1 - lr * weight_decay)                 (AdamW, when weight_decay != 0)
    g    = g + weight_decay * p                        (Adam, when weight_decay != 0)
    m    = m.lerp(g, 1 - beta1)                        (torch's lerp: m + w (g - m) for w < 0.5,
                                                        else g - (g - m) (1 - w))
    v    = beta2 * v + ((1 - beta2) * g) * g
    vmax = maximum(vmax, v)                            (amsgrad; then v below is vmax)
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    step_size = lr / bias_correction1
    p    = p - (step_size * m) / (sqrt(v) / sqrt(bias_correction2) + eps)

Every tensor update runs in the parameter's element type (constants rounded to it). The bias
corrections are rank-0 and computed once per (beta1, beta2, lr) at the top of the function, in
f64 for an f64 parameter and in f32 otherwise, as `1 - beta ** s = -2 t / (1 - t)` with
`t = tanh(s log(beta) / 2)` (`-expm1(s log beta)`, exact to a few ulps even where `beta ** s`
is close to 1: `1 - 0.999` done as a subtraction would lose 4 digits in f32).

State. The function gains state arguments after the batch inputs, and returns their next values
(zeros and step 0 are torch's state before its first step, so `init_state` is all zeros):

| key | type | when |
| --- | --- | --- |
| `exp_avg.NAME` | the parameter's | always |
| `exp_avg_sq.NAME` | the parameter's | always |
| `max_exp_avg_sq.NAME` | the parameter's | its resolved amsgrad is true |
| `step` | `tensor<f32>` (torch's step is a float32 tensor) | always |

Results after the pass: the new `NAME` of each parameter (parameter order), the new state
(`exp_avg.NAME`, `exp_avg_sq.NAME`, `max_exp_avg_sq.NAME` per parameter in parameter order,
then `step`), then `loss`.

The contract (`check/fuse_adam.py`): the post-pass parameters and state equal torch's equations,
computed in NumPy float64 from the pre-pass gradients, for a first step and a later one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import DictionaryAttr, Float32Type, Float64Type, ModuleOp, StringAttr, TensorType
from xdsl.ir import Attribute, BlockArgument, Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter

from stepc.ir.diagnostics import error_at
from stepc.ir.dialect import (
    AdamWAttr,
    ConvertOp,
    DivOp,
    MaximumOp,
    MulOp,
    NegOp,
    SqrtOp,
    TanhOp,
    element_of,
    make_tensor,
)
from stepc.ir.program import (
    EXP_AVG_PREFIX,
    EXP_AVG_SQ_PREFIX,
    LOSS,
    MAX_EXP_AVG_SQ_PREFIX,
    STATE,
    STEP_COUNT,
    arg_attrs,
    args,
    check_adam_optimizer,
    entry_block,
    function_adam,
    params,
    set_arg_attrs,
    set_output_names,
    step_function,
)
from stepc.passes.fuse_sgd import UpdateBuilder, _check_input_form  # pyright: ignore[reportPrivateUsage]  # the optimizer passes share their input form

PASS_NAME = "fuse-adam"
STEP_TYPE = make_tensor((), Float32Type())


@dataclass(frozen=True)
class AdamHyper:
    """One parameter's resolved `torch.optim.Adam` / `AdamW` arguments."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    amsgrad: bool
    maximize: bool
    decoupled: bool  # AdamW: weight decay applied to the parameter, not added to the gradient

    @staticmethod
    def of(fields: dict[str, float | bool], decoupled: bool) -> AdamHyper:
        return AdamHyper(
            lr=float(fields["lr"]),
            beta1=float(fields["beta1"]),
            beta2=float(fields["beta2"]),
            eps=float(fields["eps"]),
            weight_decay=float(fields["weight_decay"]),
            amsgrad=bool(fields["amsgrad"]),
            maximize=bool(fields["maximize"]),
            decoupled=decoupled,
        )


def exp_avg_key(name: str) -> str:
    return EXP_AVG_PREFIX + name


def exp_avg_sq_key(name: str) -> str:
    return EXP_AVG_SQ_PREFIX + name


def max_exp_avg_sq_key(name: str) -> str:
    return MAX_EXP_AVG_SQ_PREFIX + name


def adam_hyperparameters(fn: func.FuncOp) -> dict[str, AdamHyper]:
    """Each parameter's resolved Adam fields, by parameter name (errors located, as torch's)."""
    if not check_adam_optimizer(fn):
        raise error_at(fn, f"{PASS_NAME} needs the function's optimizer: attributes {{step.adam = #step.adam<>}}")
    adam = function_adam(fn)
    assert adam is not None
    decoupled = isinstance(adam, AdamWAttr)
    return {p.name: AdamHyper.of(adam.resolved(p.optimizer_override), decoupled) for p in params(fn)}  # pyright: ignore[reportArgumentType]  # overrides are checked to be of the function's kind


def state_keys(name: str, hyper: AdamHyper) -> list[str]:
    """The state keys of one parameter, in order."""
    keys = [exp_avg_key(name), exp_avg_sq_key(name)]
    if hyper.amsgrad:
        keys.append(max_exp_avg_sq_key(name))
    return keys


def scalar_element(element: Attribute) -> Attribute:
    """The type the bias corrections are computed in: f64 for f64 parameters, else f32."""
    return element if isinstance(element, Float64Type) else Float32Type()


class _BiasCorrections:
    """The rank-0 `step_size` and `sqrt(bias_correction2)` of each (element type, lr, beta1,
    beta2), made once at the top of the function from the new step count."""

    def __init__(self, new_step: SSAValue, emitter: UpdateBuilder):
        self.new_step = new_step
        self.emitter = emitter
        self.steps: dict[Attribute, SSAValue] = {}
        self.cache: dict[tuple[Attribute, float, float, float], tuple[SSAValue, SSAValue]] = {}

    def _step_in(self, element: Attribute) -> SSAValue:
        if element not in self.steps:
            s = self.new_step
            if element != element_of(s):
                s = self.emitter.emit(ConvertOp(s, make_tensor((), element)))
            self.steps[element] = s
        return self.steps[element]

    def _one_minus_power(self, beta: float, element: Attribute) -> SSAValue:
        """`1 - beta ** step` as `-2 t / (1 - t)`, `t = tanh(step * log(beta) / 2)`."""
        e = self.emitter
        s = self._step_in(element)
        if beta == 0.0:  # 0 ** step = 0 for step >= 1
            return e.constant(1.0, s)
        t = e.emit(TanhOp(e.scale(s, math.log(beta) / 2.0)))
        return e.emit(DivOp(e.scale(t, -2.0), e.sub(e.constant(1.0, t), t)))

    def factors(self, element: Attribute, hyper: AdamHyper) -> tuple[SSAValue, SSAValue]:
        """`step_size` and `sqrt(bias_correction2)` in `element` (the parameter's type)."""
        key = (element, hyper.lr, hyper.beta1, hyper.beta2)
        if key not in self.cache:
            e = self.emitter
            scalar = scalar_element(element)
            bc1 = self._one_minus_power(hyper.beta1, scalar)
            bc2 = self._one_minus_power(hyper.beta2, scalar)
            step_size = e.emit(DivOp(e.constant(hyper.lr, bc1), bc1))
            bc2_sqrt = e.emit(SqrtOp(bc2))
            if scalar != element:
                step_size = e.emit(ConvertOp(step_size, make_tensor((), element)))
                bc2_sqrt = e.emit(ConvertOp(bc2_sqrt, make_tensor((), element)))
            self.cache[key] = (step_size, bc2_sqrt)
        return self.cache[key]


def _update(
    e: UpdateBuilder,
    param: SSAValue,
    grad: SSAValue,
    hyper: AdamHyper,
    state: list[BlockArgument],
    corrections: _BiasCorrections,
) -> tuple[SSAValue, list[SSAValue]]:
    """torch's `_single_tensor_adam` for one parameter: the new parameter and state."""
    exp_avg, exp_avg_sq = state[0], state[1]
    g = e.emit(NegOp(grad)) if hyper.maximize else grad
    p = param
    if hyper.weight_decay != 0.0:
        if hyper.decoupled:
            p = e.scale(p, 1.0 - hyper.lr * hyper.weight_decay)
        else:
            g = e.add(g, e.scale(p, hyper.weight_decay))
    w = 1.0 - hyper.beta1
    if w < 0.5:  # torch's lerp: the formula depends on the weight
        new_exp_avg = e.add(exp_avg, e.scale(e.sub(g, exp_avg), w))
    else:
        new_exp_avg = e.sub(g, e.scale(e.sub(g, exp_avg), 1.0 - w))
    new_exp_avg_sq = e.add(e.scale(exp_avg_sq, hyper.beta2), e.emit(MulOp(e.scale(g, 1.0 - hyper.beta2), g)))
    new_state = [new_exp_avg, new_exp_avg_sq]
    second = new_exp_avg_sq
    if hyper.amsgrad:
        second = e.emit(MaximumOp(state[2], new_exp_avg_sq))
        new_state.append(second)
    step_size, bc2_sqrt = corrections.factors(element_of(param), hyper)
    denom = e.add(e.emit(DivOp(e.emit(SqrtOp(second)), bc2_sqrt)), e.constant(hyper.eps, param))
    new_param = e.sub(p, e.emit(DivOp(e.scale(new_exp_avg, step_size), denom)))
    return new_param, new_state


def fuse_adam(fn: func.FuncOp) -> None:
    """Replace `fn`'s gradient results by the Adam (AdamW) update of each parameter (in place)."""
    ps = _check_input_form(fn, PASS_NAME)
    hyper = adam_hyperparameters(fn)
    block = entry_block(fn)
    ret = block.last_op
    assert isinstance(ret, func.ReturnOp)
    loss, *grads = ret.arguments
    attrs = arg_attrs(fn)
    taken = {a.name for a in args(fn)}

    def add_state(key: str, t: Attribute, like: BlockArgument) -> BlockArgument:
        if key in taken:
            raise error_at(fn, f"argument %{key} has the name of the state {PASS_NAME} adds; rename it")
        arg = block.insert_arg(t, len(block.args), like.location)
        arg.name_hint = key
        attrs.append(DictionaryAttr({STATE: StringAttr(key)}))
        return arg

    state = {p.name: [add_state(key, p.type, p.value) for key in state_keys(p.name, hyper[p.name])] for p in ps}
    step = add_state(STEP_COUNT, STEP_TYPE, ps[0].value)
    top = UpdateBuilder(InsertPoint.at_start(block), location=fn.location)
    new_step = top.add(step, top.constant(1.0, step))
    corrections = _BiasCorrections(new_step, top)
    for p in ps:  # every rank-0 factor at the top, where each update can read it
        corrections.factors(element_of(p.value), hyper[p.name])

    new_params: list[SSAValue] = []
    new_state: list[SSAValue] = []
    names: list[str] = [p.name for p in ps]
    for p, grad in zip(ps, grads):
        owner = grad.owner
        point = InsertPoint.after(owner) if isinstance(owner, Operation) else InsertPoint.before(ret)
        new_param, updated = _update(
            UpdateBuilder(point, location=p.value.location), p.value, grad, hyper[p.name], state[p.name], corrections
        )
        new_params.append(new_param)
        new_state.extend(updated)
    for p in ps:
        names.extend(state_keys(p.name, hyper[p.name]))
    names += [STEP_COUNT, LOSS]

    new_ret = func.ReturnOp(*new_params, *new_state, new_step, loss)
    new_ret.location = ret.location
    Rewriter.replace_op(ret, new_ret)
    set_arg_attrs(fn, attrs)
    fn.update_function_type()
    set_output_names(fn, names)


def state_layout(fn: func.FuncOp) -> list[tuple[str, TensorType[Attribute]]]:
    """The state keys and types the pass adds for a (pre-pass) step function, in order."""
    hyper = adam_hyperparameters(fn)
    layout: list[tuple[str, TensorType[Attribute]]] = []
    for p in params(fn):
        layout.extend((key, p.type) for key in state_keys(p.name, hyper[p.name]))
    layout.append((STEP_COUNT, STEP_TYPE))
    return layout


@dataclass(frozen=True)
class FuseAdam(ModulePass):
    """Fuse the torch.optim.Adam / AdamW step into the gradient program (see the module docstring)."""

    name = PASS_NAME

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        fuse_adam(step_function(op))
