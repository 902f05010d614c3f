"""The reference interpreter against independent oracles: one row per op, f32 and f64.

Each row is a one-op program; its result is compared with a NumPy formula or the PyTorch
function of the same name, computed in float64 from the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stepc.ir.diagnostics import StepcError
from stepc.ir.dialect import EXTRA_OPS, SPEC_OPS
from stepc.ir.interpreter import run_function
from stepc.ir.parse import load_text, parse_text, verify
from stepc.ir.program import step_function

DTYPES = {"f32": np.float32, "f64": np.float64}
TOLERANCE = {"f32": dict(rtol=2e-6, atol=2e-6), "f64": dict(rtol=1e-13, atol=1e-13)}


def t(shape: tuple[int, ...], element: str) -> str:
    return "tensor<" + "".join(f"{d}x" for d in shape) + element + ">"


def tt(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x, dtype=np.float64))


def normal(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(shape)


def positive(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    return np.abs(rng.standard_normal(shape)) + 0.1


def with_zeros(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal(shape)
    x.flat[::3] = 0.0  # the kink of relu and abs
    return x


def ties(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    return rng.integers(-2, 3, size=shape).astype(np.float64)  # many equal values


def wide(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    x = 3 * rng.standard_normal(shape)
    fixed = [0.0, -0.5, -4.0, -10.0, -40.0, 6.0, 40.0]  # gelu at 0, negative, large (saturated) values
    x.flat[: len(fixed)] = fixed[: x.size]
    return x


def _gelu_grad(approximate: str) -> Callable[[np.ndarray], np.ndarray]:
    def grad(a: np.ndarray) -> np.ndarray:
        x = tt(a).requires_grad_()
        F.gelu(x, approximate=approximate).sum().backward()
        return x.grad.numpy()  # type: ignore[union-attr]

    return grad


def random_key(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 2**32, size=shape, dtype=np.uint32)


def jax_keep_mask(key: np.ndarray, rate: float, shape: tuple[int, ...]) -> np.ndarray:
    """The spec's dropout keep mask, drawn by JAX itself."""
    import jax

    wrapped = jax.random.wrap_key_data(key, impl="threefry2x32")
    return np.asarray(jax.random.bernoulli(wrapped, np.float32(1 - rate), shape))


def labels(classes: int) -> Callable[[tuple[int, ...], np.random.Generator], np.ndarray]:
    return lambda shape, rng: rng.integers(0, classes, size=shape).astype(np.int32)


@dataclass
class Case:
    """One op: its IR line (`{a}`, `{b}`, `{r}` are the types), operands and oracle."""

    name: str
    line: str
    operands: dict[str, tuple[tuple[int, ...], Callable]]  # name -> (shape, generator)
    result: tuple[int, ...]
    oracle: Callable[..., np.ndarray]
    result_element: str | None = None  # default: the float element type under test
    ints: tuple[str, ...] = field(default=())  # operands that are i32
    keys: tuple[str, ...] = field(default=())  # operands that are ui32 random keys

    def program(self, element: str) -> str:
        types = {
            k: t(shape, "i32" if k in self.ints else "ui32" if k in self.keys else element)
            for k, (shape, _) in self.operands.items()
        }
        types["r"] = t(self.result, self.result_element or element)
        sig = ", ".join(f"%{k}: {types[k]}" for k in self.operands)
        return (
            f"func.func @{self.name}({sig}) -> {types['r']} {{\n"
            f"  %r = {self.line.format(**types)}\n"
            f"  func.return %r : {types['r']}\n"
            "}\n"
        )


def unary(name: str, oracle: Callable, gen: Callable = normal) -> Case:
    return Case(name, f"step.{name} %a : {{a}}", {"a": ((3, 4), gen)}, (3, 4), oracle)


def binary(name: str, oracle: Callable, gen: Callable = normal, shapes=((3, 4), (4,)), result=(3, 4)) -> Case:
    return Case(
        name, f"step.{name} %a, %b : ({{a}}, {{b}}) -> {{r}}", {"a": (shapes[0], gen), "b": (shapes[1], gen)}, result, oracle
    )


