# pyright: basic
# (Not strict here alone: IRDL's operand/result/property descriptors and DenseArrayBase.get_values are
# untyped in xDSL 0.74, so every op declaration reads as Unknown; the rest of ir/ and passes/ is strict.)
"""The `step` dialect: the ops and attributes of one training step.

Every op takes and returns static-shaped tensors with value semantics. Each op's shape rule
lives in `stepc.ir.shapes`; each verifier infers the result type with it and compares with
the declared one, so the message says what was expected and what was found.
"""

from __future__ import annotations

import difflib
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import ClassVar, Self

from xdsl.dialects.builtin import (
    BFloat16Type,
    BoolAttr,
    DenseArrayBase,
    Float16Type,
    Float32Type,
    Float64Type,
    FloatAttr,
    FunctionType,
    IntegerAttr,
    IntegerType,
    NoneAttr,
    Signedness,
    StringAttr,
    TensorType,
    f64,
    i64,
)
from xdsl.dialects.utils.format import parse_assignment, print_assignment
from xdsl.ir import Attribute, Dialect, Operation, ParametrizedAttribute, Region, SSAValue
from xdsl.irdl import (
    IRDLOperation,
    irdl_attr_definition,
    irdl_op_definition,
    operand_def,
    param_def,
    prop_def,
    region_def,
    result_def,
    traits_def,
    var_operand_def,
    var_result_def,
)
from xdsl.parser import AttrParser, Parser, UnresolvedOperand
from xdsl.printer import Printer
from xdsl.traits import IsTerminator, Pure
from xdsl.utils.exceptions import VerifyException

from stepc.ir import shapes
from stepc.ir.shapes import ShapeError

FLOAT_TYPES = (Float16Type, BFloat16Type, Float32Type, Float64Type)
ELEMENT_NAMES = "f16, bf16, f32, f64"


# ---------------------------------------------------------------------------------------------
# Types


def is_float(element: Attribute) -> bool:
    return isinstance(element, FLOAT_TYPES)


def is_i32(element: Attribute) -> bool:
    """The labels' and ids' type: signless 32-bit integers (`i32`), not `ui32`."""
    return isinstance(element, IntegerType) and element.width.data == 32 and element.signedness.data == Signedness.SIGNLESS


def is_ui32(element: Attribute) -> bool:
    """The random keys' type: unsigned 32-bit integers (`tensor<2xui32>`, threefry key data)."""
    return isinstance(element, IntegerType) and element.width.data == 32 and element.signedness.data == Signedness.UNSIGNED


def tensor_type(value: SSAValue | Attribute) -> TensorType[Attribute]:
    """The static tensor type of a value, or a VerifyException that says what it is instead."""
    t = value.type if isinstance(value, SSAValue) else value
    checked = _CHECKED_TYPES.get(id(t))
    if checked is not None and checked[0] is t:
        return checked[0]
    _check_type(t)
    assert isinstance(t, TensorType)
    if len(_CHECKED_TYPES) >= 4096:
        _CHECKED_TYPES.clear()
    _CHECKED_TYPES[id(t)] = (t, tuple(t.get_shape()))
    return t


# The types that passed `tensor_type`, with their shapes, by identity (each holds its type, so
# the id stays its own): the shape rules ask for the same few type objects all the time.
_CHECKED_TYPES: dict[int, tuple[TensorType[Attribute], tuple[int, ...]]] = {}


def _check_type(t: Attribute) -> None:
    if not isinstance(t, TensorType):
        raise VerifyException(f"expected a ranked tensor, found {t}")
    if any(d < 0 for d in t.get_shape()):
        raise VerifyException(f"shapes are static in stepc, found dynamic dims in {t}")
    element = t.get_element_type()
    if not (is_float(element) or is_i32(element) or is_ui32(element)):
        raise VerifyException(f"element type must be one of {ELEMENT_NAMES}, i32 or ui32, found {element}")


def shape_of(value: SSAValue | Attribute) -> tuple[int, ...]:
    t = tensor_type(value)
    return _CHECKED_TYPES[id(t)][1]


def element_of(value: SSAValue | Attribute) -> Attribute:
    return tensor_type(value).get_element_type()


def float_tensor(value: SSAValue | Attribute, what: str) -> TensorType[Attribute]:
    t = tensor_type(value)
    if not is_float(t.get_element_type()):
        raise VerifyException(f"{what} must be a float tensor ({ELEMENT_NAMES}), found {t}")
    return t


def make_tensor(shape: Sequence[int], element: Attribute) -> TensorType[Attribute]:
    return _tensor(tuple(shape), element)


@lru_cache(maxsize=4096)
def _tensor(shape: tuple[int, ...], element: Attribute) -> TensorType[Attribute]:
    # Attributes are immutable values: every verifier's inferred type can be shared.
    return TensorType(element, list(shape))


def build_fixed(op: IRDLOperation, operands: Sequence[SSAValue], result_types: Sequence[Attribute],
                properties: Mapping[str, Attribute] | None = None, regions: Sequence[Region] = ()) -> None:  # fmt: skip
    """Initialize an op of fixed operand and result lists (no variadic groups, no segment
    sizes) as `Operation.create` does. IRDL's generic builder, three quarters of the cost of
    building such an op (and a compiled program builds tens of thousands), only flattens
    nested lists and drops `None`s; given anything of that kind it still runs. The verifier
    checks the op either way."""
    if (
        all(isinstance(value, SSAValue) for value in operands)
        and all(isinstance(t, Attribute) for t in result_types)
        and (properties is None or all(isinstance(a, Attribute) for a in properties.values()))
        and all(isinstance(region, Region) for region in regions)
    ):
        Operation.__init__(op, operands=operands, result_types=result_types, properties=properties or {}, regions=regions)
    else:
        IRDLOperation.__init__(op, operands=operands, result_types=result_types, properties=properties, regions=regions)


def check_result(op: IRDLOperation, expected: TensorType[Attribute]) -> None:
    found = op.results[0].type
    if found != expected:
        raise VerifyException(f"{op.name} result type: expected {expected}, found {found}")


def rule(fn, *args):  # type: ignore[no-untyped-def]
    """Run a shape rule, turning its ShapeError into a VerifyException."""
    try:
        return fn(*args)
    except ShapeError as e:
        raise VerifyException(str(e)) from None


def format_float(x: float) -> str:
    """A float as MLIR's lexer reads it back exactly (always with a '.')."""
    if math.isnan(x) or math.isinf(x):
        bits = {"nan": "0x7FF8000000000000", "inf": "0x7FF0000000000000", "-inf": "0xFFF0000000000000"}
        return bits[repr(x)]
    text = repr(float(x))
    if "e" in text and "." not in text.split("e")[0]:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


def parse_int_list(parser: Parser | AttrParser) -> list[int]:
    return parser.parse_comma_separated_list(parser.Delimiter.SQUARE, parser.parse_integer)


def print_int_list(printer: Printer, values: Sequence[int]) -> None:
    printer.print_string("[" + ", ".join(str(v) for v in values) + "]")


def int_array(values: Sequence[int]) -> DenseArrayBase:
    return _int_array(tuple(int(v) for v in values))


@lru_cache(maxsize=1024)
def _int_array(values: tuple[int, ...]) -> DenseArrayBase:
    return DenseArrayBase.from_list(i64, list(values))


def f64_array(values: Sequence[float]) -> DenseArrayBase:
    """`array<f64: ...>`, shared for short lists (the derivative rules' 0.5s and 1.0s)."""
    if len(values) > 16:
        return DenseArrayBase.from_list(f64, [float(v) for v in values])
    return _f64_array(tuple(float(v).hex() for v in values))  # exact: -0.0 and NaN too


@lru_cache(maxsize=1024)
def _f64_array(values: tuple[str, ...]) -> DenseArrayBase:
    return DenseArrayBase.from_list(f64, [float.fromhex(v) for v in values])


# The two custom forms most ops share, written out rather than declared with
# `assembly_format`: xDSL's declarative parser is several times slower per op, and a large
# program spends most of its parse time there.


def parse_two_operand_form(cls: type[IRDLOperation], parser: Parser, properties: dict[str, Attribute] | None = None):  # type: ignore[no-untyped-def]
    """`%a, %b attr-dict : (Ta, Tb) -> Tr`, the operands already after any keyword."""
    pos = parser.pos
    lhs = parser.parse_unresolved_operand()
    parser.parse_punctuation(",")
    rhs = parser.parse_unresolved_operand()
    attrs = parser.parse_optional_attr_dict()
    parser.parse_punctuation(":")
    fn = parser.parse_function_type()
    if len(fn.inputs.data) != 2 or len(fn.outputs.data) != 1:
        parser.raise_error(
            f"{cls.name} has the type (Ta, Tb) -> Tr, found {len(fn.inputs.data)} operand types "
            f"and {len(fn.outputs.data)} result types",
            pos,
            parser.pos,
        )
    operands = [parser.resolve_operand(lhs, fn.inputs.data[0]), parser.resolve_operand(rhs, fn.inputs.data[1])]
    op = cls.create(operands=operands, result_types=[fn.outputs.data[0]], properties=properties or {})
    op.attributes.update(attrs)
    return op


def print_two_operand_form(op: IRDLOperation, printer: Printer) -> None:
    printer.print_string(" ")
    printer.print_operand(op.operands[0])
    printer.print_string(", ")
    printer.print_operand(op.operands[1])
    printer.print_op_attributes(op.attributes)
    printer.print_string(" : ")
    printer.print_function_type([o.type for o in op.operands], [op.results[0].type])


def parse_type_change_form(cls: type[IRDLOperation], parser: Parser):  # type: ignore[no-untyped-def]
    """`%a attr-dict : Ta -> Tr`."""
    operand = parser.parse_unresolved_operand()
    attrs = parser.parse_optional_attr_dict()
    parser.parse_punctuation(":")
    in_t = parser.parse_type()
    parser.parse_punctuation("->")
    out_t = parser.parse_type()
    op = cls.create(operands=[parser.resolve_operand(operand, in_t)], result_types=[out_t])
    op.attributes.update(attrs)
    return op


def print_type_change_form(op: IRDLOperation, printer: Printer) -> None:
    printer.print_string(" ")
    printer.print_operand(op.operands[0])
    printer.print_op_attributes(op.attributes)
    printer.print_string(" : ")
    printer.print_attribute(op.operands[0].type)
    printer.print_string(" -> ")
    printer.print_attribute(op.results[0].type)


# ---------------------------------------------------------------------------------------------
# The optimizer attribute


