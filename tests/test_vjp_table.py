"""One row per op: the gradient stepc computes equals jax.grad and PyTorch autograd in float64.

Each row is a small program around one op, `loss = sum(op(params...) * weight)` with a random
`weight`, so the op's cotangent is not uniform. stepc's gradient is the program after
`differentiate` and `seed-scalar-loss`, run on the reference interpreter and through the JAX
backend; the oracles are `jax.grad` and `torch.autograd` of twins written with `jnp` and
`torch`. Relative error (max |ours - oracle| / max |oracle|) at most 1e-10.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from stepc.ir.dialect import format_float
from stepc.ir.parse import load_text
from stepc.pipeline import Pipeline

REL_TOL = 1e-10
TYPES = {"f64": np.float64, "f32": np.float32, "i32": np.int32, "ui32": np.uint32}
TORCH_TYPES = {"f64": torch.float64, "f32": torch.float32}
JAX_TYPES = {"f64": jnp.float64, "f32": jnp.float32}


def tensor_type(shape: tuple[int, ...], element: str = "f64") -> str:
    return "tensor<" + "".join(f"{d}x" for d in shape) + element + ">"


@dataclass
class Arg:
    name: str
    shape: tuple[int, ...]
    element: str = "f64"
    # How to draw the values: "normal", "positive" (away from 0), "nonzero", "ties" (small integers),
    # "kinks" (normal with exact zeros), "labels:C", or "key" (random uint32 words).
    values: str = "normal"

    @property
    def type(self) -> str:
        return tensor_type(self.shape, self.element)

    @property
    def is_param(self) -> bool:
        return self.element not in ("i32", "ui32")

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        if self.values == "key":
            return rng.integers(0, 2**32, size=self.shape, dtype=np.uint32)
        if self.values.startswith("labels:"):
            return rng.integers(0, int(self.values.split(":")[1]), size=self.shape).astype(np.int32)
        x = rng.standard_normal(self.shape)
        if self.values == "positive":
            x = 0.5 + np.abs(x)
        elif self.values == "nonzero":
            x = np.sign(x) * (0.5 + np.abs(x))
        elif self.values == "ties":
            x = rng.integers(-1, 2, size=self.shape).astype(np.float64)
        elif self.values == "kinks":
            x = np.where(rng.random(self.shape) < 0.4, 0.0, x)
        elif self.values == "wide":  # 0, negative, large of both signs (where gelu saturates), then normal
            fixed = np.array([0.0, -0.5, -3.0, -6.0, -10.0, -40.0, 2.0, 6.0, 10.0, 40.0, -1e-3])
            x.reshape(-1)[: fixed.size] = fixed[: x.size]
        return np.asarray(x, dtype=TYPES[self.element])


@dataclass
class Row:
    id: str
    args: list[Arg]
    line: str  # the op, defining %r
    out: tuple[int, ...]
    jax_fn: Callable[..., Any]
    torch_fn: Callable[..., Any]
    out_element: str = "f64"
    tie_inputs: Callable[[dict[str, np.ndarray]], None] | None = field(default=None)

    def program(self) -> str:
        arg_text = ", ".join(f"%{a.name}: {a.type}" + (" {step.param}" if a.is_param else "") for a in self.args)
        out_t = tensor_type(self.out, self.out_element)
        return (
            f"func.func @{self.id.replace('-', '_')}({arg_text}, %weight: {out_t}) -> tensor<{self.out_element}>\n"
            "    attributes {step.sgd = #step.sgd<lr = 0.1>} {\n"
            f"  {self.line}\n"
            f"  %rw = step.mul %r, %weight : ({out_t}, {out_t}) -> {out_t}\n"
            f"  %loss = step.sum %rw : {out_t} -> tensor<{self.out_element}>\n"
            f"  func.return %loss : tensor<{self.out_element}>\n"
            "}\n"
        )


# ---------------------------------------------------------------------------------------------
# The rows


def broadcast_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(np.broadcast_shapes(a, b))


BINARY = {
    "add": (jnp.add, torch.add),
    "sub": (jnp.subtract, torch.sub),
    "mul": (jnp.multiply, torch.mul),
    "div": (jnp.divide, torch.div),
    "maximum": (jnp.maximum, torch.maximum),
    "minimum": (jnp.minimum, torch.minimum),
}
# Same shapes, lhs broadcast, rhs broadcast, both broadcast, a scalar side.
BINARY_SHAPES = [((3, 4), (3, 4)), ((4,), (3, 4)), ((2, 3, 4), (3, 1)), ((3, 1), (1, 4)), ((), (2, 3))]


def binary_rows() -> list[Row]:
    rows = []
    for op, (jf, tf) in BINARY.items():
        for sa, sb in BINARY_SHAPES:
            out = broadcast_shape(sa, sb)
            a = Arg("a", sa)
            b = Arg("b", sb, values="nonzero" if op == "div" else "normal")
            line = f"%r = step.{op} %a, %b : ({a.type}, {b.type}) -> {tensor_type(out)}"
            rows.append(Row(f"{op}-{'x'.join(map(str, sa)) or 's'}-{'x'.join(map(str, sb)) or 's'}", [a, b], line, out, jf, tf))
        # ties, broadcast on one side: maximum/minimum split the cotangent equally
        if op in ("maximum", "minimum"):
            a, b = Arg("a", (3, 4), values="ties"), Arg("b", (4,), values="ties")
            line = f"%r = step.{op} %a, %b : ({a.type}, {b.type}) -> {tensor_type((3, 4))}"
            rows.append(Row(f"{op}-ties", [a, b], line, (3, 4), jf, tf))
    return rows


def _abs_jax(x: Any) -> Any:
    # jnp.abs has derivative 1 at 0; x * sign(x) has PyTorch's 0 (sign' = 0) and the same values.
    return x * jnp.sign(x)


UNARY = {
    "exp": (jnp.exp, torch.exp, "normal"),
    "neg": (jnp.negative, torch.neg, "normal"),
    "log": (jnp.log, torch.log, "positive"),
    "tanh": (jnp.tanh, torch.tanh, "normal"),
    "sigmoid": (jax.nn.sigmoid, torch.sigmoid, "normal"),
    "relu": (jax.nn.relu, torch.relu, "kinks"),
    "sqrt": (jnp.sqrt, torch.sqrt, "positive"),
    "rsqrt": (jax.lax.rsqrt, torch.rsqrt, "positive"),
    "square": (jnp.square, torch.square, "normal"),
    "abs": (_abs_jax, torch.abs, "kinks"),
}


def unary_rows() -> list[Row]:
    rows = []
    for op, (jf, tf, values) in UNARY.items():
        for shape in [(3, 4), ()]:
            a = Arg("a", shape, values=values)
            rows.append(Row(f"{op}-{'x'.join(map(str, shape)) or 's'}", [a], f"%r = step.{op} %a : {a.type}", shape, jf, tf))
    return rows


MATMUL_SHAPES = [((3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)), ((2, 3, 4), (4, 5)), ((2, 2, 3, 4), (4, 5)), ((2, 2, 3, 4), (2, 2, 4, 5))]


def matmul_rows() -> list[Row]:
    rows = []
    for sa, sb in MATMUL_SHAPES:
        out = (*sa[:-1], sb[-1])
        a, b = Arg("a", sa), Arg("b", sb)
        line = f"%r = step.matmul %a, %b : ({a.type}, {b.type}) -> {tensor_type(out)}"
        rows.append(Row(f"matmul-{'x'.join(map(str, sa))}-{'x'.join(map(str, sb))}", [a, b], line, out, jnp.matmul, torch.matmul))
    return rows


def transpose_rows() -> list[Row]:
    rows = []
    for shape, perm in [((3, 4), (1, 0)), ((2, 3, 4), (2, 0, 1)), ((2, 3, 4), (0, 2, 1)), ((2, 3, 4, 5), (3, 1, 0, 2))]:
        out = tuple(shape[p] for p in perm)
        a = Arg("a", shape)
        line = f"%r = step.transpose %a perm {list(perm)} : {a.type} -> {tensor_type(out)}"
        rows.append(
            Row(f"transpose-{''.join(map(str, perm))}", [a], line, out,
                lambda x, perm=perm: jnp.transpose(x, perm), lambda x, perm=perm: x.permute(*perm))
        )  # fmt: skip
    return rows


def reshape_rows() -> list[Row]:
    rows = []
    for shape, out in [((3, 4), (12,)), ((2, 3, 4), (4, 6)), ((2, 3), (3, 1, 2)), ((1, 1), ()), ((6,), (2, 3))]:
        a = Arg("a", shape)
        line = f"%r = step.reshape %a : {a.type} -> {tensor_type(out)}"
        rows.append(
            Row(f"reshape-{'x'.join(map(str, shape))}-{'x'.join(map(str, out)) or 's'}", [a], line, out,
                lambda x, out=out: jnp.reshape(x, out), lambda x, out=out: x.reshape(out))
        )  # fmt: skip
    return rows


def broadcast_rows() -> list[Row]:
    rows = []
    for shape, out in [((4,), (3, 4)), ((3, 1), (2, 3, 4)), ((), (2, 3)), ((1, 4), (3, 4)), ((2, 1, 4), (2, 3, 4))]:
        a = Arg("a", shape)
        line = f"%r = step.broadcast %a : {a.type} -> {tensor_type(out)}"
        rows.append(
            Row(f"broadcast-{'x'.join(map(str, shape)) or 's'}-{'x'.join(map(str, out))}", [a], line, out,
                lambda x, out=out: jnp.broadcast_to(x, out), lambda x, out=out: x.broadcast_to(out))
        )  # fmt: skip
    return rows


def _torch_reduce(name: str) -> Callable[..., Any]:
    def reduce(x: Any, dims: tuple[int, ...] | None) -> Any:
        all_dims = tuple(range(x.dim())) if dims is None else dims
        if name == "sum":
            return torch.sum(x, dim=all_dims) if all_dims else x
        if name == "mean":
            return torch.mean(x, dim=all_dims)
        return torch.amax(x, dim=all_dims)

    return reduce


REDUCTIONS = {"sum": jnp.sum, "mean": jnp.mean, "max": jnp.max}


def reduction_rows() -> list[Row]:
    rows = []
    for op, jf in REDUCTIONS.items():
        tf = _torch_reduce(op)
        cases: list[tuple[tuple[int, ...], tuple[int, ...] | None, str]] = [
            ((3, 4), None, "normal"), ((3, 4), (0,), "normal"), ((3, 4), (1,), "normal"),
            ((2, 3, 4), (0, 2), "normal"), ((2, 3, 4), (1,), "normal"), ((5,), None, "normal"),
        ]  # fmt: skip
        if op == "max":
            cases += [((3, 4), (1,), "ties"), ((3, 4), None, "ties"), ((2, 3, 4), (0, 2), "ties")]
        for shape, dims, values in cases:
            out = tuple(d for i, d in enumerate(shape) if dims is not None and i not in dims)
            a = Arg("a", shape, values=values)
            dims_text = "" if dims is None else f" dims {list(dims)}"
            line = f"%r = step.{op} %a{dims_text} : {a.type} -> {tensor_type(out)}"
            name = f"{op}-{'x'.join(map(str, shape))}-{'all' if dims is None else ''.join(map(str, dims))}-{values}"
            rows.append(
                Row(name, [a], line, out, lambda x, jf=jf, dims=dims: jf(x, axis=dims),
                    lambda x, tf=tf, dims=dims: tf(x, dims))
            )  # fmt: skip
    return rows


def softmax_rows() -> list[Row]:
    rows = []
    for op, jf, tf in [
        ("softmax", jax.nn.softmax, torch.softmax),
        ("log_softmax", jax.nn.log_softmax, torch.log_softmax),
    ]:
        for shape, axis in [((3, 4), 0), ((3, 4), 1), ((2, 3, 4), 2), ((2, 3, 4), 1)]:
            a = Arg("a", shape)
            line = f"%r = step.{op} %a axis {axis} : {a.type}"
            rows.append(
                Row(f"{op}-{'x'.join(map(str, shape))}-axis{axis}", [a], line, shape,
                    lambda x, jf=jf, axis=axis: jf(x, axis=axis), lambda x, tf=tf, axis=axis: tf(x, axis))
            )  # fmt: skip
    return rows


def _cross_entropy_jax(logits: Any, labels: Any) -> Any:
    picked = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=1), labels[:, None], axis=1)
    return -jnp.mean(picked)


def loss_rows() -> list[Row]:
    logits, labels = Arg("logits", (5, 4)), Arg("labels", (5,), "i32", "labels:4")
    ce = f"%r = step.cross_entropy %logits, %labels : ({logits.type}, {labels.type}) -> tensor<f64>"
    a, b = Arg("a", (3, 4)), Arg("b", (3, 4))
    mse = f"%r = step.mse %a, %b : ({a.type}, {b.type}) -> tensor<f64>"
    return [
        Row("cross_entropy", [logits, labels], ce, (), _cross_entropy_jax,
            lambda x, y: torch.nn.functional.cross_entropy(x, y.long())),
        Row("mse", [a, b], mse, (), lambda x, y: jnp.mean(jnp.square(x - y)), torch.nn.functional.mse_loss),
    ]  # fmt: skip


CONSTANT = [[0.5, -1.0, 2.0], [3.0, 0.25, -0.75]]


def constant_convert_rows() -> list[Row]:
    a = Arg("a", (2, 3))
    dense = (
        "%c = step.constant dense<[[0.5, -1.0, 2.0], [3.0, 0.25, -0.75]]> : tensor<2x3xf64>\n"
        "  %r = step.mul %a, %c : (tensor<2x3xf64>, tensor<2x3xf64>) -> tensor<2x3xf64>"
    )
    splat = (
        "%c = step.constant 1.5 : tensor<f64>\n"
        "  %r = step.sub %c, %a : (tensor<f64>, tensor<2x3xf64>) -> tensor<2x3xf64>"
    )
    # f64 -> f32 -> f64: the cotangent is rounded to f32 on its way back, as in JAX and PyTorch.
    round_trip = (
        "%a32 = step.convert %a : tensor<2x3xf64> -> tensor<2x3xf32>\n"
        "  %r = step.convert %a32 : tensor<2x3xf32> -> tensor<2x3xf64>"
    )
    p = Arg("p", (2, 3), "f32")
    widen = (
        "%p64 = step.convert %p : tensor<2x3xf32> -> tensor<2x3xf64>\n"
        "  %r = step.square %p64 : tensor<2x3xf64>"
    )
    return [
        Row("constant-dense", [a], dense, (2, 3), lambda x: x * jnp.asarray(CONSTANT),
            lambda x: x * torch.tensor(CONSTANT, dtype=torch.float64)),
        Row("constant-splat", [a], splat, (2, 3), lambda x: 1.5 - x, lambda x: 1.5 - x),
        Row("convert-f64-f32-f64", [a], round_trip, (2, 3), lambda x: x.astype(jnp.float32).astype(jnp.float64),
            lambda x: x.to(torch.float32).to(torch.float64)),
        Row("convert-f32-f64", [p], widen, (2, 3), lambda x: jnp.square(x.astype(jnp.float64)),
            lambda x: torch.square(x.to(torch.float64))),
    ]  # fmt: skip


def select_rows() -> list[Row]:
    """`torch.where(m != 0, a, b)` with broadcasting; the mask (drawn with exact zeros) has no
    derivative: its gradient is 0 (`+ 0 * m` gives the oracles a zero gradient for it)."""
    rows = []
    for sm, sa, sb in [((3, 4), (3, 4), (3, 4)), ((3, 1), (3, 4), (4,)), ((3, 4), (), (1, 4))]:
        out = tuple(np.broadcast_shapes(sm, sa, sb))
        m, a, b = Arg("m", sm, values="kinks"), Arg("a", sa), Arg("b", sb)
        line = f"%r = step.select %m, %a, %b : ({m.type}, {a.type}, {b.type}) -> {tensor_type(out)}"
        rows.append(Row(
            f"select-{'x'.join(map(str, sm))}-{'x'.join(map(str, sa)) or 's'}-{'x'.join(map(str, sb))}", [m, a, b], line,
            out, lambda m, a, b: jnp.where(m != 0, a, b) + 0 * m, lambda m, a, b: torch.where(m != 0, a, b) + 0 * m,
        ))  # fmt: skip
    return rows


def _layer_norm_jax(x: Any, g: Any, b: Any, eps: float) -> Any:
    axes = tuple(range(x.ndim - g.ndim, x.ndim))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    variance = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    return (x - mean) / jnp.sqrt(variance + eps) * g + b


def layer_norm_rows() -> list[Row]:
    """Over 1 and 2 trailing dims and the whole input; the default eps and others."""
    rows = []
    for sx, sg, eps in [((3, 4), (4,), None), ((2, 3, 4), (3, 4), 1e-3), ((5,), (5,), 0.1), ((2, 2, 5), (5,), 1e-5)]:
        x, g, b = Arg("x", sx), Arg("g", sg), Arg("b", sg)
        eps_text = "" if eps is None else f" eps {format_float(eps)}"
        line = f"%r = step.layer_norm %x, %g, %b{eps_text} : ({x.type}, {g.type}, {b.type}) -> {x.type}"
        value = 1e-5 if eps is None else eps
        rows.append(Row(
            f"layer_norm-{'x'.join(map(str, sx))}-{'x'.join(map(str, sg))}-eps{value}", [x, g, b], line, sx,
            lambda x, g, b, value=value: _layer_norm_jax(x, g, b, value),
            lambda x, g, b, value=value: torch.nn.functional.layer_norm(x, tuple(g.shape), g, b, value),
        ))  # fmt: skip
    return rows


def _elementwise_grad_jax(approximate: bool) -> Callable[..., Any]:
    """gelu' elementwise, by jax.grad of jax.nn.gelu."""
    return jnp.vectorize(jax.grad(lambda v: jax.nn.gelu(v, approximate=approximate)))


