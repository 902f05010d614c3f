"""The roles of a step function's arguments and results, and its function-level rules.

A step is one `func.func`. Its arguments are parameters (`{step.param}`), batch inputs
(unmarked) and, after the passes, the loss cotangent (`{step.cotangent}`) and optimizer state
(`{step.state = "momentum.w1"}`). Its results are named by `{step.output = "..."}` result
attributes with the keys that `stepc exec` and the Python API use: `loss`, `grad.w1`, `w1`,
`momentum.w1`. A forward program's single result is the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.dialects import func
from xdsl.dialects.builtin import ArrayAttr, DictionaryAttr, ModuleOp, StringAttr, TensorType, UnitAttr
from xdsl.ir import Attribute, BlockArgument, SSAValue

from stepc.ir.dialect import SGDAttr, is_float, is_i32
from stepc.ir.diagnostics import SourceLoc, StepcError, location_of, part_location
from stepc.ir.limits import check_memory

PARAM = "step.param"
SGD = "step.sgd"
COTANGENT = "step.cotangent"
STATE = "step.state"
OUTPUT = "step.output"


@dataclass(frozen=True)
class Arg:
    """One argument of a step function."""

    name: str
    value: BlockArgument
    role: str  # "param", "input", "cotangent" or "state"
    attrs: DictionaryAttr

    @property
    def index(self) -> int:
        return self.value.index

    @property
    def type(self) -> TensorType[Attribute]:
        t = self.value.type
        assert isinstance(t, TensorType)
        return t

    @property
    def sgd_override(self) -> SGDAttr | None:
        attr = self.attrs.data.get(PARAM)
        return attr if isinstance(attr, SGDAttr) else None

    @property
    def state_key(self) -> str | None:
        attr = self.attrs.data.get(STATE)
        return attr.data if isinstance(attr, StringAttr) else None


def step_function(module: ModuleOp) -> func.FuncOp:
    """The step: the module's first `func.func`."""
    for op in module.ops:
        if isinstance(op, func.FuncOp):
            return op
    raise StepcError("the module holds no func.func: a step is one function returning the loss", location_of(module))


def arg_name(value: BlockArgument) -> str:
    return value.name_hint if value.name_hint is not None else f"arg{value.index}"


def arg_attrs(fn: func.FuncOp) -> list[DictionaryAttr]:
    n = len(fn.body.blocks.first.args) if fn.body.blocks else len(fn.function_type.inputs.data)
    if fn.arg_attrs is None:
        return [DictionaryAttr({}) for _ in range(n)]
    return list(fn.arg_attrs.data)


def args(fn: func.FuncOp) -> list[Arg]:
    out: list[Arg] = []
    for value, attrs in zip(fn.body.blocks.first.args, arg_attrs(fn)):
        if PARAM in attrs.data:
            role = "param"
        elif COTANGENT in attrs.data:
            role = "cotangent"
        elif STATE in attrs.data:
            role = "state"
        else:
            role = "input"
        out.append(Arg(arg_name(value), value, role, attrs))
    return out


def params(fn: func.FuncOp) -> list[Arg]:
    return [a for a in args(fn) if a.role == "param"]


def inputs(fn: func.FuncOp) -> list[Arg]:
    return [a for a in args(fn) if a.role == "input"]


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
        names.append(key.data if isinstance(key, StringAttr) else ("loss" if n == 1 else f"result{i}"))
    return names


def set_output_names(fn: func.FuncOp, names: list[str]) -> None:
    fn.res_attrs = ArrayAttr([DictionaryAttr({OUTPUT: StringAttr(n)}) for n in names])


def set_arg_attrs(fn: func.FuncOp, attrs: list[DictionaryAttr]) -> None:
    fn.arg_attrs = ArrayAttr(attrs)


def returned_values(fn: func.FuncOp) -> list[SSAValue]:
    ret = fn.body.blocks.first.last_op
    assert isinstance(ret, func.ReturnOp)
    return list(ret.arguments)


def arg_location(fn: func.FuncOp, arg: BlockArgument) -> SourceLoc | None:
    return SourceLoc.from_attr(arg.location) or location_of(fn)