SGD_FIELDS: tuple[tuple[str, type], ...] = (
    ("lr", float),
    ("momentum", float),
    ("dampening", float),
    ("weight_decay", float),
    ("nesterov", bool),
    ("maximize", bool),
)
SGD_DEFAULTS = {"momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False, "maximize": False}


@irdl_attr_definition
class SGDAttr(ParametrizedAttribute):
    """`#step.sgd<lr = 0.1, momentum = 0.9>`: the arguments of `torch.optim.SGD`.

    Only the fields written are stored, so that a parameter's `#step.sgd<...>` overrides just
    those fields of the function's (a PyTorch parameter group). `resolved()` fills defaults.
    """

    name = "step.sgd"

    lr: FloatAttr | NoneAttr = param_def()
    momentum: FloatAttr | NoneAttr = param_def()
    dampening: FloatAttr | NoneAttr = param_def()
    weight_decay: FloatAttr | NoneAttr = param_def()
    nesterov: IntegerAttr | NoneAttr = param_def()
    maximize: IntegerAttr | NoneAttr = param_def()

    @staticmethod
    def from_fields(**fields: float | bool) -> SGDAttr:
        params: list[Attribute] = []
        for field, kind in SGD_FIELDS:
            value = fields.pop(field, None)
            if value is None:
                params.append(NoneAttr())
            elif kind is bool:
                params.append(BoolAttr.from_bool(bool(value)))
            else:
                params.append(FloatAttr(float(value), f64))
        if fields:
            raise ValueError(f"unknown SGD fields {sorted(fields)}")
        return SGDAttr(*params)  # pyright: ignore[reportArgumentType]  # the fields come from `parse_fields`, checked there against each field's attribute type

    def fields(self) -> dict[str, float | bool]:
        """The fields written in the text, by name."""
        out: dict[str, float | bool] = {}
        for (field, _), param in zip(SGD_FIELDS, self.parameters):
            if isinstance(param, FloatAttr):
                out[field] = float(param.value.data)
            elif isinstance(param, IntegerAttr):
                out[field] = bool(param.value.data)
        return out

    def resolved(self, override: SGDAttr | None = None) -> dict[str, float | bool]:
        """All six fields: PyTorch's defaults, then this attribute's, then `override`'s."""
        out: dict[str, float | bool] = dict(SGD_DEFAULTS)
        out.update(self.fields())
        if override is not None:
            out.update(override.fields())
        return out

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> Sequence[Attribute]:
        fields: dict[str, float | bool] = {}
        kinds = dict(SGD_FIELDS)

        def parse_field() -> None:
            pos = parser.pos
            key = parser.parse_identifier(" (an SGD field: " + ", ".join(kinds) + ")")
            if key not in kinds:
                parser.raise_error(
                    f"unknown SGD field '{key}'; the fields are " + ", ".join(kinds), pos, parser.pos
                )
            if key in fields:
                parser.raise_error(f"SGD field '{key}' is given twice", pos, parser.pos)
            parser.parse_punctuation("=")
            if kinds[key] is bool:
                fields[key] = parser.parse_boolean(f" for SGD field '{key}'")
            else:
                value = parser.parse_number(context_msg=f" for SGD field '{key}'")
                if isinstance(value, bool):
                    parser.raise_error(f"SGD field '{key}' takes a number", pos, parser.pos)
                fields[key] = float(value)

        parser.parse_comma_separated_list(parser.Delimiter.ANGLE, parse_field)
        return SGDAttr.from_fields(**fields).parameters

    def print_parameters(self, printer: Printer) -> None:
        items = []
        for field, value in self.fields().items():
            text = ("true" if value else "false") if isinstance(value, bool) else format_float(value)
            items.append(f"{field} = {text}")
        printer.print_string("<" + ", ".join(items) + ">")

    def check(self) -> None:
        """torch.optim.SGD's ValueErrors, for a resolved set of fields."""
        self.check_fields(self.resolved())

    @staticmethod
    def check_fields(fields: dict[str, float | bool]) -> None:
        for name in ("lr", "momentum", "weight_decay"):
            value = fields.get(name)
            if isinstance(value, float) and (value < 0.0 or math.isnan(value)):
                raise VerifyException(f"invalid SGD {name}: {format_float(value)} (must be >= 0, as in torch.optim.SGD)")
        if fields.get("nesterov") and (fields.get("momentum", 0.0) <= 0.0 or fields.get("dampening", 0.0) != 0.0):
            raise VerifyException(
                "Nesterov momentum requires a momentum and zero dampening (as in torch.optim.SGD), "
                f"found momentum = {format_float(float(fields.get('momentum', 0.0)))}, "
                f"dampening = {format_float(float(fields.get('dampening', 0.0)))}"
            )


# ---------------------------------------------------------------------------------------------
# The Adam family: #step.adam<...> and #step.adamw<...> (torch.optim.Adam and AdamW)


ADAM_FIELDS: tuple[tuple[str, type], ...] = (
    ("lr", float),
    ("beta1", float),
    ("beta2", float),
    ("eps", float),
    ("weight_decay", float),
    ("amsgrad", bool),
    ("maximize", bool),
)
ADAM_DEFAULTS: dict[str, float | bool] = {
    "lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False, "maximize": False,
}  # fmt: skip
ADAMW_DEFAULTS: dict[str, float | bool] = {**ADAM_DEFAULTS, "weight_decay": 0.01}


def _optimizer_parameters(fields: dict[str, float | bool], table: tuple[tuple[str, type], ...], title: str) -> list[Attribute]:
    """The attribute parameters of an optimizer attribute with the given fields (NoneAttr where absent)."""
    fields = dict(fields)
    out: list[Attribute] = []
    for field, kind in table:
        value = fields.pop(field, None)
        if value is None:
            out.append(NoneAttr())
        elif kind is bool:
            out.append(BoolAttr.from_bool(bool(value)))
        else:
            out.append(FloatAttr(float(value), f64))
    if fields:
        raise ValueError(f"unknown {title} fields {sorted(fields)}")
    return out


def _written_fields(parameters: Sequence[Attribute], table: tuple[tuple[str, type], ...]) -> dict[str, float | bool]:
    out: dict[str, float | bool] = {}
    for (field, _), param in zip(table, parameters):
        if isinstance(param, FloatAttr):
            out[field] = float(param.value.data)
        elif isinstance(param, IntegerAttr):
            out[field] = bool(param.value.data)
    return out


def _parse_optimizer_fields(parser: AttrParser, table: tuple[tuple[str, type], ...], title: str) -> dict[str, float | bool]:
    """`<field = value, ...>`: each field of `table` at most once, a number or a boolean as its kind."""
    fields: dict[str, float | bool] = {}
    kinds = dict(table)

    def parse_field() -> None:
        pos = parser.pos
        key = parser.parse_identifier(f" (an {title} field: " + ", ".join(kinds) + ")")
        if key not in kinds:
            parser.raise_error(f"unknown {title} field '{key}'; the fields are " + ", ".join(kinds), pos, parser.pos)
        if key in fields:
            parser.raise_error(f"{title} field '{key}' is given twice", pos, parser.pos)
        parser.parse_punctuation("=")
        if kinds[key] is bool:
            fields[key] = parser.parse_boolean(f" for {title} field '{key}'")
        else:
            value = parser.parse_number(context_msg=f" for {title} field '{key}'")
            if isinstance(value, bool):
                parser.raise_error(f"{title} field '{key}' takes a number", pos, parser.pos)
            fields[key] = float(value)

    parser.parse_comma_separated_list(parser.Delimiter.ANGLE, parse_field)
    return fields


def _print_optimizer_fields(fields: dict[str, float | bool], printer: Printer) -> None:
    items = []
    for field, value in fields.items():
        text = ("true" if value else "false") if isinstance(value, bool) else format_float(value)
        items.append(f"{field} = {text}")
    printer.print_string("<" + ", ".join(items) + ">")


def check_adam_fields(fields: Mapping[str, float | bool], title: str) -> None:
    """torch.optim.Adam's (and AdamW's) ValueErrors, in torch's order, for a resolved set of fields."""

    def bad(name: str, value: float) -> bool:
        return isinstance(value, float) and not (value >= 0.0)  # NaN fails, as torch's `not 0.0 <= x`

    where = f"(as in torch.optim.{title})"
    lr, eps, wd = fields.get("lr", 0.0), fields.get("eps", 0.0), fields.get("weight_decay", 0.0)
    if bad("lr", float(lr)):
        raise VerifyException(f"invalid {title} lr: {format_float(float(lr))} (must be >= 0, {where[1:-1]})")
    if bad("eps", float(eps)):
        raise VerifyException(f"invalid {title} eps: {format_float(float(eps))} (must be >= 0, {where[1:-1]})")
    for name in ("beta1", "beta2"):
        value = fields.get(name)
        if value is not None and not (0.0 <= float(value) < 1.0):
            raise VerifyException(
                f"invalid {title} {name}: {format_float(float(value))} (must be in [0, 1), {where[1:-1]})"
            )
    if bad("weight_decay", float(wd)):
        raise VerifyException(f"invalid {title} weight_decay: {format_float(float(wd))} (must be >= 0, {where[1:-1]})")


class _AdamFamily:
    """What #step.adam and #step.adamw share: the fields (only those written are stored, so that
    a parameter's attribute overrides just those), torch's defaults and errors."""

    TITLE: ClassVar[str] = "Adam"
    DEFAULTS: ClassVar[Mapping[str, float | bool]] = ADAM_DEFAULTS

    def fields(self) -> dict[str, float | bool]:
        """The fields written in the text, by name."""
        return _written_fields(self.parameters, ADAM_FIELDS)  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType, reportUnknownArgumentType]  # a mixin of ParametrizedAttribute

    def resolved(self, override: _AdamFamily | None = None) -> dict[str, float | bool]:
        """Every field: torch's defaults, then this attribute's, then `override`'s."""
        out: dict[str, float | bool] = dict(self.DEFAULTS)
        out.update(self.fields())
        if override is not None:
            out.update(override.fields())
        return out

    def print_parameters(self, printer: Printer) -> None:
        _print_optimizer_fields(self.fields(), printer)

    def check(self) -> None:
        check_adam_fields(self.resolved(), self.TITLE)


@irdl_attr_definition
class AdamAttr(_AdamFamily, ParametrizedAttribute):
    """`#step.adam<lr = 1.0e-3, beta1 = 0.9, ...>`: the arguments of `torch.optim.Adam`
    (`betas = (beta1, beta2)`)."""

    name = "step.adam"
    TITLE: ClassVar[str] = "Adam"
    DEFAULTS: ClassVar[Mapping[str, float | bool]] = ADAM_DEFAULTS

    lr: FloatAttr | NoneAttr = param_def()
    beta1: FloatAttr | NoneAttr = param_def()
    beta2: FloatAttr | NoneAttr = param_def()
    eps: FloatAttr | NoneAttr = param_def()
    weight_decay: FloatAttr | NoneAttr = param_def()
    amsgrad: IntegerAttr | NoneAttr = param_def()
    maximize: IntegerAttr | NoneAttr = param_def()

    @staticmethod
    def from_fields(**fields: float | bool) -> AdamAttr:
        return AdamAttr(*_optimizer_parameters(fields, ADAM_FIELDS, "Adam"))  # pyright: ignore[reportArgumentType]  # checked against each field's kind

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> Sequence[Attribute]:
        return _optimizer_parameters(_parse_optimizer_fields(parser, ADAM_FIELDS, "Adam"), ADAM_FIELDS, "Adam")


@irdl_attr_definition
class AdamWAttr(_AdamFamily, ParametrizedAttribute):
    """`#step.adamw<lr = 1.0e-3, weight_decay = 0.01, ...>`: the arguments of `torch.optim.AdamW`
    (decoupled weight decay, default 0.01)."""

    name = "step.adamw"
    TITLE: ClassVar[str] = "AdamW"
    DEFAULTS: ClassVar[Mapping[str, float | bool]] = ADAMW_DEFAULTS

    lr: FloatAttr | NoneAttr = param_def()
    beta1: FloatAttr | NoneAttr = param_def()
    beta2: FloatAttr | NoneAttr = param_def()
    eps: FloatAttr | NoneAttr = param_def()
    weight_decay: FloatAttr | NoneAttr = param_def()
    amsgrad: IntegerAttr | NoneAttr = param_def()
    maximize: IntegerAttr | NoneAttr = param_def()

    @staticmethod
    def from_fields(**fields: float | bool) -> AdamWAttr:
        return AdamWAttr(*_optimizer_parameters(fields, ADAM_FIELDS, "AdamW"))  # pyright: ignore[reportArgumentType]  # checked against each field's kind

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> Sequence[Attribute]:
        return _optimizer_parameters(_parse_optimizer_fields(parser, ADAM_FIELDS, "AdamW"), ADAM_FIELDS, "AdamW")


# ---------------------------------------------------------------------------------------------
# Attribute names


class Position(StrEnum):
    """Where a `step.*` attribute is written."""

    FUNCTION = "function"  # `attributes {...}` of the func.func
    ARGUMENT = "argument"  # `%w: tensor<...> {...}`
    RESULT = "result"  # `-> (tensor<...> {...})`
    OP = "op"  # an op's own attribute dictionary


@dataclass(frozen=True)
class StepAttribute:
    """A `step.*` attribute name of the spec: where it is written, what it means, an example of
    its text, and whether this version implements it."""

    position: Position
    meaning: str
    example: str
    supported: bool = True


# Every `step.*` attribute name there is: those of the spec (`step-ir.md`: the optimizers, the
# attributes around them, the argument and result roles) and those the passes write into later
# stages, which must read back from a dump. Any other `step.*` name is a typo, refused with the
# nearest of these; a name the spec defines but this version does not implement is refused as
# such, rather than silently ignored.
# The names the code reads and writes (the keys of the table below).
SGD = "step.sgd"
PARAM = "step.param"
COTANGENT = "step.cotangent"
STATE = "step.state"
OUTPUT = "step.output"
RELU_TAG = "step.relu"
ACCUMULATE = "step.accumulate"
ADAM = "step.adam"
ADAMW = "step.adamw"
CLIP_GRAD_NORM = "step.clip_grad_norm"
HYPER = "step.hyper"

