"""Scaling: stepc on generated transformer steps of 1M, 10M and 100M parameters, the deepest
stack the machine compiles, and a 10,000-op step end to end.

    .venv/bin/python benchmarks/scaling.py                       # every part (sizes, deepest, ops)
    .venv/bin/python benchmarks/scaling.py --sizes 1M,10M,100M --parts sizes
    .venv/bin/python benchmarks/scaling.py --parts deep --deep-limit 240
    .venv/bin/python benchmarks/scaling.py --parts ops --ops-limit 300
    .venv/bin/python benchmarks/scaling.py --quick               # smoke test: 1M only, small (< 60 s)
    .venv/bin/python benchmarks/scaling.py --json out.json

Parts:

- `sizes`: a transformer-style step written in the step IR (`transformer_program`: token and
  position embeddings, L pre-norm blocks of layer norm, causal multi-head attention from
  matmul/reshape/transpose/softmax with a `select` of -inf, output projection, residual add,
  layer norm, GELU MLP, residual add; final layer norm, head, cross-entropy; `#step.adamw`) at
  about 1M, 10M and 100M parameters (`SIZES`). For each, in a fresh process (so that
  `ru_maxrss` is this size's own): `run.compile_stages` (parse, each pass, each contract at the
  default `check_mode="auto"`, JAX trace and lower, XLA compile); the contracts' share of the
  whole compile and their ratio to XLA's compile (the goal: <= 1.0x); then the step timed
  against an independent hand-written JAX twin (`hand_loss`: `jax.value_and_grad` and torch's
  AdamW written out) after checking that the first losses agree, with `run.interleaved_medians`;
  XLA's `memory_analysis` of both compiled steps (`run.xla_costs`) and the process's peak RSS.
  The causal mask is a batch input (`%causal`, `B x 1 x T x T`, tril of ones fed by the benchmark:
  a batch input leads with the batch size) rather than a dense constant: a dense constant over 16x16 cannot be renamed to reduced shapes, so it would
  force every contract to full size (see the README's "Scaling" section).
- `deep`: the 1M shape (d=128) with more and more layers (`DEEP_LAYERS`), each compiled with
  contracts and XLA in a subprocess with a time limit; it stops at the first that does not
  finish, fails, or whose peak RSS passes `--deep-max-gb`.
- `ops`: `run.deep_program(10000)` (tanh(h @ w + b) chains) end to end: stepc's parse and
  passes (`run.scaling_row`, no contracts), the contracts, and XLA's compile, each in a
  subprocess with a time limit; and beside it, at a size that finishes (`--ops-compare`), the
  same chain written by hand in JAX, trace and XLA compile.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import run as bench  # noqa: E402  (benchmarks/run.py)

LR, BETA1, BETA2, EPS, WEIGHT_DECAY = 1e-3, 0.9, 0.999, 1e-8, 0.01  # #step.adamw<lr = 1.0e-3>: torch's defaults
LN_EPS = 1e-5


@dataclass(frozen=True)
class Shape:
    d: int
    layers: int
    heads: int
    seq: int
    batch: int
    vocab: int

    @property
    def params(self) -> int:
        d = self.d
        block = 2 * 2 * d + 4 * d * d + d * 4 * d + 4 * d + 4 * d * d + d  # 2 LNs, q k v o, fc1 (+b), fc2 (+b)
        return self.vocab * d + self.seq * d + self.layers * block + 2 * d + d * self.vocab


SIZES: dict[str, Shape] = {
    "1M": Shape(d=128, layers=4, heads=4, seq=64, batch=8, vocab=1024),
    "10M": Shape(d=256, layers=12, heads=8, seq=64, batch=8, vocab=1024),
    "100M": Shape(d=768, layers=14, heads=12, seq=64, batch=4, vocab=1024),
}
QUICK_SHAPE = Shape(d=128, layers=4, heads=4, seq=32, batch=4, vocab=1024)  # the 1M model, smaller batch
DEEP_LAYERS = (8, 16, 32, 64, 128, 256)


# ---------------------------------------------------------------------------------------------
# The program


def transformer_program(s: Shape, optimizer: str = "adamw") -> str:
    """A GPT-style step in the step IR: `s.layers` pre-norm blocks, causal attention with
    `s.heads` heads, a 4x GELU MLP, cross-entropy over every position; `#step.adamw<lr = 1e-3>`
    (or `#step.sgd<lr = 0.01, momentum = 0.9>`)."""
    d, h, t, b, v = s.d, s.heads, s.seq, s.batch, s.vocab
    dh, f = d // h, 4 * d
    assert dh * h == d
    x = f"tensor<{b}x{t}x{d}xf32>"
    vec = f"tensor<{d}xf32>"
    heads = f"tensor<{b}x{h}x{t}x{dh}xf32>"
    split = f"tensor<{b}x{t}x{h}x{dh}xf32>"
    scores = f"tensor<{b}x{h}x{t}x{t}xf32>"
    hid = f"tensor<{b}x{t}x{f}xf32>"
    args = [f"%tok_emb: tensor<{v}x{d}xf32> {{step.param}}", f"%pos_emb: tensor<{t}x{d}xf32> {{step.param}}"]
    for i in range(s.layers):
        args += [f"%l{i}_ln1_g: {vec} {{step.param}}", f"%l{i}_ln1_b: {vec} {{step.param}}"]
        args += [f"%l{i}_w_{w}: tensor<{d}x{d}xf32> {{step.param}}" for w in "qkvo"]
        args += [f"%l{i}_ln2_g: {vec} {{step.param}}", f"%l{i}_ln2_b: {vec} {{step.param}}",
                 f"%l{i}_w_fc1: tensor<{d}x{f}xf32> {{step.param}}", f"%l{i}_b_fc1: tensor<{f}xf32> {{step.param}}",
                 f"%l{i}_w_fc2: tensor<{f}x{d}xf32> {{step.param}}", f"%l{i}_b_fc2: {vec} {{step.param}}"]
    args += [f"%lnf_g: {vec} {{step.param}}", f"%lnf_b: {vec} {{step.param}}",
             f"%w_head: tensor<{d}x{v}xf32> {{step.param}}",
             f"%tokens: tensor<{b}x{t}xi32>", f"%targets: tensor<{b}x{t}xi32>", f"%causal: tensor<{b}x1x{t}x{t}xf32>"]
    opt = "step.adamw = #step.adamw<lr = 1.0e-3>" if optimizer == "adamw" else "step.sgd = #step.sgd<lr = 0.01, momentum = 0.9>"
    lines = [f"func.func @gpt_{s.params}(" + ",\n    ".join(args) + ") -> tensor<f32>",
             f"    attributes {{{opt}}} {{"]
    add = lines.append
    add(f"  %e = step.embedding %tok_emb, %tokens : (tensor<{v}x{d}xf32>, tensor<{b}x{t}xi32>) -> {x}")
    add(f"  %h0 = step.add %e, %pos_emb : ({x}, tensor<{t}x{d}xf32>) -> {x}")
    add(f"  %scale = step.constant {1.0 / math.sqrt(dh)!r} : tensor<f32>")
    add("  %minus_inf = step.constant 0xFF800000 : tensor<f32>")
    hcur = "%h0"
    for i in range(s.layers):
        p = f"%l{i}_"
        n = f"%b{i}_"
        add(f"  {n}n1 = step.layer_norm {hcur}, {p}ln1_g, {p}ln1_b : ({x}, {vec}, {vec}) -> {x}")
        for w, perm, out in (("q", "[0, 2, 1, 3]", heads), ("k", "[0, 2, 3, 1]", f"tensor<{b}x{h}x{dh}x{t}xf32>"),
                             ("v", "[0, 2, 1, 3]", heads)):
            add(f"  {n}{w}0 = step.matmul {n}n1, {p}w_{w} : ({x}, tensor<{d}x{d}xf32>) -> {x}")
            add(f"  {n}{w}1 = step.reshape {n}{w}0 : {x} -> {split}")
            add(f"  {n}{w} = step.transpose {n}{w}1 perm {perm} : {split} -> {out}")
        add(f"  {n}raw = step.matmul {n}q, {n}k : ({heads}, tensor<{b}x{h}x{dh}x{t}xf32>) -> {scores}")
        add(f"  {n}scores = step.mul {n}raw, %scale : ({scores}, tensor<f32>) -> {scores}")
        add(f"  {n}masked = step.select %causal, {n}scores, %minus_inf : (tensor<{b}x1x{t}x{t}xf32>, {scores}, tensor<f32>) -> {scores}")
        add(f"  {n}attn = step.softmax {n}masked axis 3 : {scores}")
        add(f"  {n}mixed = step.matmul {n}attn, {n}v : ({scores}, {heads}) -> {heads}")
        add(f"  {n}merged = step.transpose {n}mixed perm [0, 2, 1, 3] : {heads} -> {split}")
        add(f"  {n}cat = step.reshape {n}merged : {split} -> {x}")
        add(f"  {n}proj = step.matmul {n}cat, {p}w_o : ({x}, tensor<{d}x{d}xf32>) -> {x}")
        add(f"  {n}h1 = step.add {hcur}, {n}proj : ({x}, {x}) -> {x}")
        add(f"  {n}n2 = step.layer_norm {n}h1, {p}ln2_g, {p}ln2_b : ({x}, {vec}, {vec}) -> {x}")
        add(f"  {n}f0 = step.matmul {n}n2, {p}w_fc1 : ({x}, tensor<{d}x{f}xf32>) -> {hid}")
        add(f"  {n}f1 = step.add {n}f0, {p}b_fc1 : ({hid}, tensor<{f}xf32>) -> {hid}")
        add(f"  {n}f2 = step.gelu {n}f1 : {hid}")
        add(f"  {n}f3 = step.matmul {n}f2, {p}w_fc2 : ({hid}, tensor<{f}x{d}xf32>) -> {x}")
        add(f"  {n}f4 = step.add {n}f3, {p}b_fc2 : ({x}, {vec}) -> {x}")
        add(f"  {n}h2 = step.add {n}h1, {n}f4 : ({x}, {x}) -> {x}")
        hcur = f"{n}h2"
    add(f"  %nf = step.layer_norm {hcur}, %lnf_g, %lnf_b : ({x}, {vec}, {vec}) -> {x}")
    add(f"  %out = step.matmul %nf, %w_head : ({x}, tensor<{d}x{v}xf32>) -> tensor<{b}x{t}x{v}xf32>")
    add(f"  %logits = step.reshape %out : tensor<{b}x{t}x{v}xf32> -> tensor<{b * t}x{v}xf32>")
    add(f"  %labels = step.reshape %targets : tensor<{b}x{t}xi32> -> tensor<{b * t}xi32>")
    add(f"  %loss = step.cross_entropy %logits, %labels : (tensor<{b * t}x{v}xf32>, tensor<{b * t}xi32>) -> tensor<f32>")
    add("  func.return %loss : tensor<f32>")
    add("}")
    return "\n".join(lines) + "\n"


def init_params(s: Shape, seed: int = 0) -> dict[str, np.ndarray]:
    """GPT-2's initialization: N(0, 0.02) weights and embeddings, zero biases, LN ones/zeros."""
    rng = np.random.default_rng(seed)
    d, f, v, t = s.d, 4 * s.d, s.vocab, s.seq
    normal = lambda *shape: (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02))  # noqa: E731
    out = {"tok_emb": normal(v, d), "pos_emb": normal(t, d)}
    for i in range(s.layers):
        p = f"l{i}_"
        out[p + "ln1_g"], out[p + "ln1_b"] = np.ones(d, np.float32), np.zeros(d, np.float32)
        for w in "qkvo":
            out[p + "w_" + w] = normal(d, d)
        out[p + "ln2_g"], out[p + "ln2_b"] = np.ones(d, np.float32), np.zeros(d, np.float32)
        out[p + "w_fc1"], out[p + "b_fc1"] = normal(d, f), np.zeros(f, np.float32)
        out[p + "w_fc2"], out[p + "b_fc2"] = normal(f, d), np.zeros(d, np.float32)
    out["lnf_g"], out["lnf_b"] = np.ones(d, np.float32), np.zeros(d, np.float32)
    out["w_head"] = normal(d, v)
    return out


