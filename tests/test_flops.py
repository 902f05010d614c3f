"""No extra work: XLA's flop count of stepc's programs against what JAX makes of the same math.

Flops are counted by XLA (`Compiled.cost_analysis()`, after its optimizations), not timed, so
this is a deterministic check. Oracles: hand-written JAX twins of each example
(`benchmarks/flops_forward.py`) and `jax.value_and_grad` of them (`benchmarks/flops_grad.py`).

The gradient bound has 2% of room: softmax_regression's gradient is 1.019x JAX's (its
log_softmax derivative scales by the reciprocal of the row sum and then by the cotangent's row
sum, where JAX divides once). It was 1.065x while the log_softmax rule recomputed
`exp(output)` instead of taking `softmax(input)`, whose exponentials XLA shares with the forward.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ["linreg", "mlp_digits", "softmax_regression", "tanh_autoencoder", "attention_classifier"]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"stepc_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def forward_bench():
    return _load("flops_forward")


@pytest.fixture(scope="module")
def grad_bench():
    return _load("flops_grad")


@pytest.mark.parametrize("name", EXAMPLES)
def test_forward_flops_at_most_the_jax_twins(forward_bench, name):
    ours, theirs = forward_bench.flops(name)
    assert ours > 0 and ours <= theirs, f"{name}: stepc {ours:,.0f} flops, JAX twin {theirs:,.0f}"


@pytest.mark.parametrize("name", EXAMPLES)
def test_gradient_flops_within_two_percent_of_value_and_grad(grad_bench, name):
    ours, theirs = grad_bench.measure(name)
    assert ours > 0 and ours <= 1.02 * theirs, f"{name}: stepc {ours:,.0f} flops, jax.value_and_grad {theirs:,.0f}"