STEP_ATTRIBUTES: Mapping[str, StepAttribute] = {
    SGD: StepAttribute(
        Position.FUNCTION, "the optimizer, torch.optim.SGD",
        "attributes {step.sgd = #step.sgd<lr = 0.1>} (one parameter's own: {step.param = #step.sgd<lr = 0.01>})",
    ),
    ADAM: StepAttribute(
        Position.FUNCTION, "the optimizer torch.optim.Adam", "attributes {step.adam = #step.adam<lr = 1.0e-3>}",
    ),
    ADAMW: StepAttribute(
        Position.FUNCTION, "the optimizer torch.optim.AdamW", "attributes {step.adamw = #step.adamw<lr = 1.0e-3>}",
    ),
    CLIP_GRAD_NORM: StepAttribute(
        Position.FUNCTION, "gradient clipping, torch.nn.utils.clip_grad_norm_",
        "attributes {step.clip_grad_norm = 1.0 : f64}",
    ),
    ACCUMULATE: StepAttribute(
        Position.FUNCTION, "gradient accumulation over micro-batches", "attributes {step.accumulate = 4 : i64}",
    ),
    PARAM: StepAttribute(
        Position.ARGUMENT, "a parameter, with its own optimizer fields when it has a value",
        "%w: tensor<4x3xf32> {step.param} or {step.param = #step.sgd<weight_decay = 0.0>}",
    ),
    HYPER: StepAttribute(
        Position.ARGUMENT, "an optimizer field given at run time", '%lr: tensor<f64> {step.hyper = "lr"}',
    ),
    # Written by `differentiate`: the cotangent of an output.
    COTANGENT: StepAttribute(
        Position.ARGUMENT, "the cotangent of an output", "%loss_cotangent: tensor<f32> {step.cotangent}"
    ),
    # Written by `fuse-sgd`: optimizer state, by its key.
    STATE: StepAttribute(
        Position.ARGUMENT, "optimizer state", '%momentum.w: tensor<4x3xf32> {step.state = "momentum.w"}'
    ),
    # Written by `differentiate` and `fuse-sgd`: the key of a result.
    OUTPUT: StepAttribute(Position.RESULT, "the key of a result", '-> (tensor<f32> {step.output = "loss"})'),
    # Written by `lower-to-stablehlo` on the `stablehlo.maximum` that lowers a `step.relu`.
    RELU_TAG: StepAttribute(Position.OP, "a maximum that is a relu", '"stablehlo.maximum"(%a, %0) {step.relu}'),
}  # fmt: skip

_ON_POSITION = {
    Position.FUNCTION: "the function", Position.ARGUMENT: "an argument", Position.RESULT: "a result",
    Position.OP: "an op",
}  # fmt: skip


def attribute_name_error(name: str, position: Position, where: str) -> str | None:
    """What is wrong with attribute `name` written at `position` (on `where`: `argument %w`,
    `function @f`), or None when there is nothing: a known name this version implements there,
    or a name outside `step.`, which is not stepc's to judge."""
    if not name.startswith("step."):
        return None
    known = STEP_ATTRIBUTES.get(name)
    if known is None:
        return f"unknown attribute '{name}' on {where}" + _nearest_name(name, position)
    if known.position != position:
        return (
            f"attribute '{name}' ({known.meaning}) is written on {_ON_POSITION[known.position]}, "
            f"not on {where}: {known.example}"
        )
    if not known.supported:
        return f"attribute '{name}' ({known.meaning}) is not supported yet by this version of stepc"
    return None


def _nearest_name(name: str, position: Position) -> str:
    """`; did you mean 'step.param'?`: the closest known name, first among those of `position`;
    else the list of those."""
    here = [n for n, a in STEP_ATTRIBUTES.items() if a.position == position]
    for candidates in (here, list(STEP_ATTRIBUTES)):
        # Compared after the `step.` all names share, which would make any two look alike.
        suffixes = [n.removeprefix("step.") for n in candidates]
        match = difflib.get_close_matches(name.removeprefix("step."), suffixes, n=1)
        if match:
            return f"; did you mean 'step.{match[0]}'?"
    return f"; the {position} attributes are " + ", ".join(here)


# ---------------------------------------------------------------------------------------------
# Elementwise families


class StepOp(IRDLOperation):
    """Base of every step op: pure, with a shape rule (`infer`) that the verifier applies."""

    traits = traits_def(Pure())
    # Its verifier reads only its operand and result types, properties and attributes
    # (`stepc.ir.parse.verify` checks each such signature once).
    LOCAL_VERIFIER: ClassVar[bool] = True

    def __init__(self, *, operands: Sequence[SSAValue] = (), result_types: Sequence[Attribute] = (),
                 properties: Mapping[str, Attribute] | None = None) -> None:  # fmt: skip
        build_fixed(self, operands, result_types, properties)

    def infer(self) -> TensorType[Attribute]:
        raise NotImplementedError

    def verify_(self) -> None:
        check_result(self, self.infer())


class BinaryOp(StepOp):
    """Elementwise binary op with NumPy broadcasting and equal float element types."""

    lhs = operand_def(TensorType)
    rhs = operand_def(TensorType)
    result = result_def(TensorType)

    @classmethod
    def parse(cls, parser: Parser) -> Self:
        return parse_two_operand_form(cls, parser)  # pyright: ignore[reportReturnType]  # build_fixed builds an instance of `cls`; xDSL types the generic constructor as IRDLOperation

    def print(self, printer: Printer) -> None:
        print_two_operand_form(self, printer)

    def __init__(self, lhs: SSAValue, rhs: SSAValue, result_type: Attribute | None = None):
        if result_type is None:
            result_type = make_tensor(shapes.broadcast(shape_of(lhs), shape_of(rhs)), element_of(lhs))
        super().__init__(operands=[lhs, rhs], result_types=[result_type])

    def infer(self) -> TensorType[Attribute]:
        a = float_tensor(self.lhs, f"{self.name} lhs")
        b = float_tensor(self.rhs, f"{self.name} rhs")
        if a.get_element_type() != b.get_element_type():
            raise VerifyException(
                f"{self.name} needs equal element types, found {a.get_element_type()} and {b.get_element_type()}"
            )
        shape = rule(shapes.broadcast, shape_of(a), shape_of(b))
        return make_tensor(shape, a.get_element_type())


class UnaryOp(StepOp):
    """Elementwise unary op on a float tensor: `%r = step.exp %a : tensor<4xf32>`."""

    input = operand_def(TensorType)
    result = result_def(TensorType)

    def __init__(self, input: SSAValue):
        super().__init__(operands=[input], result_types=[input.type])

    @classmethod
    def parse(cls, parser: Parser) -> UnaryOp:
        operand = parser.parse_unresolved_operand()
        attrs = parser.parse_optional_attr_dict()
        parser.parse_punctuation(":")
        t = parser.parse_type()
        op = cls.create(operands=[parser.resolve_operand(operand, t)], result_types=[t])
        op.attributes.update(attrs)
        return op

    def print(self, printer: Printer) -> None:
        printer.print_string(" ")
        printer.print_operand(self.input)
        printer.print_op_attributes(self.attributes)
        printer.print_string(" : ")
        printer.print_attribute(self.input.type)

    def infer(self) -> TensorType[Attribute]:
        return float_tensor(self.input, f"{self.name} operand")


@irdl_op_definition
class AddOp(BinaryOp):
    """`%r = step.add %a, %b : (tensor<16x32xf32>, tensor<32xf32>) -> tensor<16x32xf32>`"""

    name = "step.add"


@irdl_op_definition
class SubOp(BinaryOp):
    """`%r = step.sub %a, %b : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>`"""

    name = "step.sub"


@irdl_op_definition
class MulOp(BinaryOp):
    """`%r = step.mul %a, %b : (tensor<4xf32>, tensor<f32>) -> tensor<4xf32>`"""

    name = "step.mul"


@irdl_op_definition
class DivOp(BinaryOp):
    """`%r = step.div %a, %b : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>`"""

    name = "step.div"


@irdl_op_definition
class MaximumOp(BinaryOp):
    """`%r = step.maximum %a, %b : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>`"""

    name = "step.maximum"


@irdl_op_definition
class MinimumOp(BinaryOp):
    """`%r = step.minimum %a, %b : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>`"""

    name = "step.minimum"


@irdl_op_definition
class SelectOp(StepOp):
    """`%r = step.select %m, %a, %b : (tensor<4xf32>, tensor<4xf32>, tensor<f32>) -> tensor<4xf32>`

    `torch.where(m != 0, a, b)` with a float mask `m` (a `step.compare` result, say), the three
    operands NumPy-broadcast together; `a` and `b` of one float type, the mask of any float
    type. The mask has no derivative; `a` takes the cotangent where `m != 0`, `b` elsewhere.
    """

    name = "step.select"

    mask = operand_def(TensorType)
    on_true = operand_def(TensorType)
    on_false = operand_def(TensorType)
    result = result_def(TensorType)

    def __init__(self, mask: SSAValue, on_true: SSAValue, on_false: SSAValue):
        shape = shapes.broadcast(shapes.broadcast(shape_of(mask), shape_of(on_true)), shape_of(on_false))
        super().__init__(operands=[mask, on_true, on_false], result_types=[make_tensor(shape, element_of(on_true))])

    @classmethod
    def parse(cls, parser: Parser) -> SelectOp:
        pos = parser.pos
        names = [parser.parse_unresolved_operand()]
        for _ in range(2):
            parser.parse_punctuation(",")
            names.append(parser.parse_unresolved_operand())
        attrs = parser.parse_optional_attr_dict()
        parser.parse_punctuation(":")
        fn = parser.parse_function_type()
        if len(fn.inputs.data) != 3 or len(fn.outputs.data) != 1:
            parser.raise_error(
                f"{cls.name} has the type (Tm, Ta, Tb) -> Tr, found {len(fn.inputs.data)} operand types "
                f"and {len(fn.outputs.data)} result types",
                pos,
                parser.pos,
            )
        operands = [parser.resolve_operand(n, t) for n, t in zip(names, fn.inputs.data)]
        op = cls.create(operands=operands, result_types=[fn.outputs.data[0]])
        op.attributes.update(attrs)
        return op

    def print(self, printer: Printer) -> None:
        printer.print_string(" ")
        printer.print_list(self.operands, printer.print_operand)
        printer.print_op_attributes(self.attributes)
        printer.print_string(" : ")
        printer.print_function_type([o.type for o in self.operands], [self.result.type])

    def infer(self) -> TensorType[Attribute]:
        m = float_tensor(self.mask, f"{self.name} mask")
        a = float_tensor(self.on_true, f"{self.name} on-true operand")
        b = float_tensor(self.on_false, f"{self.name} on-false operand")
        if a.get_element_type() != b.get_element_type():
            raise VerifyException(
                f"{self.name} needs equal element types for its two values, found {a.get_element_type()} and "
                f"{b.get_element_type()}"
            )
        shape = rule(shapes.broadcast, shape_of(m), shape_of(a))
        shape = rule(shapes.broadcast, shape, shape_of(b))
        return make_tensor(shape, a.get_element_type())


KEY_SHAPE = (2,)  # a threefry key's data: two uint32 words


def key_tensor(value: SSAValue | Attribute, what: str) -> TensorType[Attribute]:
    """A random key: `tensor<2xui32>` (threefry key data), or a VerifyException."""
    t = tensor_type(value)
    if not is_ui32(t.get_element_type()) or shape_of(t) != KEY_SHAPE:
        raise VerifyException(f"{what} must be a random key, tensor<2xui32> (threefry key data), found {t}")
    return t


@irdl_op_definition
class DropoutOp(StepOp):
    """`%y = step.dropout %x, %key rate 0.1 : (tensor<16x32xf32>, tensor<2xui32>) -> tensor<16x32xf32>`

    Inverted dropout: the keep mask is `jax.random.bernoulli(key, float32(1 - rate), shape)`
    for the threefry key data `key` (`ir/threefry.py`); kept elements are multiplied by
    `1 / (1 - rate)` (rounded to x's type), dropped ones are +0 whatever x holds. The key has no
    derivative; x's is the dropout of the cotangent with the same key and rate.
    """

    name = "step.dropout"

    input = operand_def(TensorType)
    key = operand_def(TensorType)
    result = result_def(TensorType)
    rate = prop_def(FloatAttr)

    def __init__(self, input: SSAValue, key: SSAValue, rate: float):
        super().__init__(operands=[input, key], result_types=[input.type], properties={"rate": FloatAttr(rate, f64)})

    @property
    def drop_rate(self) -> float:
        return float(self.rate.value.data)

    @classmethod
    def parse(cls, parser: Parser) -> DropoutOp:
        pos = parser.pos
        x = parser.parse_unresolved_operand()
        parser.parse_punctuation(",")
        key = parser.parse_unresolved_operand()
        parser.parse_keyword("rate")
        rate = _parse_signed_number(parser)
        attrs = parser.parse_optional_attr_dict()
        parser.parse_punctuation(":")
        fn = parser.parse_function_type()
        if len(fn.inputs.data) != 2 or len(fn.outputs.data) != 1:
            parser.raise_error(
                f"{cls.name} has the type (Tx, tensor<2xui32>) -> Tx, found {len(fn.inputs.data)} operand types "
                f"and {len(fn.outputs.data)} result types",
                pos,
                parser.pos,
            )
        operands = [parser.resolve_operand(x, fn.inputs.data[0]), parser.resolve_operand(key, fn.inputs.data[1])]
        op = cls.create(operands=operands, result_types=[fn.outputs.data[0]], properties={"rate": FloatAttr(rate, f64)})
        op.attributes.update(attrs)
        return op

    def print(self, printer: Printer) -> None:
        printer.print_string(" ")
        printer.print_operand(self.input)
        printer.print_string(", ")
        printer.print_operand(self.key)
        printer.print_string(f" rate {format_float(self.drop_rate)}")
        printer.print_op_attributes(self.attributes)
        printer.print_string(" : ")
        printer.print_function_type([o.type for o in self.operands], [self.result.type])

    def infer(self) -> TensorType[Attribute]:
        t = float_tensor(self.input, f"{self.name} operand")
        key_tensor(self.key, f"{self.name} key")
        if not 0.0 <= self.drop_rate <= 1.0:  # (NaN too)
            raise VerifyException(
                f"{self.name} rate is the probability of dropping an element, in [0, 1]; found {format_float(self.drop_rate)}"
            )
        return t


