"""lower-to-stablehlo, one row per step op: the JAX backend equals the reference interpreter
(f32 and f64), and the printed text, compiled by XLA as it is, equals the JAX backend.

Oracles: `stepc.ir.interpreter.run_function` (NumPy reference semantics) for the lowering;
XLA's own MLIR parser and compiler for the text. Also: the table covers every step op, an op
without a rule is a located error naming it, the text parses with JAX's MLIR bindings and
back with ours, and constants (inf, NaN, every float type) survive the text exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from stepc.backends.jax import jax_function
from stepc.backends.xla import XlaExecutable, parse_with_jax_mlir
from stepc.ir import dialect as step
from stepc.ir.diagnostics import StepcError
from stepc.ir.interpreter import run_function
from stepc.ir.parse import make_context, parse_module, parse_text, verify
from stepc.ir.stablehlo import module_text
from stepc.passes import lower_to_stablehlo
from stepc.passes.lower_to_stablehlo import LOWERINGS, LowerToStableHLO
from stepc.passes.simplify_stablehlo import SimplifyStableHLO


@dataclass(frozen=True)
class Row:
    """One op's program: `{T}` is the float element type; `args` are (name, shape, kind)."""

    name: str
    body: str
    args: tuple[tuple[str, tuple[int, ...], str], ...]
    result: str
    ops: tuple[str, ...] = field(default=())


# Elementwise (as np.allclose) between XLA and the NumPy interpreter, per dtype of the row.
ELEMENTWISE_TOLERANCES = {"float64": (1e-9, 1e-12), "float32": (2e-4, 1e-5)}


def t(shape: tuple[int, ...], element: str = "{T}") -> str:
    return f"tensor<{'x'.join(str(d) for d in shape) + 'x' if shape else ''}{element}>"


def binary(op: str, kind: str = "normal") -> Row:
    return Row(
        op,
        f"%r = step.{op} %a, %b : ({t((3, 4))}, {t((4,))}) -> {t((3, 4))}",
        (("a", (3, 4), "normal"), ("b", (4,), kind)),
        t((3, 4)),
    )


def unary(op: str, kind: str = "normal") -> Row:
    return Row(op, f"%r = step.{op} %a : {t((3, 4))}", (("a", (3, 4), kind),), t((3, 4)))


def compare(direction: str) -> Row:
    return Row(
        f"compare_{direction}",
        f"%r = step.compare {direction} %a, %b : ({t((3, 4))}, {t((4,))}) -> {t((3, 4))}",
        (("a", (3, 4), "rounded"), ("b", (4,), "rounded")),
        t((3, 4)),
        ("compare",),
    )


