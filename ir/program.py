"""The roles of a step function's arguments and results, and its function-level rules.

A step is one `func.func`. Its arguments are parameters (`{step.param}`), batch inputs
(unmarked) and, after the passes, the loss cotangent (`{step.cotangent}`) and optimizer state
(`{step.state = "momentum.w1"}`). Its results are named by `{step.output = "..."}` result
attributes with the keys that `stepc exec` and the Python API use: `loss`, `grad.w1`, `w1`,
`momentum.w1`. A forward program's single result is the loss.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, cast

import numpy as np
from xdsl.dialects import func
from xdsl.dialects.builtin import (
    ArrayAttr,
    DictionaryAttr,
    IntegerAttr,
    IntegerType,
    ModuleOp,
    StringAttr,
    TensorType,
    UnitAttr,
)
from xdsl.ir import Attribute, Block, BlockArgument, Operation, SSAValue

from stepc.ir.diagnostics import SourceLoc, StepcError, location_of, part_location
from stepc.ir.dialect import (
    ACCUMULATE,
    ADAM,
    ADAM_FIELDS,
    ADAMW,
    COTANGENT,
    HYPER,
    OUTPUT,
    PARAM,
    SGD,
    SGD_FIELDS,
    STATE,
    AccumulateOp,
    AdamAttr,
    AdamWAttr,
    CrossEntropyOp,
    EmbeddingGradOp,
    EmbeddingOp,
    LogSoftmaxOp,
    MatmulOp,
    MulOp,
    OneHotOp,
    ReshapeOp,
    SGDAttr,
    SoftmaxOp,
    check_adam_fields,
    is_float,
    is_i32,
    is_ui32,
    shape_of,
)
from stepc.ir.limits import check_memory, human_bytes, memory_limit, tensor_bytes
from stepc.ir.narrow import is_integer_type, is_tensor
from stepc.ir.stablehlo import is_lowered
from stepc.ir.values import numpy_dtype


class Role(StrEnum):
    """What an argument of a step function is (`{step.param}`, unmarked, `{step.cotangent}`,
    `{step.state = "KEY"}`, `{step.hyper = "FIELD"}`: an optimizer field given at run time,
    neither a parameter nor a batch input, though callers pass it with the batch)."""

    PARAM = "param"
    INPUT = "input"
    COTANGENT = "cotangent"
    STATE = "state"
    HYPER = "hyper"


# The keys of a step's results and state: `loss`, `grad.NAME`, `momentum.NAME`, `first_step`.
LOSS = "loss"
LOGITS = "logits"  # the result of the forward program cut at a classifier's logits
GRAD_PREFIX = "grad."
MOMENTUM_PREFIX = "momentum."
FIRST_STEP = "first_step"
STATE_INITIAL_VALUES: Mapping[str, float] = {FIRST_STEP: 1.0}
"""Initial value of each state key that does not start at zeros (`init_state` reads it)."""


def grad_key(param_name: str) -> str:
    """The result key of a parameter's gradient: `grad.w1`."""
    return GRAD_PREFIX + param_name


def momentum_key(param_name: str) -> str:
    """The state key of a parameter's SGD momentum buffer: `momentum.w1`."""
    return MOMENTUM_PREFIX + param_name


def initial_state_value(key: str) -> float:
    """The value a state key holds before the first step (zeros unless documented otherwise)."""
    return STATE_INITIAL_VALUES.get(key, 0.0)


def missing_state_value(key: str, given: Collection[str]) -> float:
    """The value of a state key a caller left out, given the keys it did pass: with some
    momentum buffer given, the step continues an earlier one (`first_step` = 0); else it
    is a first step (each key's initial value)."""
    if key == FIRST_STEP and any(k.startswith(MOMENTUM_PREFIX) for k in given):
        return 0.0
    return initial_state_value(key)


@dataclass(frozen=True)
class Arg:
    """One argument of a step function."""

    name: str
    value: BlockArgument
    role: Role
    attrs: DictionaryAttr

    @property
    def index(self) -> int:
        return self.value.index

    @property
    def type(self) -> TensorType[Attribute]:
        t = self.value.type
        assert is_tensor(t)
        return t

    @property
    def sgd_override(self) -> SGDAttr | None:
        attr = self.attrs.data.get(PARAM)
        return attr if isinstance(attr, SGDAttr) else None

    @property
    def optimizer_override(self) -> OptimizerAttr | None:
        """The parameter's own optimizer fields (`{step.param = #step.adam<...>}`), if any."""
        attr = self.attrs.data.get(PARAM)
        return attr if isinstance(attr, (SGDAttr, AdamAttr, AdamWAttr)) else None

    @property
    def state_key(self) -> str | None:
        attr = self.attrs.data.get(STATE)
        return attr.data if isinstance(attr, StringAttr) else None

    @property
    def hyper_field(self) -> str | None:
        """The optimizer field a `{step.hyper = "lr"}` argument gives at run time."""
        attr = self.attrs.data.get(HYPER)
        return attr.data if isinstance(attr, StringAttr) else None