COMPARE_DIRECTIONS = ("eq", "ne", "lt", "le", "gt", "ge")


@irdl_op_definition
class CompareOp(StepOp):
    """`%m = step.compare gt %a, %b : (tensor<4xf32>, tensor<f32>) -> tensor<4xf32>`

    A 0/1 mask in the operands' float type (1 where the comparison holds), with broadcasting.
    Derivatives use it for PyTorch's conventions at kinks; its own derivative is zero.
    """

    name = "step.compare"

    lhs = operand_def(TensorType)
    rhs = operand_def(TensorType)
    result = result_def(TensorType)
    direction = prop_def(StringAttr)

    def __init__(self, direction: str, lhs: SSAValue, rhs: SSAValue):
        shape = shapes.broadcast(shape_of(lhs), shape_of(rhs))
        super().__init__(
            operands=[lhs, rhs],
            result_types=[make_tensor(shape, element_of(lhs))],
            properties={"direction": StringAttr(direction)},
        )

    @classmethod
    def parse(cls, parser: Parser) -> CompareOp:
        pos = parser.pos
        direction = parser.parse_identifier(" (a comparison: " + ", ".join(COMPARE_DIRECTIONS) + ")")
        if direction not in COMPARE_DIRECTIONS:
            parser.raise_error(
                f"unknown comparison '{direction}'; expected one of " + ", ".join(COMPARE_DIRECTIONS), pos, parser.pos
            )
        return parse_two_operand_form(cls, parser, {"direction": StringAttr(direction)})  # pyright: ignore[reportReturnType]  # build_fixed builds an instance of `cls`; xDSL types the generic constructor as IRDLOperation

    def print(self, printer: Printer) -> None:
        printer.print_string(f" {self.direction.data}")
        print_two_operand_form(self, printer)

    def infer(self) -> TensorType[Attribute]:
        if self.direction.data not in COMPARE_DIRECTIONS:
            raise VerifyException(f"unknown comparison '{self.direction.data}'")
        return BinaryOp.infer(self)  # type: ignore[arg-type]


def _unary(op_name: str, doc: str) -> type[UnaryOp]:
    cls = type(op_name.split(".")[1].title().replace("_", "") + "Op", (UnaryOp,), {"name": op_name, "__doc__": doc})
    return irdl_op_definition(cls)


ExpOp = _unary("step.exp", "`%r = step.exp %a : tensor<4xf32>`")
NegOp = _unary("step.neg", "`%r = step.neg %a : tensor<4xf32>`")
LogOp = _unary("step.log", "`%r = step.log %a : tensor<4xf32>`")
TanhOp = _unary("step.tanh", "`%r = step.tanh %a : tensor<4xf32>`")
SigmoidOp = _unary("step.sigmoid", "`%r = step.sigmoid %a : tensor<4xf32>`")
ReluOp = _unary("step.relu", "`%r = step.relu %a : tensor<4xf32>` (derivative 0 at 0, as PyTorch)")
SqrtOp = _unary("step.sqrt", "`%r = step.sqrt %a : tensor<4xf32>`")
RsqrtOp = _unary("step.rsqrt", "`%r = step.rsqrt %a : tensor<4xf32>` (1 / sqrt)")
SquareOp = _unary("step.square", "`%r = step.square %a : tensor<4xf32>`")
AbsOp = _unary("step.abs", "`%r = step.abs %a : tensor<4xf32>` (derivative 0 at 0, as PyTorch)")


# ---------------------------------------------------------------------------------------------
# Structured ops


class TypeChangeOp(StepOp):
    """One operand, one result, both types written: `step.reshape %a : Ta -> Tr`."""

    input = operand_def(TensorType)
    result = result_def(TensorType)

    @classmethod
    def parse(cls, parser: Parser) -> Self:
        return parse_type_change_form(cls, parser)  # pyright: ignore[reportReturnType]  # build_fixed builds an instance of `cls`; xDSL types the generic constructor as IRDLOperation

    def print(self, printer: Printer) -> None:
        print_type_change_form(self, printer)

    def __init__(self, input: SSAValue, result_type: Attribute):
        super().__init__(operands=[input], result_types=[result_type])


@irdl_op_definition
class ReshapeOp(TypeChangeOp):
    """`%r = step.reshape %a : tensor<4x8xf32> -> tensor<32xf32>` (row-major)"""

    name = "step.reshape"

    def infer(self) -> TensorType[Attribute]:
        target = tensor_type(self.result)
        rule(shapes.reshape, shape_of(self.input), shape_of(target))
        return make_tensor(shape_of(target), element_of(self.input))


@irdl_op_definition
class BroadcastOp(TypeChangeOp):
    """`%r = step.broadcast %a : tensor<32xf32> -> tensor<16x32xf32>` (NumPy broadcasting)"""

    name = "step.broadcast"

    def infer(self) -> TensorType[Attribute]:
        target = tensor_type(self.result)
        rule(shapes.broadcast_to, shape_of(self.input), shape_of(target))
        return make_tensor(shape_of(target), element_of(self.input))


@irdl_op_definition
class ConvertOp(TypeChangeOp):
    """`%r = step.convert %a : tensor<4xf32> -> tensor<4xf64>` (element type cast, same shape)"""

    name = "step.convert"

    def infer(self) -> TensorType[Attribute]:
        target = tensor_type(self.result)
        source = tensor_type(self.input)
        for t in (source, target):
            if is_ui32(t.get_element_type()):
                raise VerifyException(
                    f"step.convert does not convert random keys: {t} is key data (read by step.dropout), not a number"
                )
        if shape_of(target) != shape_of(self.input):
            raise VerifyException(
                f"step.convert keeps the shape: expected {shapes.fmt(shape_of(self.input))}, "
                f"found {shapes.fmt(shape_of(target))}"
            )
        return target


@irdl_op_definition
class OneHotOp(TypeChangeOp):
    """`%r = step.one_hot %labels : tensor<16xi32> -> tensor<16x10xf32>` (classes from the result)"""

    name = "step.one_hot"

    def infer(self) -> TensorType[Attribute]:
        labels = tensor_type(self.input)
        if not is_i32(labels.get_element_type()):
            raise VerifyException(f"step.one_hot takes i32 labels, found {labels}")
        target = float_tensor(self.result, "step.one_hot result")
        rule(shapes.one_hot, shape_of(labels), shape_of(target))
        return target


@irdl_op_definition
class MatmulOp(BinaryOp):
    """`%r = step.matmul %a, %b : (tensor<16x64xf32>, tensor<64x32xf32>) -> tensor<16x32xf32>`"""

    name = "step.matmul"

    def __init__(self, lhs: SSAValue, rhs: SSAValue, result_type: Attribute | None = None):
        if result_type is None:
            result_type = make_tensor(shapes.matmul(shape_of(lhs), shape_of(rhs)), element_of(lhs))
        super().__init__(lhs, rhs, result_type)

    def infer(self) -> TensorType[Attribute]:
        a = float_tensor(self.lhs, "step.matmul lhs")
        b = float_tensor(self.rhs, "step.matmul rhs")
        if a.get_element_type() != b.get_element_type():
            raise VerifyException(
                f"step.matmul needs equal element types, found {a.get_element_type()} and {b.get_element_type()}"
            )
        return make_tensor(rule(shapes.matmul, shape_of(a), shape_of(b)), a.get_element_type())


@irdl_op_definition
class TransposeOp(StepOp):
    """`%r = step.transpose %a perm [1, 0] : tensor<4x8xf32> -> tensor<8x4xf32>`"""

    name = "step.transpose"

    input = operand_def(TensorType)
    result = result_def(TensorType)
    perm = prop_def(DenseArrayBase)

    def __init__(self, input: SSAValue, perm: Sequence[int]):
        shape = shapes.transpose(shape_of(input), perm)
        super().__init__(
            operands=[input],
            result_types=[make_tensor(shape, element_of(input))],
            properties={"perm": int_array(perm)},
        )

    @property
    def permutation(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.perm.get_values())  # pyright: ignore[reportAttributeAccessIssue]  # DenseArrayBase.get_values exists on the concrete i64/f64 arrays; xDSL's generic type hides it

    @classmethod
    def parse(cls, parser: Parser) -> TransposeOp:
        operand = parser.parse_unresolved_operand()
        parser.parse_keyword("perm")
        perm = parse_int_list(parser)
        attrs = parser.parse_optional_attr_dict()
        parser.parse_punctuation(":")
        in_t = parser.parse_type()
        parser.parse_punctuation("->")
        out_t = parser.parse_type()
        op = cls.create(
            operands=[parser.resolve_operand(operand, in_t)],
            result_types=[out_t],
            properties={"perm": int_array(perm)},
        )
        op.attributes.update(attrs)
        return op

    def print(self, printer: Printer) -> None:
        printer.print_string(" ")
        printer.print_operand(self.input)
        printer.print_string(" perm ")
        print_int_list(printer, self.permutation)
        printer.print_op_attributes(self.attributes)
        printer.print_string(" : ")
        printer.print_attribute(self.input.type)
        printer.print_string(" -> ")
        printer.print_attribute(self.result.type)

    def infer(self) -> TensorType[Attribute]:
        t = tensor_type(self.input)
        return make_tensor(rule(shapes.transpose, shape_of(t), self.permutation), t.get_element_type())


class ReduceOp(StepOp):
    """Reduce the listed dims (dropped); no `dims` means all: `step.sum %a dims [1] : Ta -> Tr`."""

    input = operand_def(TensorType)
    result = result_def(TensorType)
    dims = prop_def(DenseArrayBase | NoneAttr, default_value=NoneAttr())

    def __init__(self, input: SSAValue, dims: Sequence[int] | None = None):
        shape = shapes.reduce(shape_of(input), dims)
        super().__init__(
            operands=[input],
            result_types=[make_tensor(shape, element_of(input))],
            properties={"dims": NoneAttr() if dims is None else int_array(dims)},
        )

    @property
    def reduced_dims(self) -> tuple[int, ...] | None:
        """The dims as written, or None for all dims."""
        if isinstance(self.dims, NoneAttr):
            return None
        return tuple(int(v) for v in self.dims.get_values())  # pyright: ignore[reportAttributeAccessIssue]  # DenseArrayBase.get_values exists on the concrete i64/f64 arrays; xDSL's generic type hides it

    @property
    def axes(self) -> tuple[int, ...]:
        """The reduced dims, sorted, with None expanded to all dims."""
        return shapes.normalize_dims(shape_of(self.input), self.reduced_dims)

    @classmethod
    def parse(cls, parser: Parser) -> ReduceOp:
        operand = parser.parse_unresolved_operand()
        dims: Attribute = NoneAttr()
        if parser.parse_optional_keyword("dims") is not None:
            dims = int_array(parse_int_list(parser))
        attrs = parser.parse_optional_attr_dict()
        parser.parse_punctuation(":")
        in_t = parser.parse_type()
        parser.parse_punctuation("->")
        out_t = parser.parse_type()
        op = cls.create(
            operands=[parser.resolve_operand(operand, in_t)], result_types=[out_t], properties={"dims": dims}
        )
        op.attributes.update(attrs)
        return op

    def print(self, printer: Printer) -> None:
        printer.print_string(" ")
        printer.print_operand(self.input)
        if self.reduced_dims is not None:
            printer.print_string(" dims ")
            print_int_list(printer, self.reduced_dims)
        printer.print_op_attributes(self.attributes)
        printer.print_string(" : ")
        printer.print_attribute(self.input.type)
        printer.print_string(" -> ")
        printer.print_attribute(self.result.type)

    def infer(self) -> TensorType[Attribute]:
        t = float_tensor(self.input, f"{self.name} operand")
        return make_tensor(rule(shapes.reduce, shape_of(t), self.reduced_dims), t.get_element_type())