ROWS: list[Row] = [
    binary("add"),
    binary("sub"),
    binary("mul"),
    binary("div", "positive"),
    binary("maximum"),
    binary("minimum"),
    *(compare(d) for d in step.COMPARE_DIRECTIONS),
    *(unary(op) for op in ("exp", "neg", "tanh", "sigmoid", "relu", "square", "abs")),
    *(unary(op, "positive") for op in ("log", "sqrt", "rsqrt")),
    unary("relu", "rounded"),  # exact zeros: relu(0) = 0
    Row(
        "select",
        f"%r = step.select %m, %a, %b : ({t((3, 1))}, {t((3, 4))}, {t((4,))}) -> {t((3, 4))}",
        (("m", (3, 1), "mask"), ("a", (3, 4), "normal"), ("b", (4,), "normal")),
        t((3, 4)),
    ),
    Row(
        "matmul",
        f"%r = step.matmul %a, %b : ({t((3, 4))}, {t((4, 5))}) -> {t((3, 5))}",
        (("a", (3, 4), "normal"), ("b", (4, 5), "normal")),
        t((3, 5)),
    ),
    Row(
        "matmul_batched",
        f"%r = step.matmul %a, %b : ({t((2, 3, 4))}, {t((2, 4, 5))}) -> {t((2, 3, 5))}",
        (("a", (2, 3, 4), "normal"), ("b", (2, 4, 5), "normal")),
        t((2, 3, 5)),
        ("matmul",),
    ),
    Row(
        "matmul_rank3_by_matrix",
        f"%r = step.matmul %a, %b : ({t((2, 3, 4))}, {t((4, 5))}) -> {t((2, 3, 5))}",
        (("a", (2, 3, 4), "normal"), ("b", (4, 5), "normal")),
        t((2, 3, 5)),
        ("matmul",),
    ),
    Row(
        "transpose",
        f"%r = step.transpose %a perm [2, 0, 1] : {t((2, 3, 4))} -> {t((4, 2, 3))}",
        (("a", (2, 3, 4), "normal"),),
        t((4, 2, 3)),
    ),
    Row("reshape", f"%r = step.reshape %a : {t((3, 4))} -> {t((2, 6))}", (("a", (3, 4), "normal"),), t((2, 6))),
    Row(
        "broadcast",
        f"%r = step.broadcast %a : {t((3, 1))} -> {t((2, 3, 4))}",
        (("a", (3, 1), "normal"),),
        t((2, 3, 4)),
    ),
    Row("sum", f"%r = step.sum %a dims [1] : {t((3, 4))} -> {t((3,))}", (("a", (3, 4), "normal"),), t((3,))),
    Row("sum_all", f"%r = step.sum %a : {t((3, 4))} -> {t(())}", (("a", (3, 4), "normal"),), t(()), ("sum",)),
    Row("mean", f"%r = step.mean %a dims [0, 2] : {t((2, 3, 4))} -> {t((3,))}", (("a", (2, 3, 4), "normal"),), t((3,))),
    Row("mean_all", f"%r = step.mean %a : {t((3, 4))} -> {t(())}", (("a", (3, 4), "normal"),), t(()), ("mean",)),
    Row("max", f"%r = step.max %a dims [1] : {t((3, 4))} -> {t((3,))}", (("a", (3, 4), "normal"),), t((3,))),
    Row("max_all", f"%r = step.max %a : {t((3, 4))} -> {t(())}", (("a", (3, 4), "normal"),), t(()), ("max",)),
    Row("softmax", f"%r = step.softmax %a axis 1 : {t((3, 4))}", (("a", (3, 4), "large"),), t((3, 4))),
    Row(
        "softmax_axis0",
        f"%r = step.softmax %a axis 0 : {t((3, 4))}",
        (("a", (3, 4), "large"),),
        t((3, 4)),
        ("softmax",),
    ),
    Row("log_softmax", f"%r = step.log_softmax %a axis 1 : {t((3, 4))}", (("a", (3, 4), "large"),), t((3, 4))),
    Row(
        "cross_entropy",
        f"%r = step.cross_entropy %a, %l : ({t((5, 4))}, {t((5,), 'i32')}) -> {t(())}",
        (("a", (5, 4), "large"), ("l", (5,), "labels4")),
        t(()),
    ),
    Row(
        "mse",
        f"%r = step.mse %a, %b : ({t((3, 4))}, {t((3, 4))}) -> {t(())}",
        (("a", (3, 4), "normal"), ("b", (3, 4), "normal")),
        t(()),
    ),
    Row(
        "constant",
        f"%c = step.constant dense<[1.5, -2.0, 0.1, 3.0e+38]> : {t((4,))}\n"
        f"  %r = step.add %a, %c : ({t((3, 4))}, {t((4,))}) -> {t((3, 4))}",
        (("a", (3, 4), "normal"),),
        t((3, 4)),
        ("constant", "add"),
    ),
    Row(
        "constant_splat",
        f"%c = step.constant 0.1 : {t(())}\n  %r = step.mul %a, %c : ({t((3, 4))}, {t(())}) -> {t((3, 4))}",
        (("a", (3, 4), "normal"),),
        t((3, 4)),
        ("constant", "mul"),
    ),
    Row(
        "convert",
        f"%r = step.convert %a : {t((5,), 'i32')} -> {t((5,))}",
        (("a", (5,), "labels4"),),
        t((5,)),
    ),
    Row(
        "convert_float",
        f"%r = step.convert %a : {t((3, 4))} -> {t((3, 4), 'f16')}",
        (("a", (3, 4), "normal"),),
        t((3, 4), "f16"),
        ("convert",),
    ),
    Row(
        "conv2d",
        f"%r = step.conv2d %x, %w padding [1, 1] : ({t((2, 3, 5, 6))}, {t((4, 3, 3, 3))}) -> {t((2, 4, 5, 6))}",
        (("x", (2, 3, 5, 6), "normal"), ("w", (4, 3, 3, 3), "normal")),
        t((2, 4, 5, 6)),
    ),
    Row(
        "conv2d_grouped",
        f"%r = step.conv2d %x, %w stride [2, 1] padding [2, 1] dilation [2, 1] groups 2 : ({t((2, 4, 8, 6))}, {t((6, 2, 2, 3))}) -> {t((2, 6, 5, 6))}",
        (("x", (2, 4, 8, 6), "normal"), ("w", (6, 2, 2, 3), "normal")),
        t((2, 6, 5, 6)),
        ("conv2d",),
    ),
    Row(
        "conv2d_input_grad",  # stride 2 over 8 rows, 3-row kernel: a row no window reads
        f"%r = step.conv2d_input_grad %dy, %w stride [2, 2] padding [1, 0] dilation [1, 2] groups 2 : ({t((2, 6, 4, 2))}, {t((6, 2, 3, 2))}) -> {t((2, 4, 8, 5))}",
        (("dy", (2, 6, 4, 2), "normal"), ("w", (6, 2, 3, 2), "normal")),
        t((2, 4, 8, 5)),
    ),
    Row(
        "conv2d_weight_grad",
        f"%r = step.conv2d_weight_grad %x, %dy stride [2, 2] padding [1, 0] dilation [1, 2] groups 2 : ({t((2, 4, 8, 5))}, {t((2, 6, 4, 2))}) -> {t((6, 2, 3, 2))}",
        (("x", (2, 4, 8, 5), "normal"), ("dy", (2, 6, 4, 2), "normal")),
        t((6, 2, 3, 2)),
    ),
    Row(
        "one_hot",
        f"%r = step.one_hot %l : {t((5,), 'i32')} -> {t((5, 4))}",
        (("l", (5,), "labels4"),),
        t((5, 4)),
    ),
    Row(
        "layer_norm",
        f"%r = step.layer_norm %a, %g, %b eps 1.0e-3 : ({t((2, 3, 4))}, {t((3, 4))}, {t((3, 4))}) -> {t((2, 3, 4))}",
        (("a", (2, 3, 4), "normal"), ("g", (3, 4), "normal"), ("b", (3, 4), "normal")),
        t((2, 3, 4)),
    ),
    Row(
        "layer_norm_last_dim",
        f"%r = step.layer_norm %a, %g, %b : ({t((3, 4))}, {t((4,))}, {t((4,))}) -> {t((3, 4))}",
        (("a", (3, 4), "large"), ("g", (4,), "normal"), ("b", (4,), "normal")),
        t((3, 4)),
        ("layer_norm",),
    ),
    *(Row(f"{op}{suffix and '_tanh'}_{kind}", f"%r = step.{op} %a{suffix} : {t((3, 4))}", (("a", (3, 4), kind),), t((3, 4)), (op,))
      for op in ("gelu", "gelu_grad") for suffix in ("", " approximate tanh") for kind in ("normal", "large")),
    Row(
        "embedding",
        f"%r = step.embedding %w, %i : ({t((5, 3))}, {t((2, 4), 'i32')}) -> {t((2, 4, 3))}",
        (("w", (5, 3), "normal"), ("i", (2, 4), "labels5")),
        t((2, 4, 3)),
    ),
    Row(
        "embedding_grad",
        f"%r = step.embedding_grad %c, %i : ({t((7, 3))}, {t((7,), 'i32')}) -> {t((5, 3))}",
        (("c", (7, 3), "normal"), ("i", (7,), "labels5")),  # 7 ids of 5 rows: some repeat
        t((5, 3)),
    ),
    Row(
        "max_pool2d",
        f"%r = step.max_pool2d %a kernel [3, 2] stride [1, 2] padding [1, 1] : {t((2, 3, 5, 6))} -> {t((2, 3, 5, 4))}",
        (("a", (2, 3, 5, 6), "normal"),),
        t((2, 3, 5, 4)),
    ),
    Row(
        "max_pool2d_ties",
        f"%r = step.max_pool2d %a kernel [2, 2] : {t((3, 4, 6))} -> {t((3, 2, 3))}",
        (("a", (3, 4, 6), "rounded"),),
        t((3, 2, 3)),
        ("max_pool2d",),
    ),
    Row(
        "avg_pool2d",
        f"%r = step.avg_pool2d %a kernel [3, 3] stride [2, 1] padding [1, 1] : {t((2, 3, 5, 6))} -> {t((2, 3, 3, 6))}",
        (("a", (2, 3, 5, 6), "normal"),),
        t((2, 3, 3, 6)),
    ),
    Row(
        "concat",
        f"%r = step.concat %a, %b, %a axis 1 : ({t((3, 2))}, {t((3, 4))}, {t((3, 2))}) -> {t((3, 8))}",
        (("a", (3, 2), "normal"), ("b", (3, 4), "normal")),
        t((3, 8)),
    ),
    Row(
        "slice",
        f"%r = step.slice %a start [1, 0, 2] limit [3, 4, 7] stride [1, 3, 2] : {t((3, 4, 7))} -> {t((2, 2, 3))}",
        (("a", (3, 4, 7), "normal"),),
        t((2, 2, 3)),
    ),
    Row(
        "pad",
        f"%r = step.pad %a low [1, 0] high [0, 2] interior [1, 2] : {t((3, 4))} -> {t((6, 12))}",
        (("a", (3, 4), "normal"),),
        t((6, 12)),
    ),
    *(
        Row(
            f"dropout_{rate}",
            f"%r = step.dropout %a, %k rate {rate} : ({t(shape)}, {t((2,), 'ui32')}) -> {t(shape)}",
            (("a", shape, "normal"), ("k", (2,), "key")),
            t(shape),
            ("dropout",),
        )
        for shape, rate in (((5, 7), 0.3), ((3,), 0.0), ((2, 3), 1.0), ((), 0.5))
    ),
]


