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
from dataclasses import dataclass, field

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import Float32Type, Float64Type, ModuleOp, TensorType
from xdsl.ir import Attribute, BlockArgument, Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter

from stepc.ir.diagnostics import error_at
from stepc.ir.dialect import (
    AdamWAttr,
    CompareOp,
    ConvertOp,
    DivOp,
    LogOp,
    MaximumOp,
    MulOp,
    NegOp,
    SelectOp,
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
    STEP_COUNT,
    arg_attrs,
    check_adam_optimizer,
    check_hyper_inputs,
    entry_block,
    function_adam,
    params,
    set_arg_attrs,
    set_output_names,
    step_function,
)
from stepc.passes.fuse_sgd import (  # the optimizer passes share their input form and run-time fields
    RunTimeFields,
    UpdateBuilder,
    _check_input_form,  # pyright: ignore[reportPrivateUsage]
    scalar_type,
    state_adder,
)

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
    # The fields given at run time by `{step.hyper = "FIELD"}` arguments (their values above are
    # torch's constructor arguments only, never used).
    runtime: frozenset[str] = field(default=frozenset())

    def nonzero(self, name: str) -> bool:
        """Whether a field may be non-zero: a run-time one may always be."""
        return name in self.runtime or getattr(self, name) != 0.0

    def key(self, name: str) -> float | str:
        """A field's value, or its name when given at run time (a cache key)."""
        return name if name in self.runtime else float(getattr(self, name))

    @staticmethod
    def of(fields: dict[str, float | bool], decoupled: bool, runtime: frozenset[str] = frozenset()) -> AdamHyper:
        return AdamHyper(
            lr=float(fields["lr"]),
            beta1=float(fields["beta1"]),
            beta2=float(fields["beta2"]),
            eps=float(fields["eps"]),
            weight_decay=float(fields["weight_decay"]),
            amsgrad=bool(fields["amsgrad"]),
            maximize=bool(fields["maximize"]),
            decoupled=decoupled,
            runtime=runtime,
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
    runtime = frozenset(check_hyper_inputs(fn))
    return {p.name: AdamHyper.of(adam.resolved(p.optimizer_override), decoupled, runtime) for p in params(fn)}  # pyright: ignore[reportArgumentType]  # overrides are checked to be of the function's kind


def state_keys(name: str, hyper: AdamHyper) -> list[str]:
    """The state keys of one parameter, in order."""
    keys = [exp_avg_key(name), exp_avg_sq_key(name)]
    if hyper.amsgrad:
        keys.append(max_exp_avg_sq_key(name))
    return keys


def scalar_element(element: Attribute, runtime: RunTimeFields | None = None, hyper: AdamHyper | None = None) -> Attribute:
    """The type the bias corrections are computed in: f64 for f64 parameters (or an f64
    run-time lr, beta1 or beta2: torch computes them in Python floats), else f32."""
    if isinstance(element, Float64Type):
        return element
    if runtime is not None and hyper is not None:
        for name in ("lr", "beta1", "beta2"):
            if name in hyper.runtime and isinstance(element_of(runtime.arguments[name]), Float64Type):
                return Float64Type()
    return Float32Type()


class _BiasCorrections:
    """The rank-0 `step_size` and `sqrt(bias_correction2)` of each (element type, lr, beta1,
    beta2), made once at the top of the function from the new step count."""

    def __init__(self, new_step: SSAValue, emitter: UpdateBuilder, runtime: RunTimeFields):
        self.new_step = new_step
        self.emitter = emitter
        self.runtime = runtime
        self.steps: dict[Attribute, SSAValue] = {}
        self.cache: dict[tuple[Attribute, float | str, float | str, float | str], tuple[SSAValue, SSAValue]] = {}

    def _step_in(self, element: Attribute) -> SSAValue:
        if element not in self.steps:
            s = self.new_step
            if element != element_of(s):
                s = self.emitter.emit(ConvertOp(s, make_tensor((), element)))
            self.steps[element] = s
        return self.steps[element]

    def _one_minus_power(self, hyper: AdamHyper, name: str, element: Attribute) -> SSAValue:
        """`1 - beta ** step` as `-2 t / (1 - t)`, `t = tanh(step * log(beta) / 2)` (a run-time
        beta of 0 gives log 0 = -inf, t = -1 and exactly 1, as `0 ** step`)."""
        e = self.emitter
        s = self._step_in(element)
        if name in hyper.runtime:
            log_beta = e.emit(LogOp(self.runtime.value(name, element)))
            t = e.emit(TanhOp(e.scale(e.emit(MulOp(s, log_beta)), 0.5)))
            return e.emit(DivOp(e.scale(t, -2.0), e.sub(e.constant(1.0, t), t)))
        beta = float(getattr(hyper, name))
        if beta == 0.0:  # 0 ** step = 0 for step >= 1
            return e.constant(1.0, s)
        t = e.emit(TanhOp(e.scale(s, math.log(beta) / 2.0)))
        return e.emit(DivOp(e.scale(t, -2.0), e.sub(e.constant(1.0, t), t)))

    def factors(self, element: Attribute, hyper: AdamHyper) -> tuple[SSAValue, SSAValue]:
        """`step_size` and `sqrt(bias_correction2)` in `element` (the parameter's type)."""
        key = (element, hyper.key("lr"), hyper.key("beta1"), hyper.key("beta2"))
        if key not in self.cache:
            e = self.emitter
            scalar = scalar_element(element, self.runtime, hyper)
            bc1 = self._one_minus_power(hyper, "beta1", scalar)
            bc2 = self._one_minus_power(hyper, "beta2", scalar)
            lr = self.runtime.value("lr", scalar) if "lr" in hyper.runtime else e.constant(hyper.lr, bc1)
            step_size = e.emit(DivOp(lr, bc1))
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
    runtime: RunTimeFields,
) -> tuple[SSAValue, list[SSAValue]]:
    """torch's `_single_tensor_adam` for one parameter: the new parameter and state (a run-time
    field read from its input, rank-0 values derived from it made at the top: `RunTimeFields`)."""
    exp_avg, exp_avg_sq = state[0], state[1]
    element = element_of(param)
    g = e.emit(NegOp(grad)) if hyper.maximize else grad
    p = param
    if hyper.nonzero("weight_decay"):
        if hyper.decoupled:
            p = e.scale(p, _decay_factor(runtime, hyper, element))
        else:
            g = e.add(g, e.scale(p, runtime.factor(hyper, "weight_decay", element)))
    if "beta1" in hyper.runtime:  # torch's lerp, its formula chosen by the run-time weight
        w = runtime.one_minus("beta1", element)
        one_minus_w = e.sub(e.constant(1.0, w), w)
        low = e.add(exp_avg, e.scale(e.sub(g, exp_avg), w))
        high = e.sub(g, e.scale(e.sub(g, exp_avg), one_minus_w))
        below_half = e.emit(CompareOp("lt", w, e.constant(0.5, w)))
        new_exp_avg = e.emit(SelectOp(below_half, low, high))
    else:
        w = 1.0 - hyper.beta1
        if w < 0.5:  # torch's lerp: the formula depends on the weight
            new_exp_avg = e.add(exp_avg, e.scale(e.sub(g, exp_avg), w))
        else:
            new_exp_avg = e.sub(g, e.scale(e.sub(g, exp_avg), 1.0 - w))
    if "beta2" in hyper.runtime:
        beta2: float | SSAValue = runtime.value("beta2", element)
        one_minus_beta2: float | SSAValue = runtime.one_minus("beta2", element)
    else:
        beta2, one_minus_beta2 = hyper.beta2, 1.0 - hyper.beta2
    new_exp_avg_sq = e.add(e.scale(exp_avg_sq, beta2), e.emit(MulOp(e.scale(g, one_minus_beta2), g)))
    new_state = [new_exp_avg, new_exp_avg_sq]
    second = new_exp_avg_sq
    if hyper.amsgrad:
        second = e.emit(MaximumOp(state[2], new_exp_avg_sq))
        new_state.append(second)
    step_size, bc2_sqrt = corrections.factors(element_of(param), hyper)
    eps = runtime.value("eps", element) if "eps" in hyper.runtime else e.constant(hyper.eps, param)
    denom = e.add(e.emit(DivOp(e.emit(SqrtOp(second)), bc2_sqrt)), eps)
    new_param = e.sub(p, e.emit(DivOp(e.scale(new_exp_avg, step_size), denom)))
    return new_param, new_state


