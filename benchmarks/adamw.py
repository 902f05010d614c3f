"""The AdamW step on mlp784: stepc against hand JAX + optax.adamw and PyTorch eager AdamW, side by side.

    .venv/bin/python benchmarks/adamw.py [--steps 50] [--repeats 5] [--json out.json]

The model is benchmarks/models/mlp784.ir (784-256-256-10, ReLU, batch 128, cross-entropy) with
its optimizer replaced by `#step.adamw<lr = 1.0e-3>` (torch's defaults: betas (0.9, 0.999),
eps 1e-8, weight_decay 0.01):

- `stepc`: the compiled step (`prog.function("step")`, no contracts), jitted with params and
  state donated, as a training loop calls it;
- `optax`: a hand-written JAX twin (`jax.value_and_grad` of the same MLP) and
  `optax.adamw(1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)`, one jitted function
  (params, opt state, batch -> new params, new opt state, loss), params and state donated;
- `torch`: eager `torch.optim.AdamW(foreach=True)` on `nn.Sequential` (CPU), forward, backward,
  step, as most training loops are written.

Time: per step, over `--repeats` rounds of `--steps` steps (after a warm-up); the three run in
turn within each round (stepc, optax, torch, stepc, ...), so that a machine shared with other
work slows them alike; the minimum and the median of the rounds are reported (the minimum is the
least disturbed by other load; the ratio is taken of the minima). Batches are on the device for
both JAX steps (put once, as a loop with prefetched data has them). XLA:
`cost_analysis()["flops"]` and `memory_analysis()` (temp and all buffers) of the compiled stepc
and optax steps. The ratios stepc / optax are printed last.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = ROOT / "benchmarks" / "models" / "mlp784.ir"
LR, B1, B2, EPS, WD = 1e-3, 0.9, 0.999, 1e-8, 0.01
LAYERS = (("w1", "b1"), ("w2", "b2"), ("w3", "b3"))


def adamw_text() -> str:
    text = PROGRAM.read_text()
    new, n = re.subn(r"step\.sgd = #step\.sgd<[^>]*>", "step.adamw = #step.adamw<lr = 1.0e-3>", text)
    assert n == 1
    return new


def memory(compiled: Any) -> dict[str, int]:
    m = compiled.memory_analysis()
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes")
    out = {f: int(getattr(m, f, 0) or 0) for f in fields}
    out["all"] = out["argument_size_in_bytes"] + out["output_size_in_bytes"] - out["alias_size_in_bytes"] + out["temp_size_in_bytes"]
    return out


def flops(compiled: Any) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, list):
        cost = cost[0]
    return float(cost.get("flops", 0.0))


def timed_together(runs: dict[str, Any], steps: int, repeats: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds per step of each run (`time.process_time`: every thread of this
    process, so the work done whatever else shares the machine), `repeats` rounds, the runs in
    turn within each round."""
    for run in runs.values():
        run(2)  # warm-up (compile, caches)
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run(steps)
            wall[name].append((time.perf_counter() - start) / steps)
            cpu[name].append((time.process_time() - start_cpu) / steps)
    return wall, cpu


def data(rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    shapes = {"w1": (784, 256), "b1": (256,), "w2": (256, 256), "b2": (256,), "w3": (256, 10), "b3": (10,)}
    params = {k: (rng.standard_normal(s) * (1.0 / np.sqrt(s[0]) if len(s) == 2 else 0.01)).astype(np.float32) for k, s in shapes.items()}
    batch = {"x": rng.standard_normal((128, 784)).astype(np.float32), "labels": rng.integers(0, 10, 128).astype(np.int32)}
    return params, batch


def bench_stepc(params: dict[str, np.ndarray], batch: dict[str, np.ndarray], steps: int, repeats: int) -> dict[str, Any]:
    import jax

    import stepc

    prog = stepc.compile_text(adamw_text(), filename="mlp784-adamw.ir", check=False)
    jf = prog.function("step")
    state = {k: np.asarray(v) for k, v in prog.init_state(params).items()}
    values = {**params, **state, **batch}
    positional = [values[s.key] for s in jf.specs]
    donate = tuple(i for i, s in enumerate(jf.specs) if s.role in ("param", "state"))
    fn = jax.jit(jf.fn, donate_argnums=donate)
    compiled = fn.lower(*positional).compile()
    index = {name: i for i, name in enumerate(jf.output_names)}
    carried = [i for i, s in enumerate(jf.specs) if s.role in ("param", "state")]
    keys = [jf.specs[i].key for i in carried]

    def run(n: int) -> None:
        args = [jax.device_put(a) for a in positional]
        out = None
        for _ in range(n):
            out = compiled(*args)
            for i, key in zip(carried, keys):
                args[i] = out[index[key]]
        jax.block_until_ready(out)

    return {"run": run, "flops": flops(compiled), "memory": memory(compiled)}


def bench_optax(params: dict[str, np.ndarray], batch: dict[str, np.ndarray], steps: int, repeats: int) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import optax

    opt = optax.adamw(LR, b1=B1, b2=B2, eps=EPS, weight_decay=WD)

    def loss_fn(p: dict[str, Any], x: Any, labels: Any) -> Any:
        h = x
        for i, (w, b) in enumerate(LAYERS):
            h = h @ p[w] + p[b]
            if i < len(LAYERS) - 1:
                h = jax.nn.relu(h)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(h), labels[:, None], axis=1))

    def step(p: dict[str, Any], s: Any, x: Any, labels: Any) -> Any:
        loss, grads = jax.value_and_grad(loss_fn)(p, x, labels)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    p0 = {k: jnp.asarray(v) for k, v in params.items()}
    s0 = opt.init(p0)
    fn = jax.jit(step, donate_argnums=(0, 1))
    compiled = fn.lower(p0, s0, batch["x"], batch["labels"]).compile()

    x, labels = jax.device_put(batch["x"]), jax.device_put(batch["labels"])

    def run(n: int) -> None:
        p = {k: jnp.array(v) for k, v in params.items()}
        s = opt.init(p)
        loss = None
        for _ in range(n):
            p, s, loss = compiled(p, s, x, labels)
        jax.block_until_ready(loss)

    return {"run": run, "flops": flops(compiled), "memory": memory(compiled)}