def program(row: Row, element: str) -> str:
    def arg_type(shape: tuple[int, ...], kind: str) -> str:
        return t(shape, "i32" if kind.startswith("labels") else "ui32" if kind == "key" else "{T}")

    args = ", ".join(f"%{name}: {arg_type(shape, kind)}" for name, shape, kind in row.args)
    text = f"func.func @{row.name}({args}) -> {row.result} {{\n  {row.body}\n  func.return %r : {row.result}\n}}\n"
    return text.replace("{T}", element)


def inputs(row: Row, dtype: type, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape, kind in row.args:
        if kind.startswith("labels"):
            out[name] = rng.integers(0, int(kind.removeprefix("labels")), size=shape).astype(np.int32)
            continue
        if kind == "key":
            out[name] = rng.integers(0, 2**32, size=shape, dtype=np.uint32)
            continue
        x = rng.standard_normal(shape)
        if kind == "mask":  # zeros and nonzeros alike, whatever the seed
            x = np.where(np.arange(x.size).reshape(shape) % 2 == 0, 0.0, x + np.sign(x))
        x = {"positive": np.abs(x) + 0.5, "rounded": np.round(x), "large": 30 * x}.get(kind, x)
        out[name] = x.astype(dtype)
    return out


def lowered(text: str, name: str):  # type: ignore[no-untyped-def]
    """The program and its lowering as the pipeline ends: lower-to-stablehlo, simplify-stablehlo."""
    module = parse_text(text, name)
    verify(module)
    after = module.clone()
    LowerToStableHLO().apply(make_context(), after)
    SimplifyStableHLO().apply(make_context(), after)
    verify(after)
    return module, after


def assert_close(expected: dict, found: dict, dtype: str) -> None:  # type: ignore[type-arg]
    assert expected.keys() == found.keys()
    for key, value in expected.items():
        e, f = np.asarray(value), np.asarray(found[key])
        assert e.shape == f.shape and e.dtype == f.dtype, (key, e.shape, f.shape, e.dtype, f.dtype)
        rtol, atol = ELEMENTWISE_TOLERANCES[dtype]
        if e.dtype == np.float16:  # the convert row: one f16 rounding either side
            rtol, atol = 1e-3, 1e-3
        np.testing.assert_allclose(f.astype(np.float64), e.astype(np.float64), rtol=rtol, atol=atol, err_msg=key)


@pytest.mark.parametrize("element,dtype", [("f32", np.float32), ("f64", np.float64)])
@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_jax_backend_equals_interpreter(row: Row, element: str, dtype: type) -> None:
    before, after = lowered(program(row, element), f"{row.name}.ir")
    assert not any(op.name.startswith("step.") for op in after.walk())
    jf = jax_function(after)
    for seed in range(2):
        data = inputs(row, dtype, seed)
        assert_close(run_function(before, data), jf(data), np.dtype(dtype).name)


@pytest.mark.parametrize("element,dtype", [("f32", np.float32), ("f64", np.float64)])
@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_xla_text_equals_jax_backend(row: Row, element: str, dtype: type) -> None:
    _, after = lowered(program(row, element), f"{row.name}.ir")
    data = inputs(row, dtype, 7)
    expected = jax_function(after)(data)
    found = XlaExecutable.from_module(after)(data)
    for key in expected:
        assert found[key].dtype == expected[key].dtype
        np.testing.assert_allclose(found[key], expected[key], rtol=4e-7 if dtype == np.float32 else 1e-15, atol=0)


def test_table_covers_every_step_op() -> None:
    ops = {*step.SPEC_OPS, *step.EXTRA_OPS}
    assert ops <= set(LOWERINGS), sorted(op.name for op in ops - set(LOWERINGS))
    tested = {op for row in ROWS for op in (row.ops or (row.name,))}
    assert {op.name.removeprefix("step.") for op in ops} <= tested


def test_op_without_a_rule_is_a_located_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(lower_to_stablehlo.LOWERINGS, step.TanhOp)
    module = parse_text(program(unary("tanh"), "f32"), "tanh.ir")
    with pytest.raises(StepcError) as info:
        LowerToStableHLO().apply(make_context(), module)
    assert "no lowering rule for step.tanh" in info.value.message
    assert info.value.loc is not None and (info.value.loc.file, info.value.loc.line) == ("tanh.ir", 2)


def test_relu_is_a_tagged_maximum_with_pytorch_derivative() -> None:
    """relu lowers to one `maximum` per element (as XLA and jax.nn.relu compute it), tagged so the
    JAX backend keeps relu'(0) = 0; `lax.max` alone would give 0.5 at a tie."""
    import jax

    from stepc.backends.jax import jax_function

    _, after = lowered(program(unary("relu"), "f32"), "relu.ir")
    text = module_text(after)
    assert '"stablehlo.maximum"' in text and "{step.relu}" in text
    fn = jax_function(after)
    x = np.array([[-1.0, 0.0, 2.0, 0.0]] * 3, dtype=np.float32)
    grad = jax.grad(lambda a: fn.fn(a)[0].sum())(x)
    np.testing.assert_array_equal(np.asarray(grad), (x > 0).astype(np.float32))


def test_product_with_a_mask_is_a_select() -> None:
    """`ct * compare(...)` (the derivative of relu) is `select(pred, ct, 0)`: no multiply."""
    text_ir = """func.func @masked(%a: tensor<3x4xf32> {step.param}, %ct: tensor<3x4xf32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %zero = step.constant 0.0 : tensor<f32>
  %m = step.compare gt %a, %zero : (tensor<3x4xf32>, tensor<f32>) -> tensor<3x4xf32>
  %p = step.mul %ct, %m : (tensor<3x4xf32>, tensor<3x4xf32>) -> tensor<3x4xf32>
  %s = step.sum %p : tensor<3x4xf32> -> tensor<f32>
  func.return %s : tensor<f32>
}
"""
    from stepc.backends.jax import jax_function
    from stepc.ir.parse import load_text

    before = load_text(text_ir, "masked.ir")
    after = before.clone()
    LowerToStableHLO().apply(make_context(), after)
    one_to_one = module_text(after)
    assert '"stablehlo.multiply"' in one_to_one and '"stablehlo.select"' not in one_to_one  # the lowering is 1:1
    SimplifyStableHLO().apply(make_context(), after)
    text = module_text(after)
    assert '"stablehlo.select"' in text and '"stablehlo.multiply"' not in text and '"stablehlo.convert"' not in text
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    ct = rng.standard_normal((3, 4)).astype(np.float32)
    found = jax_function(after)({"a": a, "ct": ct})["loss"]
    np.testing.assert_allclose(float(found), float((ct * (a > 0)).sum()), rtol=1e-6)


ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("*.ir"))


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_text_parses_in_jax_mlir_and_back(example: str) -> None:
    from stepc.ir.parse import load

    module = load(ROOT / "examples" / f"{example}.ir")
    LowerToStableHLO().apply(make_context(), module)
    text = module_text(module)
    assert text.startswith(f"module @{example} {{\n  func.func public @main(")
    parse_with_jax_mlir(text)
    assert module_text(parse_module(text)) == text