CASES: list[Case] = [
    binary("add", lambda a, b: a + b),
    binary("sub", lambda a, b: a - b, shapes=((4, 1), (1, 3)), result=(4, 3)),
    binary("mul", lambda a, b: a * b, shapes=((2, 3, 4), ()), result=(2, 3, 4)),
    binary("div", lambda a, b: a / b, gen=positive),
    binary("maximum", lambda a, b: torch.maximum(tt(a), tt(b)).numpy(), gen=ties),
    binary("minimum", lambda a, b: torch.minimum(tt(a), tt(b)).numpy(), gen=ties),
    unary("exp", np.exp),
    unary("neg", lambda a: -a),
    unary("log", np.log, gen=positive),
    unary("tanh", lambda a: torch.tanh(tt(a)).numpy()),
    unary("sigmoid", lambda a: 1.0 / (1.0 + np.exp(-a))),
    unary("relu", lambda a: torch.relu(tt(a)).numpy(), gen=with_zeros),
    unary("sqrt", np.sqrt, gen=positive),
    unary("rsqrt", lambda a: torch.rsqrt(tt(a)).numpy(), gen=positive),
    unary("square", lambda a: a * a),
    unary("abs", lambda a: torch.abs(tt(a)).numpy(), gen=with_zeros),
    binary("matmul", lambda a, b: np.einsum("mk,kn->mn", a, b), shapes=((3, 5), (5, 2)), result=(3, 2)),
    Case(
        "select",
        "step.select %m, %a, %b : ({m}, {a}, {b}) -> {r}",
        {"m": ((3, 1), with_zeros), "a": ((3, 4), normal), "b": ((4,), normal)},
        (3, 4),
        lambda m, a, b: torch.where(tt(m) != 0, tt(a), tt(b)).numpy(),
    ),
    Case(
        "matmul_batched",
        "step.matmul %a, %b : ({a}, {b}) -> {r}",
        {"a": ((2, 3, 5), normal), "b": ((2, 5, 4), normal)},
        (2, 3, 4),
        lambda a, b: np.einsum("bmk,bkn->bmn", a, b),
    ),
    Case(
        "matmul_shared_rhs",
        "step.matmul %a, %b : ({a}, {b}) -> {r}",
        {"a": ((2, 3, 5), normal), "b": ((5, 4), normal)},
        (2, 3, 4),
        lambda a, b: np.einsum("bmk,kn->bmn", a, b),
    ),
    Case(
        "transpose",
        "step.transpose %a perm [2, 0, 1] : {a} -> {r}",
        {"a": ((2, 3, 4), normal)},
        (4, 2, 3),
        lambda a: torch.permute(tt(a), (2, 0, 1)).numpy(),
    ),
    Case("reshape", "step.reshape %a : {a} -> {r}", {"a": ((2, 6), normal)}, (3, 4), lambda a: a.reshape(3, 4)),
    Case(
        "broadcast",
        "step.broadcast %a : {a} -> {r}",
        {"a": ((3, 1), normal)},
        (2, 3, 4),
        lambda a: tt(a).expand(2, 3, 4).numpy(),
    ),
    Case("sum", "step.sum %a dims [1] : {a} -> {r}", {"a": ((3, 4, 2), normal)}, (3, 2), lambda a: a.sum(axis=1)),
    Case("sum_all", "step.sum %a : {a} -> {r}", {"a": ((3, 4), normal)}, (), lambda a: np.asarray(a.sum())),
    Case(
        "mean",
        "step.mean %a dims [0, 2] : {a} -> {r}",
        {"a": ((3, 4, 2), normal)},
        (4,),
        lambda a: torch.mean(tt(a), dim=(0, 2)).numpy(),
    ),
    Case("mean_all", "step.mean %a : {a} -> {r}", {"a": ((3, 4), normal)}, (), lambda a: np.asarray(a.mean())),
    Case(
        "max",
        "step.max %a dims [1] : {a} -> {r}",
        {"a": ((3, 4), ties)},
        (3,),
        lambda a: torch.amax(tt(a), dim=1).numpy(),
    ),
    Case("max_all", "step.max %a : {a} -> {r}", {"a": ((3, 4), normal)}, (), lambda a: torch.amax(tt(a)).numpy()),
    Case(
        "softmax",
        "step.softmax %a axis 1 : {a}",
        {"a": ((3, 5), normal)},
        (3, 5),
        lambda a: F.softmax(tt(a), dim=1).numpy(),
    ),
    Case(
        "softmax_axis0",
        "step.softmax %a axis 0 : {a}",
        {"a": ((3, 5), normal)},
        (3, 5),
        lambda a: F.softmax(tt(a), dim=0).numpy(),
    ),
    Case(
        "log_softmax",
        "step.log_softmax %a axis 1 : {a}",
        {"a": ((3, 5), normal)},
        (3, 5),
        lambda a: F.log_softmax(tt(a), dim=1).numpy(),
    ),
    Case(
        "cross_entropy",
        "step.cross_entropy %a, %b : ({a}, {b}) -> {r}",
        {"a": ((6, 4), normal), "b": ((6,), labels(4))},
        (),
        lambda a, b: F.cross_entropy(tt(a), torch.from_numpy(b).long()).numpy(),
        ints=("b",),
    ),
    Case(
        "mse",
        "step.mse %a, %b : ({a}, {b}) -> {r}",
        {"a": ((3, 4), normal), "b": ((3, 4), normal)},
        (),
        lambda a, b: F.mse_loss(tt(a), tt(b)).numpy(),
    ),
    Case("constant", "step.constant 0.1 : {r}", {}, (2, 3), lambda: np.full((2, 3), 0.1)),
    Case(
        "constant_dense",
        "step.constant dense<[[1.5, -2.0], [0.1, 3.0e-3]]> : {r}",
        {},
        (2, 2),
        lambda: np.array([[1.5, -2.0], [0.1, 3.0e-3]]),
    ),
    Case(
        "convert",
        "step.convert %a : {a} -> {r}",
        {"a": ((3, 4), normal)},
        (3, 4),
        lambda a: a.astype(np.float16).astype(np.float64),
        result_element="f16",
    ),
    Case(
        "compare",
        "step.compare ge %a, %b : ({a}, {b}) -> {r}",
        {"a": ((3, 4), ties), "b": ((4,), ties)},
        (3, 4),
        lambda a, b: (a >= b).astype(np.float64),
    ),
    Case(
        "compare_lt",
        "step.compare lt %a, %b : ({a}, {b}) -> {r}",
        {"a": ((3, 4), ties), "b": ((), ties)},
        (3, 4),
        lambda a, b: torch.lt(tt(a), tt(b)).double().numpy(),
    ),
    Case(
        "one_hot",
        "step.one_hot %a : {a} -> {r}",
        {"a": ((5,), labels(3))},
        (5, 3),
        lambda a: F.one_hot(torch.from_numpy(a).long(), 3).double().numpy(),
        ints=("a",),
    ),
    Case(
        "layer_norm",
        "step.layer_norm %x, %g, %b eps 1.0e-3 : ({x}, {g}, {b}) -> {r}",
        {"x": ((2, 3, 4), normal), "g": ((3, 4), normal), "b": ((3, 4), normal)},
        (2, 3, 4),
        lambda x, g, b: F.layer_norm(tt(x), (3, 4), tt(g), tt(b), 1e-3).numpy(),
    ),
    Case(
        "layer_norm_default_eps",
        "step.layer_norm %x, %g, %b : ({x}, {g}, {b}) -> {r}",
        {"x": ((3, 5), normal), "g": ((5,), normal), "b": ((5,), normal)},
        (3, 5),
        lambda x, g, b: F.layer_norm(tt(x), (5,), tt(g), tt(b)).numpy(),
    ),
    Case("gelu", "step.gelu %a : {a}", {"a": ((3, 4), wide)}, (3, 4), lambda a: F.gelu(tt(a)).numpy()),
    Case(
        "gelu_tanh",
        "step.gelu %a approximate tanh : {a}",
        {"a": ((3, 4), wide)},
        (3, 4),
        lambda a: F.gelu(tt(a), approximate="tanh").numpy(),
    ),
    Case("gelu_grad", "step.gelu_grad %a : {a}", {"a": ((3, 4), wide)}, (3, 4), _gelu_grad("none")),
    Case("gelu_grad_tanh", "step.gelu_grad %a approximate tanh : {a}", {"a": ((3, 4), wide)}, (3, 4), _gelu_grad("tanh")),
    Case(
        "embedding",
        "step.embedding %t, %i : ({t}, {i}) -> {r}",
        {"t": ((5, 3), normal), "i": ((2, 4), labels(5))},
        (2, 4, 3),
        lambda t, i: F.embedding(torch.from_numpy(i).long(), tt(t)).numpy(),
        ints=("i",),
    ),
    Case(
        "embedding_grad",
        "step.embedding_grad %c, %i : ({c}, {i}) -> {r}",
        {"c": ((7, 3), normal), "i": ((7,), labels(5))},  # 7 ids of 5 rows: some repeat
        (5, 3),
        lambda c, i: torch.zeros(5, 3, dtype=torch.float64).index_add(0, torch.from_numpy(i).long(), tt(c)).numpy(),
        ints=("i",),
    ),
    Case(
        "conv2d",
        "step.conv2d %x, %w : ({x}, {w}) -> {r}",
        {"x": ((2, 3, 5, 6), normal), "w": ((4, 3, 3, 2), normal)},
        (2, 4, 3, 5),
        lambda x, w: F.conv2d(tt(x), tt(w)).numpy(),
    ),
    Case(
        "conv2d_strided_grouped",
        "step.conv2d %x, %w stride [2, 3] padding [2, 1] dilation [2, 1] groups 2 : ({x}, {w}) -> {r}",
        {"x": ((2, 4, 8, 7), normal), "w": ((6, 2, 3, 2), normal)},
        (2, 6, 4, 3),
        lambda x, w: F.conv2d(tt(x), tt(w), None, (2, 3), (2, 1), (2, 1), 2).numpy(),
    ),
    Case(
        "conv2d_input_grad",  # stride 2 over 8 rows with a 3-row kernel: the last row is read by no window
        "step.conv2d_input_grad %dy, %w stride [2, 2] padding [1, 0] groups 3 : ({dy}, {w}) -> {r}",
        {"dy": ((2, 6, 4, 3), normal), "w": ((6, 1, 3, 2), normal)},
        (2, 3, 8, 7),
        lambda dy, w: torch.nn.grad.conv2d_input((2, 3, 8, 7), tt(w), tt(dy), (2, 2), (1, 0), 1, 3).numpy(),
    ),
    Case(
        "conv2d_weight_grad",
        "step.conv2d_weight_grad %x, %dy stride [2, 2] padding [1, 0] dilation [1, 2] groups 3 : ({x}, {dy}) -> {r}",
        {"x": ((2, 3, 8, 7), normal), "dy": ((2, 6, 4, 3), normal)},
        (6, 1, 3, 2),
        lambda x, dy: torch.nn.grad.conv2d_weight(tt(x), (6, 1, 3, 2), tt(dy), (2, 2), (1, 0), (1, 2), 3).numpy(),
    ),
    Case(
        "dropout",
        "step.dropout %a, %k rate 0.3 : ({a}, {k}) -> {r}",
        {"a": ((5, 7), normal), "k": ((2,), random_key)},
        (5, 7),
        lambda a, k: np.where(jax_keep_mask(k, 0.3, a.shape), a * (1 / 0.7), 0.0),
        keys=("k",),
    ),
    Case(
        "max_pool2d",
        "step.max_pool2d %a kernel [3, 2] stride [1, 2] padding [1, 1] : {a} -> {r}",
        {"a": ((2, 3, 5, 6), normal)},
        (2, 3, 5, 4),
        lambda a: F.max_pool2d(tt(a), (3, 2), (1, 2), (1, 1)).numpy(),
    ),
    Case(
        "max_pool2d_chw_defaults",
        "step.max_pool2d %a kernel [2, 3] : {a} -> {r}",
        {"a": ((3, 4, 7), ties)},
        (3, 2, 2),
        lambda a: F.max_pool2d(tt(a), (2, 3)).numpy(),
    ),
    Case(
        "avg_pool2d",
        "step.avg_pool2d %a kernel [3, 3] stride [2, 1] padding [1, 1] : {a} -> {r}",
        {"a": ((2, 3, 5, 6), normal)},
        (2, 3, 3, 6),
        lambda a: F.avg_pool2d(tt(a), 3, (2, 1), 1).numpy(),
    ),
    Case(
        "concat",
        "step.concat %a, %b, %c axis 1 : ({a}, {b}, {c}) -> {r}",
        {"a": ((2, 1, 3), normal), "b": ((2, 4, 3), normal), "c": ((2, 2, 3), normal)},
        (2, 7, 3),
        lambda a, b, c: torch.cat([tt(a), tt(b), tt(c)], dim=1).numpy(),
    ),
    Case(
        "slice",
        "step.slice %a start [1, 0, 2] limit [3, 4, 7] stride [1, 3, 2] : {a} -> {r}",
        {"a": ((3, 4, 7), normal)},
        (2, 2, 3),
        lambda a: tt(a)[1:3, 0:4:3, 2:7:2].numpy(),
    ),
    Case(
        "pad",
        "step.pad %a low [1, 0] high [0, 2] interior [1, 2] : {a} -> {r}",
        {"a": ((3, 4), normal)},
        (6, 12),
        lambda a: _padded(a),
    ),
]