def step_function(module: ModuleOp) -> func.FuncOp:
    """The step: the module's first `func.func`, which must have a body (every stage of every
    pass and backend reads its one block, so a declaration is refused here, located)."""
    for op in module.ops:
        if isinstance(op, func.FuncOp):
            if not op.body.blocks:
                raise StepcError(
                    f"func.func @{op.sym_name.data} has no body: a step must be defined, not declared", location_of(op)
                )
            return op
    raise StepcError("the module holds no func.func: a step is one function returning the loss", location_of(module))


def arg_name(value: BlockArgument) -> str:
    return value.name_hint if value.name_hint is not None else f"arg{value.index}"


def entry_block(fn: func.FuncOp) -> Block:
    """The function's entry block (a step function has one block)."""
    block = fn.body.blocks.first
    assert block is not None, f"@{fn.sym_name.data} has no body"
    return block


def arg_attrs(fn: func.FuncOp) -> list[DictionaryAttr]:
    n = len(entry_block(fn).args) if fn.body.blocks else len(fn.function_type.inputs.data)
    if fn.arg_attrs is None:
        return [DictionaryAttr({}) for _ in range(n)]
    return list(fn.arg_attrs.data)


def args(fn: func.FuncOp) -> list[Arg]:
    out: list[Arg] = []
    for value, attrs in zip(entry_block(fn).args, arg_attrs(fn)):
        if PARAM in attrs.data:
            role = Role.PARAM
        elif COTANGENT in attrs.data:
            role = Role.COTANGENT
        elif STATE in attrs.data:
            role = Role.STATE
        elif HYPER in attrs.data:
            role = Role.HYPER
        else:
            role = Role.INPUT
        out.append(Arg(arg_name(value), value, role, attrs))
    return out


def args_of(fn: func.FuncOp, role: Role) -> list[Arg]:
    return [a for a in args(fn) if a.role == role]


def params(fn: func.FuncOp) -> list[Arg]:
    return args_of(fn, Role.PARAM)


def inputs(fn: func.FuncOp) -> list[Arg]:
    return args_of(fn, Role.INPUT)


def cotangents(fn: func.FuncOp) -> list[Arg]:
    return args_of(fn, Role.COTANGENT)


def function_sgd(fn: func.FuncOp) -> SGDAttr | None:
    attr = fn.attributes.get(SGD)
    return attr if isinstance(attr, SGDAttr) else None


def output_names(fn: func.FuncOp) -> list[str]:
    """The key of each result: from `{step.output}`, or `loss` for a forward program."""
    n = len(fn.function_type.outputs.data)
    attrs = list(fn.res_attrs.data) if fn.res_attrs is not None else [DictionaryAttr({})] * n
    names: list[str] = []
    for i, a in enumerate(attrs):
        key = a.data.get(OUTPUT)
        names.append(key.data if isinstance(key, StringAttr) else (LOSS if n == 1 else f"result{i}"))
    return names


def set_output_names(fn: func.FuncOp, names: list[str]) -> None:
    fn.res_attrs = ArrayAttr([DictionaryAttr({OUTPUT: StringAttr(n)}) for n in names])


def set_arg_attrs(fn: func.FuncOp, attrs: list[DictionaryAttr]) -> None:
    fn.arg_attrs = ArrayAttr(attrs)


def returned_values(fn: func.FuncOp) -> list[SSAValue]:
    ret = entry_block(fn).last_op
    assert isinstance(ret, func.ReturnOp)
    return list(ret.arguments)


def arg_location(fn: func.FuncOp, arg: BlockArgument) -> SourceLoc | None:
    return SourceLoc.from_attr(arg.location) or location_of(fn)