def constant_program(element: str, values: list[float]):  # type: ignore[no-untyped-def]
    """`a + constant(values)`; the values are set on the op (the step parser reads a hex float
    literal such as `0xFFF0000000000000` as an integer, so inf and NaN cannot be written)."""
    from xdsl.dialects.builtin import DenseArrayBase, f64

    n = len(values)
    text = (
        f"func.func @c(%a: tensor<{n}x{element}>) -> tensor<{n}x{element}> {{\n"
        f"  %c = step.constant dense<0.0> : tensor<{n}x{element}>\n"
        f"  %r = step.add %a, %c : (tensor<{n}x{element}>, tensor<{n}x{element}>) -> tensor<{n}x{element}>\n"
        f"  func.return %r : tensor<{n}x{element}>\n}}\n"
    )
    module = parse_text(text, "c.ir")
    constant = next(op for op in module.walk() if isinstance(op, step.ConstantOp))
    constant.properties["value"] = DenseArrayBase.from_list(f64, values)
    after = module.clone()
    LowerToStableHLO().apply(make_context(), after)
    return after


@pytest.mark.parametrize(
    "element,dtype", [("f16", np.float16), ("bf16", "bfloat16"), ("f32", np.float32), ("f64", np.float64)]
)
def test_constants_survive_the_text_exactly(element: str, dtype: object) -> None:
    import ml_dtypes

    dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)  # type: ignore[arg-type]
    values = [1 / 3, -0.1, 1e-4, 65504.0, float("inf"), float("-inf"), 2.5]
    after = constant_program(element, values)
    zeros = {"a": np.zeros(len(values), dtype)}
    expected = np.asarray(values, np.float64).astype(dtype)
    np.testing.assert_array_equal(XlaExecutable.from_module(after)(zeros)["loss"], expected)
    np.testing.assert_array_equal(jax_function(after)(zeros)["loss"], expected)
    reparsed = parse_module(module_text(after))
    np.testing.assert_array_equal(jax_function(reparsed)(zeros)["loss"], expected)