def _padded(a: np.ndarray) -> np.ndarray:
    """`a` with a row of zeros before it, one between its rows, two columns between its columns
    and two after (NumPy's fancy indexing, independent of the op's index arithmetic)."""
    out = np.zeros((6, 12))
    out[np.ix_([1, 3, 5], [0, 3, 6, 9])] = a
    return out


def run_case(case: Case, element: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    dtype = DTYPES[element]
    rng = np.random.default_rng(seed)
    raw = {k: gen(shape, rng) for k, (shape, gen) in case.operands.items()}
    exact = (*case.ints, *case.keys)
    inputs = {k: v if k in exact else v.astype(dtype) for k, v in raw.items()}
    module = parse_text(case.program(element), f"{case.name}.ir")
    verify(module)
    got = run_function(module, inputs)["loss"]
    # The oracle sees exactly the values the interpreter saw, in float64.
    expected = np.asarray(case.oracle(*(v if k in exact else v.astype(np.float64) for k, v in inputs.items())))
    return got, expected, inputs


@pytest.mark.parametrize("element", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_op_against_oracle(case: Case, element: str) -> None:
    got, expected, _ = run_case(case, element)
    result_dtype = np.dtype({"f16": np.float16}.get(case.result_element or "", DTYPES[element]))
    assert got.dtype == result_dtype
    assert got.shape == case.result
    np.testing.assert_allclose(got.astype(np.float64), expected, **TOLERANCE[element])


def test_every_op_has_a_row() -> None:
    covered = {c.line.split()[0] for c in CASES}
    assert covered == {op.name for op in (*SPEC_OPS, *EXTRA_OPS)}


# ---------------------------------------------------------------------------------------------
# Conventions and numerics


def one_op(line: str, arg_types: dict[str, str], result: str) -> object:
    sig = ", ".join(f"%{k}: {v}" for k, v in arg_types.items())
    module = parse_text(f"func.func @f({sig}) -> {result} {{\n  %r = {line}\n  func.return %r : {result}\n}}\n", "t.ir")
    verify(module)
    return module


def test_relu_and_abs_at_zero() -> None:
    x = np.array([-1.0, -0.0, 0.0, 2.0], dtype=np.float32)
    for name, expected in (("relu", [0.0, 0.0, 0.0, 2.0]), ("abs", [1.0, 0.0, 0.0, 2.0])):
        module = one_op(f"step.{name} %a : tensor<4xf32>", {"a": "tensor<4xf32>"}, "tensor<4xf32>")
        np.testing.assert_array_equal(run_function(module, {"a": x})["loss"], expected)


def test_softmax_family_is_stable_for_huge_logits() -> None:
    logits = np.array([[1000.0, 0.0, -1000.0], [-5e4, -5e4, -5e4]], dtype=np.float32)
    labels_ = np.array([2, 0], dtype=np.int32)
    for name, oracle in (("softmax", F.softmax), ("log_softmax", F.log_softmax)):
        module = one_op(f"step.{name} %a axis 1 : tensor<2x3xf32>", {"a": "tensor<2x3xf32>"}, "tensor<2x3xf32>")
        got = run_function(module, {"a": logits})["loss"]
        np.testing.assert_allclose(got, oracle(torch.from_numpy(logits), dim=1).numpy(), rtol=1e-6)
    module = one_op(
        "step.cross_entropy %a, %b : (tensor<2x3xf32>, tensor<2xi32>) -> tensor<f32>",
        {"a": "tensor<2x3xf32>", "b": "tensor<2xi32>"},
        "tensor<f32>",
    )
    got = run_function(module, {"a": logits, "b": labels_})["loss"]
    expected = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels_).long()).numpy()
    assert np.isfinite(got)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_sigmoid_saturates_without_overflow() -> None:
    x = np.array([-1000.0, -30.0, 0.0, 30.0, 1000.0])
    module = one_op("step.sigmoid %a : tensor<5xf64>", {"a": "tensor<5xf64>"}, "tensor<5xf64>")
    np.testing.assert_allclose(run_function(module, {"a": x})["loss"], torch.sigmoid(torch.from_numpy(x)).numpy())