def _gelu_grad_torch(approximate: str) -> Callable[..., Any]:
    def grad(x: Any) -> Any:
        (d,) = torch.autograd.grad(torch.nn.functional.gelu(x, approximate=approximate).sum(), x, create_graph=True)
        return d

    return grad


def gelu_rows() -> list[Row]:
    """Both forms at 0, negative and large values of both signs (`wide`), and their derivative
    op `gelu_grad` (differentiated again: gelu'')."""
    rows = []
    for approximate in ("none", "tanh"):
        suffix = "" if approximate == "none" else " approximate tanh"
        tanh = approximate == "tanh"
        for shape in [(3, 4), ()]:
            a = Arg("a", shape, values="wide")
            rows.append(Row(f"gelu-{approximate}-{'x'.join(map(str, shape)) or 's'}", [a], f"%r = step.gelu %a{suffix} : {a.type}",
                            shape, lambda x, tanh=tanh: jax.nn.gelu(x, approximate=tanh),
                            lambda x, approximate=approximate: torch.nn.functional.gelu(x, approximate=approximate)))  # fmt: skip
        a = Arg("a", (3, 4), values="wide")
        rows.append(Row(f"gelu_grad-{approximate}", [a], f"%r = step.gelu_grad %a{suffix} : {a.type}", (3, 4),
                        _elementwise_grad_jax(tanh), _gelu_grad_torch(approximate)))  # fmt: skip
    return rows