@irdl_op_definition
class SumOp(ReduceOp):
    """`%r = step.sum %a dims [1] : tensor<32x3xf32> -> tensor<32xf32>`"""

    name = "step.sum"


@irdl_op_definition
class MeanOp(ReduceOp):
    """`%r = step.mean %a : tensor<32xf32> -> tensor<f32>`"""

    name = "step.mean"


@irdl_op_definition
class MaxOp(ReduceOp):
    """`%r = step.max %a dims [0] : tensor<4x3xf32> -> tensor<3xf32>` (ties share the derivative)"""

    name = "step.max"


class AxisOp(StepOp):
    """Along one axis: `step.softmax %a axis 1 : tensor<16x10xf32>`."""

    input = operand_def(TensorType)
    result = result_def(TensorType)
    axis = prop_def(IntegerAttr)

    def __init__(self, input: SSAValue, axis: int):
        super().__init__(operands=[input], result_types=[input.type], properties={"axis": IntegerAttr(axis, i64)})

    @property
    def axis_index(self) -> int:
        return int(self.axis.value.data)

    @classmethod
    def parse(cls, parser: Parser) -> AxisOp:
        operand = parser.parse_unresolved_operand()
        parser.parse_keyword("axis")
        ax = parser.parse_integer(allow_boolean=False)
        attrs = parser.parse_optional_attr_dict()
        parser.parse_punctuation(":")
        t = parser.parse_type()
        op = cls.create(
            operands=[parser.resolve_operand(operand, t)], result_types=[t], properties={"axis": IntegerAttr(ax, i64)}
        )
        op.attributes.update(attrs)
        return op

    def print(self, printer: Printer) -> None:
        printer.print_string(" ")
        printer.print_operand(self.input)
        printer.print_string(f" axis {self.axis_index}")
        printer.print_op_attributes(self.attributes)
        printer.print_string(" : ")
        printer.print_attribute(self.input.type)

    def infer(self) -> TensorType[Attribute]:
        t = float_tensor(self.input, f"{self.name} operand")
        rule(shapes.axis, shape_of(t), self.axis_index)
        return t


@irdl_op_definition
class SoftmaxOp(AxisOp):
    """`%r = step.softmax %a axis 1 : tensor<16x10xf32>`"""

    name = "step.softmax"


@irdl_op_definition
class LogSoftmaxOp(AxisOp):
    """`%r = step.log_softmax %a axis 1 : tensor<16x10xf32>`"""

    name = "step.log_softmax"


@irdl_op_definition
class CrossEntropyOp(StepOp):
    """`%l = step.cross_entropy %logits, %labels : (tensor<16x10xf32>, tensor<16xi32>) -> tensor<f32>`

    `torch.nn.functional.cross_entropy` with mean reduction.
    """

    name = "step.cross_entropy"

    logits = operand_def(TensorType)
    labels = operand_def(TensorType)
    result = result_def(TensorType)

    @classmethod
    def parse(cls, parser: Parser) -> Self:
        return parse_two_operand_form(cls, parser)  # pyright: ignore[reportReturnType]  # build_fixed builds an instance of `cls`; xDSL types the generic constructor as IRDLOperation

    def print(self, printer: Printer) -> None:
        print_two_operand_form(self, printer)

    def __init__(self, logits: SSAValue, labels: SSAValue):
        super().__init__(operands=[logits, labels], result_types=[make_tensor((), element_of(logits))])

    def infer(self) -> TensorType[Attribute]:
        logits = float_tensor(self.logits, "step.cross_entropy logits")
        labels = tensor_type(self.labels)
        if not is_i32(labels.get_element_type()):
            raise VerifyException(f"step.cross_entropy takes i32 labels, found {labels}")
        rule(shapes.cross_entropy, shape_of(logits), shape_of(labels))
        return make_tensor((), logits.get_element_type())


@irdl_op_definition
class MseOp(StepOp):
    """`%l = step.mse %a, %b : (tensor<32x1xf32>, tensor<32x1xf32>) -> tensor<f32>` (mean reduction)"""

    name = "step.mse"

    lhs = operand_def(TensorType)
    rhs = operand_def(TensorType)
    result = result_def(TensorType)

    @classmethod
    def parse(cls, parser: Parser) -> Self:
        return parse_two_operand_form(cls, parser)  # pyright: ignore[reportReturnType]  # build_fixed builds an instance of `cls`; xDSL types the generic constructor as IRDLOperation

    def print(self, printer: Printer) -> None:
        print_two_operand_form(self, printer)

    def __init__(self, lhs: SSAValue, rhs: SSAValue):
        super().__init__(operands=[lhs, rhs], result_types=[make_tensor((), element_of(lhs))])

    def infer(self) -> TensorType[Attribute]:
        a = float_tensor(self.lhs, "step.mse lhs")
        b = float_tensor(self.rhs, "step.mse rhs")
        if a != b:
            raise VerifyException(f"step.mse takes two operands of the same type, found {a} and {b}")
        return make_tensor((), a.get_element_type())


@irdl_op_definition
class ConstantOp(StepOp):
    """`%c = step.constant 0.5 : tensor<f32>` or `step.constant dense<[1.0, 2.0]> : tensor<2xf32>`

    The values are kept in float64 (one value for a splat, else one per element, row-major)
    and rounded to the result's element type when the program runs.
    """

    name = "step.constant"

    result = result_def(TensorType)
    value = prop_def(DenseArrayBase)

    def __init__(self, values: float | Sequence[float], result_type: Attribute):
        data = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
        super().__init__(result_types=[result_type], properties={"value": f64_array(data)})

    @property
    def values(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.value.get_values())  # pyright: ignore[reportAttributeAccessIssue]  # DenseArrayBase.get_values exists on the concrete i64/f64 arrays; xDSL's generic type hides it

    @property
    def splat(self) -> float | None:
        vals = self.values
        return vals[0] if len(vals) == 1 else None

    @classmethod
    def parse(cls, parser: Parser) -> ConstantOp:
        if parser.parse_optional_keyword("dense") is not None:
            parser.parse_punctuation("<")
            values = _parse_nested_numbers(parser)
            parser.parse_punctuation(">")
        else:
            values = [_parse_signed_number(parser)]
        attrs = parser.parse_optional_attr_dict()
        parser.parse_punctuation(":")
        t = parser.parse_type()
        op = cls.create(result_types=[t], properties={"value": DenseArrayBase.from_list(f64, values)})
        op.attributes.update(attrs)
        return op

    def print(self, printer: Printer) -> None:
        shape = tuple(self.result.type.get_shape()) if isinstance(self.result.type, TensorType) else ()
        vals = self.values
        if not shape and len(vals) == 1:
            printer.print_string(" " + format_float(vals[0]))
        elif len(vals) == 1:
            printer.print_string(f" dense<{format_float(vals[0])}>")
        else:
            printer.print_string(f" dense<{_nested_text(list(vals), shape)}>")
        printer.print_op_attributes(self.attributes)
        printer.print_string(" : ")
        printer.print_attribute(self.result.type)

    def infer(self) -> TensorType[Attribute]:
        t = float_tensor(self.result, "step.constant")
        n = len(self.values)
        if n != 1 and n != shapes.numel(shape_of(t)):
            raise VerifyException(
                f"step.constant of type {t} needs 1 or {shapes.numel(shape_of(t))} values, found {n}"
            )
        return t


def _parse_signed_number(parser: Parser) -> float:
    """A decimal float or integer, or a hex bit pattern as MLIR writes NaN and infinities
    (`0x7FF0000000000000`: 16 hex digits of a float64, or 8 of a float32)."""
    token = parser._current_token  # pyright: ignore[reportPrivateUsage]
    if token.text.lower().startswith("0x"):
        start, digits = token.span.start, token.text[2:]
        parser.parse_integer(allow_boolean=False, allow_negative=False)
        if len(digits) == 16:
            return float(struct.unpack(">d", bytes.fromhex(digits))[0])
        if len(digits) == 8:
            return float(struct.unpack(">f", bytes.fromhex(digits))[0])
        parser.raise_error(
            "a hex constant is the bit pattern of a float64 (16 hex digits) or a float32 (8 hex digits), "
            f"found {len(digits)} digits",
            start,
            token.span.end,
        )
    value = parser.parse_number(context_msg=" (a constant value)")
    return float(value)


def _parse_nested_numbers(parser: Parser) -> list[float]:
    if parser.parse_optional_punctuation("[") is None:
        return [_parse_signed_number(parser)]
    out: list[float] = []
    if parser.parse_optional_punctuation("]") is not None:
        return out
    while True:
        out.extend(_parse_nested_numbers(parser))
        if parser.parse_optional_punctuation("]") is not None:
            return out
        parser.parse_punctuation(",", " or ']' in a dense constant")


def _nested_text(values: list[float], shape: tuple[int, ...]) -> str:
    if not shape:
        return format_float(values[0])
    if len(shape) == 1:
        return "[" + ", ".join(format_float(v) for v in values) + "]"
    stride = len(values) // shape[0] if shape[0] else 0
    parts = [_nested_text(values[i * stride : (i + 1) * stride], shape[1:]) for i in range(shape[0])]
    return "[" + ", ".join(parts) + "]"



# ---------------------------------------------------------------------------------------------
# Convolution: `F.conv2d` and the two adjoints its derivative writes


CONV_FIELDS: tuple[tuple[str, int], ...] = (("stride", 1), ("padding", 0), ("dilation", 1))


class ConvOp(StepOp):
    """Two operands and `F.conv2d`'s arguments, each optional and printed when not its default:
    `%a, %b stride [2, 2] padding [1, 1] dilation [1, 1] groups 1 : (Ta, Tb) -> Tr`."""

    lhs = operand_def(TensorType)
    rhs = operand_def(TensorType)
    result = result_def(TensorType)
    stride = prop_def(DenseArrayBase)
    padding = prop_def(DenseArrayBase)
    dilation = prop_def(DenseArrayBase)
    groups = prop_def(IntegerAttr)

    def __init__(self, lhs: SSAValue, rhs: SSAValue, result_type: Attribute, stride: Sequence[int],
                 padding: Sequence[int], dilation: Sequence[int], groups: int):  # fmt: skip
        super().__init__(operands=[lhs, rhs], result_types=[result_type], properties=conv_properties(stride, padding, dilation, groups))

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.stride.get_values())  # pyright: ignore[reportAttributeAccessIssue]  # DenseArrayBase.get_values exists on the concrete i64/f64 arrays; xDSL's generic type hides it

    @property
    def paddings(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.padding.get_values())  # pyright: ignore[reportAttributeAccessIssue]  # as above

    @property
    def dilations(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.dilation.get_values())  # pyright: ignore[reportAttributeAccessIssue]  # as above

    @property
    def group_count(self) -> int:
        return int(self.groups.value.data)

    @property
    def arguments(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int]:
        """`(stride, padding, dilation, groups)`, as `F.conv2d` takes them."""
        return self.strides, self.paddings, self.dilations, self.group_count

    @classmethod
    def parse(cls, parser: Parser) -> Self:
        pos = parser.pos
        lhs = parser.parse_unresolved_operand()
        parser.parse_punctuation(",")
        rhs = parser.parse_unresolved_operand()
        values: dict[str, list[int]] = {}
        for key, default in CONV_FIELDS:
            start = parser.pos
            if parser.parse_optional_keyword(key) is None:
                values[key] = [default, default]
                continue
            values[key] = parse_int_list(parser)
            if len(values[key]) != 2:
                parser.raise_error(
                    f"{cls.name} {key} takes 2 values (one per spatial dim), found {values[key]}", start, parser.pos
                )
        groups = 1
        if parser.parse_optional_keyword("groups") is not None:
            groups = parser.parse_integer(allow_boolean=False)
        attrs = parser.parse_optional_attr_dict()
        parser.parse_punctuation(":")
        fn = parser.parse_function_type()
        if len(fn.inputs.data) != 2 or len(fn.outputs.data) != 1:
            parser.raise_error(
                f"{cls.name} has the type (Ta, Tb) -> Tr, found {len(fn.inputs.data)} operand types "
                f"and {len(fn.outputs.data)} result types",
                pos,
                parser.pos,
            )
        operands = [parser.resolve_operand(lhs, fn.inputs.data[0]), parser.resolve_operand(rhs, fn.inputs.data[1])]
        properties = conv_properties(values["stride"], values["padding"], values["dilation"], groups)
        op = cls.create(operands=operands, result_types=[fn.outputs.data[0]], properties=properties)
        op.attributes.update(attrs)
        return op  # pyright: ignore[reportReturnType]  # `create` builds an instance of `cls`; xDSL types it as IRDLOperation

    def print(self, printer: Printer) -> None:
        printer.print_string(" ")
        printer.print_operand(self.lhs)
        printer.print_string(", ")
        printer.print_operand(self.rhs)
        for (key, default), values in zip(CONV_FIELDS, (self.strides, self.paddings, self.dilations)):
            if values != (default, default):
                printer.print_string(f" {key} ")
                print_int_list(printer, values)
        if self.group_count != 1:
            printer.print_string(f" groups {self.group_count}")
        printer.print_op_attributes(self.attributes)
        printer.print_string(" : ")
        printer.print_function_type([o.type for o in self.operands], [self.result.type])

    def float_operands(self, lhs: str, rhs: str) -> Attribute:
        """The common element type of the two operands (named `lhs`, `rhs` in the messages)."""
        a = float_tensor(self.lhs, f"{self.name} {lhs}")
        b = float_tensor(self.rhs, f"{self.name} {rhs}")
        if a.get_element_type() != b.get_element_type():
            raise VerifyException(
                f"{self.name} needs equal element types, found {a.get_element_type()} and {b.get_element_type()}"
            )
        return a.get_element_type()

    def forward_shape(self, x: shapes.Shape, w: shapes.Shape) -> shapes.Shape:
        """The shape of `F.conv2d(x, w)` with this op's arguments."""
        return rule(shapes.conv2d, x, w, *self.arguments)

    def expect_cotangent(self, x: shapes.Shape, w: shapes.Shape, cotangent: SSAValue) -> None:
        """The cotangent operand must have the shape of the convolution's result."""
        expected = self.forward_shape(x, w)
        if shape_of(cotangent) != expected:
            raise VerifyException(
                f"{self.name}: the cotangent of conv2d({shapes.fmt(x)}, {shapes.fmt(w)}) has shape "
                f"{shapes.fmt(expected)}, found {shapes.fmt(shape_of(cotangent))}"
            )


