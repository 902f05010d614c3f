"""The step dialect: text round trips, shape rules against NumPy, #step.sgd against PyTorch."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stepc.ir import shapes
from stepc.ir.diagnostics import StepcError
from stepc.ir.dialect import EXTRA_OPS, SPEC_OPS, SGDAttr, format_float
from stepc.ir.parse import load, load_text, parse_text, verify
from stepc.ir.printing import program_text
from stepc.ir.program import step_function

ROOT = Path(__file__).parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.ir"))
EVERY_OP = ROOT / "tests" / "filecheck" / "dialect" / "roundtrip.mlir"


# ---------------------------------------------------------------------------------------------
# Round trips


def round_trip(text: str, name: str) -> tuple[str, str]:
    first = program_text(load_text(text, name))
    second = program_text(load_text(first, name + ".printed"))
    return first, second


@pytest.mark.parametrize("path", [*EXAMPLES, EVERY_OP], ids=lambda p: p.name)
def test_parse_print_parse_print_is_identical(path: Path) -> None:
    first, second = round_trip(path.read_text(), str(path))
    assert first == second


def test_examples_are_there() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"linreg", "mlp_digits", "softmax_regression"} <= names
    assert len(names) >= 5  # the spec's three and at least two of our own


def test_every_op_is_in_the_round_trip_program() -> None:
    module = load(EVERY_OP)
    used = {op.name for op in step_function(module).walk()}
    assert {op.name for op in (*SPEC_OPS, *EXTRA_OPS)} <= used


@pytest.mark.parametrize(
    "value", [0.0, -0.0, 0.1, 1.0e-4, 1.0e30, -2.5e-300, 5e-324, 1 / 3, math.inf, -math.inf, 123456789.0]
)
def test_constants_round_trip_exactly(value: float) -> None:
    text = (
        "func.func @f(%w: tensor<f64> {step.param}) -> tensor<f64> attributes {step.sgd = #step.sgd<lr = 0.1>} {\n"
        f"  %c = step.constant {format_float(value)} : tensor<f64>\n"
        "  %loss = step.mul %w, %c : (tensor<f64>, tensor<f64>) -> tensor<f64>\n"
        "  func.return %loss : tensor<f64>\n}\n"
    )
    first, second = round_trip(text, "c.ir")
    assert first == second
    (const,) = [op for op in step_function(load_text(first, "c2.ir")).walk() if op.name == "step.constant"]
    parsed = const.values[0]  # type: ignore[attr-defined]
    assert parsed == value and math.copysign(1.0, parsed) == math.copysign(1.0, value)


def test_nan_constant_round_trips() -> None:
    text = (
        "func.func @f(%w: tensor<2xf32> {step.param}) -> tensor<f32> attributes {step.sgd = #step.sgd<lr = 0.1>} {\n"
        "  %c = step.constant dense<[0x7FF8000000000000, 0x7F800000]> : tensor<2xf32>\n"
        "  %m = step.mul %w, %c : (tensor<2xf32>, tensor<2xf32>) -> tensor<2xf32>\n"
        "  %loss = step.sum %m : tensor<2xf32> -> tensor<f32>\n"
        "  func.return %loss : tensor<f32>\n}\n"
    )
    first, second = round_trip(text, "nan.ir")
    assert first == second
    (const,) = [op for op in step_function(load_text(first, "n.ir")).walk() if op.name == "step.constant"]
    nan, inf = const.values  # type: ignore[attr-defined]
    assert math.isnan(nan) and inf == math.inf


# ---------------------------------------------------------------------------------------------
# Shape rules against NumPy

small_shapes = st.lists(st.integers(1, 4), min_size=0, max_size=4).map(tuple)


def numpy_says(fn, *args):  # type: ignore[no-untyped-def]
    """NumPy's result shape, or None where NumPy refuses."""
    try:
        return fn(*args).shape
    except ValueError:
        return None


def ours(fn, *args):  # type: ignore[no-untyped-def]
    try:
        return tuple(fn(*args))
    except shapes.ShapeError:
        return None


@settings(max_examples=150, deadline=None)
@given(small_shapes, small_shapes)
def test_broadcast_matches_numpy(a: tuple[int, ...], b: tuple[int, ...]) -> None:
    expected = numpy_says(lambda x, y: np.broadcast(np.empty(x), np.empty(y)), a, b)
    assert ours(shapes.broadcast, a, b) == expected


@settings(max_examples=150, deadline=None)
@given(small_shapes, small_shapes)
def test_broadcast_to_matches_numpy(a: tuple[int, ...], b: tuple[int, ...]) -> None:
    expected = numpy_says(lambda x, y: np.broadcast_to(np.empty(x), y), a, b)
    assert ours(shapes.broadcast_to, a, b) == expected


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 3), min_size=2, max_size=4).map(tuple), st.lists(st.integers(1, 3), min_size=2, max_size=4).map(tuple))
def test_matmul_forms(a: tuple[int, ...], b: tuple[int, ...]) -> None:
    # The spec's three forms: (m,k)x(k,n); (...,m,k)x(...,k,n) with equal batch dims; (...,m,k)x(k,n).
    spec_form = a[-1] == b[-2] and (len(b) == 2 or a[:-2] == b[:-2])
    got = ours(shapes.matmul, a, b)
    if spec_form:
        assert got == np.matmul(np.zeros(a), np.zeros(b)).shape
    else:
        assert got is None