def verify_step_function(fn: func.FuncOp) -> None:
    """The function-level rules of a step as a user writes it (before any pass)."""
    where = location_of(fn)
    results = fn.function_type.outputs.data
    if len(results) != 1:
        raise StepcError(
            f"a step returns exactly one value, the scalar loss; found {len(results)} results",
            part_location(fn, "results"),
        )
    loss_t = results[0]
    if not (is_tensor(loss_t) and loss_t.get_shape() == () and is_float(loss_t.get_element_type())):
        raise StepcError(
            f"the loss must be a rank-0 float tensor (tensor<f32>, say), found {loss_t}", part_location(fn, "results")
        )
    all_args = args(fn)
    for arg in all_args:
        t = arg.value.type
        loc = arg_location(fn, arg.value)
        if not is_tensor(t):
            raise StepcError(f"argument %{arg.name} must be a tensor, found {t}", loc)
        if arg.role == Role.PARAM and not is_float(t.get_element_type()):
            raise StepcError(f"parameter %{arg.name} must be a float tensor (f16, bf16, f32, f64), found {t}", loc)
        if arg.role == Role.INPUT and not (
            is_float(t.get_element_type()) or is_i32(t.get_element_type()) or is_ui32(t.get_element_type())
        ):
            raise StepcError(f"batch input %{arg.name} must be a float, i32 or ui32 (random key) tensor, found {t}", loc)
        marker = arg.attrs.data.get(PARAM)
        if marker is not None and not isinstance(marker, (UnitAttr, SGDAttr, AdamAttr, AdamWAttr)):
            raise StepcError(
                f"{{step.param}} on %{arg.name} takes no value or a #step.sgd<...> override, found {marker}", loc
            )
    if not any(a.role == Role.PARAM for a in all_args):
        raise StepcError("a step needs at least one parameter: mark one argument {step.param}", where)
    if check_adam_optimizer(fn):
        check_hyper_inputs(fn)
        check_names(all_args, fn)
        check_memory(fn)
        check_accumulation(fn)
        return
    sgd = function_sgd(fn)
    if SGD in fn.attributes and sgd is None:
        raise StepcError(
            f"step.sgd must be a #step.sgd<...> attribute, found {fn.attributes[SGD]}", part_location(fn, SGD)
        )
    if sgd is None:
        raise StepcError(
            "the function needs an optimizer: attributes {step.sgd = #step.sgd<lr = 0.1>}", where
        )
    if "lr" not in sgd.fields() and "lr" not in check_hyper_inputs(fn):
        raise StepcError(
            "#step.sgd on the function must give lr (the learning rate has no default), or an argument "
            '%lr: tensor<f64> {step.hyper = "lr"} give it at run time',
            part_location(fn, SGD),
        )
    check_sgd(fn)
    check_hyper_inputs(fn)
    check_names(all_args, fn)
    check_memory(fn)
    check_accumulation(fn)


def verify_any_stage(module: ModuleOp) -> None:
    """The function-level rules of a program at any stage, as `stepc opt` reads it: a program
    as written (a forward program, or one of no stage the passes make) gets every rule of
    `verify_step_function`; a later stage (the `vjp`, `grad` or `step` form of a dump, or
    lowered StableHLO) keeps distinct argument names, and each pass checks the form it needs
    when it runs."""
    fn = step_function(module)
    if not is_lowered(module) and program_form(module) in (Form.FORWARD, Form.OTHER):
        verify_step_function(fn)
        return
    check_names(args(fn), fn)


RESERVED_KEY = (LOSS,)
RESERVED_PREFIXES = (GRAD_PREFIX, MOMENTUM_PREFIX, "exp_avg.", "exp_avg_sq.", "max_exp_avg_sq.")
COTANGENT_SUFFIX = "_cotangent"


def cotangent_name(output: str) -> str:
    """The name of the cotangent argument `differentiate` adds for an output: `loss_cotangent`."""
    return output + COTANGENT_SUFFIX


def check_names(all_args: list[Arg], fn: func.FuncOp) -> None:
    """Argument names are the keys of every dict and `.npz`: distinct, and apart from the keys
    stepc makes (`loss`, `grad.NAME`, `momentum.NAME`, and `NAME_cotangent`, the cotangent
    argument of output NAME that `differentiate` adds)."""
    seen: dict[str, Arg] = {}
    cotangent_of = {cotangent_name(name): name for name in reserved_cotangent_outputs(fn)}
    for arg in all_args:
        loc = arg_location(fn, arg.value)
        if arg.name in seen:
            raise StepcError(
                f"argument {arg.index} has the name '{arg.name}' of argument {seen[arg.name].index}; "
                "the names key the inputs and outputs, rename one",
                loc,
            )
        seen[arg.name] = arg
        user_named = arg.role in (Role.PARAM, Role.INPUT, Role.HYPER)  # state and cotangents carry stepc's own keys
        if user_named and (arg.name in RESERVED_KEY or arg.name.startswith(RESERVED_PREFIXES)):
            raise StepcError(
                f"argument %{arg.name}: 'loss', 'grad.NAME' and 'momentum.NAME' are the keys of stepc's outputs; "
                "rename it",
                loc,
            )
        if user_named and arg.name in cotangent_of:
            raise StepcError(
                f"argument %{arg.name}: the name is reserved for the cotangent argument that differentiate adds "
                f"for the output '{cotangent_of[arg.name]}' (the key of that input after the pass); rename it",
                loc,
            )