def conv_properties(stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int) -> dict[str, Attribute]:
    return {
        "stride": int_array(stride), "padding": int_array(padding), "dilation": int_array(dilation),
        "groups": IntegerAttr(groups, i64),
    }  # fmt: skip


@irdl_op_definition
class Conv2dOp(ConvOp):
    """`%y = step.conv2d %x, %w stride [2, 2] padding [1, 1] : (tensor<8x3x32x32xf32>, tensor<16x3x3x3xf32>) -> tensor<8x16x16x16xf32>`

    `F.conv2d(x, w, None, stride, padding, dilation, groups)`: `x` is NxCxHxW, `w`
    OxC/groupsxKHxKW; `stride`, `padding` (symmetric), `dilation` (two values each) and
    `groups` may be left out (1, 0, 1, 1).
    """

    name = "step.conv2d"

    def __init__(self, x: SSAValue, w: SSAValue, stride: Sequence[int] = (1, 1), padding: Sequence[int] = (0, 0),
                 dilation: Sequence[int] = (1, 1), groups: int = 1):  # fmt: skip
        shape = shapes.conv2d(shape_of(x), shape_of(w), stride, padding, dilation, groups)
        super().__init__(x, w, make_tensor(shape, element_of(x)), stride, padding, dilation, groups)

    def infer(self) -> TensorType[Attribute]:
        element = self.float_operands("input", "weight")
        return make_tensor(self.forward_shape(shape_of(self.lhs), shape_of(self.rhs)), element)


@irdl_op_definition
class Conv2dInputGradOp(ConvOp):
    """`%dx = step.conv2d_input_grad %dy, %w stride [2, 2] : (tensor<8x16x16x16xf32>, tensor<16x3x3x3xf32>) -> tensor<8x3x32x32xf32>`

    The adjoint of `step.conv2d` in its input, `torch.nn.grad.conv2d_input`: the input's
    cotangent for the result's cotangent `dy` and the kernel `w`. The result type gives the
    input's shape (a stride may leave rows over that no window reads: their cotangent is 0).
    """

    name = "step.conv2d_input_grad"

    def __init__(self, cotangent: SSAValue, w: SSAValue, input_type: Attribute, stride: Sequence[int],
                 padding: Sequence[int], dilation: Sequence[int], groups: int):  # fmt: skip
        super().__init__(cotangent, w, input_type, stride, padding, dilation, groups)

    def infer(self) -> TensorType[Attribute]:
        element = self.float_operands("cotangent", "weight")
        x = float_tensor(self.result, f"{self.name} result")
        self.expect_cotangent(shape_of(x), shape_of(self.rhs), self.lhs)
        return make_tensor(shape_of(x), element)


@irdl_op_definition
class Conv2dWeightGradOp(ConvOp):
    """`%dw = step.conv2d_weight_grad %x, %dy stride [2, 2] : (tensor<8x3x32x32xf32>, tensor<8x16x16x16xf32>) -> tensor<16x3x3x3xf32>`

    The adjoint of `step.conv2d` in its kernel, `torch.nn.grad.conv2d_weight`: the kernel's
    cotangent for the input `x` and the result's cotangent `dy`. The result type gives the
    kernel's shape.
    """

    name = "step.conv2d_weight_grad"

    def __init__(self, x: SSAValue, cotangent: SSAValue, kernel_type: Attribute, stride: Sequence[int],
                 padding: Sequence[int], dilation: Sequence[int], groups: int):  # fmt: skip
        super().__init__(x, cotangent, kernel_type, stride, padding, dilation, groups)

    def infer(self) -> TensorType[Attribute]:
        element = self.float_operands("input", "cotangent")
        w = float_tensor(self.result, f"{self.name} result")
        self.expect_cotangent(shape_of(self.lhs), shape_of(w), self.rhs)
        return make_tensor(shape_of(w), element)


# ---------------------------------------------------------------------------------------------
# Gradient accumulation: the sum over micro-batches (made by `accumulate-gradients`)


def micro_batch_type(t: Attribute) -> TensorType[Attribute]:
    """One micro-batch of a `step.accumulate` operand: its type without the leading axis."""
    shape = shape_of(t)
    if not shape:
        raise VerifyException(f"{t} has no leading axis to hold micro-batches")
    return make_tensor(shape[1:], element_of(t))


@irdl_op_definition
class YieldOp(IRDLOperation):
    """`step.yield %loss, %g : tensor<f32>, tensor<8x3xf32>`: ends a `step.accumulate` body
    with what one micro-batch adds to each sum."""

    name = "step.yield"

    values = var_operand_def(TensorType)
    traits = traits_def(IsTerminator(), Pure())

    def __init__(self, values: Sequence[SSAValue]):
        super().__init__(operands=[list(values)])

    @classmethod
    def parse(cls, parser: Parser) -> YieldOp:
        names = parser.parse_optional_undelimited_comma_separated_list(
            parser.parse_optional_unresolved_operand, parser.parse_unresolved_operand
        )
        attrs = parser.parse_optional_attr_dict()
        types: list[Attribute] = []
        if names:
            parser.parse_punctuation(":")
            types = parser.parse_comma_separated_list(parser.Delimiter.NONE, parser.parse_type)
        op = cls(parser.resolve_operands(names or [], types, parser.pos))
        op.attributes.update(attrs)
        return op

    def print(self, printer: Printer) -> None:
        if self.values:
            printer.print_string(" ")
            printer.print_list(self.values, printer.print_operand)
        printer.print_op_attributes(self.attributes)
        if self.values:
            printer.print_string(" : ")
            printer.print_list([v.type for v in self.values], printer.print_attribute)


@irdl_op_definition
class AccumulateOp(IRDLOperation):
    """The sum over micro-batches:

        %loss_sum, %g_sum = step.accumulate (%x.micro = %x, %y.micro = %y)
            : (tensor<4x16x8xf32>, tensor<4x16xi32>) -> (tensor<f32>, tensor<8x3xf32>) {
          ...
          step.yield %loss, %g : tensor<f32>, tensor<8x3xf32>
        }

    Every operand holds K micro-batches along its leading axis (the same K >= 1 for all). The
    body runs once per micro-batch k = 0, 1, ..., K - 1, its arguments bound to micro-batch k
    of the operands (`x[k]`, `y[k]`: each argument's type is its operand's without the leading
    axis); each result is the sum of what the body yields for it, added in that order into one
    accumulator (of the result's type) per result. The body may read any value defined before
    the op (the parameters). `accumulate-gradients` makes it (and divides the sums by K);
    it is never differentiated.
    """

    name = "step.accumulate"

    inputs = var_operand_def(TensorType)
    sums = var_result_def(TensorType)
    body = region_def("single_block")
    traits = traits_def(Pure())

    def __init__(self, inputs: Sequence[SSAValue], result_types: Sequence[Attribute], body: Region):
        super().__init__(operands=[list(inputs)], result_types=[list(result_types)], regions=[body])

    @property
    def count(self) -> int:
        """K, the number of micro-batches: the leading axis of the operands."""
        return shape_of(self.inputs[0])[0]

    @property
    def terminator(self) -> YieldOp:
        last = self.body.block.last_op
        assert isinstance(last, YieldOp)
        return last

    @classmethod
    def parse(cls, parser: Parser) -> AccumulateOp:
        pairs = parser.parse_comma_separated_list(parser.Delimiter.PAREN, lambda: parse_assignment(parser))
        attrs = parser.parse_optional_attr_dict()
        parser.parse_punctuation(":")
        start = parser.pos
        fn = parser.parse_function_type()
        if len(fn.inputs.data) != len(pairs):
            parser.raise_error(
                f"{cls.name} binds {len(pairs)} micro-batch argument(s) but its type lists {len(fn.inputs.data)} operand types",
                start,
                parser.pos,
            )
        for i, t in enumerate(fn.inputs.data):
            if not isinstance(t, TensorType) or not t.get_shape():
                parser.raise_error(
                    f"{cls.name} operand {i} has type {t}: each operand holds its micro-batches along a leading axis",
                    start,
                    parser.pos,
                )
        operands = [parser.resolve_operand(value, t) for (_, value), t in zip(pairs, fn.inputs.data)]
        arguments = [
            arg.resolve(make_tensor(tuple(t.get_shape())[1:], t.get_element_type()))  # pyright: ignore[reportAttributeAccessIssue, reportUnknownArgumentType]  # checked a TensorType above
            for (arg, _), t in zip(pairs, fn.inputs.data)
        ]
        body = parser.parse_region(arguments)
        op = cls(operands, list(fn.outputs.data), body)
        op.attributes.update(attrs)
        return op

    def print(self, printer: Printer) -> None:
        printer.print_string(" (")
        printer.print_list(zip(self.body.block.args, self.inputs), lambda pair: print_assignment(printer, *pair))
        printer.print_string(")")
        printer.print_op_attributes(self.attributes)
        printer.print_string(" : ")
        printer.print_function_type([o.type for o in self.inputs], [r.type for r in self.sums])
        printer.print_string(" ")
        printer.print_region(self.body, print_entry_block_args=False)

    def verify_(self) -> None:
        if not self.inputs:
            raise VerifyException(f"{self.name} needs an operand holding the micro-batches along its leading axis")
        count: int | None = None
        for i, operand in enumerate(self.inputs):
            shape = shape_of(operand)
            if not shape:
                raise VerifyException(
                    f"{self.name} operand {i} is {operand.type}: each operand holds its micro-batches along a leading axis"
                )
            if count is None:
                count = shape[0]
            elif shape[0] != count:
                raise VerifyException(
                    f"{self.name} operands disagree on the number of micro-batches: operand 0 has {count} along "
                    f"its leading axis, operand {i} has {shape[0]} ({operand.type})"
                )
        if count is not None and count < 1:
            raise VerifyException(f"{self.name} over {count} micro-batches: the leading axis must be at least 1")
        block = self.body.block
        if len(block.args) != len(self.inputs):
            raise VerifyException(
                f"{self.name} has {len(self.inputs)} operands but its body takes {len(block.args)} micro-batch arguments"
            )
        for i, (arg, operand) in enumerate(zip(block.args, self.inputs)):
            expected = micro_batch_type(operand.type)
            if arg.type != expected:
                raise VerifyException(
                    f"{self.name} body argument {i} is one micro-batch of operand {i}: expected {expected}, found {arg.type}"
                )
        last = block.last_op
        if not isinstance(last, YieldOp):
            raise VerifyException(f"{self.name} body must end with step.yield of what one micro-batch adds to each sum")
        yielded = [v.type for v in last.values]
        results = [r.type for r in self.sums]
        if yielded != results:
            raise VerifyException(
                f"{self.name} yields ({', '.join(map(str, yielded))}) but returns ({', '.join(map(str, results))}): "
                "each result is the sum of one yielded value"
            )
        for r in self.sums:
            float_tensor(r, f"a {self.name} result (a sum over micro-batches)")


# ---------------------------------------------------------------------------------------------
# Layer norm, GELU, embedding (the second set), and the ops their derivatives introduce


