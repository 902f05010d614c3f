"""XLA's flop count of stepc's gradient program against `jax.value_and_grad` of a hand-written twin.

For each example: the program after `seed-scalar-loss` (the default pipeline's cleanups
included), as a JAX function through the backend, jitted and compiled by XLA; and the loss
written by hand with `jax.numpy`, through `jax.jit(jax.value_and_grad(...))`. Both are measured
by `Compiled.cost_analysis()["flops"]` after XLA's optimizations. The goal: stepc's count is no
larger than the twin's.

    .venv/bin/python benchmarks/flops_grad.py            # every example
    .venv/bin/python benchmarks/flops_grad.py linreg     # some
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
Arrays = dict[str, Any]


def _cross_entropy(logits: Any, labels: Any) -> Any:
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits, axis=1), labels[:, None], axis=1))


def linreg(p: Arrays, b: Arrays) -> Any:
    return jnp.mean(jnp.square(b["x"] @ p["w"] + p["b"] - b["t"]))


def mlp_digits(p: Arrays, b: Arrays) -> Any:
    h = jax.nn.relu(b["x"] @ p["w1"] + p["b1"])
    return _cross_entropy(h @ p["w2"] + p["b2"], b["labels"])


def softmax_regression(p: Arrays, b: Arrays) -> Any:
    lp = jax.nn.log_softmax(b["x"] @ p["w"] + p["b"], axis=1)
    return jnp.mean(-jnp.sum(lp * b["onehot"], axis=1))


def tanh_autoencoder(p: Arrays, b: Arrays) -> Any:
    code = jnp.tanh(b["x"] @ p["w_enc"] + p["b_enc"])
    return jnp.mean(jnp.square(code @ p["w_dec"] + p["b_dec"] - b["x"]))


def attention_classifier(p: Arrays, b: Arrays) -> Any:
    tokens = b["tokens"]
    q, k, v = tokens @ p["w_q"], tokens @ p["w_k"], tokens @ p["w_v"]
    scores = (q @ jnp.swapaxes(k, 1, 2)) * 0.35355339059327373
    pooled = jnp.mean(jax.nn.softmax(scores, axis=2) @ v, axis=1)
    return _cross_entropy(pooled @ p["w_out"] + p["b_out"], b["labels"])


TWINS: dict[str, Callable[[Arrays, Arrays], Any]] = {
    "linreg": linreg,
    "mlp_digits": mlp_digits,
    "softmax_regression": softmax_regression,
    "tanh_autoencoder": tanh_autoencoder,
    "attention_classifier": attention_classifier,
}


def flops(compiled: Any) -> float:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return float(analysis.get("flops", float("nan")))


def measure(name: str) -> tuple[float, float]:
    """(stepc's flops, the twin's flops) for one example."""
    from stepc.backends.jax import jax_function
    from stepc.check.contract import random_inputs
    from stepc.ir.parse import load
    from stepc.ir.program import params, step_function
    from stepc.pipeline import Pipeline

    module = load(ROOT / "examples" / f"{name}.ir")
    inputs = random_inputs(step_function(module), np.random.default_rng(0))
    param_names = [p.name for p in params(step_function(module))]
    Pipeline.default(until="seed-scalar-loss", lower=True, check=False).run(module)
    compiled_step = jax_function(module)
    arrays = [inputs[n] for n in compiled_step.arg_names]
    ours = flops(jax.jit(compiled_step.fn).lower(*arrays).compile())

    param_values = {n: inputs[n] for n in param_names}
    batch = {n: v for n, v in inputs.items() if n not in param_values}
    twin = jax.jit(jax.value_and_grad(TWINS[name]))
    theirs = flops(twin.lower(param_values, batch).compile())
    return ours, theirs


def main(names: list[str]) -> int:
    print(f"{'example':<22} {'stepc flops':>14} {'value_and_grad':>15} {'ratio':>7}")
    worst = 0.0
    for name in names or list(TWINS):
        ours, theirs = measure(name)
        worst = max(worst, ours / theirs)
        print(f"{name:<22} {ours:>14,.0f} {theirs:>15,.0f} {ours / theirs:>7.3f}")
    print(f"worst ratio {worst:.3f} ({'no more than' if worst <= 1.0 else 'MORE than'} jax.value_and_grad)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