def embedding_rows() -> list[Row]:
    """1-D and 2-D ids, more ids than rows (so some repeat in the batch), and the gradient op
    `embedding_grad` (its transpose is the embedding)."""
    rows = []
    for ids_shape in [(7,), (2, 4), ()]:
        table, ids = Arg("table", (5, 3)), Arg("ids", ids_shape, "i32", "labels:5")
        out = (*ids_shape, 3)
        line = f"%r = step.embedding %table, %ids : ({table.type}, {ids.type}) -> {tensor_type(out)}"
        rows.append(Row(f"embedding-{'x'.join(map(str, ids_shape)) or 's'}", [table, ids], line, out,
                        lambda t, i: jnp.take(t, i, axis=0),
                        lambda t, i: torch.nn.functional.embedding(i.long(), t)))  # fmt: skip
    c, ids = Arg("c", (2, 4, 3)), Arg("ids", (2, 4), "i32", "labels:5")
    line = f"%r = step.embedding_grad %c, %ids : ({c.type}, {ids.type}) -> {tensor_type((5, 3))}"
    rows.append(Row("embedding_grad", [c, ids], line, (5, 3),
                    lambda c, i: jnp.zeros((5, 3), c.dtype).at[i.reshape(-1)].add(c.reshape(-1, 3)),
                    lambda c, i: torch.zeros(5, 3, dtype=c.dtype).index_add(0, i.reshape(-1).long(), c.reshape(-1, 3))))  # fmt: skip
    return rows