def test_nan_constant_survives_the_text() -> None:
    after = constant_program("f32", [float("nan"), 1.0])
    out = XlaExecutable.from_module(parse_module(module_text(after)))({"a": np.zeros(2, np.float32)})["loss"]
    assert np.isnan(out[0]) and out[1] == 1.0


@pytest.mark.parametrize("example", EXAMPLES)
def test_whole_pipeline_text_compiles_and_equals_the_jax_function(example: str) -> None:
    """Every op the passes emit lowers too: the printed end of the default pipeline, compiled
    by XLA as it is, equals the JAX function of the same module."""
    from stepc.check.contract import random_inputs
    from stepc.ir.parse import load
    from stepc.ir.program import step_function
    from stepc.pipeline import Pipeline

    module = load(ROOT / "examples" / f"{example}.ir")
    Pipeline.default(check=False).run(module)
    text = module_text(module)
    parse_with_jax_mlir(text)
    inputs = random_inputs(step_function(module), np.random.default_rng(5))
    expected = jax_function(module)(inputs)
    found = XlaExecutable.from_module(module)(inputs)
    assert list(found) == list(expected)
    for key in expected:
        np.testing.assert_allclose(found[key], expected[key], rtol=1e-6, atol=1e-7, err_msg=key)


def one_hot_difference_program(element: str) -> str:
    """`p - one_hot(labels)` (the cross-entropy gradient's shape), the one-hot read only there."""
    return f"""func.func @ce_grad(%p: tensor<6x5x{element}>, %labels: tensor<6xi32>) -> tensor<6x5x{element}> {{
  %oh = step.one_hot %labels : tensor<6xi32> -> tensor<6x5x{element}>
  %r = step.sub %p, %oh : (tensor<6x5x{element}>, tensor<6x5x{element}>) -> tensor<6x5x{element}>
  func.return %r : tensor<6x5x{element}>
}}
"""


