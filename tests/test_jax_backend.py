"""The JAX backend composes with JAX: `jax.jit`, `jax.vmap` over a stack of parameter sets, and
`jax.grad` of the forward loss equal to `jax.grad` of a hand-written JAX twin.

Oracles: the twins of `benchmarks/flops_forward.py` (plain jax.numpy), PyTorch for the
derivative conventions at kinks (relu'(0) = 0, abs'(0) = 0, ties of maximum and of the max
reduction split equally), and the reference interpreter.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from stepc.backends.jax import jax_function
from stepc.ir.interpreter import run_function
from stepc.ir.parse import load, parse_text, verify
from stepc.passes.lower_to_stablehlo import lowered_clone

ROOT = Path(__file__).resolve().parent.parent


def _benchmark_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("flops_forward", ROOT / "benchmarks" / "flops_forward.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = _benchmark_module()
EXAMPLES = sorted(BENCH.TWINS)  # every example with a hand-written twin


def example(name: str):  # type: ignore[no-untyped-def]
    jf = jax_function(lowered_clone(load(ROOT / "examples" / f"{name}.ir")))
    names, inputs = BENCH.example_inputs(name)
    assert names == jf.arg_names
    return jf, [jnp.asarray(inputs[n]) for n in names]


@pytest.mark.parametrize("name", EXAMPLES)
def test_jit_equals_eager_and_interpreter(name: str) -> None:
    jf, arrays = example(name)
    (jitted,) = jax.jit(jf.fn)(*arrays)
    (eager,) = jf.fn(*arrays)
    expected = run_function(load(ROOT / "examples" / f"{name}.ir"), dict(zip(jf.arg_names, map(np.asarray, arrays))))
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    np.testing.assert_allclose(jitted, expected["loss"], rtol=1e-5)
    assert jf.output_names == ["loss"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_vmap_over_a_stack_of_parameter_sets(name: str) -> None:
    jf, arrays = example(name)
    params = [i for i, s in enumerate(jf.specs) if s.role == "param"]
    rng = np.random.default_rng(1)
    stacks = {i: jnp.asarray(rng.standard_normal((3, *arrays[i].shape)).astype(np.float32)) for i in params}

    def loss(*stacked):  # type: ignore[no-untyped-def]
        values = list(arrays)
        for i, value in zip(params, stacked):
            values[i] = value
        return jf.fn(*values)[0]

    batched = jax.jit(jax.vmap(loss))(*(stacks[i] for i in params))
    assert batched.shape == (3,)
    one = jax.jit(loss)
    for k in range(3):
        np.testing.assert_allclose(batched[k], one(*(stacks[i][k] for i in params)), rtol=1e-5)


@pytest.mark.parametrize("name", EXAMPLES)
def test_grad_equals_grad_of_the_jax_twin(name: str) -> None:
    jf, arrays = example(name)
    params = tuple(i for i, s in enumerate(jf.specs) if s.role == "param")
    ours = jax.jit(jax.grad(lambda *a: jf.fn(*a)[0], argnums=params))(*arrays)
    twin = jax.jit(jax.grad(BENCH.TWINS[name], argnums=params))(*arrays)
    for i, g, h in zip(params, ours, twin):
        np.testing.assert_allclose(g, h, rtol=2e-5, atol=1e-6, err_msg=jf.arg_names[i])


def test_grad_through_relu_at_exact_zeros_equals_the_twin() -> None:
    """Make h1 = x w1 + b1 exactly zero on many entries: relu'(0) = 0, as the twin's where()."""
    jf, arrays = example("mlp_digits")
    arrays[0] = jnp.zeros_like(arrays[0]).at[:, ::2].set(arrays[0][:, ::2])  # w1: zero columns
    arrays[1] = jnp.zeros_like(arrays[1])  # b1 = 0, so h1[:, odd] == 0 exactly
    ours = jax.jit(jax.grad(lambda *a: jf.fn(*a)[0], argnums=(0, 1)))(*arrays)
    twin = jax.jit(jax.grad(BENCH.TWINS["mlp_digits"], argnums=(0, 1)))(*arrays)
    for g, h in zip(ours, twin):
        np.testing.assert_allclose(g, h, rtol=2e-5, atol=1e-7)
    assert np.all(np.asarray(ours[1])[1::2] == 0.0)


KINKS = [
    ("relu", "%r = step.relu %a : tensor<5xf64>", lambda a, b: torch.relu(a)),
    ("abs", "%r = step.abs %a : tensor<5xf64>", lambda a, b: torch.abs(a)),
    (
        "maximum",
        "%r = step.maximum %a, %b : (tensor<5xf64>, tensor<5xf64>) -> tensor<5xf64>",
        lambda a, b: torch.maximum(a, b),
    ),
    (
        "minimum",
        "%r = step.minimum %a, %b : (tensor<5xf64>, tensor<5xf64>) -> tensor<5xf64>",
        lambda a, b: torch.minimum(a, b),
    ),
    ("max", "%r = step.max %a : tensor<5xf64> -> tensor<f64>", lambda a, b: torch.amax(a)),
]


@pytest.mark.parametrize("name,line,torch_fn", KINKS, ids=[k[0] for k in KINKS])
def test_derivatives_at_kinks_follow_pytorch(name: str, line: str, torch_fn) -> None:  # type: ignore[no-untyped-def]
    result = "tensor<f64>" if name == "max" else "tensor<5xf64>"
    text = (
        f"func.func @k(%a: tensor<5xf64>, %b: tensor<5xf64>) -> {result} {{\n  {line}\n"
        f"  func.return %r : {result}\n}}\n"
    )
    module = parse_text(text, f"{name}.ir")
    verify(module)
    jf = jax_function(lowered_clone(module))
    a = np.array([0.0, 2.0, -1.0, 2.0, 0.5])
    b = np.array([0.0, 1.0, -1.0, 3.0, 0.5])
    weights = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    with jax.enable_x64(True):

        def loss(x, y):  # type: ignore[no-untyped-def]
            (r,) = jf.fn(x, y)
            return jnp.sum(r * (weights if r.ndim else 1.0))

        ours = jax.grad(loss, argnums=(0, 1))(jnp.asarray(a), jnp.asarray(b))
    ta = torch.tensor(a, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    r = torch_fn(ta, tb)
    (r * (torch.tensor(weights) if r.ndim else 1.0)).sum().backward()
    np.testing.assert_allclose(ours[0], ta.grad.numpy(), atol=1e-15)
    np.testing.assert_allclose(ours[1], tb.grad.numpy() if tb.grad is not None else 0.0, atol=1e-15)


def test_dict_call_checks_inputs() -> None:
    from stepc.ir.diagnostics import StepcError

    jf, arrays = example("linreg")
    inputs = dict(zip(jf.arg_names, map(np.asarray, arrays)))
    with pytest.raises(StepcError, match="missing 'w'"):
        jf({k: v for k, v in inputs.items() if k != "w"})
    with pytest.raises(StepcError, match="unexpected 'z'"):
        jf({**inputs, "z": inputs["w"]})
    with pytest.raises(StepcError, match=r"'x' has shape \(4, 32\), expected \(32, 4\)"):
        jf({**inputs, "x": inputs["x"].T})
    with pytest.raises(StepcError, match="'t' has dtype float64, expected float32"):
        jf({**inputs, "t": inputs["t"].astype(np.float64)})