def _decay_factor(runtime: RunTimeFields, hyper: AdamHyper, element: Attribute) -> float | SSAValue:
    """AdamW's `1 - lr * weight_decay` (a Python float in torch): a constant, or computed at the
    top in `scalar_type` from the run-time lr or weight decay and converted to `element`."""
    if "lr" not in hyper.runtime and "weight_decay" not in hyper.runtime:
        return 1.0 - hyper.lr * hyper.weight_decay
    key = ("decay", f"{hyper.key('lr')}*{hyper.key('weight_decay')}", element)
    if key not in runtime.cache:
        e = runtime.emitter
        given = [element_of(runtime.arguments[n]) for n in ("lr", "weight_decay") if n in hyper.runtime]
        scalar = scalar_type(element, Float64Type() if any(isinstance(t, Float64Type) for t in given) else None)
        lr = runtime.value("lr", scalar) if "lr" in hyper.runtime else None
        wd = runtime.value("weight_decay", scalar) if "weight_decay" in hyper.runtime else None
        if lr is not None and wd is not None:
            product = e.emit(MulOp(lr, wd))
        elif lr is not None:
            product = e.scale(lr, hyper.weight_decay)
        else:
            assert wd is not None
            product = e.scale(wd, hyper.lr)
        factor = e.sub(e.constant(1.0, product), product)
        runtime.cache[key] = factor if scalar == element else e.emit(ConvertOp(factor, make_tensor((), element)))
    return runtime.cache[key]