# (N, C, H, W), (O, KH, KW), stride, padding, dilation, groups: stride 2, padding 1 and 2,
# dilation 2, groups 2 and depthwise, non-square kernels, strides that leave rows over.
CONV_CASES = [
    ((2, 3, 6, 6), (4, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    ((2, 3, 7, 7), (4, 3, 3), (2, 2), (1, 1), (1, 1), 1),  # stride 2: (7 + 2 - 3) % 2 = 0; below, 1 left over
    ((2, 3, 8, 7), (4, 3, 3), (2, 2), (1, 1), (1, 1), 1),
    ((1, 2, 7, 6), (3, 2, 3), (1, 1), (2, 2), (2, 2), 1),  # padding 2, dilation 2, non-square kernel
    ((2, 4, 7, 6), (6, 3, 2), (2, 1), (1, 2), (1, 2), 2),  # groups 2, mixed everything, rows left over
    ((2, 3, 9, 8), (3, 3, 3), (3, 2), (2, 1), (2, 1), 3),  # depthwise, stride 3 leaving rows over
    ((1, 4, 5, 9), (8, 1, 4), (2, 3), (0, 2), (1, 2), 4),  # depthwise x2 channels, 1x4 kernel
]


def conv_rows() -> list[Row]:
    """`F.conv2d` (and, for second derivatives, its two adjoints `torch.nn.grad.conv2d_input` and
    `conv2d_weight`, with `jax.vjp` of `lax.conv_general_dilated` as their twins)."""
    rows = []
    for (n, c, h, w), (o, kh, kw), stride, padding, dilation, groups in CONV_CASES:
        x, k = Arg("x", (n, c, h, w)), Arg("k", (o, c // groups, kh, kw))
        out = tuple(torch.nn.functional.conv2d(torch.zeros(x.shape), torch.zeros(k.shape), None, stride, padding, dilation, groups).shape)
        attrs = f"stride {list(stride)} padding {list(padding)} dilation {list(dilation)} groups {groups}"
        tag = f"{'x'.join(map(str, x.shape))}-{kh}x{kw}-s{stride[0]}{stride[1]}-p{padding[0]}{padding[1]}-d{dilation[0]}{dilation[1]}-g{groups}"

        def jax_conv(x, k, stride=stride, padding=padding, dilation=dilation, groups=groups):  # type: ignore[no-untyped-def]
            return jax.lax.conv_general_dilated(x, k, stride, [(p, p) for p in padding], rhs_dilation=dilation,
                                                feature_group_count=groups)  # fmt: skip

        def torch_conv(x, k, stride=stride, padding=padding, dilation=dilation, groups=groups):  # type: ignore[no-untyped-def]
            return torch.nn.functional.conv2d(x, k, None, stride, padding, dilation, groups)

        rows.append(Row(f"conv2d-{tag}", [x, k], f"%r = step.conv2d %x, %k {attrs} : ({x.type}, {k.type}) -> {tensor_type(out)}",
                        out, jax_conv, torch_conv))  # fmt: skip
        dy = Arg("dy", out)
        rows.append(Row(
            f"conv2d_input_grad-{tag}", [dy, k],
            f"%r = step.conv2d_input_grad %dy, %k {attrs} : ({dy.type}, {k.type}) -> {x.type}", x.shape,
            lambda dy, kernel, f=jax_conv, shape=x.shape: jax.vjp(lambda image: f(image, kernel), jnp.zeros(shape))[1](dy)[0],
            lambda dy, k, s=stride, p=padding, d=dilation, g=groups, shape=x.shape:
                torch.nn.grad.conv2d_input(shape, k, dy, s, p, d, g),
        ))  # fmt: skip
        rows.append(Row(
            f"conv2d_weight_grad-{tag}", [x, dy],
            f"%r = step.conv2d_weight_grad %x, %dy {attrs} : ({x.type}, {dy.type}) -> {k.type}", k.shape,
            lambda image, dy, f=jax_conv, shape=k.shape: jax.vjp(lambda kernel: f(image, kernel), jnp.zeros(shape))[1](dy)[0],
            lambda x, dy, s=stride, p=padding, d=dilation, g=groups, shape=k.shape:
                torch.nn.grad.conv2d_weight(x, shape, dy, s, p, d, g),
        ))  # fmt: skip
    return rows


def jax_keep_mask(key: Any, rate: float, shape: tuple[int, ...]) -> Any:
    """The spec's keep mask, from JAX itself: `jax.random.bernoulli` of the threefry key data."""
    return jax.random.bernoulli(jax.random.wrap_key_data(jnp.asarray(key), impl="threefry2x32"), np.float32(1 - rate), shape)


def dropout_rows() -> list[Row]:
    """Inverted dropout: `where(keep, x / (1 - rate), 0)`, the mask `jax.random.bernoulli`'s; the
    torch twin is given that mask (drawn by JAX); the key has no derivative."""
    rows = []
    for shape, rate in [((3, 4), 0.1), ((7,), 0.5), ((2, 3, 5), 0.3), ((), 0.5), ((3, 4), 0.0), ((3, 4), 1.0)]:
        x, key = Arg("x", shape), Arg("key", (2,), "ui32", values="key")
        line = f"%r = step.dropout %x, %key rate {rate!r} : ({x.type}, {key.type}) -> {x.type}"
        scale = 1 / (1 - rate) if rate < 1 else 0.0

        def jax_fn(x: Any, key: Any, rate: float = rate, scale: float = scale) -> Any:
            return jnp.where(jax_keep_mask(key, rate, x.shape), x * scale, 0.0)

        def torch_fn(x: Any, key: Any, rate: float = rate, scale: float = scale) -> Any:
            keep = torch.from_numpy(np.array(jax_keep_mask(key.numpy(), rate, tuple(x.shape))))
            return torch.where(keep, x * scale, torch.zeros((), dtype=x.dtype))

        rows.append(Row(f"dropout-{'x'.join(map(str, shape)) or 's'}-{rate}", [x, key], line, shape, jax_fn, torch_fn))
    return rows


def _window_jax(combine: Callable[..., Any], init: float, kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int]) -> Callable[..., Any]:  # fmt: skip
    """`lax.reduce_window` over the last two dims (the padding filled with `init`): jax's own pooling
    (its max-pool derivative takes each window's first maximum, on CPU as torch)."""

    def pooled(x: Any) -> Any:
        lead = x.ndim - 2
        pads = ((0, 0),) * lead + tuple((p, p) for p in padding)
        return jax.lax.reduce_window(x, init, combine, (1,) * lead + kernel, (1,) * lead + stride, pads)

    return pooled


def _average_jax(kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> Callable[..., Any]:
    summed = _window_jax(jax.lax.add, 0.0, kernel, stride, padding)
    return lambda x: summed(x) / (kernel[0] * kernel[1])


# (input shape, kernel, stride, padding, values): overlapping windows (kernel 3 at stride 1 and 2),
# padding, non-square kernels, a rank-3 input, and ties (small integers: repeated maxima in a window)
POOLS = [
    ((2, 3, 6, 6), (2, 2), (2, 2), (0, 0), "normal"),
    ((1, 2, 7, 6), (3, 3), (1, 1), (1, 1), "normal"),
    ((2, 2, 7, 7), (3, 3), (2, 2), (1, 0), "normal"),
    ((2, 1, 7, 8), (3, 2), (2, 1), (1, 1), "normal"),
    ((2, 3, 6, 5), (2, 3), (1, 2), (0, 1), "ties"),
    ((2, 3, 6, 6), (3, 3), (1, 1), (1, 1), "ties"),
    ((2, 3, 6, 6), (2, 2), (2, 2), (0, 0), "ties"),
    ((3, 5, 5), (3, 3), (2, 2), (1, 1), "ties"),
]


def pool_rows() -> list[Row]:
    """`F.max_pool2d` / `F.avg_pool2d` (count_include_pad) against torch and `lax.reduce_window`."""
    rows = []
    for shape, kernel, stride, padding, values in POOLS:
        out = tuple(torch.nn.functional.max_pool2d(torch.zeros(shape), kernel, stride, padding).shape)
        a = Arg("a", shape, values=values)
        name = f"{'x'.join(map(str, shape))}-k{kernel[0]}{kernel[1]}-s{stride[0]}{stride[1]}-p{padding[0]}{padding[1]}-{values}"
        for op, jax_fn, torch_fn in (
            ("max_pool2d", _window_jax(jax.lax.max, -jnp.inf, kernel, stride, padding),
             lambda x, k=kernel, s=stride, p=padding: torch.nn.functional.max_pool2d(x, k, s, p)),
            ("avg_pool2d", _average_jax(kernel, stride, padding),
             lambda x, k=kernel, s=stride, p=padding: torch.nn.functional.avg_pool2d(x, k, s, p)),
        ):  # fmt: skip
            line = (f"%r = step.{op} %a kernel {list(kernel)} stride {list(stride)} padding {list(padding)} : "
                    f"{a.type} -> {tensor_type(out)}")  # fmt: skip
            rows.append(Row(f"{op}-{name}", [a], line, out, jax_fn, torch_fn))
    # the defaults: stride = kernel, padding 0 (the examples' form)
    a = Arg("a", (2, 3, 4, 6))
    rows.append(Row("max_pool2d-defaults", [a], f"%r = step.max_pool2d %a kernel [2, 2] : {a.type} -> {tensor_type((2, 3, 2, 3))}",
                    (2, 3, 2, 3), _window_jax(jax.lax.max, -jnp.inf, (2, 2), (2, 2), (0, 0)),
                    lambda x: torch.nn.functional.max_pool2d(x, 2)))  # fmt: skip
    return rows


def concat_rows() -> list[Row]:
    """`torch.cat` of two and three operands along each axis (one operand read twice)."""
    rows = []
    for shapes, axis in [(((2, 3), (4, 3)), 0), (((2, 3, 1), (2, 3, 4), (2, 3, 2)), 2), (((2, 1, 3), (2, 4, 3), (2, 2, 3)), 1)]:
        args = [Arg(name, shape) for name, shape in zip("abc", shapes)]
        out = tuple(sum(s[axis] for s in shapes) if d == axis else n for d, n in enumerate(shapes[0]))
        line = (f"%r = step.concat {', '.join('%' + a.name for a in args)} axis {axis} : "
                f"({', '.join(a.type for a in args)}) -> {tensor_type(out)}")  # fmt: skip
        rows.append(Row(f"concat-{len(args)}-axis{axis}", args, line, out,
                        lambda *xs, axis=axis: jnp.concatenate(xs, axis=axis),
                        lambda *xs, axis=axis: torch.cat(xs, dim=axis)))  # fmt: skip
    a, b = Arg("a", (3, 2)), Arg("b", (3, 4))  # an operand twice: its two cotangents add up
    line = f"%r = step.concat %a, %b, %a axis 1 : ({a.type}, {b.type}, {a.type}) -> {tensor_type((3, 8))}"
    rows.append(Row("concat-repeated", [a, b], line, (3, 8), lambda a, b: jnp.concatenate([a, b, a], axis=1),
                    lambda a, b: torch.cat([a, b, a], dim=1)))  # fmt: skip
    return rows


def slice_rows() -> list[Row]:
    """Static slices, strided and not (torch's `x[s:e:st]`), and the zero padding their derivative writes."""
    rows = []
    for shape, start, limit, stride in [((4, 6), (1, 2), (3, 6), (1, 1)), ((5, 8), (0, 1), (5, 8), (2, 3)),
                                        ((3, 7, 4), (1, 0, 1), (3, 7, 2), (1, 2, 1)), ((6,), (1,), (6,), (4,))]:  # fmt: skip
        a = Arg("a", shape)
        out = tuple(-(-(e - s) // st) for s, e, st in zip(start, limit, stride))
        line = f"%r = step.slice %a start {list(start)} limit {list(limit)} stride {list(stride)} : {a.type} -> {tensor_type(out)}"
        index = tuple(slice(*bounds) for bounds in zip(start, limit, stride))
        rows.append(Row(f"slice-{'x'.join(map(str, shape))}-st{''.join(map(str, stride))}", [a], line, out,
                        lambda x, index=index: x[index], lambda x, index=index: x[index]))  # fmt: skip
    a = Arg("a", (3, 4))
    line = f"%r = step.pad %a low [1, 0] high [0, 2] interior [1, 2] : {a.type} -> {tensor_type((6, 12))}"
    config = ((1, 0, 1), (0, 2, 2))
    rows.append(Row("pad", [a], line, (6, 12), lambda x: jax.lax.pad(x, 0.0, config),
                    lambda x: torch.zeros(6, 12, dtype=x.dtype).index_put((torch.arange(1, 6, 2)[:, None], torch.arange(0, 10, 3)), x)))  # fmt: skip
    return rows


ROWS = [
    *binary_rows(), *unary_rows(), *matmul_rows(), *transpose_rows(), *reshape_rows(), *broadcast_rows(),
    *reduction_rows(), *softmax_rows(), *loss_rows(), *constant_convert_rows(), *select_rows(),
    *layer_norm_rows(), *gelu_rows(), *embedding_rows(),
    *conv_rows(),
    *dropout_rows(),
    *pool_rows(), *concat_rows(), *slice_rows(),
]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Running a row


def inputs_of(row: Row, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = {a.name: a.draw(rng) for a in row.args}
    values["weight"] = rng.standard_normal(row.out).astype(TYPES[row.out_element])
    return values


def gradient_program(row: Row):  # type: ignore[no-untyped-def]
    module = load_text(row.program(), f"{row.id}.ir")
    Pipeline.default(until="seed-scalar-loss", lower=False, check=False).run(module)
    return module


def jax_gradients(row: Row, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    params = [a.name for a in row.args if a.is_param]

    def loss(*param_values: Any) -> Any:
        env = {**{a.name: jnp.asarray(inputs[a.name]) for a in row.args}, **dict(zip(params, param_values))}
        return jnp.sum(row.jax_fn(*(env[a.name] for a in row.args)) * jnp.asarray(inputs["weight"]))

    with jax.enable_x64(True):
        grads = jax.grad(loss, argnums=tuple(range(len(params))))(*(jnp.asarray(inputs[p]) for p in params))
        return {p: np.asarray(g) for p, g in zip(params, grads)}


def torch_gradients(row: Row, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    tensors = {a.name: torch.tensor(inputs[a.name], requires_grad=a.is_param) for a in row.args}
    out = row.torch_fn(*(tensors[a.name] for a in row.args))
    torch.sum(out * torch.tensor(inputs["weight"])).backward()
    return {a.name: tensors[a.name].grad.numpy() for a in row.args if a.is_param}  # type: ignore[union-attr]


def rel_error(ours: np.ndarray, oracle: np.ndarray) -> float:
    assert ours.shape == oracle.shape and ours.dtype == oracle.dtype, (ours.shape, ours.dtype, oracle.shape, oracle.dtype)
    scale = max(float(np.max(np.abs(oracle), initial=0.0)), 1e-300)
    return float(np.max(np.abs(ours.astype(np.float64) - oracle.astype(np.float64)), initial=0.0)) / scale


@pytest.fixture(scope="module")
def backend():  # type: ignore[no-untyped-def]
    from stepc.backends.jax import jax_function
    from stepc.passes.lower_to_stablehlo import lowered_clone

    return lambda module: jax_function(lowered_clone(module))


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_gradient_matches_jax_and_torch(row: Row, backend) -> None:  # type: ignore[no-untyped-def]
    from stepc.ir.interpreter import run_function

    module = gradient_program(row)
    compiled = backend(module)
    for seed in (0, 1):
        inputs = inputs_of(row, seed)
        interpreted = run_function(module, inputs)
        lowered = compiled(inputs)
        oracles = {"jax.grad": jax_gradients(row, inputs), "torch": torch_gradients(row, inputs)}
        for name, oracle in oracles.items():
            for param, expected in oracle.items():
                for how, ours in (("interpreter", interpreted), ("jax backend", lowered)):
                    err = rel_error(np.asarray(ours[f"grad.{param}"]), expected)
                    assert err <= REL_TOL, f"{row.id}: grad.{param} ({how}) vs {name}: rel error {err:.3g}"


def test_every_spec_op_has_a_row_and_a_rule() -> None:
    from stepc.ir.dialect import EXTRA_OPS, SPEC_OPS
    from stepc.passes.vjp import VJP_RULES

    assert set(SPEC_OPS) | set(EXTRA_OPS) <= set(VJP_RULES)
    covered = {line.split("step.")[1].split()[0] for row in ROWS for line in row.line.splitlines() if "step." in line}
    assert {op.name.removeprefix("step.") for op in SPEC_OPS} <= covered