def reserved_cotangent_outputs(fn: func.FuncOp) -> list[str]:
    """The outputs whose `NAME_cotangent` no parameter or input may be named: the loss always
    (so that a program keeps the names it had at every stage), and every output of a program
    `differentiate` takes (a forward program, or one of no stage the passes make)."""
    names = [LOSS]
    if function_form(fn) in (Form.FORWARD, Form.OTHER):
        names.extend(n for n in output_names(fn) if n != LOSS)
    return names


def check_sgd(fn: func.FuncOp) -> None:
    """torch.optim.SGD's argument errors, for the function's group and each parameter's."""
    sgd = function_sgd(fn)
    assert sgd is not None
    try:
        SGDAttr.check_fields(sgd.resolved())
    except Exception as e:
        raise StepcError(str(e), part_location(fn, SGD)) from None
    for arg in params(fn):
        override = arg.optimizer_override
        if override is None:
            continue
        if not isinstance(override, SGDAttr):
            raise StepcError(
                f"parameter %{arg.name}: its optimizer fields must be a #{SGD}<...> as the function's, found {override}",
                arg_location(fn, arg.value),
            )
        try:
            SGDAttr.check_fields(sgd.resolved(override))
        except Exception as e:
            raise StepcError(f"parameter %{arg.name}: {e}", arg_location(fn, arg.value)) from None


# ---------------------------------------------------------------------------------------------
# The optimizers besides SGD (the Adam family)

OptimizerAttr = SGDAttr | AdamAttr | AdamWAttr
# The function attribute of each optimizer, and its attribute class.
OPTIMIZERS: Mapping[str, type[SGDAttr] | type[AdamAttr] | type[AdamWAttr]] = {SGD: SGDAttr, ADAM: AdamAttr, ADAMW: AdamWAttr}
# The state keys of the Adam family (torch's state names) and the step count.
EXP_AVG_PREFIX = "exp_avg."
EXP_AVG_SQ_PREFIX = "exp_avg_sq."
MAX_EXP_AVG_SQ_PREFIX = "max_exp_avg_sq."
STEP_COUNT = "step"


def function_optimizer(fn: func.FuncOp) -> tuple[str, OptimizerAttr] | None:
    """The function's optimizer attribute and its key (`step.sgd`, `step.adam`, `step.adamw`)."""
    for key, cls in OPTIMIZERS.items():
        attr = fn.attributes.get(key)
        if isinstance(attr, cls):
            return key, attr
    return None


def function_adam(fn: func.FuncOp) -> AdamAttr | AdamWAttr | None:
    """The function's #step.adam or #step.adamw, if it has one."""
    found = function_optimizer(fn)
    return found[1] if found is not None and isinstance(found[1], (AdamAttr, AdamWAttr)) else None


def check_adam_optimizer(fn: func.FuncOp) -> bool:
    """The optimizer rules of a function with #step.adam or #step.adamw (True), located: one
    optimizer attribute, each of its kind, parameter overrides of the same kind, and torch's
    ValueErrors for each group. False for a function with neither (SGD's rules then apply)."""
    written = [key for key in OPTIMIZERS if key in fn.attributes]
    if not any(key in (ADAM, ADAMW) for key in written):
        return False
    if len(written) > 1:
        raise StepcError(
            f"one optimizer per function: found {' and '.join(written)}", part_location(fn, written[1])
        )
    key = written[0]
    attr = fn.attributes[key]
    cls = OPTIMIZERS[key]
    if not isinstance(attr, cls):
        raise StepcError(f"{key} must be a #{key}<...> attribute, found {attr}", part_location(fn, key))
    assert isinstance(attr, (AdamAttr, AdamWAttr))
    try:
        check_adam_fields(attr.resolved(), attr.TITLE)
    except Exception as e:
        raise StepcError(str(e), part_location(fn, key)) from None
    for arg in params(fn):
        override = arg.optimizer_override
        if override is None:
            continue
        if not isinstance(override, cls):
            raise StepcError(
                f"parameter %{arg.name}: its optimizer fields must be a #{key}<...> as the function's, found {override}",
                arg_location(fn, arg.value),
            )
        assert isinstance(override, (AdamAttr, AdamWAttr))
        try:
            check_adam_fields(attr.resolved(override), attr.TITLE)
        except Exception as e:
            raise StepcError(f"parameter %{arg.name}: {e}", arg_location(fn, arg.value)) from None
    return True


