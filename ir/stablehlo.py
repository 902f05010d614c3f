"""The StableHLO subset that `lower-to-stablehlo` emits, and its text as XLA reads it.

Why our own subset instead of the field's StableHLO dialect for xDSL (`xdsl-jax`): every
release of `xdsl-jax` up to 0.6.0 requires `xdsl~=0.73.0`, while the spec fixes xDSL 0.74,
and xDSL's API moves between minor versions. So this module declares, in IRDL, exactly the
ops the lowering emits (nothing more), with the four attributes that need StableHLO's own
syntax: `#stablehlo<comparison_direction GT>`, `#stablehlo.dot<...>`, `#stablehlo.gather<...>`
and `#stablehlo.scatter<...>`. The ops print in MLIR's generic form
(`%0 = "stablehlo.add"(%a, %b) : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>`), which XLA's
MLIR parser accepts as it is; `module_text` wraps the function as
`module @name { func.func public @main(...) }`, the form
`jax.extend.backend.get_backend().compile_and_load` compiles. The same text parses back
with `parse_module` (the `stepc check --pass lower-to-stablehlo` path reads dumps).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from io import StringIO
from typing import ClassVar, Self

import numpy as np
from xdsl.dialects import func
from xdsl.dialects.builtin import (
    ArrayAttr,
    BFloat16Type,
    BoolAttr,
    DenseArrayBase,
    DenseIntOrFPElementsAttr,
    DictionaryAttr,
    IntAttr,
    IntegerAttr,
    IntegerType,
    ModuleOp,
    StringAttr,
    TensorType,
    UnitAttr,
    i1,
    i64,
)
from xdsl.dialects.utils.enum_attribute import EnumAttribute
from xdsl.ir import Attribute, Block, Dialect, ParametrizedAttribute, Region, SpacedOpaqueSyntaxAttribute, SSAValue
from xdsl.irdl import (
    IRDLOperation,
    irdl_attr_definition,
    irdl_op_definition,
    operand_def,
    opt_prop_def,
    param_def,
    prop_def,
    region_def,
    result_def,
    traits_def,
    var_operand_def,
    var_result_def,
)
from xdsl.parser import AttrParser
from xdsl.printer import Printer
from xdsl.traits import IsolatedFromAbove, IsTerminator, Pure
from xdsl.utils.exceptions import VerifyException
from xdsl.utils.str_enum import StrEnum

from stepc.ir.dialect import PARAM, build_fixed
from stepc.ir.names import NamingPrinter
from stepc.ir.narrow import is_array, is_dense, is_float_array, is_int_array, is_int_attr, is_tensor

# ---------------------------------------------------------------------------------------------
# Attributes



# `RELU_TAG` (`ir/dialect.py`) is the discardable attribute on the `stablehlo.maximum` that lowers
# `step.relu`: XLA ignores it; the JAX backend gives that maximum PyTorch's derivative at 0
# (`backends/helpers.py` `relu0`).

class ComparisonDirection(StrEnum):
    EQ = "EQ"
    NE = "NE"
    GE = "GE"
    GT = "GT"
    LE = "LE"
    LT = "LT"


@irdl_attr_definition
class ComparisonDirectionAttr(EnumAttribute[ComparisonDirection], SpacedOpaqueSyntaxAttribute):
    """`#stablehlo<comparison_direction GT>`"""

    name = "stablehlo.comparison_direction"


def _int_list(values: Sequence[int]) -> ArrayAttr[IntAttr]:
    return ArrayAttr([IntAttr(int(v)) for v in values])


def _int_data(attr: Attribute) -> int:
    assert is_int_attr(attr)
    return attr.data


def _field_attr(scalar: bool, value: Sequence[int] | int) -> Attribute:
    if scalar:
        assert isinstance(value, int)
        return IntAttr(value)
    assert not isinstance(value, int)
    return _int_list(value)


class _DimensionNumbers(ParametrizedAttribute):
    """Shared text form of `#stablehlo.dot<...>`, `#stablehlo.gather<...>` and `#stablehlo.scatter<...>`:
    `key = [..]` or `key = N` fields, empty lists left out, as StableHLO prints them."""

    FIELDS: ClassVar[tuple[str, ...]] = ()
    SCALAR_FIELDS: ClassVar[tuple[str, ...]] = ()

    def field(self, key: str) -> tuple[int, ...] | int:
        param = self.parameters[self.FIELDS.index(key)]
        if is_int_attr(param):
            return param.data
        assert is_array(param)
        return tuple(_int_data(p) for p in param.data)

    def print_parameters(self, printer: Printer) -> None:
        items: list[str] = []
        for key in self.FIELDS:
            value = self.field(key)
            if key in self.SCALAR_FIELDS:
                items.append(f"{key} = {value}")
            elif value:
                assert isinstance(value, tuple)  # a list field
                items.append(f"{key} = [{', '.join(str(v) for v in value)}]")
        printer.print_string("<" + ", ".join(items) + ">")

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> Sequence[Attribute]:
        values: dict[str, Attribute] = {}

        def parse_field() -> None:
            pos = parser.pos
            key = parser.parse_identifier()
            if key not in cls.FIELDS:
                parser.raise_error(f"unknown field '{key}' of {cls.name}", pos, parser.pos)
            parser.parse_punctuation("=")
            if key in cls.SCALAR_FIELDS:
                values[key] = IntAttr(parser.parse_integer())
            else:
                values[key] = _int_list(
                    parser.parse_comma_separated_list(parser.Delimiter.SQUARE, parser.parse_integer)
                )

        parser.parse_comma_separated_list(parser.Delimiter.ANGLE, parse_field)
        return cls._parameters(values)

    @classmethod
    def _parameters(cls, values: dict[str, Attribute]) -> tuple[Attribute, ...]:
        """The parameters in `FIELDS` order; a field not given is empty (or 0), as in the text."""
        return tuple(values.get(k, IntAttr(0) if k in cls.SCALAR_FIELDS else _int_list([])) for k in cls.FIELDS)


class _NamedDimensionNumbers(_DimensionNumbers):
    """Dimension numbers built from their fields by name (`#stablehlo.gather`, `#stablehlo.scatter`)."""

    @classmethod
    def make(cls, **fields: Sequence[int] | int) -> Self:
        """`GatherAttr.make(collapsed_slice_dims=[1], index_vector_dim=1, ...)`: fields by name."""
        unknown = sorted(set(fields) - set(cls.FIELDS))
        if unknown:
            raise TypeError(f"{cls.name} has no fields {unknown}")
        values: dict[str, Attribute] = {k: _field_attr(k in cls.SCALAR_FIELDS, v) for k, v in fields.items()}
        return cls(*cls._parameters(values))


@irdl_attr_definition
class DotAttr(_DimensionNumbers):
    """`#stablehlo.dot<lhs_batching_dimensions = [0], rhs_batching_dimensions = [0],
    lhs_contracting_dimensions = [2], rhs_contracting_dimensions = [1]>`"""

    name = "stablehlo.dot"
    FIELDS = (
        "lhs_batching_dimensions",
        "rhs_batching_dimensions",
        "lhs_contracting_dimensions",
        "rhs_contracting_dimensions",
    )

    lhs_batching_dimensions: ArrayAttr[IntAttr] = param_def()
    rhs_batching_dimensions: ArrayAttr[IntAttr] = param_def()
    lhs_contracting_dimensions: ArrayAttr[IntAttr] = param_def()
    rhs_contracting_dimensions: ArrayAttr[IntAttr] = param_def()

    @staticmethod
    def make(lhs_batch: Sequence[int], rhs_batch: Sequence[int], lhs_contract: Sequence[int],
             rhs_contract: Sequence[int]) -> DotAttr:  # fmt: skip
        return _dot_attr(tuple(lhs_batch), tuple(rhs_batch), tuple(lhs_contract), tuple(rhs_contract))


@lru_cache(maxsize=256)
def _dot_attr(lhs_batch: tuple[int, ...], rhs_batch: tuple[int, ...], lhs_contract: tuple[int, ...],
              rhs_contract: tuple[int, ...]) -> DotAttr:  # fmt: skip
    # Attributes are immutable values: a program's dot products share a few of them.
    return DotAttr(_int_list(lhs_batch), _int_list(rhs_batch), _int_list(lhs_contract), _int_list(rhs_contract))


@irdl_attr_definition
class GatherAttr(_NamedDimensionNumbers):
    """`#stablehlo.gather<collapsed_slice_dims = [1], operand_batching_dims = [0],
    start_indices_batching_dims = [0], start_index_map = [1], index_vector_dim = 1>`"""

    name = "stablehlo.gather"
    FIELDS = (
        "offset_dims",
        "collapsed_slice_dims",
        "operand_batching_dims",
        "start_indices_batching_dims",
        "start_index_map",
        "index_vector_dim",
    )
    SCALAR_FIELDS = ("index_vector_dim",)

    offset_dims: ArrayAttr[IntAttr] = param_def()
    collapsed_slice_dims: ArrayAttr[IntAttr] = param_def()
    operand_batching_dims: ArrayAttr[IntAttr] = param_def()
    start_indices_batching_dims: ArrayAttr[IntAttr] = param_def()
    start_index_map: ArrayAttr[IntAttr] = param_def()
    index_vector_dim: IntAttr = param_def()


@irdl_attr_definition
class ScatterAttr(_NamedDimensionNumbers):
    """`#stablehlo.scatter<inserted_window_dims = [1], input_batching_dims = [0],
    scatter_indices_batching_dims = [0], scatter_dims_to_operand_dims = [1], index_vector_dim = 1>`"""

    name = "stablehlo.scatter"
    FIELDS = (
        "update_window_dims",
        "inserted_window_dims",
        "input_batching_dims",
        "scatter_indices_batching_dims",
        "scatter_dims_to_operand_dims",
        "index_vector_dim",
    )
    SCALAR_FIELDS = ("index_vector_dim",)

    update_window_dims: ArrayAttr[IntAttr] = param_def()
    inserted_window_dims: ArrayAttr[IntAttr] = param_def()
    input_batching_dims: ArrayAttr[IntAttr] = param_def()
    scatter_indices_batching_dims: ArrayAttr[IntAttr] = param_def()
    scatter_dims_to_operand_dims: ArrayAttr[IntAttr] = param_def()
    index_vector_dim: IntAttr = param_def()


# The letters of `#stablehlo.conv<...>`'s three layouts: the two non-spatial dims of each, in the
# order of a spec (`lax.ConvDimensionNumbers`: batch then feature, or out-feature then in-feature).
CONV_LETTERS = (("b", "f"), ("o", "i"), ("b", "f"))


@irdl_attr_definition
class ConvAttr(ParametrizedAttribute):
    """`#stablehlo.conv<[b, f, 0, 1]x[o, i, 0, 1]->[b, f, 0, 1]>`: where each role sits in the
    input, the kernel and the output. Held as three specs, as `lax.ConvDimensionNumbers` holds
    them: for each of the three, the dim of its batch (output feature), then of its feature (input
    feature), then of each spatial dim in order."""

    name = "stablehlo.conv"

    lhs_spec: ArrayAttr[IntAttr] = param_def()
    rhs_spec: ArrayAttr[IntAttr] = param_def()
    out_spec: ArrayAttr[IntAttr] = param_def()

    @staticmethod
    def make(lhs: Sequence[int], rhs: Sequence[int], out: Sequence[int]) -> ConvAttr:
        return ConvAttr(_int_list(lhs), _int_list(rhs), _int_list(out))

    @property
    def specs(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        lhs, rhs, out = (tuple(_int_data(d) for d in spec.data) for spec in (self.lhs_spec, self.rhs_spec, self.out_spec))
        return lhs, rhs, out

    def print_parameters(self, printer: Printer) -> None:
        layouts: list[str] = []
        for spec, letters in zip(self.specs, CONV_LETTERS):
            names = [""] * len(spec)
            for position, dim in enumerate(spec):
                names[dim] = letters[position] if position < 2 else str(position - 2)
            layouts.append("[" + ", ".join(names) + "]")
        printer.print_string(f"<{layouts[0]}x{layouts[1]}->{layouts[2]}>")

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> Sequence[Attribute]:
        specs: list[ArrayAttr[IntAttr]] = []
        parser.parse_punctuation("<")
        for index, letters in enumerate(CONV_LETTERS):
            if index == 1:
                parser.parse_keyword("x")
            elif index == 2:
                parser.parse_punctuation("->")
            pos = parser.pos
            names = parser.parse_comma_separated_list(parser.Delimiter.SQUARE, lambda: _conv_dim_name(parser))
            order = [*letters, *(str(i) for i in range(len(names) - 2))]
            if sorted(names) != sorted(order):
                parser.raise_error(f"a convolution layout names {', '.join(order)} once each, found {names}", pos, parser.pos)
            specs.append(_int_list([names.index(name) for name in order]))
        parser.parse_punctuation(">")
        return tuple(specs)


def _conv_dim_name(parser: AttrParser) -> str:
    number = parser.parse_optional_integer(allow_boolean=False, allow_negative=False)
    return str(number) if number is not None else parser.parse_identifier()


def i64_array(values: Sequence[int]) -> DenseArrayBase:
    """`array<i64: 1, 0>`"""
    return _i64_array(tuple(int(v) for v in values))


@lru_cache(maxsize=1024)
def _i64_array(values: tuple[int, ...]) -> DenseArrayBase:
    # Shared, as every attribute can be: a lowered program repeats a few dimension lists.
    return DenseArrayBase.from_list(i64, list(values))


def i64_values(attr: DenseArrayBase) -> tuple[int, ...]:
    if is_int_array(attr):
        return attr.get_values()
    assert is_float_array(attr)  # a dense array holds integers or floats
    return tuple(int(v) for v in attr.get_values())


# ---------------------------------------------------------------------------------------------
# Ops


def _type(value: SSAValue) -> TensorType[Attribute]:
    t = value.type
    if not is_tensor(t):
        raise VerifyException(f"expected a tensor, found {t}")
    return t


def shape_of_any(value: SSAValue) -> tuple[int, ...]:
    """The shape of any tensor value of the lowered program (i1 masks included, which the step
    dialect's `shape_of` refuses)."""
    return tuple(_type(value).get_shape())


def element_of_any(value: SSAValue) -> Attribute:
    """The element type of any tensor value of the lowered program (i1 included)."""
    return _type(value).get_element_type()


class StableHLOOp(IRDLOperation):
    """Every op of the subset is pure and prints in MLIR's generic form."""

    traits = traits_def(Pure())
    # Its verifier reads only its operand and result types, properties and attributes
    # (`stepc.ir.parse.verify` checks each such signature once).
    LOCAL_VERIFIER: ClassVar[bool] = True

    def __init__(self, *, operands: Sequence[SSAValue] = (), result_types: Sequence[Attribute] = (),
                 properties: Mapping[str, Attribute] | None = None, regions: Sequence[Region] = ()) -> None:  # fmt: skip
        build_fixed(self, operands, result_types, properties, regions)


class ElementwiseBinary(StableHLOOp):
    """`%r = "stablehlo.add"(%a, %b) : (T, T) -> T`, operands of one shape (no implicit broadcast)."""

    lhs = operand_def(TensorType)
    rhs = operand_def(TensorType)
    result = result_def(TensorType)

    def __init__(self, lhs: SSAValue, rhs: SSAValue):
        super().__init__(operands=[lhs, rhs], result_types=[lhs.type])

    def verify_(self) -> None:
        if _type(self.lhs).get_shape() != _type(self.rhs).get_shape():
            raise VerifyException(f"{self.name}: operand shapes differ: {self.lhs.type} and {self.rhs.type}")


class ElementwiseUnary(StableHLOOp):
    """`%r = "stablehlo.exponential"(%a) : (T) -> T`"""

    operand = operand_def(TensorType)
    result = result_def(TensorType)

    def __init__(self, operand: SSAValue):
        super().__init__(operands=[operand], result_types=[operand.type])


@irdl_op_definition
class AddOp(ElementwiseBinary):
    """`"stablehlo.add"(%a, %b)`"""

    name = "stablehlo.add"


@irdl_op_definition
class SubtractOp(ElementwiseBinary):
    """`"stablehlo.subtract"(%a, %b)`"""

    name = "stablehlo.subtract"


@irdl_op_definition
class MultiplyOp(ElementwiseBinary):
    """`"stablehlo.multiply"(%a, %b)`"""

    name = "stablehlo.multiply"


@irdl_op_definition
class DivideOp(ElementwiseBinary):
    """`"stablehlo.divide"(%a, %b)`"""

    name = "stablehlo.divide"


@irdl_op_definition
class MaximumOp(ElementwiseBinary):
    """`"stablehlo.maximum"(%a, %b)`"""

    name = "stablehlo.maximum"


@irdl_op_definition
class MinimumOp(ElementwiseBinary):
    """`"stablehlo.minimum"(%a, %b)`"""

    name = "stablehlo.minimum"


@irdl_op_definition
class NegateOp(ElementwiseUnary):
    """`"stablehlo.negate"(%a)`"""

    name = "stablehlo.negate"


@irdl_op_definition
class ExponentialOp(ElementwiseUnary):
    """`"stablehlo.exponential"(%a)`"""

    name = "stablehlo.exponential"


@irdl_op_definition
class LogOp(ElementwiseUnary):
    """`"stablehlo.log"(%a)`"""

    name = "stablehlo.log"


@irdl_op_definition
class TanhOp(ElementwiseUnary):
    """`"stablehlo.tanh"(%a)`"""

    name = "stablehlo.tanh"


@irdl_op_definition
class LogisticOp(ElementwiseUnary):
    """`"stablehlo.logistic"(%a)`"""

    name = "stablehlo.logistic"


@irdl_op_definition
class SqrtOp(ElementwiseUnary):
    """`"stablehlo.sqrt"(%a)`"""

    name = "stablehlo.sqrt"


@irdl_op_definition
class RsqrtOp(ElementwiseUnary):
    """`"stablehlo.rsqrt"(%a)`"""

    name = "stablehlo.rsqrt"


@irdl_op_definition
class AbsOp(ElementwiseUnary):
    """`"stablehlo.abs"(%a)`"""

    name = "stablehlo.abs"


MaxOp = MaximumOp
MinOp = MinimumOp
ExpOp = ExponentialOp


# Integer bit operations (the threefry hash of `step.dropout`'s mask), on ui32 tensors.


@irdl_op_definition
class XorOp(ElementwiseBinary):
    """`"stablehlo.xor"(%a, %b) : (tensor<4xui32>, tensor<4xui32>) -> tensor<4xui32>`"""

    name = "stablehlo.xor"


@irdl_op_definition
class OrOp(ElementwiseBinary):
    """`"stablehlo.or"(%a, %b) : (tensor<4xui32>, tensor<4xui32>) -> tensor<4xui32>`"""

    name = "stablehlo.or"


@irdl_op_definition
class ShiftLeftOp(ElementwiseBinary):
    """`"stablehlo.shift_left"(%a, %n) : (tensor<4xui32>, tensor<4xui32>) -> tensor<4xui32>`"""

    name = "stablehlo.shift_left"


@irdl_op_definition
class ShiftRightLogicalOp(ElementwiseBinary):
    """`"stablehlo.shift_right_logical"(%a, %n) : (tensor<4xui32>, tensor<4xui32>) -> tensor<4xui32>`"""

    name = "stablehlo.shift_right_logical"


@irdl_op_definition
class ConstantOp(StableHLOOp):
    """`%c = "stablehlo.constant"() <{value = dense<0.5> : tensor<f32>}> : () -> tensor<f32>`"""

    name = "stablehlo.constant"

    value = prop_def(DenseIntOrFPElementsAttr)
    output = result_def(TensorType)

    def __init__(self, value: DenseIntOrFPElementsAttr):
        super().__init__(properties={"value": value}, result_types=[value.type])


@irdl_op_definition
class ConvertOp(StableHLOOp):
    """`%r = "stablehlo.convert"(%a) : (tensor<4xi1>) -> tensor<4xf32>`"""

    name = "stablehlo.convert"

    operand = operand_def(TensorType)
    result = result_def(TensorType)

    def __init__(self, operand: SSAValue, result_type: Attribute):
        super().__init__(operands=[operand], result_types=[result_type])


@irdl_op_definition
class CompareOp(StableHLOOp):
    """`%m = "stablehlo.compare"(%a, %b) <{comparison_direction = #stablehlo<comparison_direction GT>}>
    : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xi1>`"""

    name = "stablehlo.compare"

    lhs = operand_def(TensorType)
    rhs = operand_def(TensorType)
    result = result_def(TensorType)
    comparison_direction = prop_def(ComparisonDirectionAttr)

    def __init__(self, direction: ComparisonDirection, lhs: SSAValue, rhs: SSAValue):
        shape = _type(lhs).get_shape()
        super().__init__(
            operands=[lhs, rhs],
            result_types=[TensorType(i1, shape)],
            properties={"comparison_direction": ComparisonDirectionAttr(direction)},
        )

    @property
    def direction(self) -> ComparisonDirection:
        return self.comparison_direction.data


@irdl_op_definition
class SelectOp(StableHLOOp):
    """`%r = "stablehlo.select"(%mask, %a, %b) : (tensor<4xi1>, T, T) -> T`"""

    name = "stablehlo.select"

    pred = operand_def(TensorType)
    on_true = operand_def(TensorType)
    on_false = operand_def(TensorType)
    result = result_def(TensorType)

    def __init__(self, pred: SSAValue, on_true: SSAValue, on_false: SSAValue):
        super().__init__(operands=[pred, on_true, on_false], result_types=[on_true.type])


@irdl_op_definition
class BroadcastInDimOp(StableHLOOp):
    """`%r = "stablehlo.broadcast_in_dim"(%a) <{broadcast_dimensions = array<i64: 1>}>
    : (tensor<32xf32>) -> tensor<16x32xf32>`"""

    name = "stablehlo.broadcast_in_dim"

    operand = operand_def(TensorType)
    result = result_def(TensorType)
    broadcast_dimensions = prop_def(DenseArrayBase)

    def __init__(self, operand: SSAValue, dims: Sequence[int], result_type: Attribute):
        super().__init__(
            operands=[operand], result_types=[result_type], properties={"broadcast_dimensions": i64_array(dims)}
        )

    @property
    def dims(self) -> tuple[int, ...]:
        return i64_values(self.broadcast_dimensions)


@irdl_op_definition
class ReshapeOp(StableHLOOp):
    """`%r = "stablehlo.reshape"(%a) : (tensor<4x8xf32>) -> tensor<32xf32>`"""

    name = "stablehlo.reshape"

    operand = operand_def(TensorType)
    result = result_def(TensorType)

    def __init__(self, operand: SSAValue, result_type: Attribute):
        super().__init__(operands=[operand], result_types=[result_type])


@irdl_op_definition
class TransposeOp(StableHLOOp):
    """`%r = "stablehlo.transpose"(%a) <{permutation = array<i64: 1, 0>}> : (tensor<4x8xf32>) -> tensor<8x4xf32>`"""

    name = "stablehlo.transpose"

    operand = operand_def(TensorType)
    result = result_def(TensorType)
    permutation = prop_def(DenseArrayBase)

    def __init__(self, operand: SSAValue, perm: Sequence[int], result_type: Attribute):
        super().__init__(operands=[operand], result_types=[result_type], properties={"permutation": i64_array(perm)})

    @property
    def perm(self) -> tuple[int, ...]:
        return i64_values(self.permutation)


@irdl_op_definition
class DotGeneralOp(StableHLOOp):
    """`%r = "stablehlo.dot_general"(%a, %b) <{dot_dimension_numbers = #stablehlo.dot<
    lhs_contracting_dimensions = [1], rhs_contracting_dimensions = [0]>}> : (Ta, Tb) -> Tr`"""

    name = "stablehlo.dot_general"

    lhs = operand_def(TensorType)
    rhs = operand_def(TensorType)
    result = result_def(TensorType)
    dot_dimension_numbers = prop_def(DotAttr)

    def __init__(self, lhs: SSAValue, rhs: SSAValue, numbers: DotAttr, result_type: Attribute):
        super().__init__(operands=[lhs, rhs], result_types=[result_type], properties={"dot_dimension_numbers": numbers})


@irdl_op_definition
class IotaOp(StableHLOOp):
    """`%i = "stablehlo.iota"() <{iota_dimension = 1 : i64}> : () -> tensor<16x10xi32>`"""

    name = "stablehlo.iota"

    output = result_def(TensorType)
    iota_dimension = prop_def(IntegerAttr)

    def __init__(self, dimension: int, result_type: Attribute):
        super().__init__(result_types=[result_type], properties={"iota_dimension": IntegerAttr(dimension, i64)})

    @property
    def dimension(self) -> int:
        return int(self.iota_dimension.value.data)


@irdl_op_definition
class GatherOp(StableHLOOp):
    """`%r = "stablehlo.gather"(%logits, %idx) <{dimension_numbers = #stablehlo.gather<...>,
    slice_sizes = array<i64: 1, 1>}> : (tensor<16x10xf32>, tensor<16x1xi32>) -> tensor<16xf32>`"""

    name = "stablehlo.gather"

    operand = operand_def(TensorType)
    start_indices = operand_def(TensorType)
    result = result_def(TensorType)
    dimension_numbers = prop_def(GatherAttr)
    slice_sizes = prop_def(DenseArrayBase)
    indices_are_sorted = opt_prop_def(BoolAttr)

    def __init__(self, operand: SSAValue, indices: SSAValue, numbers: GatherAttr, slice_sizes: Sequence[int],
                 result_type: Attribute):  # fmt: skip
        super().__init__(
            operands=[operand, indices],
            result_types=[result_type],
            properties={"dimension_numbers": numbers, "slice_sizes": i64_array(slice_sizes)},
        )


@irdl_op_definition
class ReturnOp(IRDLOperation):
    """`"stablehlo.return"(%s) : (tensor<f32>) -> ()` (ends a reduce body)"""

    name = "stablehlo.return"

    results_ = var_operand_def(TensorType)
    traits = traits_def(IsTerminator(), Pure())

    def __init__(self, values: Sequence[SSAValue]):
        super().__init__(operands=[list(values)])


@irdl_op_definition
class ReduceOp(StableHLOOp):
    """One input, one init value, a body combining two rank-0 tensors:
    `%r = "stablehlo.reduce"(%a, %zero) <{dimensions = array<i64: 1>}> ({ ^bb0(%x: tensor<f32>, %y: tensor<f32>):
    %s = "stablehlo.add"(%x, %y) ...; "stablehlo.return"(%s) ... }) : (tensor<4x3xf32>, tensor<f32>) -> tensor<4xf32>`"""

    name = "stablehlo.reduce"

    input = operand_def(TensorType)
    init_value = operand_def(TensorType)
    result = result_def(TensorType)
    dimensions = prop_def(DenseArrayBase)
    body = region_def("single_block")

    def __init__(self, input: SSAValue, init: SSAValue, dims: Sequence[int], combiner: type[ElementwiseBinary],
                 result_type: Attribute):  # fmt: skip
        scalar = init.type
        block = Block(arg_types=[scalar, scalar])
        combined = combiner(block.args[0], block.args[1])
        block.add_ops([combined, ReturnOp([combined.result])])
        super().__init__(
            operands=[input, init],
            result_types=[result_type],
            properties={"dimensions": i64_array(dims)},
            regions=[Region(block)],
        )

    @property
    def dims(self) -> tuple[int, ...]:
        return i64_values(self.dimensions)

    @property
    def combiner(self) -> type[IRDLOperation] | None:
        """The body's one combining op class (add, maximum, ...), or None for another body."""
        return _single_combiner(self.body.block)


def _single_combiner(block: Block) -> type[IRDLOperation] | None:
    ops = list(block.ops)
    if len(ops) != 2 or not isinstance(ops[1], ReturnOp):
        return None
    op = ops[0]
    if not isinstance(op, ElementwiseBinary) or (op.lhs, op.rhs) != (block.args[0], block.args[1]):
        return None
    return type(op)


@irdl_op_definition
class ScatterOp(StableHLOOp):
    """One input, its indices and updates, a body combining two rank-0 tensors (as `ReduceOp`'s):
    `%r = "stablehlo.scatter"(%x, %idx, %upd) <{scatter_dimension_numbers = #stablehlo.scatter<...>}> ({
    ^bb0(%a: tensor<f32>, %b: tensor<f32>): %s = "stablehlo.add"(%a, %b) ...; "stablehlo.return"(%s) ... })
    : (tensor<16x10xf32>, tensor<16x1xi32>, tensor<16xf32>) -> tensor<16x10xf32>`"""

    name = "stablehlo.scatter"

    input = operand_def(TensorType)
    scatter_indices = operand_def(TensorType)
    updates = operand_def(TensorType)
    result = result_def(TensorType)
    scatter_dimension_numbers = prop_def(ScatterAttr)
    indices_are_sorted = opt_prop_def(BoolAttr)
    unique_indices = opt_prop_def(BoolAttr)
    update_computation = region_def("single_block")

    def __init__(self, input: SSAValue, indices: SSAValue, updates: SSAValue, numbers: ScatterAttr,
                 combiner: type[ElementwiseBinary]):  # fmt: skip
        scalar = TensorType(_type(input).get_element_type(), [])
        block = Block(arg_types=[scalar, scalar])
        combined = combiner(block.args[0], block.args[1])
        block.add_ops([combined, ReturnOp([combined.result])])
        super().__init__(
            operands=[input, indices, updates],
            result_types=[input.type],
            properties={"scatter_dimension_numbers": numbers},
            regions=[Region(block)],
        )

    @property
    def combiner(self) -> type[IRDLOperation] | None:
        """The body's one combining op class (add, ...), or None for another body."""
        return _single_combiner(self.update_computation.block)


@irdl_op_definition
class DynamicSliceOp(StableHLOOp):
    """`%r = "stablehlo.dynamic_slice"(%a, %i, %j) <{slice_sizes = array<i64: 1, 3>}>
    : (tensor<4x3xf32>, tensor<i32>, tensor<i32>) -> tensor<1x3xf32>`: the slice of the given
    sizes starting at one rank-0 integer index per dim (each clamped so that it fits, as XLA does)."""

    name = "stablehlo.dynamic_slice"

    operand = operand_def(TensorType)
    start_indices = var_operand_def(TensorType)
    result = result_def(TensorType)
    slice_sizes = prop_def(DenseArrayBase)

    def __init__(self, operand: SSAValue, start_indices: Sequence[SSAValue], sizes: Sequence[int]):
        result_type = TensorType(_type(operand).get_element_type(), list(sizes))
        super().__init__(
            operands=[operand, *start_indices],  # (one variadic group: the operands flat)
            result_types=[result_type],
            properties={"slice_sizes": i64_array(sizes)},
        )

    @property
    def sizes(self) -> tuple[int, ...]:
        return i64_values(self.slice_sizes)

    def verify_(self) -> None:
        shape = tuple(_type(self.operand).get_shape())
        if len(self.start_indices) != len(shape) or len(self.sizes) != len(shape):
            raise VerifyException(
                f"{self.name} of a rank-{len(shape)} operand takes {len(shape)} start indices and slice sizes, "
                f"found {len(self.start_indices)} and {len(self.sizes)}"
            )
        for index in self.start_indices:
            t = _type(index)
            if t.get_shape() or not isinstance(t.get_element_type(), IntegerType):
                raise VerifyException(f"{self.name} start indices are rank-0 integer tensors, found {t}")
        if any(not 0 <= size <= dim for size, dim in zip(self.sizes, shape)):
            raise VerifyException(f"{self.name} slice sizes {list(self.sizes)} do not fit in {self.operand.type}")
        if tuple(_type(self.result).get_shape()) != self.sizes:
            raise VerifyException(f"{self.name} result {self.result.type} is not of the slice sizes {list(self.sizes)}")


@irdl_op_definition
class WhileOp(IRDLOperation):
    """A loop over carried values: `cond` (their block arguments -> `tensor<i1>`) says whether to
    run `body` (their block arguments -> their next values) once more; the results are the
    values when `cond` says no.

        %r:3 = "stablehlo.while"(%i, %acc, %x) ({
        ^bb0(%i1: tensor<i32>, %acc1: tensor<3xf32>, %x1: tensor<4x3xf32>):
          ... "stablehlo.return"(%more) : (tensor<i1>) -> ()
        }, {
        ^bb0(%i2: tensor<i32>, %acc2: tensor<3xf32>, %x2: tensor<4x3xf32>):
          ... "stablehlo.return"(%next_i, %next_acc, %x2) : (tensor<i32>, tensor<3xf32>, tensor<4x3xf32>) -> ()
        }) : (tensor<i32>, tensor<3xf32>, tensor<4x3xf32>) -> (tensor<i32>, tensor<3xf32>, tensor<4x3xf32>)

    Its regions read only their own arguments (everything the body needs is carried, as
    JAX's loops carry it)."""

    name = "stablehlo.while"

    inputs = var_operand_def(TensorType)
    outputs = var_result_def(TensorType)
    cond = region_def("single_block")
    body = region_def("single_block")
    traits = traits_def(Pure(), IsolatedFromAbove())

    def __init__(self, inputs: Sequence[SSAValue], cond: Region, body: Region):
        build_fixed(self, list(inputs), [v.type for v in inputs], None, [cond, body])

    def verify_(self) -> None:
        types = [v.type for v in self.inputs]
        if [r.type for r in self.outputs] != types:
            raise VerifyException(f"{self.name}: its results must have the types of its operands")
        for what, region in (("cond", self.cond), ("body", self.body)):
            block = region.block
            if [a.type for a in block.args] != types:
                raise VerifyException(f"{self.name}: the {what} region takes one argument per operand, of its type")
            last = block.last_op
            if not isinstance(last, ReturnOp):
                raise VerifyException(f"{self.name}: the {what} region must end with stablehlo.return")
        returned = [v.type for v in self.cond.block.last_op.operands]  # pyright: ignore[reportOptionalMemberAccess]  # checked above
        if returned != [TensorType(i1, [])]:
            raise VerifyException(f"{self.name}: the cond region returns one tensor<i1>, found {returned}")
        returned = [v.type for v in self.body.block.last_op.operands]  # pyright: ignore[reportOptionalMemberAccess]  # checked above
        if returned != types:
            raise VerifyException(f"{self.name}: the body region returns the next value of each operand, of its type")


@irdl_op_definition
class ConvolutionOp(StableHLOOp):
    """`%r = "stablehlo.convolution"(%x, %w) <{batch_group_count = 1 : i64,
    dimension_numbers = #stablehlo.conv<[b, f, 0, 1]x[o, i, 0, 1]->[b, f, 0, 1]>, feature_group_count = 1 : i64,
    lhs_dilation = array<i64: 1, 1>, padding = dense<1> : tensor<2x2xi64>, rhs_dilation = array<i64: 1, 1>,
    window_strides = array<i64: 1, 1>}> : (Tx, Tw) -> Tr` (`lax.conv_general_dilated`)"""

    name = "stablehlo.convolution"

    lhs = operand_def(TensorType)
    rhs = operand_def(TensorType)
    result = result_def(TensorType)
    window_strides = prop_def(DenseArrayBase)
    padding = prop_def(DenseIntOrFPElementsAttr)
    lhs_dilation = prop_def(DenseArrayBase)
    rhs_dilation = prop_def(DenseArrayBase)
    dimension_numbers = prop_def(ConvAttr)
    feature_group_count = prop_def(IntegerAttr)
    batch_group_count = prop_def(IntegerAttr)

    def __init__(self, lhs: SSAValue, rhs: SSAValue, result_type: Attribute, *, numbers: ConvAttr,
                 strides: Sequence[int], padding: Sequence[tuple[int, int]], lhs_dilation: Sequence[int],
                 rhs_dilation: Sequence[int], feature_groups: int = 1, batch_groups: int = 1):  # fmt: skip
        pads = DenseIntOrFPElementsAttr.from_list(TensorType(i64, [len(padding), 2]), [v for pair in padding for v in pair])
        super().__init__(
            operands=[lhs, rhs],
            result_types=[result_type],
            properties={
                "window_strides": i64_array(strides), "padding": pads, "lhs_dilation": i64_array(lhs_dilation),
                "rhs_dilation": i64_array(rhs_dilation), "dimension_numbers": numbers,
                "feature_group_count": IntegerAttr(feature_groups, i64), "batch_group_count": IntegerAttr(batch_groups, i64),
            },
        )  # fmt: skip

    @property
    def strides(self) -> tuple[int, ...]:
        return i64_values(self.window_strides)

    @property
    def pads(self) -> tuple[tuple[int, int], ...]:
        """`(low, high)` per spatial dim."""
        values = [v for v in self.padding.get_values() if isinstance(v, int)]  # i64 elements
        return tuple((values[2 * i], values[2 * i + 1]) for i in range(len(values) // 2))

    @property
    def dilations(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """`(lhs_dilation, rhs_dilation)`."""
        return i64_values(self.lhs_dilation), i64_values(self.rhs_dilation)

    @property
    def groups(self) -> tuple[int, int]:
        """`(feature_group_count, batch_group_count)`."""
        return int(self.feature_group_count.value.data), int(self.batch_group_count.value.data)


@irdl_op_definition
class ReverseOp(StableHLOOp):
    """`%r = "stablehlo.reverse"(%a) <{dimensions = array<i64: 2, 3>}> : (T) -> T`"""

    name = "stablehlo.reverse"

    operand = operand_def(TensorType)
    result = result_def(TensorType)
    dimensions = prop_def(DenseArrayBase)

    def __init__(self, operand: SSAValue, dims: Sequence[int]):
        super().__init__(operands=[operand], result_types=[operand.type], properties={"dimensions": i64_array(dims)})

    @property
    def dims(self) -> tuple[int, ...]:
        return i64_values(self.dimensions)


# ---------------------------------------------------------------------------------------------
# Windows and pieces (the second op set: pooling, concat, slice, pad)


def _reduction_body(element: Attribute, combiner: type[ElementwiseBinary]) -> Region:
    """A body combining two rank-0 tensors with one op: `^bb0(%a, %b): %c = combiner(%a, %b); return %c`."""
    scalar = TensorType(element, [])
    block = Block(arg_types=[scalar, scalar])
    combined = combiner(block.args[0], block.args[1])
    block.add_ops([combined, ReturnOp([combined.result])])
    return Region(block)


def _type_shape(t: Attribute) -> tuple[int, ...]:
    assert is_tensor(t)
    return tuple(t.get_shape())


@irdl_op_definition
class ReduceWindowOp(StableHLOOp):
    """One input, one init value (padding fills with it), a body combining two rank-0 tensors:
    `%r = "stablehlo.reduce_window"(%x, %init) <{window_dimensions = array<i64: 1, 1, 2, 2>,
    window_strides = array<i64: 1, 1, 2, 2>, padding = dense<[[0, 0], [0, 0], [1, 1], [1, 1]]> : tensor<4x2xi64>}>
    ({ ^bb0(%a: tensor<f32>, %b: tensor<f32>): ... "stablehlo.return"(%m) ... })
    : (tensor<8x3x6x6xf32>, tensor<f32>) -> tensor<8x3x4x4xf32>`"""

    name = "stablehlo.reduce_window"

    input = operand_def(TensorType)
    init_value = operand_def(TensorType)
    result = result_def(TensorType)
    window_dimensions = prop_def(DenseArrayBase)
    window_strides = prop_def(DenseArrayBase)
    padding = prop_def(DenseIntOrFPElementsAttr)
    body = region_def("single_block")

    def __init__(self, input: SSAValue, init: SSAValue, window: Sequence[int], strides: Sequence[int],
                 padding: Sequence[tuple[int, int]], combiner: type[ElementwiseBinary], result_type: Attribute):  # fmt: skip
        pairs = DenseIntOrFPElementsAttr.from_list(
            TensorType(i64, [len(padding), 2]), [v for pair in padding for v in pair]
        )
        super().__init__(
            operands=[input, init],
            result_types=[result_type],
            properties={"window_dimensions": i64_array(window), "window_strides": i64_array(strides), "padding": pairs},
            regions=[_reduction_body(_type(init).get_element_type(), combiner)],
        )

    @property
    def window(self) -> tuple[int, ...]:
        return i64_values(self.window_dimensions)

    @property
    def strides(self) -> tuple[int, ...]:
        return i64_values(self.window_strides)

    @property
    def pads(self) -> tuple[tuple[int, int], ...]:
        """(low, high) per dim."""
        values = [int(v) for v in np.frombuffer(self.padding.data.data, dtype=np.int64)]  # i64 elements, packed
        rows = _type_shape(self.padding.type)[0]
        if len(values) == 1:  # a splat (`dense<0> : tensor<4x2xi64>` read back from text) holds one
            values = values * (2 * rows)
        return tuple((values[i], values[i + 1]) for i in range(0, len(values), 2))

    @property
    def combiner(self) -> type[IRDLOperation] | None:
        """The body's one combining op class (add, maximum, ...), or None for another body."""
        return _single_combiner(self.body.block)


@irdl_op_definition
class PadOp(StableHLOOp):
    """`%r = "stablehlo.pad"(%x, %zero) <{edge_padding_low = array<i64: 1>, edge_padding_high = array<i64: 0>,
    interior_padding = array<i64: 1>}> : (tensor<3xf32>, tensor<f32>) -> tensor<6xf32>`"""

    name = "stablehlo.pad"

    operand = operand_def(TensorType)
    padding_value = operand_def(TensorType)
    result = result_def(TensorType)
    edge_padding_low = prop_def(DenseArrayBase)
    edge_padding_high = prop_def(DenseArrayBase)
    interior_padding = prop_def(DenseArrayBase)

    def __init__(self, operand: SSAValue, value: SSAValue, low: Sequence[int], high: Sequence[int],
                 interior: Sequence[int], result_type: Attribute):  # fmt: skip
        super().__init__(
            operands=[operand, value],
            result_types=[result_type],
            properties={
                "edge_padding_low": i64_array(low),
                "edge_padding_high": i64_array(high),
                "interior_padding": i64_array(interior),
            },
        )

    @property
    def config(self) -> tuple[tuple[int, int, int], ...]:
        """(low, high, interior) per dim, as `lax.pad` takes them."""
        return tuple(zip(*(i64_values(a) for a in (self.edge_padding_low, self.edge_padding_high, self.interior_padding))))


@irdl_op_definition
class SliceOp(StableHLOOp):
    """`%r = "stablehlo.slice"(%x) <{start_indices = array<i64: 0, 2>, limit_indices = array<i64: 4, 6>,
    strides = array<i64: 1, 2>}> : (tensor<4x8xf32>) -> tensor<4x2xf32>`"""

    name = "stablehlo.slice"

    operand = operand_def(TensorType)
    result = result_def(TensorType)
    start_indices = prop_def(DenseArrayBase)
    limit_indices = prop_def(DenseArrayBase)
    strides = prop_def(DenseArrayBase)

    def __init__(self, operand: SSAValue, start: Sequence[int], limit: Sequence[int], strides: Sequence[int],
                 result_type: Attribute):  # fmt: skip
        super().__init__(
            operands=[operand],
            result_types=[result_type],
            properties={"start_indices": i64_array(start), "limit_indices": i64_array(limit), "strides": i64_array(strides)},
        )

    @property
    def bounds(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(start, limit, strides), as `lax.slice` takes them."""
        return i64_values(self.start_indices), i64_values(self.limit_indices), i64_values(self.strides)


@irdl_op_definition
class ConcatenateOp(StableHLOOp):
    """`%r = "stablehlo.concatenate"(%a, %b) <{dimension = 1 : i64}> : (tensor<4x2xf32>, tensor<4x3xf32>) -> tensor<4x5xf32>`"""

    name = "stablehlo.concatenate"

    inputs = var_operand_def(TensorType)
    result = result_def(TensorType)
    dimension = prop_def(IntegerAttr)

    def __init__(self, inputs: Sequence[SSAValue], dimension: int, result_type: Attribute):
        super().__init__(
            operands=list(inputs), result_types=[result_type], properties={"dimension": IntegerAttr(dimension, i64)}
        )

    @property
    def axis(self) -> int:
        return int(self.dimension.value.data)


OPS: tuple[type[IRDLOperation], ...] = (
    AddOp, SubtractOp, MultiplyOp, DivideOp, MaxOp, MinOp,
    NegateOp, ExpOp, LogOp, TanhOp, LogisticOp, SqrtOp, RsqrtOp, AbsOp,
    ConstantOp, ConvertOp, CompareOp, SelectOp, BroadcastInDimOp, ReshapeOp, TransposeOp,
    DotGeneralOp, IotaOp, GatherOp, ScatterOp, ReduceOp, ReturnOp, DynamicSliceOp, WhileOp,
    ConvolutionOp, ReverseOp,
    ReduceWindowOp, PadOp, SliceOp, ConcatenateOp,
    XorOp, OrOp, ShiftLeftOp, ShiftRightLogicalOp,
)  # fmt: skip

StableHLO = Dialect("stablehlo", list(OPS), [ComparisonDirectionAttr, DotAttr, GatherAttr, ScatterAttr, ConvAttr])


# StableHLO has no erf: `chlo.erf` (CHLO, the "client" ops that XLA's pipeline and JAX's MLIR
# parser expand to StableHLO, as JAX lowers `lax.erf`) is the one op of another dialect the
# lowering emits (for `step.gelu`). It prints in the same generic form.


@irdl_op_definition
class ErfOp(ElementwiseUnary):
    """`"chlo.erf"(%a) : (tensor<4xf32>) -> tensor<4xf32>`"""

    name = "chlo.erf"


CHLO_OPS: tuple[type[IRDLOperation], ...] = (ErfOp,)
Chlo = Dialect("chlo", list(CHLO_OPS), [])
# The dialects of a lowered program's ops (a step op is anything else, and is still to lower).
LOWERED_DIALECTS = ("stablehlo", "chlo")


# ---------------------------------------------------------------------------------------------
# Text


def is_lowered(module: ModuleOp) -> bool:
    """Whether the module holds StableHLO (the output of lower-to-stablehlo)."""
    return any(op.name.startswith("stablehlo.") for op in module.walk())


def harmless_arg_attrs(attrs: DictionaryAttr) -> DictionaryAttr:
    """Argument attributes XLA's parser accepts: `#step.sgd<...>` overrides become a plain
    `{step.param}` (the optimizer has been applied by then); the roles stay."""
    out: dict[str, Attribute] = {}
    for key, value in attrs.data.items():
        if key == PARAM:
            out[key] = UnitAttr()
        elif isinstance(value, (UnitAttr, StringAttr, IntegerAttr)):  # BoolAttr is an IntegerAttr
            out[key] = value
    return DictionaryAttr(out)


def module_text(module: ModuleOp) -> str:
    """The lowered module as MLIR text that XLA compiles as it is:
    `module @name { func.func public @main(...) -> ... { "stablehlo.add"(...) ... } }`."""
    out = StringIO()
    printer = _StableHLOPrinter(stream=out)
    printer.print_op(module)
    text = out.getvalue()
    if text.startswith("builtin.module"):
        text = "module" + text[len("builtin.module") :]
    return text + "\n"


class _StableHLOPrinter(NamingPrinter):
    """xDSL's printer, except that float constants holding inf or NaN print as MLIR's raw
    little-endian hex form `dense<"0x0000807F">`, which both XLA and xDSL read back exactly
    (xDSL's parser reads a bare `0xFF800000` element as an integer)."""

    def print_attribute(self, attribute: Attribute) -> None:
        if is_dense(attribute) and _has_nonfinite(attribute):
            self.print_string(f'dense<"0x{attribute.data.data.hex().upper()}"> : ')
            self.print_attribute(attribute.type)
            return
        super().print_attribute(attribute)


def _has_nonfinite(attr: DenseIntOrFPElementsAttr) -> bool:
    """Whether a float constant holds inf or NaN (read from its raw bytes with NumPy: a splat
    constant of a big type stores every element)."""
    element = attr.get_element_type()
    if isinstance(element, IntegerType):
        return False
    dtype = {16: np.float16, 32: np.float32, 64: np.float64}.get(getattr(element, "bitwidth", 0))
    if dtype is None or isinstance(element, BFloat16Type):  # bf16: widen its 16 bits to f32's high half
        raw = np.frombuffer(attr.data.data, dtype=np.uint16).astype(np.uint32) << 16
        return not bool(np.all(np.isfinite(raw.view(np.float32))))
    return not bool(np.all(np.isfinite(np.frombuffer(attr.data.data, dtype=dtype))))


def main_function(module: ModuleOp) -> func.FuncOp:
    for op in module.ops:
        if isinstance(op, func.FuncOp):
            return op
    raise ValueError("the module holds no func.func")