@pytest.mark.parametrize("element,dtype", [("f32", np.float32), ("f64", np.float64)])
def test_difference_with_a_one_hot_is_a_scatter_add(element: str, dtype: type) -> None:
    """`x - one_hot(labels)` lowers to a scatter-add of -1 at `x[i, labels[i]]` (as `jax.grad` of
    a picked log-probability): no iota/compare one-hot is left. It equals the interpreter and the
    NumPy formula through the JAX backend and through XLA's text path, labels out of [0, C)
    included (their one-hot row is zero: the scatter drops them)."""
    before, after = lowered(one_hot_difference_program(element), "ce_grad.ir")
    text = module_text(after)
    assert '"stablehlo.scatter"' in text and "#stablehlo.scatter<" in text
    for gone in ('"stablehlo.iota"', '"stablehlo.compare"', '"stablehlo.subtract"'):
        assert gone not in text, gone
    parse_with_jax_mlir(text)
    assert module_text(parse_module(text)) == text
    jf = jax_function(after)
    xla = XlaExecutable.from_module(after)
    rng = np.random.default_rng(3)
    for labels in (rng.integers(0, 5, 6), np.array([0, 4, -1, 5, 2, 100])):
        data = {"p": rng.standard_normal((6, 5)).astype(dtype), "labels": labels.astype(np.int32)}
        formula = data["p"] - (labels[:, None] == np.arange(5)).astype(dtype)
        expected = run_function(before, data)
        np.testing.assert_array_equal(next(iter(expected.values())), formula)
        assert_close(expected, jf(data), np.dtype(dtype).name)
        assert_close(expected, xla(data), np.dtype(dtype).name)