# ---------------------------------------------------------------------------------------------
# Run-time optimizer fields: `{step.hyper = "lr"}`

# A valid range of each float field, for the random values the contracts feed a hyper input.
HYPER_RANGES: Mapping[str, tuple[float, float]] = {
    "lr": (0.01, 0.5), "momentum": (0.0, 0.95), "dampening": (0.0, 0.9), "weight_decay": (0.0, 0.1),
    "beta1": (0.0, 0.95), "beta2": (0.5, 0.999), "eps": (1e-8, 1e-2),
}  # fmt: skip


def optimizer_float_fields(attr: OptimizerAttr) -> list[str]:
    """The float fields of an optimizer attribute's kind: those a hyper input can give."""
    table = SGD_FIELDS if isinstance(attr, SGDAttr) else ADAM_FIELDS
    return [name for name, kind in table if kind is float]


def hyper_inputs(fn: func.FuncOp) -> dict[str, Arg]:
    """The `{step.hyper = "FIELD"}` arguments by field (unchecked: see `check_hyper_inputs`)."""
    return {field: a for a in args(fn) if a.role == Role.HYPER and (field := a.hyper_field) is not None}


def check_hyper_inputs(fn: func.FuncOp) -> dict[str, Arg]:
    """The run-time optimizer fields, by field, located errors for: a value that is no field
    name, a field the function's optimizer has not (or a boolean one), an argument that is not
    a rank-0 float tensor, or a parameter too, two arguments for one field, and a parameter
    attribute setting a field given at run time (it replaces the field for every parameter)."""
    found = function_optimizer(fn)
    out: dict[str, Arg] = {}
    for arg in args(fn):
        marker = arg.attrs.data.get(HYPER)
        if marker is None:
            continue
        loc = arg_location(fn, arg.value)
        if not isinstance(marker, StringAttr):
            raise StepcError(
                f'step.hyper on %{arg.name} takes the name of an optimizer field ({{step.hyper = "lr"}}), found {marker}',
                loc,
            )
        field_name = marker.data
        if arg.role != Role.HYPER:
            raise StepcError(
                f"%{arg.name} is a {arg.role} and cannot also be the run-time '{field_name}' (step.hyper): "
                "a run-time optimizer field is an argument of its own",
                loc,
            )
        if found is None:
            raise StepcError(f"%{arg.name} gives the optimizer field '{field_name}' at run time, but the function has no optimizer", loc)
        key, attr = found
        fields = optimizer_float_fields(attr)
        if field_name not in fields:
            flag = " (a boolean field, fixed at compile time)" if field_name in attr.resolved() else ""
            raise StepcError(
                f"step.hyper = \"{field_name}\" on %{arg.name}: #{key} has no float field '{field_name}'{flag}; "
                f"its float fields are {', '.join(fields)}",
                loc,
            )
        t = arg.type
        if t.get_shape() != () or not is_float(t.get_element_type()):
            raise StepcError(
                f"the run-time '{field_name}' %{arg.name} must be a rank-0 float tensor (tensor<f64>: torch's "
                f"hyperparameters are Python floats), found {t}",
                loc,
            )
        if field_name in out:
            raise StepcError(
                f"%{arg.name} and %{out[field_name].name} both give the optimizer field '{field_name}' at run time",
                loc,
            )
        out[field_name] = arg
    for p in params(fn):
        override = p.optimizer_override
        if override is None:
            continue
        taken = sorted(set(override.fields()) & set(out))
        if taken:
            raise StepcError(
                f"parameter %{p.name}: its {override} sets {taken[0]}, which %{out[taken[0]].name} gives at run time "
                "for every parameter",
                arg_location(fn, p.value),
            )
    return out


