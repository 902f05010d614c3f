"""XLA's flop count of each example's lowered forward program against a hand-written JAX twin.

    .venv/bin/python benchmarks/flops_forward.py

For each `examples/*.ir`: the forward program (no pass but `lower-to-stablehlo`) printed as
StableHLO text and compiled by XLA as it is, and the same loss written by hand in JAX, compiled
by `jax.jit`; both counted by `cost_analysis()["flops"]` of the compiled executable (CPU). The
goal is equal counts: the lowering adds no work.

The twins are written as a JAX user would write the same loss, with the same conventions as
the step IR (relu as `where(x > 0, x, 0)`, PyTorch's derivative at 0; the log-sum-exp shifted by
the row max). The tests use them as oracles for `jax.grad` too (`TWINS`).
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


def linreg(w: Any, b: Any, x: Any, t: Any) -> Any:
    y = x @ w + b
    return jnp.mean((y - t) ** 2)


def cross_entropy(logits: Any, labels: Any) -> Any:
    """torch.nn.functional.cross_entropy: mean of logsumexp minus the label's logit."""
    row_max = jnp.max(logits, axis=1, keepdims=True)
    logsumexp = jnp.log(jnp.sum(jnp.exp(logits - row_max), axis=1)) + row_max[:, 0]
    picked = jnp.take_along_axis(logits, labels[:, None], axis=1, mode="promise_in_bounds")[:, 0]
    return jnp.mean(logsumexp - picked)


def mlp_digits(w1: Any, b1: Any, w2: Any, b2: Any, x: Any, labels: Any) -> Any:
    h1 = x @ w1 + b1
    h = jnp.where(h1 > 0, h1, 0.0)
    return cross_entropy(h @ w2 + b2, labels)


def softmax_regression(w: Any, b: Any, x: Any, onehot: Any) -> Any:
    logits = x @ w + b
    log_probs = jax.nn.log_softmax(logits, axis=1)
    return jnp.mean(-jnp.sum(log_probs * onehot, axis=1))


def attention_classifier(w_q: Any, w_k: Any, w_v: Any, w_out: Any, b_out: Any, tokens: Any, labels: Any) -> Any:
    q, k, v = tokens @ w_q, tokens @ w_k, tokens @ w_v
    scores = (q @ jnp.swapaxes(k, 1, 2)) * 0.35355339059327373
    exp = jnp.exp(scores - jnp.max(scores, axis=2, keepdims=True))
    attention = exp / jnp.sum(exp, axis=2, keepdims=True)
    pooled = jnp.mean(attention @ v, axis=1)
    return cross_entropy(pooled @ w_out + b_out, labels)


def tanh_autoencoder(w_enc: Any, b_enc: Any, w_dec: Any, b_dec: Any, x: Any) -> Any:
    code = jnp.tanh(x @ w_enc + b_enc)
    return jnp.mean((code @ w_dec + b_dec - x) ** 2)


TWINS: dict[str, Callable[..., Any]] = {
    "linreg": linreg,
    "mlp_digits": mlp_digits,
    "softmax_regression": softmax_regression,
    "attention_classifier": attention_classifier,
    "tanh_autoencoder": tanh_autoencoder,
}


def example_inputs(name: str, seed: int = 0) -> tuple[list[str], dict[str, np.ndarray]]:
    """The argument names of an example and random inputs for them (labels in range)."""
    from stepc.check.contract import random_inputs
    from stepc.ir.parse import load
    from stepc.ir.program import args, step_function

    fn = step_function(load(ROOT / "examples" / f"{name}.ir"))
    return [a.name for a in args(fn)], random_inputs(fn, np.random.default_rng(seed))


def flops(name: str) -> tuple[float, float]:
    """(lowered forward, twin) flops of one example."""
    from stepc.backends.xla import XlaExecutable
    from stepc.ir.parse import load
    from stepc.passes.lower_to_stablehlo import lowered_clone

    lowered = XlaExecutable.from_module(lowered_clone(load(ROOT / "examples" / f"{name}.ir")))
    names, inputs = example_inputs(name)
    twin = jax.jit(TWINS[name]).lower(*(inputs[n] for n in names)).compile()
    twin_cost = twin.cost_analysis()
    twin_cost = twin_cost[0] if isinstance(twin_cost, (list, tuple)) else twin_cost
    return float(lowered.cost_analysis()["flops"]), float(twin_cost["flops"])


def main() -> int:
    sys.path.insert(0, str(ROOT.parent))
    print(f"{'example':<20} {'stepc flops':>12} {'JAX twin flops':>15} {'ratio':>7}")
    for name in TWINS:
        ours, twin = flops(name)
        print(f"{name:<20} {ours:>12.0f} {twin:>15.0f} {ours / twin:>7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
