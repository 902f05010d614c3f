"""A generated family of step programs: MLPs and transformer-style steps (issue 12).

Widths 64 to 8192, depth up to 24, batch up to 1024, in f32, bf16 and f16, each with plain SGD
or SGD with momentum 0.9. Every program is step-IR text as `stepc compile` reads it, written
only with ops the step dialect has (docs/language.md), in the style of examples/:

    from benchmarks.family import FAMILY, mlp, transformer, point
    step = mlp(width=2048, depth=2, batch=256, dtype="f32", in_dim=784, classes=10, momentum=0.9)
    step.text, step.params, step.param_count
    point("mlp784_2048").build().text

    .venv/bin/python benchmarks/family.py                  # the family: name, shape, parameters
    .venv/bin/python benchmarks/family.py --write DIR      # one DIR/NAME.ir per point (or per named point)
    .venv/bin/python benchmarks/family.py --write DIR mlp784_2048 tf_w256_d4_b128_causal

`mlp`: `x (batch x in_dim) -> [act(h @ w_i + b_i)] * depth -> h @ w_out + b_out`, then
cross-entropy on i32 labels (or mse against a float target).

`transformer`: tokens `x` (batch = sequence length, one sequence, x width); `depth` pre-norm
blocks of

    n = norm(x) = (x - mean(x)) * rsqrt(mean((x - mean(x))^2) + eps) * g + beta   (per token)
    q, k, v = n @ wq, n @ wk, n @ wv            (heads > 1: reshaped to heads x batch x width/heads)
    a = softmax(q k^T / sqrt(width / heads) [+ causal mask]) v
    x = x + a @ wo
    x = x + act(norm(x) @ w1 + b1) @ w2 + b2    (the MLP, hidden width ffn * width)

then a final norm, `logits = n @ w_out + b_out` and cross-entropy on per-token labels (or mse
against a float target of the tokens' shape, without the head). The causal mask is a dense
constant (`batch x batch` values in the text), so it is meant for short sequences.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DTYPES = ("f32", "bf16", "f16")
ACTIVATIONS = ("relu", "tanh", "sigmoid")
LOSSES = ("cross_entropy", "mse")
MASKED = -1.0e4  # the causal mask's additive value: exp underflows to 0 in every float type


def tensor(shape: Sequence[int], dtype: str) -> str:
    """`tensor<16x32xf32>`, `tensor<f32>` for rank 0."""
    return f"tensor<{''.join(f'{d}x' for d in shape)}{dtype}>"


def float_text(value: float) -> str:
    """A float literal the MLIR lexer reads (a `.` before any exponent: `1.0e-05`)."""
    text = repr(float(value))
    if "e" in text and "." not in text.split("e")[0]:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


@dataclass
class Step:
    """A generated step program and what it is made of."""

    name: str
    text: str
    params: dict[str, tuple[int, ...]]  # parameter name -> shape, in argument order
    inputs: dict[str, tuple[tuple[int, ...], str]]  # batch input name -> (shape, element type)
    ops: int  # step ops in the body (func.return not counted)

    @property
    def param_count(self) -> int:
        return sum(math.prod(shape) for shape in self.params.values())

    def __str__(self) -> str:
        return self.text


@dataclass
class _Writer:
    """Emits one step function: arguments with their roles, then the body, op by op."""

    name: str
    dtype: str
    params: dict[str, tuple[int, ...]] = field(default_factory=dict[str, tuple[int, ...]])
    inputs: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict[str, tuple[tuple[int, ...], str]])
    types: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict[str, tuple[tuple[int, ...], str]])
    body: list[str] = field(default_factory=list[str])
    counter: dict[str, int] = field(default_factory=dict[str, int])  # uses of each name stem

    # ---- arguments

    def param(self, name: str, shape: tuple[int, ...]) -> str:
        assert name not in self.types, name
        self.params[name] = shape
        self.types[name] = (shape, self.dtype)
        return name

    def input(self, name: str, shape: tuple[int, ...], dtype: str | None = None) -> str:
        assert name not in self.types, name
        self.inputs[name] = (shape, dtype or self.dtype)
        self.types[name] = (shape, dtype or self.dtype)
        return name

    # ---- values

    def fresh(self, stem: str) -> str:
        """`stem` itself, or `stemv2`, `stemv3`, ... when it is taken."""
        n = self.counter.get(stem, 0) + 1
        self.counter[stem] = n
        name = stem if n == 1 else f"{stem}v{n}"
        assert name not in self.types, name
        return name

    def t(self, value: str) -> str:
        shape, dtype = self.types[value]
        return tensor(shape, dtype)

    def shape(self, value: str) -> tuple[int, ...]:
        return self.types[value][0]

    def _define(self, stem: str, shape: tuple[int, ...], dtype: str | None = None) -> str:
        name = self.fresh(stem)
        self.types[name] = (shape, dtype or self.dtype)
        return name

    def binary(self, op: str, a: str, b: str, stem: str) -> str:
        shape = _broadcast(self.shape(a), self.shape(b))
        r = self._define(stem, shape)
        self.body.append(f"%{r} = step.{op} %{a}, %{b} : ({self.t(a)}, {self.t(b)}) -> {self.t(r)}")
        return r

    def unary(self, op: str, a: str, stem: str) -> str:
        r = self._define(stem, self.shape(a))
        self.body.append(f"%{r} = step.{op} %{a} : {self.t(a)}")
        return r

    def matmul(self, a: str, b: str, stem: str) -> str:
        sa, sb = self.shape(a), self.shape(b)
        assert sa[-1] == sb[-2], (sa, sb)
        batch = sa[:-2] if len(sb) == 2 else sb[:-2]
        r = self._define(stem, (*batch, sa[-2], sb[-1]))
        self.body.append(f"%{r} = step.matmul %{a}, %{b} : ({self.t(a)}, {self.t(b)}) -> {self.t(r)}")
        return r

    def transpose(self, a: str, perm: Sequence[int], stem: str) -> str:
        sa = self.shape(a)
        r = self._define(stem, tuple(sa[p] for p in perm))
        self.body.append(f"%{r} = step.transpose %{a} perm [{', '.join(map(str, perm))}] : {self.t(a)} -> {self.t(r)}")
        return r

    def reshape(self, a: str, shape: tuple[int, ...], stem: str) -> str:
        assert math.prod(shape) == math.prod(self.shape(a))
        r = self._define(stem, shape)
        self.body.append(f"%{r} = step.reshape %{a} : {self.t(a)} -> {self.t(r)}")
        return r

    def reduce(self, op: str, a: str, dims: Sequence[int] | None, stem: str) -> str:
        sa = self.shape(a)
        kept = () if dims is None else tuple(d for i, d in enumerate(sa) if i not in dims)
        r = self._define(stem, kept)
        spec = "" if dims is None else f" dims [{', '.join(map(str, dims))}]"
        self.body.append(f"%{r} = step.{op} %{a}{spec} : {self.t(a)} -> {self.t(r)}")
        return r

    def softmax(self, a: str, axis: int, stem: str) -> str:
        r = self._define(stem, self.shape(a))
        self.body.append(f"%{r} = step.softmax %{a} axis {axis} : {self.t(a)}")
        return r

    def scalar(self, value: float, stem: str) -> str:
        r = self._define(stem, ())
        self.body.append(f"%{r} = step.constant {float_text(value)} : {self.t(r)}")
        return r

    def dense(self, rows: list[list[float]], stem: str) -> str:
        r = self._define(stem, (len(rows), len(rows[0])))
        text = ", ".join("[" + ", ".join(float_text(v) for v in row) + "]" for row in rows)
        self.body.append(f"%{r} = step.constant dense<[{text}]> : {self.t(r)}")
        return r

    def loss(self, op: str, a: str, b: str) -> str:
        r = self._define("loss", ())
        self.body.append(f"%{r} = step.{op} %{a}, %{b} : ({self.t(a)}, {self.t(b)}) -> {self.t(r)}")
        return r

    # ---- the function

    def text(self, comment: str, sgd: str, result: str) -> str:
        arguments: list[str] = []
        for name, shape in self.params.items():
            arguments.append(f"%{name}: {tensor(shape, self.dtype)} {{step.param}}")
        for name, (shape, dtype) in self.inputs.items():
            arguments.append(f"%{name}: {tensor(shape, dtype)}")
        indent = " " * len(f"func.func @{self.name}(")
        header = f"func.func @{self.name}(" + f",\n{indent}".join(arguments) + f") -> {self.t(result)}"
        lines = [f"// {line}" if line else "//" for line in comment.splitlines()]
        lines += [header, f"    attributes {{step.sgd = {sgd}}} {{"]
        lines += [f"  {line}" for line in self.body]
        lines += [f"  func.return %{result} : {self.t(result)}", "}"]
        return "\n".join(lines) + "\n"

    def step(self, comment: str, sgd: str, result: str) -> Step:
        return Step(self.name, self.text(comment, sgd, result), dict(self.params), dict(self.inputs), len(self.body))


def _broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    n = max(len(a), len(b))
    pa, pb = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    out: list[int] = []
    for x, y in zip(pa, pb):
        assert x == y or 1 in (x, y), (a, b)
        out.append(max(x, y))
    return tuple(out)


def sgd_text(lr: float, momentum: float) -> str:
    fields = [f"lr = {float_text(lr)}"]
    if momentum:
        fields.append(f"momentum = {float_text(momentum)}")
    return f"#step.sgd<{', '.join(fields)}>"


def _check(dtype: str, activation: str, loss: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: one of {DTYPES}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r}: one of {ACTIVATIONS}")
    if loss not in LOSSES:
        raise ValueError(f"loss {loss!r}: one of {LOSSES}")


# ---------------------------------------------------------------------------------------------
# The generators


def mlp(
    width: int,
    depth: int,
    batch: int,
    dtype: str = "f32",
    in_dim: int = 784,
    classes: int = 10,
    momentum: float = 0.0,
    *,
    activation: str = "relu",
    loss: str = "cross_entropy",
    lr: float = 0.05,
    name: str | None = None,
) -> Step:
    """A perceptron `in_dim -> width (x depth hidden layers) -> classes` at `batch`, one SGD step."""
    _check(dtype, activation, loss)
    if depth < 1:
        raise ValueError("depth: at least one hidden layer")
    name = name or f"mlp_w{width}_d{depth}_b{batch}_{dtype}"
    w = _Writer(name, dtype)
    dims = [in_dim] + [width] * depth
    weights = [
        (w.param(f"w{i + 1}", (dims[i], dims[i + 1])), w.param(f"b{i + 1}", (dims[i + 1],))) for i in range(depth)
    ]
    w_out, b_out = w.param("w_out", (width, classes)), w.param("b_out", (classes,))
    h = w.input("x", (batch, in_dim))
    target = w.input("labels", (batch,), "i32") if loss == "cross_entropy" else w.input("target", (batch, classes))
    for i, (wi, bi) in enumerate(weights, start=1):
        a = w.matmul(h, wi, f"a{i}")
        z = w.binary("add", a, bi, f"z{i}")
        h = w.unary(activation, z, f"h{i}")
    o = w.matmul(h, w_out, "o")
    logits = w.binary("add", o, b_out, "logits")
    result = w.loss(loss, logits, target)
    sgd = sgd_text(lr, momentum)
    comment = (
        f"Generated by benchmarks/family.py: a {'-'.join(map(str, [in_dim, *[width] * depth, classes]))} perceptron "
        f"({activation}) at batch {batch} in {dtype},\n{loss}, SGD lr {lr:g}"
        + (f" momentum {momentum:g}" if momentum else "")
        + "."
    )
    return w.step(comment, sgd, result)


def transformer(
    width: int,
    depth: int,
    batch: int,
    dtype: str = "f32",
    heads: int = 1,
    *,
    causal: bool = False,
    ffn: int = 2,
    classes: int = 16,
    activation: str = "relu",
    loss: str = "cross_entropy",
    momentum: float = 0.0,
    lr: float = 0.05,
    eps: float = 1.0e-5,
    name: str | None = None,
) -> Step:
    """`depth` pre-norm transformer-style blocks over one sequence of `batch` tokens of `width`
    features (see the module docstring), then a classifier head per token (or mse)."""
    _check(dtype, activation, loss)
    if width % heads:
        raise ValueError(f"width {width} is not a multiple of heads {heads}")
    if depth < 1:
        raise ValueError("depth: at least one block")
    name = name or f"tf_w{width}_d{depth}_b{batch}_{dtype}"
    d = width // heads
    w = _Writer(name, dtype)
    blocks: list[dict[str, str]] = []
    for i in range(1, depth + 1):
        blocks.append(
            {
                "g1": w.param(f"blk{i}_g1", (width,)),
                "beta1": w.param(f"blk{i}_beta1", (width,)),
                "wq": w.param(f"blk{i}_wq", (width, width)),
                "wk": w.param(f"blk{i}_wk", (width, width)),
                "wv": w.param(f"blk{i}_wv", (width, width)),
                "wo": w.param(f"blk{i}_wo", (width, width)),
                "g2": w.param(f"blk{i}_g2", (width,)),
                "beta2": w.param(f"blk{i}_beta2", (width,)),
                "w1": w.param(f"blk{i}_w1", (width, ffn * width)),
                "b1": w.param(f"blk{i}_b1", (ffn * width,)),
                "w2": w.param(f"blk{i}_w2", (ffn * width, width)),
                "b2": w.param(f"blk{i}_b2", (width,)),
            }
        )
    g_f, beta_f = w.param("final_g", (width,)), w.param("final_beta", (width,))
    head = (w.param("w_out", (width, classes)), w.param("b_out", (classes,))) if loss == "cross_entropy" else None
    x = w.input("x", (batch, width))
    target = w.input("labels", (batch,), "i32") if loss == "cross_entropy" else w.input("target", (batch, width))

    eps_c = w.scalar(eps, "eps")
    scale_c = w.scalar(1.0 / math.sqrt(d), "scale")
    mask = None
    if causal:
        mask = w.dense([[0.0 if j <= i else MASKED for j in range(batch)] for i in range(batch)], "mask")

    def norm(v: str, g: str, beta: str, tag: str) -> str:
        mu = w.reshape(w.reduce("mean", v, [1], f"mu_{tag}"), (batch, 1), f"mu_{tag}c")
        xc = w.binary("sub", v, mu, f"xc_{tag}")
        sq = w.unary("square", xc, f"sq_{tag}")
        var = w.reshape(w.reduce("mean", sq, [1], f"var_{tag}"), (batch, 1), f"var_{tag}c")
        r = w.unary("rsqrt", w.binary("add", var, eps_c, f"vareps_{tag}"), f"rstd_{tag}")
        xn = w.binary("mul", xc, r, f"xn_{tag}")
        return w.binary("add", w.binary("mul", xn, g, f"xg_{tag}"), beta, f"n_{tag}")

    def split(v: str, stem: str) -> str:
        """batch x width -> heads x batch x d."""
        return w.transpose(w.reshape(v, (batch, heads, d), f"{stem}r"), [1, 0, 2], f"{stem}h")

    for i, p in enumerate(blocks, start=1):
        n = norm(x, p["g1"], p["beta1"], f"attn{i}")
        q, k, v = (w.matmul(n, p[m], f"{m[1]}{i}") for m in ("wq", "wk", "wv"))
        if heads == 1:
            kt = w.transpose(k, [1, 0], f"kt{i}")
        else:
            q, v = split(q, f"q{i}"), split(v, f"v{i}")
            kt = w.transpose(w.reshape(k, (batch, heads, d), f"k{i}r"), [1, 2, 0], f"kt{i}")
        s = w.binary("mul", w.matmul(q, kt, f"raw{i}"), scale_c, f"scores{i}")
        if mask is not None:
            s = w.binary("add", s, mask, f"masked{i}")
        attn = w.softmax(s, len(w.shape(s)) - 1, f"attn{i}")
        mixed = w.matmul(attn, v, f"ctx{i}")
        if heads > 1:
            mixed = w.reshape(w.transpose(mixed, [1, 0, 2], f"ctx{i}t"), (batch, width), f"ctx{i}m")
        x = w.binary("add", x, w.matmul(mixed, p["wo"], f"proj{i}"), f"res{i}a")
        n2 = norm(x, p["g2"], p["beta2"], f"mlp{i}")
        up = w.binary("add", w.matmul(n2, p["w1"], f"up{i}"), p["b1"], f"upb{i}")
        hidden = w.unary(activation, up, f"hid{i}")
        out = w.binary("add", w.matmul(hidden, p["w2"], f"down{i}"), p["b2"], f"downb{i}")
        x = w.binary("add", x, out, f"res{i}m")
    n_f = norm(x, g_f, beta_f, "final")
    if head is not None:
        logits = w.binary("add", w.matmul(n_f, head[0], "o"), head[1], "logits")
        result = w.loss("cross_entropy", logits, target)
    else:
        result = w.loss("mse", n_f, target)
    comment = (
        f"Generated by benchmarks/family.py: {depth} pre-norm transformer-style block(s), width {width}, "
        f"{heads} head(s){', causal' if causal else ''},\n"
        f"MLP {width}-{ffn * width}-{width} ({activation}), over {batch} tokens in {dtype}; {loss}, SGD lr {lr:g}"
        + (f" momentum {momentum:g}" if momentum else "")
        + "."
    )
    return w.step(comment, sgd_text(lr, momentum), result)


GENERATORS: dict[str, Any] = {"mlp": mlp, "transformer": transformer}


# ---------------------------------------------------------------------------------------------
# The family


@dataclass(frozen=True)
class Point:
    """One named member of the family: a generator and its arguments."""

    name: str
    kind: str  # "mlp" or "transformer"
    kwargs: tuple[tuple[str, Any], ...]

    def build(self) -> Step:
        return GENERATORS[self.kind](**dict(self.kwargs), name=self.name)

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.kwargs).get(key, default)

    @property
    def width(self) -> int:
        return int(self.get("width"))

    @property
    def depth(self) -> int:
        return int(self.get("depth"))

    @property
    def batch(self) -> int:
        return int(self.get("batch"))

    @property
    def dtype(self) -> str:
        return str(self.get("dtype", "f32"))

    @property
    def params(self) -> int:
        return self.build().param_count

    def describe(self) -> str:
        extra = {k: v for k, v in self.kwargs if k not in ("width", "depth", "batch", "dtype")}
        return ", ".join(f"{k}={v}" for k, v in extra.items())


def _point(name: str, kind: str, **kwargs: Any) -> Point:
    return Point(name, kind, tuple(kwargs.items()))


# Named points spanning the ranges (not their cross product), each feasible on a 2-core machine
# with about 8 GB to spare, where the contracts evaluate an f64 reference of the whole step.
# fmt: off
FAMILY: list[Point] = [
    # The issue's model: 784-2048-2048-10, batch 256, SGD momentum 0.9.
    _point("mlp784_2048", "mlp", width=2048, depth=2, batch=256, dtype="f32", in_dim=784, classes=10, momentum=0.9),
    _point("mlp784_2048_bf16", "mlp", width=2048, depth=2, batch=256, dtype="bf16", in_dim=784, classes=10, momentum=0.9),
    _point("mlp784_2048_f16", "mlp", width=2048, depth=2, batch=256, dtype="f16", in_dim=784, classes=10, momentum=0.9),
    # Small and quick: the bottom of the width range.
    _point("mlp_w64_d2_b64", "mlp", width=64, depth=2, batch=64, dtype="f32", in_dim=64, classes=10),
    _point("mlp_w64_d2_b64_f16", "mlp", width=64, depth=2, batch=64, dtype="f16", in_dim=64, classes=10, momentum=0.9),
    # Deep and narrow at the largest batch.
    _point("mlp_w64_d24_b1024", "mlp", width=64, depth=24, batch=1024, dtype="f32", in_dim=64, classes=10, momentum=0.9),
    _point("mlp_w64_d24_b1024_bf16", "mlp", width=64, depth=24, batch=1024, dtype="bf16", in_dim=64, classes=10, momentum=0.9),
    _point("mlp_w256_d12_b512_tanh", "mlp", width=256, depth=12, batch=512, dtype="f32", in_dim=256, classes=10, activation="tanh", loss="mse"),
    # Mid-width, deeper, mid batch.
    _point("mlp_w2048_d4_b256", "mlp", width=2048, depth=4, batch=256, dtype="f32", in_dim=784, classes=10, momentum=0.9),
    _point("mlp_w1024_d4_b128_f16", "mlp", width=1024, depth=4, batch=128, dtype="f16", in_dim=784, classes=10, momentum=0.9),
    # The widest layer: an 8192x8192 weight (a contraction of 8192 forward and backward).
    _point("mlp_w8192_d2_b64", "mlp", width=8192, depth=2, batch=64, dtype="f32", in_dim=784, classes=10, momentum=0.9),
    _point("mlp_w8192_d1_b64_bf16", "mlp", width=8192, depth=1, batch=64, dtype="bf16", in_dim=784, classes=10),
    # Transformer-style steps.
    _point("tf_w64_d2_b64", "transformer", width=64, depth=2, batch=64, dtype="f32", momentum=0.9),
    _point("tf_w256_d4_b128_causal", "transformer", width=256, depth=4, batch=128, dtype="f32", causal=True, momentum=0.9),
    _point("tf_w256_d4_b128_bf16", "transformer", width=256, depth=4, batch=128, dtype="bf16", momentum=0.9),
    _point("tf_w512_d2_b256_h4_f16", "transformer", width=512, depth=2, batch=256, dtype="f16", heads=4, momentum=0.9),
    _point("tf_w64_d24_b512", "transformer", width=64, depth=24, batch=512, dtype="f32", activation="tanh", momentum=0.9),
    _point("tf_w1024_d2_b256", "transformer", width=1024, depth=2, batch=256, dtype="f32", heads=8, momentum=0.9),
    _point("tf_w2048_d1_b64_mse", "transformer", width=2048, depth=1, batch=64, dtype="f32", ffn=1, loss="mse"),
    # The scale-out issue's 100M-parameter point: two 2048-wide blocks with a 4x MLP.
    _point("tf_w2048_d2_b64_100m", "transformer", width=2048, depth=2, batch=64, dtype="f32", heads=16, ffn=4, momentum=0.9),
]
# fmt: on
BY_NAME: dict[str, Point] = {p.name: p for p in FAMILY}
# Compiled in the tests with contracts off (seconds each on 2 cores).
SMALL: list[str] = ["mlp_w64_d2_b64", "mlp_w64_d2_b64_f16", "tf_w64_d2_b64"]


def point(name: str) -> Point:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no family point {name!r}; the points are: {', '.join(BY_NAME)}") from None


def human(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="points to list or write (default: all)")
    parser.add_argument("--write", metavar="DIR", help="write DIR/NAME.ir for each point")
    args = parser.parse_args(argv)
    points = [point(n) for n in args.names] if args.names else FAMILY
    print(
        f"{'point':<26} {'kind':<11} {'width':>5} {'depth':>5} {'batch':>5} {'dtype':<5} {'params':>12} {'':>8} {'ops':>5}  other"
    )
    for p in points:
        step = p.build()
        print(
            f"{p.name:<26} {p.kind:<11} {p.width:>5} {p.depth:>5} {p.batch:>5} {p.dtype:<5} {step.param_count:>12,} "
            f"{human(step.param_count):>8} {step.ops:>5}  {p.describe()}"
        )
        if args.write:
            out = Path(args.write)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{p.name}.ir").write_text(step.text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
