"""Element types of the step IR as NumPy dtypes (bf16 through ml_dtypes), and back."""

from __future__ import annotations

import ml_dtypes
import numpy as np
from xdsl.dialects.builtin import BFloat16Type, Float16Type, Float32Type, Float64Type, Signedness, TensorType
from xdsl.ir import Attribute

from stepc.ir.narrow import is_integer_type

_TO_NUMPY: tuple[tuple[type, np.dtype], ...] = (
    (Float16Type, np.dtype(np.float16)),
    (BFloat16Type, np.dtype(ml_dtypes.bfloat16)),
    (Float32Type, np.dtype(np.float32)),
    (Float64Type, np.dtype(np.float64)),
)


def numpy_dtype(element: Attribute) -> np.dtype:
    for cls, dtype in _TO_NUMPY:
        if isinstance(element, cls):
            return dtype
    if is_integer_type(element) and element.width.data == 32:
        return np.dtype(np.uint32) if element.signedness.data == Signedness.UNSIGNED else np.dtype(np.int32)
    raise TypeError(f"no NumPy dtype for element type {element}")


def element_type(dtype: np.dtype) -> Attribute:
    from xdsl.dialects.builtin import IntegerType, i32

    for cls, d in _TO_NUMPY:
        if d == dtype:
            return cls()
    if dtype == np.dtype(np.int32):
        return i32
    if dtype == np.dtype(np.uint32):
        return IntegerType(32, Signedness.UNSIGNED)
    raise TypeError(f"no step element type for dtype {dtype}")


def type_text(t: TensorType[Attribute]) -> str:
    """`tensor<16x32xf32>` for messages."""
    return str(t)


def dtype_name(t: TensorType[Attribute]) -> str:
    return str(t.get_element_type())