def accumulate_count(fn: func.FuncOp) -> int | None:
    """K of the function attribute `step.accumulate = K : i64` (gradient accumulation over K
    micro-batches), None without it; anything but an integer of at least 1 is a located error."""
    attr = fn.attributes.get(ACCUMULATE)
    if attr is None:
        return None
    where = part_location(fn, ACCUMULATE)
    element: Attribute | None = cast(Attribute, attr.type) if isinstance(attr, IntegerAttr) else None  # pyright: ignore[reportUnknownMemberType]  # IntegerAttr's type parameter is unknown to pyright
    if element is None or not is_integer_type(element) or element.width.data == 1:  # (i1 is a boolean)
        raise StepcError(
            f"step.accumulate takes the number of micro-batches as an integer (step.accumulate = 4 : i64), found {attr}",
            where,
        )
    count = int(cast(IntegerAttr[IntegerType], attr).value.data)
    if count < 1:
        raise StepcError(f"step.accumulate = {count}: the number of micro-batches must be at least 1", where)
    return count


def check_accumulation(fn: func.FuncOp) -> int | None:
    """`step.accumulate = K` of a program of one micro-batch (as written, or after any pass
    before `accumulate-gradients`): K (None without the attribute); located errors when it is
    not an integer of at least 1, when there is no batch input to split, or when the K-stacked
    batch inputs would not fit in the memory limit."""
    count = accumulate_count(fn)
    if count is None:
        return None
    where = part_location(fn, ACCUMULATE)
    batch = inputs(fn)
    if not batch:
        raise StepcError(
            f"step.accumulate = {count} splits the batch inputs into micro-batches, but @{fn.sym_name.data} has none "
            "(every argument is a parameter)",
            where,
        )
    stacked = sum(tensor_bytes(a.type, where, f"batch input %{a.name}") for a in batch) * count
    limit = memory_limit()
    if stacked > limit:
        raise StepcError(
            f"step.accumulate = {count}: the batch inputs of {count} micro-batches need about {human_bytes(stacked)}, "
            f"over the memory limit of {human_bytes(limit)}",
            where,
        )
    return count


def initial_state(fn: func.FuncOp) -> dict[str, np.ndarray]:
    """The first step's state of a fused step function, by state key (zero buffers,
    `first_step` = 1), each in its argument's dtype."""
    out: dict[str, np.ndarray] = {}
    for arg in args(fn):
        key = arg.state_key
        if key is not None:
            shape = tuple(arg.type.get_shape())
            out[key] = np.full(shape, initial_state_value(key), dtype=numpy_dtype(arg.type.get_element_type()))
    return out


# ---------------------------------------------------------------------------------------------
# What a program computes, from its signature


class Form(StrEnum):
    """What a step function computes (docs/architecture.md): the loss (`forward`), its
    vector-Jacobian product (`vjp`: a cotangent input), `loss, grad.NAME...` (`grad`), new
    parameters and state (`step`), or `other`."""

    FORWARD = "forward"
    VJP = "vjp"
    GRAD = "grad"
    STEP = "step"
    OTHER = "other"


def program_form(module: ModuleOp) -> Form:
    """The `Form` of a module's step function, from its argument roles and result keys."""
    return function_form(step_function(module))


def function_form(fn: func.FuncOp) -> Form:
    """The `Form` of a step function (`program_form`)."""
    arguments = args(fn)
    roles = {a.role for a in arguments}
    names = output_names(fn)
    if Role.STATE in roles or {a.name for a in arguments if a.role == Role.PARAM} & set(names):
        return Form.STEP
    if Role.COTANGENT in roles:
        return Form.VJP
    if names == [LOSS]:
        return Form.FORWARD
    if names and names[0] == LOSS and all(n.startswith(GRAD_PREFIX) for n in names[1:]):
        return Form.GRAD
    return Form.OTHER


# ---------------------------------------------------------------------------------------------
# Labels: the i32 inputs a classifier reads


def label_classes(arg: Arg) -> list[int]:
    """The class counts of the ops that read an i32 input as class indices (cross-entropy
    labels, one-hot) or as row indices (embedding ids: the table's rows), one per such use;
    empty when none does."""
    return [count for _, count in index_readers(arg)]


def index_readers(arg: Arg) -> list[tuple[str, int]]:
    """Each op reading an i32 input as indices: `("labels", classes)` for a cross-entropy or a
    one-hot, `("ids", rows)` for an embedding (and its gradient op)."""
    readers: list[tuple[str, int]] = []
    for op, index in index_uses(arg.value):
        if isinstance(op, CrossEntropyOp) and index == 1:
            readers.append(("labels", shape_of(op.logits)[-1]))
        elif isinstance(op, OneHotOp):
            readers.append(("labels", shape_of(op.result)[-1]))
        elif isinstance(op, EmbeddingOp) and index == 1:
            readers.append(("ids", shape_of(op.table)[0]))
        elif isinstance(op, EmbeddingGradOp) and index == 1:
            readers.append(("ids", shape_of(op.result)[0]))
    return readers