@pytest.mark.parametrize("element,dtype", [("bf16", ml_dtypes.bfloat16), ("f16", np.float16)])
def test_narrow_floats_compute_in_f32_and_round_once_per_op(element: str, dtype: type) -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 8)).astype(dtype)
    b = rng.standard_normal((8, 3)).astype(dtype)
    module = one_op(
        f"step.matmul %a, %b : (tensor<4x8x{element}>, tensor<8x3x{element}>) -> tensor<4x3x{element}>",
        {"a": f"tensor<4x8x{element}>", "b": f"tensor<8x3x{element}>"},
        f"tensor<4x3x{element}>",
    )
    got = run_function(module, {"a": a, "b": b})["loss"]
    assert got.dtype == np.dtype(dtype)
    # PyTorch with float32 accumulation, rounded to the 16-bit type once.
    expected = (torch.from_numpy(a.astype(np.float32)) @ torch.from_numpy(b.astype(np.float32))).numpy().astype(dtype)
    np.testing.assert_array_equal(got.astype(np.float32), expected.astype(np.float32))

    module = one_op(
        f"step.log_softmax %a axis 1 : tensor<4x8x{element}>", {"a": f"tensor<4x8x{element}>"}, f"tensor<4x8x{element}>"
    )
    got = run_function(module, {"a": a})["loss"]
    reference = F.log_softmax(torch.from_numpy(a.astype(np.float64)), dim=1).numpy()
    eps = float(ml_dtypes.finfo(dtype).eps)
    np.testing.assert_allclose(got.astype(np.float64), reference, rtol=eps, atol=eps)