LAYER_NORM_EPS = 1e-5  # F.layer_norm's default
GELU_APPROXIMATIONS = ("none", "tanh")  # F.gelu's `approximate`


def _parse_operands(parser: Parser, count: int) -> list[UnresolvedOperand]:
    names = [parser.parse_unresolved_operand()]
    for _ in range(count - 1):
        parser.parse_punctuation(",")
        names.append(parser.parse_unresolved_operand())
    return names


def _parse_function_type(cls: type[IRDLOperation], parser: Parser, form: str, count: int) -> FunctionType:
    """`: (T1, ..., Tcount) -> Tr`, or a located error naming the op's form."""
    parser.parse_punctuation(":")
    pos = parser.pos
    fn = parser.parse_function_type()
    if len(fn.inputs.data) != count or len(fn.outputs.data) != 1:
        parser.raise_error(
            f"{cls.name} has the type {form}, found {len(fn.inputs.data)} operand types and "
            f"{len(fn.outputs.data)} result types",
            pos,
            parser.pos,
        )
    return fn


@irdl_op_definition
class LayerNormOp(StepOp):
    """`%y = step.layer_norm %x, %g, %b eps 1.0e-5 : (tensor<8x64xf32>, tensor<64xf32>, tensor<64xf32>) -> tensor<8x64xf32>`

    `F.layer_norm(x, g.shape, g, b, eps)`: each slice of `x` over the trailing dims given by
    `g`'s shape is normalized by its mean and biased variance (`(x - mean) / sqrt(var + eps)`),
    then scaled by `g` and shifted by `b`. `eps` may be left out (1e-5); the text keeps what was
    written.
    """

    name = "step.layer_norm"

    input = operand_def(TensorType)
    weight = operand_def(TensorType)
    bias = operand_def(TensorType)
    result = result_def(TensorType)
    eps = prop_def(FloatAttr | NoneAttr, default_value=NoneAttr())

    def __init__(self, input: SSAValue, weight: SSAValue, bias: SSAValue, eps: float | None = None):
        super().__init__(
            operands=[input, weight, bias],
            result_types=[input.type],
            properties={"eps": NoneAttr() if eps is None else FloatAttr(float(eps), f64)},
        )

    @property
    def epsilon(self) -> float:
        return LAYER_NORM_EPS if isinstance(self.eps, NoneAttr) else float(self.eps.value.data)

    @property
    def axes(self) -> tuple[int, ...]:
        """The normalized dims of the input: its trailing `rank(g)` dims."""
        rank, normalized = len(shape_of(self.input)), len(shape_of(self.weight))
        return tuple(range(rank - normalized, rank))

    @classmethod
    def parse(cls, parser: Parser) -> LayerNormOp:
        names = _parse_operands(parser, 3)
        eps: Attribute = NoneAttr()
        if parser.parse_optional_keyword("eps") is not None:
            start = parser.pos
            value = parser.parse_number(context_msg=" (the layer norm's eps, a float such as 1.0e-5)")
            if not isinstance(value, float):
                parser.raise_error(f"{cls.name} eps takes a float such as 1.0e-5, found {value}", start, parser.pos)
            if not value > 0.0:
                parser.raise_error(f"{cls.name} eps must be > 0, found {format_float(value)}", start, parser.pos)
            eps = FloatAttr(value, f64)
        attrs = parser.parse_optional_attr_dict()
        fn = _parse_function_type(cls, parser, "(Tx, Tg, Tg) -> Tx", 3)
        operands = [parser.resolve_operand(n, t) for n, t in zip(names, fn.inputs.data)]
        op = cls.create(operands=operands, result_types=[fn.outputs.data[0]], properties={"eps": eps})
        op.attributes.update(attrs)
        return op

    def print(self, printer: Printer) -> None:
        printer.print_string(" ")
        printer.print_list(self.operands, printer.print_operand)
        if isinstance(self.eps, FloatAttr):
            printer.print_string(f" eps {format_float(self.epsilon)}")
        printer.print_op_attributes(self.attributes)
        printer.print_string(" : ")
        printer.print_function_type([o.type for o in self.operands], [self.result.type])

    def infer(self) -> TensorType[Attribute]:
        x = float_tensor(self.input, f"{self.name} input")
        g = float_tensor(self.weight, f"{self.name} weight")
        b = float_tensor(self.bias, f"{self.name} bias")
        if not (x.get_element_type() == g.get_element_type() == b.get_element_type()):
            raise VerifyException(
                f"{self.name} needs one element type for its input, weight and bias, found {x.get_element_type()}, "
                f"{g.get_element_type()} and {b.get_element_type()}"
            )
        if shape_of(g) != shape_of(b):
            raise VerifyException(
                f"{self.name} weight and bias have one shape (the normalized shape), found {shapes.fmt(shape_of(g))} "
                f"and {shapes.fmt(shape_of(b))}"
            )
        rule(shapes.layer_norm, shape_of(x), shape_of(g))
        if not self.epsilon > 0.0:
            raise VerifyException(f"{self.name} eps must be > 0, found {format_float(self.epsilon)}")
        return x


class GeluFamilyOp(StepOp):
    """Elementwise, with F.gelu's `approximate` ("none": the erf form; "tanh"), written only
    when it is tanh: `%r = step.gelu %a approximate tanh : tensor<4xf32>`."""

    input = operand_def(TensorType)
    result = result_def(TensorType)
    approximate = prop_def(StringAttr, default_value=StringAttr("none"))

    def __init__(self, input: SSAValue, approximate: str = "none"):
        super().__init__(operands=[input], result_types=[input.type], properties={"approximate": StringAttr(approximate)})

    @property
    def tanh(self) -> bool:
        """Whether this is the tanh approximation (else the exact erf form)."""
        return self.approximate.data == "tanh"

    @classmethod
    def parse(cls, parser: Parser) -> Self:
        operand = parser.parse_unresolved_operand()
        approximate = "none"
        if parser.parse_optional_keyword("approximate") is not None:
            start = parser.pos
            approximate = parser.parse_identifier(" (F.gelu's approximation: " + " or ".join(GELU_APPROXIMATIONS) + ")")
            if approximate not in GELU_APPROXIMATIONS:
                parser.raise_error(
                    f"unknown approximation '{approximate}' of {cls.name}; expected "
                    + " or ".join(GELU_APPROXIMATIONS) + " (F.gelu's)",
                    start,
                    parser.pos,
                )
        attrs = parser.parse_optional_attr_dict()
        parser.parse_punctuation(":")
        t = parser.parse_type()
        op = cls.create(
            operands=[parser.resolve_operand(operand, t)],
            result_types=[t],
            properties={"approximate": StringAttr(approximate)},
        )
        op.attributes.update(attrs)
        return op  # pyright: ignore[reportReturnType]  # create builds an instance of `cls`

    def print(self, printer: Printer) -> None:
        printer.print_string(" ")
        printer.print_operand(self.input)
        if self.tanh:
            printer.print_string(" approximate tanh")
        printer.print_op_attributes(self.attributes)
        printer.print_string(" : ")
        printer.print_attribute(self.input.type)

    def infer(self) -> TensorType[Attribute]:
        if self.approximate.data not in GELU_APPROXIMATIONS:
            raise VerifyException(
                f"unknown approximation '{self.approximate.data}' of {self.name}; expected "
                + " or ".join(GELU_APPROXIMATIONS)
            )
        return float_tensor(self.input, f"{self.name} operand")


@irdl_op_definition
class GeluOp(GeluFamilyOp):
    """`%r = step.gelu %a : tensor<4xf32>` (`x Phi(x)`, the erf form) or `%r = step.gelu %a approximate tanh
    : tensor<4xf32>` (`x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2`): `F.gelu`."""

    name = "step.gelu"


@irdl_op_definition
class GeluGradOp(GeluFamilyOp):
    """`%d = step.gelu_grad %a : tensor<4xf32>`: the derivative of `step.gelu` (the same
    `approximate`) at each element, as PyTorch's `gelu_backward` computes it
    (`Phi(x) + x phi(x)` for the erf form)."""

    name = "step.gelu_grad"


@irdl_op_definition
class EmbeddingOp(StepOp):
    """`%y = step.embedding %table, %ids : (tensor<16x64xf32>, tensor<32x8xi32>) -> tensor<32x8x64xf32>`

    `F.embedding(ids, table)`: row `ids[...]` of the `VxD` table for every id (ids of any
    shape, each in `[0, V)`). The ids have no derivative; the table's gradient adds up the
    cotangents of repeated ids (`step.embedding_grad`).
    """

    name = "step.embedding"

    table = operand_def(TensorType)
    ids = operand_def(TensorType)
    result = result_def(TensorType)

    def __init__(self, table: SSAValue, ids: SSAValue):
        shape = shapes.embedding(shape_of(table), shape_of(ids))
        super().__init__(operands=[table, ids], result_types=[make_tensor(shape, element_of(table))])

    @classmethod
    def parse(cls, parser: Parser) -> Self:
        return parse_two_operand_form(cls, parser)  # pyright: ignore[reportReturnType]  # build_fixed builds an instance of `cls`; xDSL types the generic constructor as IRDLOperation

    def print(self, printer: Printer) -> None:
        print_two_operand_form(self, printer)

    def infer(self) -> TensorType[Attribute]:
        table = float_tensor(self.table, f"{self.name} table")
        ids = tensor_type(self.ids)
        if not is_i32(ids.get_element_type()):
            raise VerifyException(f"{self.name} takes i32 ids, found {ids}")
        return make_tensor(rule(shapes.embedding, shape_of(table), shape_of(ids)), table.get_element_type())


@irdl_op_definition
class EmbeddingGradOp(StepOp):
    """`%g = step.embedding_grad %cotangent, %ids : (tensor<32x8x64xf32>, tensor<32x8xi32>) -> tensor<16x64xf32>`

    The transpose of `step.embedding`: a `VxD` table of zeros (V from the result type) to which
    each id's row of the cotangent is added (repeated ids add up; an id outside `[0, V)` is an
    error in the interpreter, and adds nothing in the compiled step).
    """

    name = "step.embedding_grad"

    cotangent = operand_def(TensorType)
    ids = operand_def(TensorType)
    result = result_def(TensorType)

    def __init__(self, cotangent: SSAValue, ids: SSAValue, rows: int):
        shape = (rows, shape_of(cotangent)[-1])
        super().__init__(operands=[cotangent, ids], result_types=[make_tensor(shape, element_of(cotangent))])

    @classmethod
    def parse(cls, parser: Parser) -> Self:
        return parse_two_operand_form(cls, parser)  # pyright: ignore[reportReturnType]  # build_fixed builds an instance of `cls`; xDSL types the generic constructor as IRDLOperation

    def print(self, printer: Printer) -> None:
        print_two_operand_form(self, printer)

    def infer(self) -> TensorType[Attribute]:
        cotangent = float_tensor(self.cotangent, f"{self.name} cotangent")
        ids = tensor_type(self.ids)
        if not is_i32(ids.get_element_type()):
            raise VerifyException(f"{self.name} takes i32 ids, found {ids}")
        target = float_tensor(self.result, f"{self.name} result")
        if len(shape_of(target)) != 2:
            raise VerifyException(f"{self.name} gives a VxD table (rank 2), found {target}")
        rows = shape_of(target)[0]
        expected = rule(shapes.embedding, (rows, shape_of(cotangent)[-1] if shape_of(cotangent) else 0), shape_of(ids))
        if shape_of(cotangent) != expected:
            raise VerifyException(
                f"{self.name} takes the cotangent of an embedding of ids {shapes.fmt(shape_of(ids))}: expected "
                f"{shapes.fmt(expected)}xD, found {shapes.fmt(shape_of(cotangent))}"
            )
        return make_tensor((rows, expected[-1]), cotangent.get_element_type())


# ---------------------------------------------------------------------------------------------
# Windows and pieces (the second set): pooling, concat, slice, and the pad their derivatives write


def _parse_keyword_lists(parser: Parser, keywords: Sequence[str], required: int) -> dict[str, list[int]]:
    """`kernel [2, 2] stride [1, 1]`: the first `required` keywords in order, then any of the
    others in order, each followed by an integer list."""
    found: dict[str, list[int]] = {}
    for i, keyword in enumerate(keywords):
        if i < required:
            parser.parse_keyword(keyword)
        elif parser.parse_optional_keyword(keyword) is None:
            continue
        found[keyword] = parse_int_list(parser)
    return found


def _print_keyword_lists(printer: Printer, lists: Sequence[tuple[str, Sequence[int]]]) -> None:
    for keyword, values in lists:
        printer.print_string(f" {keyword} ")
        print_int_list(printer, values)