def reads_ids(arg: Arg) -> bool:
    """Whether an i32 input holds embedding ids, not labels: every op reading it as indices is
    an embedding (messages then say "id" and "rows", not "label" and "classes")."""
    readers = index_readers(arg)
    return bool(readers) and all(kind == "ids" for kind, _ in readers)


def index_uses(value: SSAValue) -> Iterator[tuple[Operation, int]]:
    """The uses of an i32 value, seen through `step.reshape`s (a language model's `BxT`
    targets flattened to the `B*T` labels of its cross-entropy, as `targets.view(-1)`) and
    through `step.accumulate` (the micro-batches of K-stacked labels): each user that is
    neither, with the operand position it reads the value at."""
    for use in value.uses:
        if isinstance(use.operation, ReshapeOp):
            yield from index_uses(use.operation.result)
        elif isinstance(use.operation, AccumulateOp):  # micro-batch k of a stacked input
            yield from index_uses(use.operation.body.block.args[use.index])
        else:
            yield use.operation, use.index


def label_range(arg: Arg) -> int:
    """How many classes an i32 input ranges over (the smallest reader's), 2 with no reader."""
    return min(label_classes(arg), default=2)


@dataclass(frozen=True)
class Head:
    """Where a classifier's logits come from and which batch input holds its labels."""

    labels: str  # the batch input's name
    one_hot: bool  # labels given as one-hot float rows (argmax gives the class)
    classes: int
    logits: SSAValue | None = field(default=None, compare=False, repr=False)  # in the program it was found in


def classifier_head(fn: func.FuncOp) -> Head | None:
    """The classifier a loss is made of, or None when it is not a classifier's.

    The logits are the operand of `step.cross_entropy %logits, %labels` whose labels are a
    batch input (directly, or reshaped: per-token labels `BxT` flattened with the logits to
    `B*T` rows, as a language model's loss), or the operand of a last-axis `step.log_softmax`/`step.softmax` whose result
    is multiplied by a float batch input of its shape (one-hot targets, as in
    examples/softmax_regression.ir)."""
    input_names: dict[SSAValue, str] = {a.value: a.name for a in inputs(fn)}
    for value, name in input_names.items():
        for op, index in index_uses(value):
            if isinstance(op, CrossEntropyOp) and index == 1:
                return Head(name, False, shape_of(op.logits)[-1], op.logits)
    for op in fn.walk():
        if isinstance(op, LogSoftmaxOp | SoftmaxOp) and op.axis_index in (-1, len(shape_of(op.input)) - 1):
            for use in op.result.uses:
                user = use.operation
                if isinstance(user, MulOp):
                    other = user.rhs if use.index == 0 else user.lhs
                    if other in input_names and shape_of(other) == shape_of(op.input):
                        return Head(input_names[other], True, shape_of(op.input)[-1], op.input)
    return None


def fan_in_scale(arg: Arg) -> float:
    """1/sqrt(k) for an argument a matmul contracts over k (a weight), else 1: unit-normal data
    then gives every matmul's output unit scale, as PyTorch's default initialization does."""
    for use in arg.value.uses:
        if isinstance(use.operation, MatmulOp) and use.index == 1:
            return 1.0 / float(shape_of(arg.value)[-2]) ** 0.5
    return 1.0


# ---------------------------------------------------------------------------------------------
# Arguments as the dicts of every entry point see them, and the one input validator


@dataclass(frozen=True)
class ArgSpec:
    """One argument: IR name, role, shape and dtype (i1 never: arguments are f16..f64, i32, ui32)."""

    name: str
    role: Role
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    state_key: str | None = None

    @property
    def key(self) -> str:
        """The key of this argument in dicts: the state key for state, else the IR name."""
        return self.state_key or self.name


def arg_specs(fn: func.FuncOp) -> list[ArgSpec]:
    """The `ArgSpec` of every argument, in order."""
    return [
        ArgSpec(a.name, a.role, tuple(a.type.get_shape()), numpy_dtype(a.type.get_element_type()), a.state_key)
        for a in args(fn)
    ]