def test_constant_is_rounded_to_the_result_type() -> None:
    module = one_op("step.constant 0.1 : tensor<bf16>", {}, "tensor<bf16>")
    got = run_function(module, {})["loss"]
    assert got.dtype == np.dtype(ml_dtypes.bfloat16) and got.shape == ()
    assert float(got) == float(np.asarray(0.1, dtype=ml_dtypes.bfloat16))


def test_convert_rounds_to_nearest_even() -> None:
    module = one_op("step.convert %a : tensor<3xf32> -> tensor<3xbf16>", {"a": "tensor<3xf32>"}, "tensor<3xbf16>")
    x = np.array([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, -1.5], dtype=np.float32)  # two ties and an exact value
    got = run_function(module, {"a": x})["loss"].astype(np.float32)
    expected = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------------------------------------
# Whole programs and the API's errors


def test_mlp_example_against_pytorch() -> None:
    with open("examples/mlp_digits.ir") as f:
        module = load_text(f.read(), "examples/mlp_digits.ir")
    rng = np.random.default_rng(0)
    p = {
        "w1": rng.standard_normal((64, 128)) * 0.1,
        "b1": rng.standard_normal(128) * 0.1,
        "w2": rng.standard_normal((128, 10)) * 0.1,
        "b2": rng.standard_normal(10) * 0.1,
        "x": rng.standard_normal((64, 64)),
    }
    inputs = {k: v.astype(np.float32) for k, v in p.items()}
    inputs["labels"] = rng.integers(0, 10, 64).astype(np.int32)
    got = run_function(module, inputs)["loss"]
    g = {k: tt(v) for k, v in inputs.items() if k != "labels"}
    logits = torch.relu(g["x"] @ g["w1"] + g["b1"]) @ g["w2"] + g["b2"]
    expected = F.cross_entropy(logits, torch.from_numpy(inputs["labels"]).long()).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)