def test_one_hot_read_elsewhere_stays_and_broadcast_difference_subtracts() -> None:
    """A one-hot read by two differences (one of them broadcasting its lhs) becomes two scatters,
    and the results equal NumPy's formula and the interpreter."""
    text_ir = """func.func @both(%p: tensor<6x5xf32>, %q: tensor<5xf32>, %labels: tensor<6xi32>) -> tensor<6x5xf32> {
  %oh = step.one_hot %labels : tensor<6xi32> -> tensor<6x5xf32>
  %r = step.sub %p, %oh : (tensor<6x5xf32>, tensor<6x5xf32>) -> tensor<6x5xf32>
  %s = step.sub %q, %oh : (tensor<5xf32>, tensor<6x5xf32>) -> tensor<6x5xf32>
  %t = step.add %r, %s : (tensor<6x5xf32>, tensor<6x5xf32>) -> tensor<6x5xf32>
  func.return %t : tensor<6x5xf32>
}
"""
    before, after = lowered(text_ir, "both.ir")
    text = module_text(after)
    # Both differences become scatters: the broadcast lhs is broadcast before the subtract in the
    # 1:1 lowering, so simplify-stablehlo sees equal shapes; the one-hot is then read by nothing.
    assert text.count('"stablehlo.scatter"') == 2 and '"stablehlo.subtract"' not in text
    assert '"stablehlo.iota"' not in text
    rng = np.random.default_rng(4)
    data = {
        "p": rng.standard_normal((6, 5)).astype(np.float32),
        "q": rng.standard_normal(5).astype(np.float32),
        "labels": rng.integers(0, 5, 6).astype(np.int32),
    }
    oh = (data["labels"][:, None] == np.arange(5)).astype(np.float32)
    found = next(iter(XlaExecutable.from_module(after)(data).values()))
    np.testing.assert_allclose(found, (data["p"] - oh) + (data["q"] - oh), rtol=1e-6)
    assert_close(run_function(before, data), jax_function(after)(data), "float32")


def test_scatter_add_through_jaxpr_numpy_equals_xla() -> None:
    """The NumPy jaxpr evaluator's scatter-add (used by contracts on many small programs) equals
    XLA on the lowered `p - one_hot(labels)` and on its `jax.jvp`, out-of-range labels included."""
    import jax

    from stepc.backends.jaxpr_numpy import evaluate

    _, after = lowered(one_hot_difference_program("f32"), "ce_grad.ir")
    fn = jax_function(after).fn
    rng = np.random.default_rng(5)
    p = rng.standard_normal((6, 5)).astype(np.float32)
    t = rng.standard_normal((6, 5)).astype(np.float32)
    labels = np.array([0, 4, -1, 5, 2, 3], np.int32)

    def jvp(p: np.ndarray, t: np.ndarray, labels: np.ndarray):  # type: ignore[no-untyped-def]
        return jax.jvp(lambda x: fn(x, labels), (p,), (t,))

    found = evaluate(jvp, p, t, labels)
    expected = jax.tree_util.tree_leaves(jax.jit(jvp)(p, t, labels))
    assert len(found) == len(expected) == 2
    for f, e in zip(found, expected):
        np.testing.assert_allclose(f, np.asarray(e), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(found[0], p - (labels[:, None] == np.arange(5)), rtol=1e-6)