def bench_torch(params: dict[str, np.ndarray], batch: dict[str, np.ndarray], steps: int, repeats: int) -> dict[str, Any]:
    import torch

    x = torch.tensor(batch["x"])
    labels = torch.tensor(batch["labels"]).long()

    def run(n: int) -> None:
        model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                                    torch.nn.ReLU(), torch.nn.Linear(256, 10))  # fmt: skip
        with torch.no_grad():
            for layer, (w, b) in zip((model[0], model[2], model[4]), LAYERS):
                layer.weight.copy_(torch.tensor(params[w]).T)
                layer.bias.copy_(torch.tensor(params[b]))
        opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD, foreach=True)
        for _ in range(n):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), labels).backward()
            opt.step()

    return {"run": run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    a = parser.parse_args()
    import jax

    params, batch = data(np.random.default_rng(0))
    results = {
        "stepc": bench_stepc(params, batch, a.steps, a.repeats),
        "optax": bench_optax(params, batch, a.steps, a.repeats),
        "torch": bench_torch(params, batch, a.steps, a.repeats),
    }
    samples, cpu = timed_together({name: r.pop("run") for name, r in results.items()}, a.steps, a.repeats)
    for name, r in results.items():
        r["seconds"] = min(samples[name])
        r["median_seconds"] = statistics.median(samples[name])
        r["cpu_seconds"] = min(cpu[name])
    print(f"AdamW step on mlp784 (batch 128), {jax.devices()[0].platform}, {a.repeats} rounds x {a.steps} steps")
    print(f"{'':8} {'min ms/step':>11} {'median':>9} {'cpu ms':>9} {'XLA flops':>12} {'temp bytes':>12} {'all bytes':>12}")
    for name, r in results.items():
        m = r.get("memory", {})
        print(f"{name:8} {r['seconds'] * 1e3:11.3f} {r['median_seconds'] * 1e3:9.3f} {r['cpu_seconds'] * 1e3:9.3f} "
              f"{r.get('flops', float('nan')):12.4g} "
              f"{m.get('temp_size_in_bytes', float('nan')):12} {m.get('all', float('nan')):12}")  # fmt: skip
    s, o, t = results["stepc"], results["optax"], results["torch"]
    ratios = {
        "time stepc/optax": s["seconds"] / o["seconds"],
        "time stepc/optax, median of the rounds' ratios": statistics.median(
            a_ / b_ for a_, b_ in zip(samples["stepc"], samples["optax"])
        ),
        "cpu time stepc/optax (minima)": s["cpu_seconds"] / o["cpu_seconds"],
        "time stepc/torch": s["seconds"] / t["seconds"],
        "flops stepc/optax": s["flops"] / o["flops"] if o["flops"] else float("nan"),
        "temp stepc/optax": s["memory"]["temp_size_in_bytes"] / max(o["memory"]["temp_size_in_bytes"], 1),
        "all bytes stepc/optax": s["memory"]["all"] / o["memory"]["all"],
    }
    for k, v in ratios.items():
        print(f"{k:48} {v:.3f}")
    if a.json:
        a.json.write_text(json.dumps({"results": results, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