MULTI_RESULT = """\
func.func @two(%a: tensor<3xf32> {step.param}, %b: tensor<3xf32>) -> (tensor<f32> {step.output = "loss"}, tensor<3xf32> {step.output = "grad.a"}) {
  %d = step.sub %a, %b : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xf32>
  %l = step.mse %a, %b : (tensor<3xf32>, tensor<3xf32>) -> tensor<f32>
  %two = step.constant 0.6666666666666666 : tensor<f32>
  %g = step.mul %d, %two : (tensor<3xf32>, tensor<f32>) -> tensor<3xf32>
  func.return %l, %g : tensor<f32>, tensor<3xf32>
}
"""


def test_multi_result_function_is_keyed_by_output_names() -> None:
    module = parse_text(MULTI_RESULT, "two.ir")
    verify(module)
    a = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    b = np.array([0.0, 2.5, 1.0], dtype=np.float32)
    out = run_function(step_function(module), {"a": a, "b": b})
    assert list(out) == ["loss", "grad.a"]
    ta = torch.from_numpy(a).requires_grad_()
    loss = F.mse_loss(ta, torch.from_numpy(b))
    loss.backward()
    np.testing.assert_allclose(out["loss"], loss.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(out["grad.a"], ta.grad.numpy(), rtol=1e-6)


LINREG = "examples/linreg.ir"


def linreg_inputs() -> dict[str, np.ndarray]:
    return {
        "w": np.zeros((4, 1), np.float32),
        "b": np.zeros((1,), np.float32),
        "x": np.zeros((32, 4), np.float32),
        "t": np.zeros((32, 1), np.float32),
    }


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda d: d.pop("x"), "missing %x"),
        (lambda d: d.update(extra=np.zeros(1)), "unknown 'extra'"),
        (lambda d: d.update(w=np.zeros((1, 4), np.float32)), "input %w: expected shape 4x1"),
        (lambda d: d.update(b=np.zeros((1,), np.int32)), None),  # ints convert to floats
        (lambda d: d.update(t=np.zeros((32, 1), np.float64)), None),  # same kind, narrower
    ],
)
def test_inputs_are_checked(change: Callable, message: str | None) -> None:
    with open(LINREG) as f:
        module = load_text(f.read(), LINREG)
    inputs = linreg_inputs()
    change(inputs)
    if message is None:
        out = run_function(module, inputs)
        assert out["loss"].dtype == np.float32
        return
    with pytest.raises(StepcError, match=message) as info:
        run_function(module, inputs)
    assert info.value.loc is not None and info.value.loc.file == LINREG