def make_batch(s: Shape, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, s.vocab, (s.batch, s.seq)).astype(np.int32)
    return {"tokens": tokens, "targets": np.roll(tokens, -1, axis=1),
            "causal": np.broadcast_to(np.tril(np.ones((s.seq, s.seq), np.float32)), (s.batch, 1, s.seq, s.seq)).copy()}


# ---------------------------------------------------------------------------------------------
# The hand-written JAX twin (independent of stepc: jax.numpy, jax.value_and_grad, AdamW by hand)


def hand_loss(s: Shape):
    import jax
    import jax.numpy as jnp

    def layer_norm(x: Any, g: Any, b: Any) -> Any:
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + LN_EPS) * g + b

    n, t, d, heads = s.batch, s.seq, s.d, s.heads
    causal = jnp.tril(jnp.ones((t, t), bool))  # the hand step builds its own mask

    def loss(p: Any, batch: Any) -> Any:
        h = p["tok_emb"][batch["tokens"]] + p["pos_emb"]
        for i in range(s.layers):
            q = f"l{i}_"
            x = layer_norm(h, p[q + "ln1_g"], p[q + "ln1_b"])
            qq, kk, vv = (jnp.transpose((x @ p[q + w]).reshape(n, t, heads, d // heads), (0, 2, 1, 3))
                          for w in ("w_q", "w_k", "w_v"))
            att = (qq @ jnp.swapaxes(kk, -1, -2)) * (1.0 / math.sqrt(d // heads))
            att = jax.nn.softmax(jnp.where(causal, att, -jnp.inf), axis=-1)
            h = h + jnp.transpose(att @ vv, (0, 2, 1, 3)).reshape(n, t, d) @ p[q + "w_o"]
            x = layer_norm(h, p[q + "ln2_g"], p[q + "ln2_b"])
            h = h + jax.nn.gelu(x @ p[q + "w_fc1"] + p[q + "b_fc1"], approximate=False) @ p[q + "w_fc2"] + p[q + "b_fc2"]
        logits = (layer_norm(h, p["lnf_g"], p["lnf_b"]) @ p["w_head"]).reshape(n * t, -1)
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, batch["targets"].reshape(-1, 1), axis=1))

    return loss


def hand_step(s: Shape):
    """`jax.jit` of value_and_grad plus torch.optim.AdamW's update (single-tensor path)."""
    import jax
    import jax.numpy as jnp

    loss_fn = hand_loss(s)

    def step(params: Any, state: Any, batch: Any) -> Any:
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        t = state["t"] + 1.0
        bc1, bc2 = 1.0 - BETA1**t, 1.0 - BETA2**t
        new_p, new_m, new_v = {}, {}, {}
        for k, p in params.items():
            g = grads[k]
            p = p * (1.0 - LR * WEIGHT_DECAY)
            m = state["m"][k] + (g - state["m"][k]) * (1.0 - BETA1)
            v = BETA2 * state["v"][k] + (1.0 - BETA2) * g * g
            new_p[k] = p - (LR / bc1) * m / (jnp.sqrt(v) / jnp.sqrt(bc2) + EPS)
            new_m[k], new_v[k] = m, v
        return new_p, {"m": new_m, "v": new_v, "t": t}, loss

    return jax.jit(step)


def hand_state(params: dict[str, np.ndarray]) -> dict[str, Any]:
    zeros = {k: np.zeros_like(v) for k, v in params.items()}
    return {"m": zeros, "v": {k: np.zeros_like(v) for k, v in params.items()}, "t": np.float32(0.0)}


# ---------------------------------------------------------------------------------------------
# One size, in its own process


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def one_size(name: str, s: Shape, rounds: int, block_seconds: float, lead_seconds: float, time_steps: bool = True,
             check_mode: str = "auto") -> dict[str, Any]:
    import jax

    import stepc

    row: dict[str, Any] = {"size": name, "shape": asdict(s), "params": s.params}
    text = transformer_program(s)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"gpt_{name}.ir"
        path.write_text(text)
        start = time.perf_counter()
        if check_mode == "auto":
            stages, failure = bench.compile_stages(path, check=True)
        else:  # compile_stages runs the default check mode; another one is set on the Pipeline's default
            from stepc import pipeline

            default = pipeline.Pipeline.default

            def patched(*a: Any, **kw: Any) -> Any:
                return default(*a, **{**kw, "check_mode": check_mode})

            pipeline.Pipeline.default = staticmethod(patched)  # type: ignore[method-assign]
            try:
                stages, failure = bench.compile_stages(path, check=True)
            finally:
                pipeline.Pipeline.default = staticmethod(default)  # type: ignore[method-assign]
        row["compile_wall_s"] = time.perf_counter() - start
    row["ops"] = sum(1 for line in text.splitlines() if " = step." in line)
    row["stages"] = dict(stages)
    row["contract_failure"] = failure
    row["parse_s"] = sum(sec for n, sec in stages if n == "parse")
    row["passes_s"] = sum(sec for n, sec in stages if n.startswith("pass "))
    row["contracts_s"] = sum(sec for n, sec in stages if n.startswith("contract "))
    row["trace_s"] = sum(sec for n, sec in stages if n == "JAX trace and lower")
    row["xla_s"] = sum(sec for n, sec in stages if n == "XLA compile")
    row["total_s"] = sum(sec for _, sec in stages)
    row["contracts_share"] = row["contracts_s"] / row["total_s"]
    row["contracts_vs_xla"] = row["contracts_s"] / row["xla_s"]
    row["maxrss_after_compile"] = maxrss_bytes()
    if not time_steps:
        return row

    params = init_params(s)
    batch = make_batch(s)
    prog = stepc.compile_text(text, filename=f"gpt_{name}.ir", check=False)
    start = time.perf_counter()
    stepc_c = bench.jax_contender("stepc", jax.jit(prog.step), params, prog.init_state(params), batch)
    row["stepc_jit_compile_s"] = time.perf_counter() - start
    hand_batch = {k: v for k, v in batch.items() if k != "causal"}
    start = time.perf_counter()
    hand_c = bench.jax_contender("jax", hand_step(s), params, hand_state(params), hand_batch)
    row["hand_jit_compile_s"] = time.perf_counter() - start
    row["xla_costs"] = {c.name: bench.xla_costs(c.compiled) for c in (stepc_c, hand_c)}
    first = {c.name: [c.run(1) for _ in range(3)] for c in (stepc_c, hand_c)}
    row["first_losses"] = first
    rel = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(first["stepc"], first["jax"])]
    row["loss_rel_diff"] = rel
    if rel[0] > 1e-5:
        raise SystemExit(f"{name}: stepc and hand JAX disagree on the first loss: {first}")
    timing = bench.interleaved_medians([stepc_c, hand_c], rounds, block_seconds, lead_seconds)
    row["step_s"] = {k: v["median_s"] for k, v in timing.items()}
    row["step_blocks"] = {k: {"rounds": v["rounds"], "block_steps": v["block_steps"]} for k, v in timing.items()}
    row["step_ratio"] = row["step_s"]["stepc"] / row["step_s"]["jax"]
    row["maxrss_end"] = maxrss_bytes()
    return row


def in_subprocess(args: list[str], timeout: float) -> tuple[dict[str, Any] | None, str]:
    """Run this script with `args` and `--out FILE`; (its JSON, or None, and a note)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), *args, "--out", str(out)]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            partial = json.loads(out.read_text()) if out.exists() else None
            return partial, f"timed out after {e.timeout:.0f} s"
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            partial = json.loads(out.read_text()) if out.exists() else None
            return partial, f"failed (exit {proc.returncode}, {wall:.0f} s): " + " | ".join(tail)
        return json.loads(out.read_text()), f"{wall:.0f} s"


# ---------------------------------------------------------------------------------------------
# The 10,000-op chain


def hand_deep_compile(n_ops: int) -> dict[str, float]:
    """`run.deep_program(n_ops)` written by hand in JAX (the same layers, SGD momentum 0.9):
    trace-and-lower and XLA compile seconds of the jitted step."""
    import jax
    import jax.numpy as jnp

    layers = max(1, (n_ops - 1) // 3)

    def loss(p: Any, x: Any) -> Any:
        h = x
        for _ in range(layers):
            h = jnp.tanh(h @ p["w"] + p["b"])
        return jnp.mean(h)

    def step(p: Any, buf: Any, x: Any) -> Any:
        value, g = jax.value_and_grad(loss)(p, x)
        new_buf = {k: 0.9 * buf[k] + g[k] for k in p}
        return {k: p[k] - 0.01 * new_buf[k] for k in p}, new_buf, value

    p = {"w": np.zeros((16, 16), np.float32), "b": np.zeros(16, np.float32)}
    start = time.perf_counter()
    lowered = jax.jit(step).trace(p, p, np.zeros((8, 16), np.float32)).lower()
    trace = time.perf_counter() - start
    start = time.perf_counter()
    lowered.compile()
    return {"layers": layers, "trace_s": trace, "xla_s": time.perf_counter() - start}


def deep_contracts(n_ops: int, check_mode: str) -> dict[str, Any]:
    """Parse, passes and contracts of `run.deep_program(n_ops)`, by pass (written to --out as
    each pass ends, so that a run stopped by its time limit still says how far it got)."""
    from stepc.ir.parse import load_text
    from stepc.pipeline import PassEvent, Pipeline

    row: dict[str, Any] = {"ops_requested": n_ops, "check_mode": check_mode, "passes": [], "done": False}
    start = time.perf_counter()
    module = load_text(bench.deep_program(n_ops), f"deep{n_ops}.ir")
    row["parse_s"] = time.perf_counter() - start
    row["ops"] = sum(1 for op in module.walk() if op.name.startswith("step."))

    def listen(event: PassEvent) -> None:
        if event.index:
            r = event.report
            row["passes"].append({"pass": event.name, "pass_s": event.seconds,
                                  "contract_s": r.seconds if r is not None else 0.0,
                                  "mode": getattr(r, "mode", None) if r is not None else None})
            _write_partial(row)

    Pipeline.default(check=True, check_mode=check_mode, listeners=[listen]).run(module)
    row["done"] = True
    return row


_OUT: Path | None = None


def _write_partial(row: dict[str, Any]) -> None:
    if _OUT is not None:
        _OUT.write_text(json.dumps(row, default=str))


# ---------------------------------------------------------------------------------------------
# The report


def gib(n: float) -> str:
    return bench.fmt_bytes(n)


def sizes_table(rows: list[dict[str, Any]]) -> str:
    header = ["size", "params", "L x d", "ops", "parse", "passes", "contracts", "contracts share", "XLA compile",
              "contracts/XLA", "JAX trace", "peak RSS", "XLA temp stepc / JAX", "XLA args+out stepc", "step stepc",
              "step JAX", "stepc/JAX", "first loss stepc / JAX (rel diff)"]
    out = []
    for r in rows:
        if "error" in r and "parse_s" not in r:
            out.append([r["size"], "-", "-", "-", *(["-"] * 13), r["error"]])
            continue
        c = r.get("xla_costs", {})
        s, j = c.get("stepc"), c.get("jax")
        out.append([
            r["size"], f"{r['params']:,}", f"{r['shape']['layers']} x {r['shape']['d']}", r["ops"],
            bench.fmt_time(r["parse_s"]), bench.fmt_time(r["passes_s"]), bench.fmt_time(r["contracts_s"]),
            f"{100 * r['contracts_share']:.0f}%", bench.fmt_time(r["xla_s"]), f"{r['contracts_vs_xla']:.2f}x",
            bench.fmt_time(r["trace_s"]), gib(r.get("maxrss_end", r["maxrss_after_compile"])),
            f"{gib(s['temp_bytes'])} / {gib(j['temp_bytes'])}" if s else "-",
            gib(s["argument_bytes"] + s["output_bytes"]) if s else "-",
            bench.fmt_time(r["step_s"]["stepc"]) if "step_s" in r else "-",
            bench.fmt_time(r["step_s"]["jax"]) if "step_s" in r else "-",
            f"{r['step_ratio']:.3f}" if "step_ratio" in r else "-",
            (f"{r['first_losses']['stepc'][0]:.6f} / {r['first_losses']['jax'][0]:.6f} ({r['loss_rel_diff'][0]:.1e})"
             if "first_losses" in r else "-"),
        ])
    return bench.table(header, out)


def run_sizes(names: list[str], quick: bool, say: Any, timeout: float) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        args = ["--one", name] + (["--quick"] if quick else [])
        row, note = in_subprocess(args, timeout)
        if row is None or "step_s" not in row:
            row = {**(row or {}), "size": name, "error": note}
        row["wall"] = note
        rows.append(row)
        say(f"{name}: {note}")
    return rows


def run_deep(layers: tuple[int, ...], limit: float, max_gb: float, say: Any, budget: float = 540) -> list[dict[str, Any]]:
    """Deeper and deeper; stops at the first depth that fails, passes `limit` or `max_gb`, or
    that would not fit in what is left of `budget` (guessed as twice the last depth's wall)."""
    rows: list[dict[str, Any]] = []
    start, last = time.perf_counter(), 0.0
    for n in layers:
        left = budget - (time.perf_counter() - start)
        if rows and 2.2 * last > left:
            rows.append({"layers": n, "error": f"not run: about {2.2 * last:.0f} s expected, {left:.0f} s of the "
                         f"{budget:.0f} s budget left"})
            say(f"deep L={n}: {rows[-1]['error']}")
            break
        t0 = time.perf_counter()
        row, note = in_subprocess(["--one-deep", str(n)], min(limit, max(left, 1)))
        last = time.perf_counter() - t0
        if row is None:
            rows.append({"layers": n, "error": note})
            say(f"deep L={n}: {note}; stopping here")
            break
        row["wall"] = note
        rows.append(row)
        say(f"deep L={n}: {row['ops']} ops, parse {bench.fmt_time(row['parse_s'])}, passes "
            f"{bench.fmt_time(row['passes_s'])}, contracts {bench.fmt_time(row['contracts_s'])}, XLA "
            f"{bench.fmt_time(row['xla_s'])}, peak RSS {gib(row['maxrss_after_compile'])} ({note})")
        if row["maxrss_after_compile"] > max_gb * 2**30:
            say(f"deep L={n}: peak RSS over {max_gb} GiB; stopping here")
            break
    return rows


def run_ops(n_ops: int, compare: int, limit: float, say: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"n_ops": n_ops, "limit_s": limit}
    row, note = in_subprocess(["--one-ops", str(n_ops)], limit)
    out["stepc_no_contracts"], out["stepc_no_contracts_wall"] = row, note
    say(f"{n_ops} ops, parse and passes (no contracts): {note}")
    row, note = in_subprocess(["--one-ops-contracts", str(n_ops)], limit)
    out["contracts"], out["contracts_wall"] = row, note
    say(f"{n_ops} ops, parse, passes and contracts: {note}")
    row, note = in_subprocess(["--one-ops-xla", str(n_ops)], limit)
    out["xla"], out["xla_wall"] = row, note
    say(f"{n_ops} ops, stepc then JAX trace and XLA compile: {note}")
    row, note = in_subprocess(["--one-ops-xla", str(compare)], limit)
    out["compare_stepc"], out["compare_stepc_wall"] = row, note
    row, note = in_subprocess(["--one-ops-contracts", str(compare)], limit)
    out["compare_contracts"], out["compare_contracts_wall"] = row, note
    row, note = in_subprocess(["--one-ops-hand", str(compare)], limit)
    out["compare_hand"], out["compare_hand_wall"] = row, note
    say(f"{compare} ops, stepc and hand JAX: done")
    return out


def ops_report(o: dict[str, Any]) -> str:
    lines = []
    r = o.get("stepc_no_contracts")
    n, limit = o["n_ops"], o["limit_s"]
    if r:
        lines.append(f"{r['ops']} ops, no contracts: parse {bench.fmt_time(r['parse_s'])}, passes "
                     f"{bench.fmt_time(r['passes_s'])} (" + ", ".join(f"{k} {bench.fmt_time(v)}" for k, v in
                                                                     r["by_pass_s"].items()) + ")")
    else:
        lines.append(f"{n} ops, no contracts: {o['stepc_no_contracts_wall']}")
    c = o.get("contracts")
    if c:
        done = "all passes" if c.get("done") else f"stopped ({o['contracts_wall']}) after {len(c['passes'])} passes"
        lines.append(f"{n} ops with contracts ({done}): parse {bench.fmt_time(c['parse_s'])}; " + ", ".join(
            f"{p['pass']} {bench.fmt_time(p['pass_s'])} + contract {bench.fmt_time(p['contract_s'])} [{p['mode']}]"
            for p in c["passes"]))
    else:
        lines.append(f"{n} ops with contracts: {o['contracts_wall']}")
    x = o.get("xla")
    if x and "xla_s" in x:
        lines.append(f"{n} ops, XLA: trace {bench.fmt_time(x['trace_s'])}, compile {bench.fmt_time(x['xla_s'])}")
    else:
        lines.append(f"{n} ops, XLA compile: {o['xla_wall']} (limit {limit:.0f} s)"
                     + (f"; JAX trace and lower took {bench.fmt_time(x['trace_s'])}" if x and "trace_s" in x else ""))
    s, h = o.get("compare_stepc"), o.get("compare_hand")
    if s and h and "xla_s" in s and "xla_s" in h:
        lines.append(f"{s['ops']} ops ({h['layers']} tanh layers): stepc parse+passes {bench.fmt_time(s['stepc_s'])}, "
                     f"trace {bench.fmt_time(s['trace_s'])}, XLA {bench.fmt_time(s['xla_s'])}; hand JAX trace "
                     f"{bench.fmt_time(h['trace_s'])}, XLA {bench.fmt_time(h['xla_s'])}")
    else:
        lines.append(f"compare: stepc {o.get('compare_stepc_wall')}, hand JAX {o.get('compare_hand_wall')}")
    c = o.get("compare_contracts")
    if c and c.get("done"):
        lines.append(f"{c['ops']} ops with contracts: " + ", ".join(
            f"{p['pass']} {bench.fmt_time(p['pass_s'])} + contract {bench.fmt_time(p['contract_s'])} [{p['mode']}]"
            for p in c["passes"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    global _OUT
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1M,10M,100M", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--parts", default="sizes,deep,ops", help="comma-separated: sizes, deep, ops")
    parser.add_argument("--quick", action="store_true", help="smoke test: the 1M model at a smaller batch, sizes only")
    parser.add_argument("--rounds", type=int, help="timed blocks per contender (default 9; quick 2)")
    parser.add_argument("--size-limit", type=float, default=900, help="seconds for one size's process")
    parser.add_argument("--deep-limit", type=float, default=240, help="seconds for one depth's compile")
    parser.add_argument("--deep-max-gb", type=float, default=12.0, help="stop deepening past this peak RSS")
    parser.add_argument("--deep-layers", default=",".join(map(str, DEEP_LAYERS)))
    parser.add_argument("--deep-budget", type=float, default=540, help="seconds for the whole deep part")
    parser.add_argument("--ops", type=int, default=10000, help="the long chain's op count")
    parser.add_argument("--ops-compare", type=int, default=1000, help="a chain length where XLA finishes")
    parser.add_argument("--ops-limit", type=float, default=200, help="seconds for each phase of the long chain")
    parser.add_argument("--json", metavar="FILE", help="also write every number here")
    # internal: one measurement in this process, written to --out
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--one-deep", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one-ops", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one-ops-contracts", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one-ops-xla", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one-ops-hand", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _OUT = Path(args.out) if args.out else None

    rounds = args.rounds or (2 if args.quick else 9)
    if args.one:
        shape = QUICK_SHAPE if args.quick else SIZES[args.one]
        big = shape.params > 50_000_000
        row = one_size(args.one, shape, rounds=3 if big else rounds, block_seconds=0.01 if args.quick else 0.25,
                       lead_seconds=0.0 if big else (0.002 if args.quick else 0.02))
        _write_partial(row)
        return 0
    if args.one_deep:
        s = SIZES["1M"]
        shape = Shape(s.d, args.one_deep, s.heads, s.seq, s.batch, s.vocab)
        _write_partial(one_size(f"L{args.one_deep}", shape, 1, 0.0, 0.0, time_steps=False))
        return 0
    if args.one_ops:
        _write_partial(bench.scaling_row(args.one_ops, xla=False))
        return 0
    if args.one_ops_contracts:
        _write_partial(deep_contracts(args.one_ops_contracts, "auto"))
        return 0
    if args.one_ops_xla:
        import jax

        from stepc.backends.jax import jax_function
        from stepc.ir.parse import load_text
        from stepc.pipeline import Pipeline

        n = args.one_ops_xla
        start = time.perf_counter()
        module = load_text(bench.deep_program(n), f"deep{n}.ir")
        Pipeline.default(check=False).run(module)
        row: dict[str, Any] = {"ops": sum(1 for line in bench.deep_program(n).splitlines() if " = step." in line),
                               "stepc_s": time.perf_counter() - start}
        jf = jax_function(module)
        start = time.perf_counter()
        lowered = jax.jit(jf.fn).trace(*[np.zeros(sp.shape, sp.dtype) for sp in jf.specs]).lower()
        row["trace_s"] = time.perf_counter() - start
        _write_partial(row)
        start = time.perf_counter()
        lowered.compile()
        row["xla_s"] = time.perf_counter() - start
        _write_partial(row)
        return 0
    if args.one_ops_hand:
        _write_partial(hand_deep_compile(args.one_ops_hand))
        return 0

    say = lambda text="": print(text, flush=True)  # noqa: E731
    m = bench.machine()
    say(f"machine: {m['cpu']}, {m['nproc']} CPUs, {m['platform']}; JAX {m['jax']}, Python {m['python']}")
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    names = [n.strip() for n in args.sizes.split(",") if n.strip()]
    if args.quick:
        names, parts = ["1M"], {"sizes"}
    unknown = [n for n in names if n not in SIZES]
    if unknown:
        parser.error(f"unknown sizes {unknown}; choose from {list(SIZES)}")
    results: dict[str, Any] = {"machine": m}
    if "sizes" in parts:
        say("\n## Transformer steps by size (contracts: check_mode auto)\n")
        rows = run_sizes(names, args.quick, say, args.size_limit)
        results["sizes"] = rows
        say()
        say(sizes_table(rows))
        for r in rows:
            if "stages" in r:
                say(f"\n{r['size']} stages: " + ", ".join(f"{k} {bench.fmt_time(v)}" for k, v in r["stages"].items()))
                if r.get("contract_failure"):
                    say(f"{r['size']}: CONTRACT FAILED: {r['contract_failure']}")
            if "first_losses" in r:
                say(f"{r['size']} first three losses: stepc {r['first_losses']['stepc']}, hand JAX "
                    f"{r['first_losses']['jax']}; rel diff {', '.join(f'{x:.1e}' for x in r['loss_rel_diff'])}")
    if "deep" in parts:
        say("\n## The deepest stack: the 1M shape (d=128) with more layers, compile only\n")
        layers = tuple(int(x) for x in args.deep_layers.split(",") if x.strip())
        results["deep"] = run_deep(layers, args.deep_limit, args.deep_max_gb, say, args.deep_budget)
    if "ops" in parts:
        say(f"\n## A {args.ops}-op step end to end (run.deep_program), limit {args.ops_limit:.0f} s per phase\n")
        results["ops"] = run_ops(args.ops, args.ops_compare, args.ops_limit, say)
        say(ops_report(results["ops"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