def _values(attr: DenseArrayBase) -> tuple[int, ...]:
    return tuple(int(v) for v in attr.get_values())  # pyright: ignore[reportAttributeAccessIssue]  # DenseArrayBase.get_values exists on the concrete i64/f64 arrays; xDSL's generic type hides it


class _ListsOp(StepOp):
    """One operand, one result, integer-list properties written after keywords:
    `step.slice %a start [0] limit [4] : Ta -> Tr` (the properties in `KEYWORDS` order)."""

    KEYWORDS: ClassVar[tuple[str, ...]] = ()
    REQUIRED: ClassVar[int] = 0

    input = operand_def(TensorType)
    result = result_def(TensorType)

    def __init__(self, input: SSAValue, result_type: Attribute, **lists: Sequence[int]):
        super().__init__(operands=[input], result_types=[result_type],
                         properties={k: int_array(v) for k, v in self.complete(lists).items()})  # fmt: skip

    @classmethod
    def complete(cls, lists: Mapping[str, Sequence[int]]) -> dict[str, Sequence[int]]:
        """The lists written, and the defaults of those left out."""
        return dict(lists)

    @classmethod
    def parse(cls, parser: Parser) -> Self:
        operand = parser.parse_unresolved_operand()
        start = parser.pos
        lists = _parse_keyword_lists(parser, cls.KEYWORDS, cls.REQUIRED)
        end = parser.pos
        attrs = parser.parse_optional_attr_dict()
        parser.parse_punctuation(":")
        in_t = parser.parse_type()
        parser.parse_punctuation("->")
        out_t = parser.parse_type()
        if not isinstance(in_t, TensorType):
            parser.raise_error(f"{cls.name} takes a ranked tensor, found {in_t}", start, end)
        op = cls.create(
            operands=[parser.resolve_operand(operand, in_t)],
            result_types=[out_t],
            properties={k: int_array(v) for k, v in cls.complete(lists).items()},
        )
        op.attributes.update(attrs)
        return op  # pyright: ignore[reportReturnType]  # `create` builds an instance of `cls`; xDSL types it as IRDLOperation

    def written(self) -> list[tuple[str, Sequence[int]]]:
        """The lists the text shows: every one (a subclass leaves out defaults)."""
        return [(k, self.list(k)) for k in self.KEYWORDS]

    def list(self, keyword: str) -> tuple[int, ...]:
        attr = self.properties[keyword]
        assert isinstance(attr, DenseArrayBase)
        return _values(attr)

    def print(self, printer: Printer) -> None:
        printer.print_string(" ")
        printer.print_operand(self.input)
        _print_keyword_lists(printer, self.written())
        printer.print_op_attributes(self.attributes)
        printer.print_string(" : ")
        printer.print_attribute(self.input.type)
        printer.print_string(" -> ")
        printer.print_attribute(self.result.type)


class Pool2dOp(_ListsOp):
    """`F.max_pool2d` / `F.avg_pool2d` over the last two dims of an `NxCxHxW` (or `CxHxW`) input:
    `kernel`, then `stride` (default: the kernel) and `padding` (default: 0), one value per
    spatial dim; torch's errors (padding at most half the kernel, an output of at least 1)."""

    KEYWORDS: ClassVar[tuple[str, ...]] = ("kernel", "stride", "padding")
    REQUIRED: ClassVar[int] = 1

    kernel = prop_def(DenseArrayBase)
    stride = prop_def(DenseArrayBase)
    padding = prop_def(DenseArrayBase)

    @classmethod
    def complete(cls, lists: Mapping[str, Sequence[int]]) -> dict[str, Sequence[int]]:
        kernel = lists["kernel"]
        return {"kernel": kernel, "stride": lists.get("stride", kernel), "padding": lists.get("padding", [0] * len(kernel))}

    @property
    def window(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """(kernel, stride, padding), each a pair (verified)."""
        kernel, stride, padding = (self.list(k) for k in self.KEYWORDS)
        return (kernel[0], kernel[1]), (stride[0], stride[1]), (padding[0], padding[1])

    def written(self) -> list[tuple[str, Sequence[int]]]:
        kernel, stride, padding = (self.list(k) for k in self.KEYWORDS)
        out: list[tuple[str, Sequence[int]]] = [("kernel", kernel)]
        if stride != kernel:
            out.append(("stride", stride))
        if any(padding):
            out.append(("padding", padding))
        return out

    def infer(self) -> TensorType[Attribute]:
        t = float_tensor(self.input, f"{self.name} operand")
        kernel, stride, padding = (self.list(k) for k in self.KEYWORDS)
        return make_tensor(rule(shapes.pool2d, shape_of(t), kernel, stride, padding), t.get_element_type())


@irdl_op_definition
class MaxPool2dOp(Pool2dOp):
    """`%y = step.max_pool2d %x kernel [2, 2] stride [2, 2] padding [0, 0] : tensor<8x3x6x6xf32> -> tensor<8x3x3x3xf32>`

    The padding is -inf (never a maximum); a window's cotangent goes to its first maximum in
    row-major order (as torch), overlapping windows adding up."""

    name = "step.max_pool2d"


@irdl_op_definition
class AvgPool2dOp(Pool2dOp):
    """`%y = step.avg_pool2d %x kernel [3, 3] stride [1, 1] padding [1, 1] : tensor<8x3x6x6xf32> -> tensor<8x3x6x6xf32>`

    `count_include_pad=True`: every window's sum (zero padding) divided by the kernel's area."""

    name = "step.avg_pool2d"


@irdl_op_definition
class SliceOp(_ListsOp):
    """`%y = step.slice %a start [0, 2] limit [4, 6] stride [1, 2] : tensor<4x8xf32> -> tensor<4x2xf32>`

    `a[0:4:1, 2:6:2]`: a static strided slice; `stride` may be left out (all 1)."""

    name = "step.slice"
    KEYWORDS: ClassVar[tuple[str, ...]] = ("start", "limit", "stride")
    REQUIRED: ClassVar[int] = 2

    start = prop_def(DenseArrayBase)
    limit = prop_def(DenseArrayBase)
    stride = prop_def(DenseArrayBase)

    @classmethod
    def complete(cls, lists: Mapping[str, Sequence[int]]) -> dict[str, Sequence[int]]:
        return {"start": lists["start"], "limit": lists["limit"], "stride": lists.get("stride", [1] * len(lists["start"]))}

    def written(self) -> list[tuple[str, Sequence[int]]]:
        stride = self.list("stride")
        out: list[tuple[str, Sequence[int]]] = [("start", self.list("start")), ("limit", self.list("limit"))]
        return out + ([("stride", stride)] if any(s != 1 for s in stride) else [])

    @property
    def index(self) -> tuple[slice, ...]:
        """The slice as a NumPy index: one `start:limit:stride` per dim."""
        return tuple(slice(*bounds) for bounds in zip(self.list("start"), self.list("limit"), self.list("stride")))

    def infer(self) -> TensorType[Attribute]:
        t = tensor_type(self.input)
        shape = rule(shapes.slice_, shape_of(t), self.list("start"), self.list("limit"), self.list("stride"))
        return make_tensor(shape, t.get_element_type())


@irdl_op_definition
class PadOp(_ListsOp):
    """`%y = step.pad %a low [1] high [0] interior [1] : tensor<3xf32> -> tensor<6xf32>`

    Zero padding (`stablehlo.pad` with 0): `low` zeros before, `high` after and `interior`
    between the elements of each dim. The derivatives of `step.slice` and the pooling ops
    write it; users may write it too."""

    name = "step.pad"
    KEYWORDS: ClassVar[tuple[str, ...]] = ("low", "high", "interior")
    REQUIRED: ClassVar[int] = 3

    low = prop_def(DenseArrayBase)
    high = prop_def(DenseArrayBase)
    interior = prop_def(DenseArrayBase)

    @classmethod
    def complete(cls, lists: Mapping[str, Sequence[int]]) -> dict[str, Sequence[int]]:
        return {k: lists[k] for k in cls.KEYWORDS}

    @property
    def placement(self) -> tuple[slice, ...]:
        """Where the operand's elements land in the result, as a NumPy index: one strided slice per dim."""
        return tuple(
            slice(low, low + (n - 1) * (interior + 1) + 1, interior + 1)
            for low, n, interior in zip(self.list("low"), shape_of(self.input), self.list("interior"))
        )

    def infer(self) -> TensorType[Attribute]:
        t = tensor_type(self.input)
        shape = rule(shapes.pad, shape_of(t), self.list("low"), self.list("high"), self.list("interior"))
        return make_tensor(shape, t.get_element_type())


@irdl_op_definition
class ConcatOp(StepOp):
    """`%y = step.concat %a, %b axis 1 : (tensor<4x2xf32>, tensor<4x3xf32>) -> tensor<4x5xf32>`

    `torch.cat` along one axis: two or more operands of one element type and rank, equal in
    every other dim."""

    name = "step.concat"

    inputs = var_operand_def(TensorType)
    result = result_def(TensorType)
    axis = prop_def(IntegerAttr)

    def __init__(self, inputs: Sequence[SSAValue], axis: int):
        shape = shapes.concat([shape_of(v) for v in inputs], axis)
        super().__init__(
            operands=list(inputs),
            result_types=[make_tensor(shape, element_of(inputs[0]))],
            properties={"axis": IntegerAttr(axis, i64)},
        )

    @property
    def axis_index(self) -> int:
        return int(self.axis.value.data)

    @classmethod
    def parse(cls, parser: Parser) -> ConcatOp:
        pos = parser.pos
        names = parser.parse_comma_separated_list(parser.Delimiter.NONE, parser.parse_unresolved_operand)
        parser.parse_keyword("axis")
        ax = parser.parse_integer(allow_boolean=False)
        attrs = parser.parse_optional_attr_dict()
        parser.parse_punctuation(":")
        fn = parser.parse_function_type()
        if len(fn.inputs.data) != len(names) or len(fn.outputs.data) != 1:
            parser.raise_error(
                f"{cls.name} of {len(names)} operands has the type ({', '.join(['T'] * len(names))}) -> Tr, found "
                f"{len(fn.inputs.data)} operand types and {len(fn.outputs.data)} result types",
                pos,
                parser.pos,
            )
        operands = [parser.resolve_operand(n, t) for n, t in zip(names, fn.inputs.data)]
        op = cls.create(operands=operands, result_types=[fn.outputs.data[0]], properties={"axis": IntegerAttr(ax, i64)})
        op.attributes.update(attrs)
        return op

    def print(self, printer: Printer) -> None:
        printer.print_string(" ")
        printer.print_list(self.inputs, printer.print_operand)
        printer.print_string(f" axis {self.axis_index}")
        printer.print_op_attributes(self.attributes)
        printer.print_string(" : ")
        printer.print_function_type([o.type for o in self.inputs], [self.result.type])

    def infer(self) -> TensorType[Attribute]:
        types = [tensor_type(v) for v in self.inputs]
        if types:
            element = types[0].get_element_type()
            for i, t in enumerate(types[1:], 1):
                if t.get_element_type() != element:
                    raise VerifyException(
                        f"{self.name} needs equal element types, found {element} (operand 0) and "
                        f"{t.get_element_type()} (operand {i})"
                    )
        shape = rule(shapes.concat, [shape_of(t) for t in types], self.axis_index)
        return make_tensor(shape, types[0].get_element_type())


# Ops users write (the spec's first set, then the second as it is built), in the order of `docs/language.md`.
SPEC_OPS: tuple[type[StepOp], ...] = (
    AddOp, SubOp, MulOp, DivOp, MaximumOp, MinimumOp,
    ExpOp, NegOp, LogOp, TanhOp, SigmoidOp, ReluOp, SqrtOp, RsqrtOp, SquareOp, AbsOp,
    MatmulOp, TransposeOp, ReshapeOp, BroadcastOp, SumOp, MeanOp, MaxOp, SoftmaxOp,
    LogSoftmaxOp, CrossEntropyOp, MseOp, ConstantOp, ConvertOp,
    SelectOp,
    LayerNormOp, GeluOp, EmbeddingOp,
    Conv2dOp,
    MaxPool2dOp, AvgPool2dOp, ConcatOp, SliceOp,
    DropoutOp,
)  # fmt: skip
# Ops the derivative introduces; users may write them too.
EXTRA_OPS: tuple[type[StepOp], ...] = (
    CompareOp, OneHotOp, GeluGradOp, EmbeddingGradOp,
    Conv2dInputGradOp, Conv2dWeightGradOp,
    PadOp,
)  # fmt: skip
# Ops a pass after `differentiate` makes (never differentiated): the micro-batch loop.
LOOP_OPS: tuple[type[IRDLOperation], ...] = (AccumulateOp, YieldOp)

Step = Dialect("step", [*SPEC_OPS, *EXTRA_OPS, *LOOP_OPS], [SGDAttr, AdamAttr, AdamWAttr])