def test_float_labels_are_refused_at_the_argument() -> None:
    module = one_op(
        "step.one_hot %a : tensor<2xi32> -> tensor<2x3xf32>", {"a": "tensor<2xi32>"}, "tensor<2x3xf32>"
    )
    with pytest.raises(StepcError, match="expected int32 values"):
        run_function(module, {"a": np.array([0.0, 1.0])})


def test_label_out_of_range_is_a_located_error() -> None:
    module = one_op(
        "step.cross_entropy %a, %b : (tensor<2x3xf32>, tensor<2xi32>) -> tensor<f32>",
        {"a": "tensor<2x3xf32>", "b": "tensor<2xi32>"},
        "tensor<f32>",
    )
    with pytest.raises(StepcError, match=r"label 3 of row 1 is outside \[0, 3\)") as info:
        run_function(module, {"a": np.zeros((2, 3), np.float32), "b": np.array([0, 3], np.int32)})
    assert info.value.loc is not None and info.value.loc.line == 2


@pytest.mark.parametrize("op", ["embedding", "embedding_grad"])
@pytest.mark.parametrize("bad", [5, -1])
def test_embedding_id_out_of_range_is_a_located_error(op: str, bad: int) -> None:
    """F.embedding raises on an id outside the table (an IndexError); so does the interpreter,
    at the op's line, naming the id and where it is."""
    line = {"embedding": "step.embedding %t, %i : (tensor<5x3xf32>, tensor<2x2xi32>) -> tensor<2x2x3xf32>",
            "embedding_grad": "step.embedding_grad %t, %i : (tensor<2x2x3xf32>, tensor<2x2xi32>) -> tensor<5x3xf32>"}[op]  # fmt: skip
    table = "tensor<5x3xf32>" if op == "embedding" else "tensor<2x2x3xf32>"
    module = one_op(line, {"t": table, "i": "tensor<2x2xi32>"}, "tensor<2x2x3xf32>" if op == "embedding" else "tensor<5x3xf32>")
    shape = (5, 3) if op == "embedding" else (2, 2, 3)
    with pytest.raises(StepcError, match=rf"step.{op}: id {bad} at \[1, 0\] is outside the table's 5 rows \[0, 5\)") as info:
        run_function(module, {"t": np.zeros(shape, np.float32), "i": np.array([[0, 4], [bad, 2]], np.int32)})
    assert info.value.loc is not None and info.value.loc.line == 2
    with pytest.raises(IndexError):  # the oracle's behaviour
        torch.nn.functional.embedding(torch.tensor([[0, 4], [bad, 2]]), torch.zeros(5, 3))