def verify_step_function(fn: func.FuncOp) -> None:
    """The function-level rules of a step as a user writes it (before any pass)."""
    where = location_of(fn)
    if not fn.body.blocks:
        raise StepcError(f"func.func @{fn.sym_name.data} has no body: a step must be defined, not declared", where)
    results = fn.function_type.outputs.data
    if len(results) != 1:
        raise StepcError(
            f"a step returns exactly one value, the scalar loss; found {len(results)} results",
            part_location(fn, "results"),
        )
    loss_t = results[0]
    if not (isinstance(loss_t, TensorType) and loss_t.get_shape() == () and is_float(loss_t.get_element_type())):
        raise StepcError(
            f"the loss must be a rank-0 float tensor (tensor<f32>, say), found {loss_t}", part_location(fn, "results")
        )
    all_args = args(fn)
    for arg in all_args:
        t = arg.value.type
        loc = arg_location(fn, arg.value)
        if not isinstance(t, TensorType):
            raise StepcError(f"argument %{arg.name} must be a tensor, found {t}", loc)
        if arg.role == "param" and not is_float(t.get_element_type()):
            raise StepcError(f"parameter %{arg.name} must be a float tensor (f16, bf16, f32, f64), found {t}", loc)
        if arg.role == "input" and not (is_float(t.get_element_type()) or is_i32(t.get_element_type())):
            raise StepcError(f"batch input %{arg.name} must be a float or i32 tensor, found {t}", loc)
        marker = arg.attrs.data.get(PARAM)
        if marker is not None and not isinstance(marker, (UnitAttr, SGDAttr)):
            raise StepcError(
                f"{{step.param}} on %{arg.name} takes no value or a #step.sgd<...> override, found {marker}", loc
            )
    if not any(a.role == "param" for a in all_args):
        raise StepcError("a step needs at least one parameter: mark one argument {step.param}", where)
    sgd = function_sgd(fn)
    if SGD in fn.attributes and sgd is None:
        raise StepcError(
            f"step.sgd must be a #step.sgd<...> attribute, found {fn.attributes[SGD]}", part_location(fn, SGD)
        )
    if sgd is None:
        raise StepcError(
            "the function needs an optimizer: attributes {step.sgd = #step.sgd<lr = 0.1>}", where
        )
    if "lr" not in sgd.fields():
        raise StepcError(
            "#step.sgd on the function must give lr (the learning rate has no default)", part_location(fn, SGD)
        )
    check_sgd(fn)
    check_names(all_args, fn)
    check_memory(fn)


RESERVED_KEY = ("loss",)
RESERVED_PREFIXES = ("grad.", "momentum.")


def check_names(all_args: list[Arg], fn: func.FuncOp) -> None:
    """Argument names are the keys of every dict and `.npz`: distinct, and apart from the keys
    stepc makes (`loss`, `grad.NAME`, `momentum.NAME`)."""
    seen: dict[str, Arg] = {}
    for arg in all_args:
        loc = arg_location(fn, arg.value)
        if arg.name in seen:
            raise StepcError(
                f"argument {arg.index} has the name '{arg.name}' of argument {seen[arg.name].index} "
                "(a trailing _N is not kept: %w_1 reads as %w); the names key the inputs and outputs, rename one",
                loc,
            )
        seen[arg.name] = arg
        user_named = arg.role in ("param", "input")  # state and cotangents carry stepc's own keys
        if user_named and (arg.name in RESERVED_KEY or arg.name.startswith(RESERVED_PREFIXES)):
            raise StepcError(
                f"argument %{arg.name}: 'loss', 'grad.NAME' and 'momentum.NAME' are the keys of stepc's outputs; "
                "rename it",
                loc,
            )


def check_sgd(fn: func.FuncOp) -> None:
    """torch.optim.SGD's argument errors, for the function's group and each parameter's."""
    sgd = function_sgd(fn)
    assert sgd is not None
    try:
        SGDAttr.check_fields(sgd.resolved())
    except Exception as e:
        raise StepcError(str(e), part_location(fn, SGD)) from None
    for arg in params(fn):
        override = arg.sgd_override
        if override is None:
            continue
        try:
            SGDAttr.check_fields(sgd.resolved(override))
        except Exception as e:
            raise StepcError(f"parameter %{arg.name}: {e}", arg_location(fn, arg.value)) from None