def fuse_adam(fn: func.FuncOp) -> None:
    """Replace `fn`'s gradient results by the Adam (AdamW) update of each parameter (in place)."""
    ps = _check_input_form(fn, PASS_NAME)
    hyper = adam_hyperparameters(fn)
    block = entry_block(fn)
    ret = block.last_op
    assert isinstance(ret, func.ReturnOp)
    loss, *grads = ret.arguments
    attrs = arg_attrs(fn)
    add_state = state_adder(fn, attrs, PASS_NAME)

    state = {p.name: [add_state(key, p.type, p.value) for key in state_keys(p.name, hyper[p.name])] for p in ps}
    step = add_state(STEP_COUNT, STEP_TYPE, ps[0].value)
    top = UpdateBuilder(InsertPoint.at_start(block), location=fn.location)
    new_step = top.add(step, top.constant(1.0, step))
    runtime = RunTimeFields({name: a.value for name, a in check_hyper_inputs(fn).items()}, top)
    corrections = _BiasCorrections(new_step, top, runtime)
    for p in ps:  # every rank-0 factor at the top, where each update can read it
        h, element = hyper[p.name], element_of(p.value)
        corrections.factors(element, h)
        for name in sorted(h.runtime):
            runtime.value(name, element)
            if name in ("beta1", "beta2"):
                runtime.one_minus(name, element)
        if h.decoupled and h.nonzero("weight_decay"):
            _decay_factor(runtime, h, element)

    new_params: list[SSAValue] = []
    new_state: list[SSAValue] = []
    names: list[str] = [p.name for p in ps]
    for p, grad in zip(ps, grads):
        owner = grad.owner
        point = InsertPoint.after(owner) if isinstance(owner, Operation) else InsertPoint.before(ret)
        new_param, updated = _update(
            UpdateBuilder(point, location=p.value.location), p.value, grad, hyper[p.name], state[p.name], corrections,
            runtime,
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