def test_inputs_are_not_modified_and_outputs_are_fresh() -> None:
    module = one_op("step.neg %a : tensor<2xf32>", {"a": "tensor<2xf32>"}, "tensor<2xf32>")
    x = np.array([1.0, 2.0], np.float32)
    out = run_function(module, {"a": x})["loss"]
    out[0] = 7.0
    np.testing.assert_array_equal(x, [1.0, 2.0])


def load_example(name: str):  # type: ignore[no-untyped-def]
    path = f"examples/{name}.ir"
    with open(path) as f:
        return load_text(f.read(), path)


def test_tanh_autoencoder_example_against_pytorch() -> None:
    module = load_example("tanh_autoencoder")
    rng = np.random.default_rng(3)
    shapes_ = {"w_enc": (16, 6), "b_enc": (6,), "w_dec": (6, 16), "b_dec": (16,), "x": (32, 16)}
    inputs = {k: (rng.standard_normal(s) * 0.3).astype(np.float32) for k, s in shapes_.items()}
    got = run_function(module, inputs)["loss"]
    g = {k: tt(v) for k, v in inputs.items()}
    recon = torch.tanh(g["x"] @ g["w_enc"] + g["b_enc"]) @ g["w_dec"] + g["b_dec"]
    np.testing.assert_allclose(got, F.mse_loss(recon, g["x"]).numpy(), rtol=1e-5)


def test_attention_example_against_pytorch() -> None:
    module = load_example("attention_classifier")
    rng = np.random.default_rng(4)
    shapes_ = {"w_q": (8, 8), "w_k": (8, 8), "w_v": (8, 8), "w_out": (8, 3), "b_out": (3,), "tokens": (4, 6, 8)}
    inputs = {k: (rng.standard_normal(s) * 0.5).astype(np.float32) for k, s in shapes_.items()}
    inputs["labels"] = np.array([0, 2, 1, 2], np.int32)
    got = run_function(module, inputs)["loss"]
    g = {k: tt(v) for k, v in inputs.items() if k != "labels"}
    q, k, v = (g["tokens"] @ g[w] for w in ("w_q", "w_k", "w_v"))
    attn = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(8)) v
    logits = attn.mean(dim=1) @ g["w_out"] + g["b_out"]
    expected = F.cross_entropy(logits, torch.from_numpy(inputs["labels"]).long()).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