def shape_text(shape: Sequence[int]) -> str:
    """A shape as Python writes a tuple: `(3,)`, `(2, 4)`."""
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def check_inputs(
    specs: Sequence[ArgSpec], inputs: Mapping[Any, Any], what: str = "inputs", *, x64: bool = True
) -> list[Any]:
    """The arrays in argument order; a missing or extra key, a wrong shape or dtype is a StepcError.

    Values may be NumPy or JAX arrays, or JAX tracers (only shapes and dtypes are read). `x64`
    says whether 64-bit arrays can reach the caller (JAX's `jax_enable_x64`): when not, a
    64-bit argument given as 32 bits gets a hint on how to turn it on."""
    given = cast(object, inputs)  # (whatever the caller passed: the API's callers are not type-checked)
    if not isinstance(given, Mapping):
        raise StepcError(f"{what}: expected a dict keyed by IR names, found {type(given).__name__}")
    keys = [s.key for s in specs]
    known = set(keys)
    missing = [k for k in keys if k not in inputs]
    # In the caller's order, not sorted: keys may be of any type (`1`, `None`, `"x"` together).
    extra = [k for k in inputs if not (isinstance(k, str) and k in known)]
    if missing or extra:
        parts: list[str] = []
        if missing:
            parts.append("missing " + _listed(missing))
        if extra:
            parts.append("unexpected " + _listed(extra))
        raise StepcError(f"{what}: {'; '.join(parts)} (expected keys: {', '.join(keys)})")
    return [check_array(spec, inputs[spec.key], what, x64=x64) for spec in specs]


def _listed(keys: Sequence[object], most: int = 10) -> str:
    """Keys as `repr`s, the first `most` of them (a dict of 100,000 keys makes no message of a megabyte)."""
    shown = ", ".join(_short_repr(k) for k in keys[:most])
    return shown + (f" and {len(keys) - most} more" if len(keys) > most else "")


def _short_repr(key: object, most: int = 80) -> str:
    text = repr(key)
    return text if len(text) <= most else text[: most - 3] + "..."


def check_labels(
    spec: ArgSpec, value: Any, classes: int, what: str, where: SourceLoc | None = None, *, ids: bool = False
) -> None:
    """An i32 input read as class indices (`label_classes`): every value in `[0, classes)`,
    else a StepcError naming the first one outside (with `ids`, embedding ids: `classes` is the
    table's rows). `value` must be concrete (not traced)."""
    array = np.asarray(value)
    bad = np.flatnonzero((array < 0) | (array >= classes))
    if bad.size:
        index = tuple(int(i) for i in np.unravel_index(int(bad[0]), array.shape)) if array.ndim else ()
        noun, range_text = ("id", f"the {classes} rows of its embedding table") if ids else ("label", f"the {classes} classes")
        raise StepcError(
            f"{what}: {noun} {spec.key!r}{list(index)} is {int(array[index])}, outside {range_text} "
            f"[0, {classes}) ({bad.size} such value{'s' if bad.size > 1 else ''})",
            where,
        )


def check_array(spec: ArgSpec, value: Any, what: str, *, x64: bool = True, where: SourceLoc | None = None) -> Any:
    """One argument's value, its shape and dtype checked against the program's (a StepcError
    that says what was found and how to fix it, at `where` when given); a value without shape
    and dtype (a list, a float) becomes a NumPy array. See `check_inputs` for `x64`."""
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        try:
            value = np.asarray(value)
        except (ValueError, TypeError) as e:  # a ragged list, an object NumPy cannot hold
            raise StepcError(
                f"{what}: {spec.key!r} is not an array of shape {shape_text(spec.shape)} ({type(value).__name__}: {e})",
                where,
            ) from None
    shape, dtype = tuple(value.shape), np.dtype(value.dtype)
    if shape != spec.shape:
        raise StepcError(
            f"{what}: {spec.key!r} has shape {shape_text(shape)}, expected {shape_text(spec.shape)}", where
        )
    if dtype != spec.dtype:
        if spec.dtype.itemsize == 8 and dtype.itemsize == 4 and not x64:
            hint = (" (JAX turns 64-bit arrays into 32-bit ones unless jax_enable_x64 is on: a program with "
                    "64-bit values under your own jax.jit needs jax.config.update('jax_enable_x64', True) first)")
        else:
            module = "np" if hasattr(np, spec.dtype.name) else "ml_dtypes"  # bfloat16 is ml_dtypes'
            hint = f" (convert it with .astype({module}.{spec.dtype.name}))"
        raise StepcError(f"{what}: {spec.key!r} has dtype {dtype}, expected {spec.dtype}{hint}", where)
    return value