@pytest.mark.parametrize("rank", [0, 1, 2, 3])
def test_transpose_and_reduce_match_numpy(rank: int) -> None:
    shape = (2, 3, 4)[:rank]
    x = np.empty(shape)
    for perm in itertools.permutations(range(rank)):
        assert shapes.transpose(shape, perm) == np.transpose(x, perm).shape
    for k in range(rank + 1):
        for dims in itertools.combinations(range(rank), k):
            assert shapes.reduce(shape, dims) == np.sum(x, axis=dims).shape
    assert shapes.reduce(shape, None) == ()
    with pytest.raises(shapes.ShapeError):
        shapes.transpose(shape, list(range(rank)) + [rank])
    with pytest.raises(shapes.ShapeError):
        shapes.reduce(shape, [rank])


def test_reshape_counts_elements() -> None:
    assert shapes.reshape((4, 6), (2, 12)) == (2, 12)
    assert shapes.reshape((1,), ()) == ()
    with pytest.raises(shapes.ShapeError, match="24 elements"):
        shapes.reshape((4, 6), (5, 5))


# ---------------------------------------------------------------------------------------------
# #step.sgd against torch.optim.SGD


def test_sgd_defaults_are_pytorchs() -> None:
    torch_defaults = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1).defaults
    resolved = SGDAttr.from_fields(lr=0.1).resolved()
    for field in ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"):
        assert resolved[field] == torch_defaults[field], field


def test_parameter_override_replaces_only_its_fields() -> None:
    group = SGDAttr.from_fields(lr=0.1, momentum=0.9, weight_decay=5e-4)
    override = SGDAttr.from_fields(weight_decay=0.0)
    resolved = group.resolved(override)
    assert resolved == {**group.resolved(), "weight_decay": 0.0}


SGD_ARGUMENTS = [
    dict(lr=0.1),
    dict(lr=0.0),
    dict(lr=-0.1),
    dict(lr=0.1, momentum=-0.1),
    dict(lr=0.1, weight_decay=-1.0),
    dict(lr=0.1, nesterov=True),
    dict(lr=0.1, momentum=0.9, nesterov=True),
    dict(lr=0.1, momentum=0.9, dampening=0.5, nesterov=True),
    dict(lr=0.1, momentum=0.9, dampening=0.5),
    dict(lr=0.1, dampening=-1.0),
    dict(lr=0.1, maximize=True, weight_decay=0.1),
]


@pytest.mark.parametrize("fields", SGD_ARGUMENTS, ids=str)
def test_sgd_errors_are_pytorchs(fields: dict) -> None:
    try:
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], **fields)
        torch_refuses = False
    except ValueError:
        torch_refuses = True
    text = ", ".join(f"{k} = {str(v).lower() if isinstance(v, bool) else format_float(v)}" for k, v in fields.items())
    program = (
        "func.func @f(%w: tensor<3xf32> {step.param}) -> tensor<f32>\n"
        f"    attributes {{step.sgd = #step.sgd<{text}>}} {{\n"
        "  %loss = step.sum %w : tensor<3xf32> -> tensor<f32>\n"
        "  func.return %loss : tensor<f32>\n}\n"
    )
    if torch_refuses:
        with pytest.raises(StepcError) as info:
            load_text(program, "sgd.ir")
        assert info.value.loc is not None and info.value.loc.line == 2
    else:
        load_text(program, "sgd.ir")


# ---------------------------------------------------------------------------------------------
# Builders: ops built by passes verify and print like parsed ones


def test_builders_infer_the_types_the_parser_reads() -> None:
    from xdsl.dialects.builtin import TensorType, f32, i32

    from stepc.ir.dialect import (
        AddOp,
        CompareOp,
        CrossEntropyOp,
        MatmulOp,
        ReduceOp,
        SoftmaxOp,
        SumOp,
        TransposeOp,
    )

    module = parse_text(
        "func.func @f(%a: tensor<2x3xf32>, %b: tensor<3x4xf32>, %l: tensor<2xi32>) -> tensor<f32> {\n"
        "  %loss = step.constant 0.0 : tensor<f32>\n"
        "  func.return %loss : tensor<f32>\n}\n",
        "b.ir",
    )
    fn = step_function(module)
    a, b, labels = fn.body.blocks.first.args
    assert a.type == TensorType(f32, [2, 3]) and labels.type == TensorType(i32, [2])
    block = fn.body.blocks.first
    mm = MatmulOp(a, b)
    tr = TransposeOp(mm.result, [1, 0])
    add = AddOp(tr.result, tr.result)
    sm = SoftmaxOp(add.result, 0)
    total = SumOp(sm.result, [0])
    cmp = CompareOp("gt", a, a)
    ce = CrossEntropyOp(a, labels)
    first = block.first_op
    for op in (mm, tr, add, sm, total, cmp, ce):
        block.insert_op_before(op, first)  # type: ignore[arg-type]
    verify(module)
    assert mm.result.type == TensorType(f32, [2, 4])
    assert total.result.type == TensorType(f32, [2])
    assert isinstance(total, ReduceOp) and total.axes == (0,)
    assert program_text(parse_text(program_text(module), "b2.ir")) == program_text(module)
