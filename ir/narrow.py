"""Type-narrowing checks for xDSL's generic attributes.

`isinstance(attr, TensorType)` narrows an `Attribute` to `TensorType[Unknown]` for pyright (it
cannot infer the type argument), which strict checking rejects wherever the result is used.
These checks are that `isinstance`, with the type argument spelled out: the bound of the class's
type parameter (`Attribute` for containers, the default for the others).
"""

from __future__ import annotations

from typing_extensions import TypeIs
from xdsl.dialects.builtin import (
    AnyFloat,
    ArrayAttr,
    DenseArrayBase,
    DenseIntOrFPElementsAttr,
    IntAttr,
    IntegerType,
    TensorType,
)
from xdsl.ir import Attribute


def is_tensor(attr: Attribute) -> TypeIs[TensorType[Attribute]]:
    return isinstance(attr, TensorType)


def is_array(attr: Attribute) -> TypeIs[ArrayAttr[Attribute]]:
    return isinstance(attr, ArrayAttr)


def is_int_attr(attr: Attribute) -> TypeIs[IntAttr]:
    return isinstance(attr, IntAttr)


def is_integer_type(attr: Attribute) -> TypeIs[IntegerType]:
    return isinstance(attr, IntegerType)


def is_dense(attr: Attribute) -> TypeIs[DenseIntOrFPElementsAttr]:
    return isinstance(attr, DenseIntOrFPElementsAttr)


def is_int_array(attr: DenseArrayBase) -> TypeIs[DenseArrayBase[IntegerType]]:
    return isinstance(attr.elt_type, IntegerType)


def is_float_array(attr: DenseArrayBase) -> TypeIs[DenseArrayBase[AnyFloat]]:
    return isinstance(attr.elt_type, AnyFloat)
