"""The Python API: `stepc.compile`, `Program.forward / grad / init_state / step`.

Oracles: hand-written JAX twins (`benchmarks/flops_forward.py`) and `jax.grad` of them for
`forward` and `grad`; `torch.optim.SGD` with the same parameter groups for `step` (first and
later steps); NumPy formulas for hand-written post-pass fixtures (programs already in the
`seed-scalar-loss` and `fuse-sgd` forms of docs/architecture.md, lowered alone).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import stepc
from stepc.ir.diagnostics import StepcError

ROOT = Path(__file__).resolve().parent.parent


def _benchmark_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("flops_forward", ROOT / "benchmarks" / "flops_forward.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = _benchmark_module()
EXAMPLES = sorted(BENCH.TWINS)  # every example with a hand-written twin


@pytest.fixture(scope="module")
def programs() -> dict[str, stepc.api.Program]:  # type: ignore[name-defined]
    return {name: stepc.compile(str(ROOT / "examples" / f"{name}.ir"), check=False) for name in EXAMPLES}


def split(prog, inputs):  # type: ignore[no-untyped-def]
    params = {k: inputs[k] for k in prog.param_names()}
    batch = {k: inputs[k] for k in prog.input_names()}
    return params, batch


def example_inputs(name: str, seed: int = 0):  # type: ignore[no-untyped-def]
    names, inputs = BENCH.example_inputs(name, seed)
    return names, {k: (v * 0.3 if v.dtype == np.float32 else v) for k, v in inputs.items()}


@pytest.mark.parametrize("name", EXAMPLES)
def test_forward_and_grad_equal_the_jax_twin(programs, name: str) -> None:  # type: ignore[no-untyped-def]
    prog = programs[name]
    names, inputs = example_inputs(name)
    params, batch = split(prog, inputs)
    argnums = tuple(range(len(params)))
    twin_loss, twin_grads = jax.value_and_grad(BENCH.TWINS[name], argnums=argnums)(*(inputs[n] for n in names))
    np.testing.assert_allclose(prog.forward(params, batch), twin_loss, rtol=1e-5)
    loss, grads = prog.grad(params, batch)
    np.testing.assert_allclose(loss, twin_loss, rtol=1e-5)
    assert list(grads) == prog.param_names()
    for key, expected in zip(prog.param_names(), twin_grads):
        np.testing.assert_allclose(grads[key], expected, rtol=1e-4, atol=1e-6, err_msg=key)


def torch_sgd(name: str, params: dict, batch: dict, steps: int, groups) -> list[tuple[dict, float]]:  # type: ignore[no-untyped-def]
    """`steps` steps of torch.optim.SGD on the example's loss written in PyTorch."""
    tp = {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in params.items()}
    tb = {k: torch.tensor(np.asarray(v)) for k, v in batch.items()}
    optimizer = torch.optim.SGD([{"params": [tp[k] for k in keys], **opts} for keys, opts in groups])
    out = []
    for _ in range(steps):
        optimizer.zero_grad()
        if name == "mlp_digits":
            h = torch.relu(tb["x"] @ tp["w1"] + tp["b1"])
            loss = torch.nn.functional.cross_entropy(h @ tp["w2"] + tp["b2"], tb["labels"].long())
        else:
            logits = tb["x"] @ tp["w"] + tp["b"]
            loss = -(torch.log_softmax(logits, 1) * tb["onehot"]).sum(1).mean()
        loss.backward()
        optimizer.step()
        out.append(({k: v.detach().numpy().copy() for k, v in tp.items()}, float(loss.detach())))
    return out


TORCH_GROUPS = {
    "mlp_digits": [
        (["w1", "w2"], {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}),
        (["b1", "b2"], {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}),
    ],
    "softmax_regression": [(["w", "b"], {"lr": 0.5, "momentum": 0.9, "nesterov": True})],
}


@pytest.mark.parametrize("name", sorted(TORCH_GROUPS))
def test_step_equals_torch_sgd(programs, name: str) -> None:  # type: ignore[no-untyped-def]
    prog = programs[name]
    _, inputs = example_inputs(name)
    params, batch = split(prog, inputs)
    expected = torch_sgd(name, params, batch, 3, TORCH_GROUPS[name])
    state = prog.init_state(params)
    assert sorted(state) == sorted(f"momentum.{k}" for k in params)
    step = jax.jit(prog.step)
    for want_params, want_loss in expected:
        params, state, loss = step(params, state, batch)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
        for key, value in want_params.items():
            np.testing.assert_allclose(params[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_compile_from_text_and_vmap_jit_donation(programs) -> None:  # type: ignore[no-untyped-def]
    text = (ROOT / "examples" / "linreg.ir").read_text()
    prog = stepc.compile_text(text, check=False)
    assert prog.source == "<string>"
    _, inputs = example_inputs("linreg")
    params, batch = split(prog, inputs)
    stacked = {k: jnp.stack([v, 2 * v, -v]) for k, v in params.items()}
    losses = jax.vmap(lambda p: prog.forward(p, batch))(stacked)
    for i in range(3):
        one = {k: v[i] for k, v in stacked.items()}
        np.testing.assert_allclose(losses[i], prog.forward(one, batch), rtol=1e-6)
    assert prog.init_state(params) == {}
    expected = jax.jit(prog.step)(params, {}, batch)  # donation must change no number of the same XLA program
    donated = jax.jit(prog.step, donate_argnums=(0,))(
        {k: jnp.array(v, copy=True) for k, v in params.items()}, {}, batch
    )
    for key in params:
        np.testing.assert_array_equal(donated[0][key], expected[0][key])


def test_grad_of_forward_through_the_api_equals_program_grad(programs) -> None:  # type: ignore[no-untyped-def]
    prog = programs["mlp_digits"]
    _, inputs = example_inputs("mlp_digits")
    params, batch = split(prog, inputs)
    by_jax = jax.grad(prog.forward)(params, batch)
    _, by_stepc = prog.grad(params, batch)
    for key in params:
        np.testing.assert_allclose(by_jax[key], by_stepc[key], rtol=1e-4, atol=1e-6)


def test_input_errors(programs) -> None:  # type: ignore[no-untyped-def]
    prog = programs["mlp_digits"]
    _, inputs = example_inputs("mlp_digits")
    params, batch = split(prog, inputs)
    state = prog.init_state(params)
    with pytest.raises(StepcError, match="params: missing 'b2'"):
        prog.forward({k: v for k, v in params.items() if k != "b2"}, batch)
    with pytest.raises(StepcError, match="batch: unexpected 'y'"):
        prog.grad(params, {**batch, "y": batch["x"]})
    with pytest.raises(StepcError, match=r"params: 'w1' has shape \(128, 64\), expected \(64, 128\)"):
        prog.step({**params, "w1": params["w1"].T}, state, batch)
    with pytest.raises(StepcError, match="batch: 'labels' has dtype int64, expected int32"):
        prog.forward(params, {**batch, "labels": batch["labels"].astype(np.int64)})
    with pytest.raises(StepcError, match=r"state: missing 'momentum.w2'"):
        prog.step(params, {k: v for k, v in state.items() if k != "momentum.w2"}, batch)
    with pytest.raises(StepcError, match="params: expected a dict"):
        prog.forward([params["w1"]], batch)


def test_float64_program_under_the_users_jit_says_to_enable_x64() -> None:
    """`jax.jit` casts float64 arrays to float32 unless x64 is on; the error says so and how to
    fix it. With x64 on, the jitted step equals NumPy's least-squares gradient step."""
    prog = stepc.compile_text((ROOT / "examples" / "linreg.ir").read_text().replace("f32", "f64"), check=False)
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((4, 1)), "b": rng.standard_normal(1)}
    batch = {"x": rng.standard_normal((32, 4)), "t": rng.standard_normal((32, 1))}
    with jax.enable_x64(False), pytest.raises(StepcError, match=r"'w' has dtype float32, expected float64 .*jax_enable_x64"):
        jax.jit(prog.step)(params, {}, batch)
    with jax.enable_x64(True):
        new, _, loss = jax.jit(prog.step)(params, {}, batch)
        assert new["w"].dtype == np.float64
    residual = batch["x"] @ params["w"] + params["b"] - batch["t"]
    np.testing.assert_allclose(loss, np.mean(residual**2), rtol=1e-12)
    grad_w = 2 * batch["x"].T @ residual / residual.size  # lr 0.01 in examples/linreg.ir
    np.testing.assert_allclose(new["w"], params["w"] - 0.01 * grad_w, rtol=1e-12)


def test_until_stops_the_api_clearly() -> None:
    prog = stepc.compile(str(ROOT / "examples" / "linreg.ir"), check=False, until="seed-scalar-loss")
    _, inputs = example_inputs("linreg")
    params, batch = split(prog, inputs)
    prog.grad(params, batch)
    with pytest.raises(StepcError, match=r"Program.step needs the optimizer.s pass fuse-sgd"):
        prog.step(params, {}, batch)


def test_compile_with_checks_runs_every_contract() -> None:
    prog = stepc.compile(str(ROOT / "examples" / "linreg.ir"), trials=1)
    assert prog.passes[-2:] == ["lower-to-stablehlo", "simplify-stablehlo"]


# Hand-written post-pass programs (the forms of docs/architecture.md), lowered alone.
GRAD_FORM = """
func.func @quad(%w: tensor<3xf32> {step.param}, %x: tensor<3xf32>)
    -> (tensor<f32> {step.output = "loss"}, tensor<3xf32> {step.output = "grad.w"}) {
  %d = step.sub %w, %x : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xf32>
  %s = step.square %d : tensor<3xf32>
  %loss = step.sum %s : tensor<3xf32> -> tensor<f32>
  %two = step.constant 2.0 : tensor<f32>
  %g = step.mul %d, %two : (tensor<3xf32>, tensor<f32>) -> tensor<3xf32>
  func.return %loss, %g : tensor<f32>, tensor<3xf32>
}
"""

STEP_FORM = """
func.func @quad(%w: tensor<3xf32> {step.param}, %x: tensor<3xf32>,
                %momentum.w: tensor<3xf32> {step.state = "momentum.w"})
    -> (tensor<3xf32> {step.output = "w"}, tensor<3xf32> {step.output = "momentum.w"},
        tensor<f32> {step.output = "loss"}) {
  %d = step.sub %w, %x : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xf32>
  %s = step.square %d : tensor<3xf32>
  %loss = step.sum %s : tensor<3xf32> -> tensor<f32>
  %two = step.constant 2.0 : tensor<f32>
  %g = step.mul %d, %two : (tensor<3xf32>, tensor<f32>) -> tensor<3xf32>
  %mu = step.constant 0.5 : tensor<f32>
  %decayed = step.mul %momentum.w, %mu : (tensor<3xf32>, tensor<f32>) -> tensor<3xf32>
  %buf = step.add %decayed, %g : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xf32>
  %lr = step.constant 0.1 : tensor<f32>
  %delta = step.mul %buf, %lr : (tensor<3xf32>, tensor<f32>) -> tensor<3xf32>
  %new = step.sub %w, %delta : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xf32>
  func.return %new, %buf, %loss : tensor<3xf32>, tensor<3xf32>, tensor<f32>
}
"""


def load_fixture(text: str):  # type: ignore[no-untyped-def]
    from stepc.ir.parse import parse_text, verify

    module = parse_text(text, "fixture.ir")
    verify(module)
    return module


def test_hand_written_post_pass_programs() -> None:
    from stepc.api import Program
    from stepc.pipeline import Pipeline

    w = np.array([1.0, -2.0, 0.5], np.float32)
    x = np.array([0.5, 0.5, 0.5], np.float32)
    for text, role in ((GRAD_FORM, "grad"), (STEP_FORM, "step")):
        module = load_fixture(text)
        stages = [("input", module.clone())]
        Pipeline(["lower-to-stablehlo"], check=False).run(module)
        stages.append(("lower-to-stablehlo", module))
        prog = Program("fixture.ir", stages)
        if role == "grad":
            loss, grads = prog.grad({"w": w}, {"x": x})
            np.testing.assert_allclose(loss, np.sum((w - x) ** 2), rtol=1e-6)
            np.testing.assert_allclose(grads["w"], 2 * (w - x), rtol=1e-6)
        else:
            state = prog.init_state({"w": w})
            np.testing.assert_array_equal(state["momentum.w"], np.zeros(3, np.float32))
            buf = np.ones(3, np.float32)
            new, new_state, loss = prog.step({"w": w}, {"momentum.w": buf}, {"x": x})
            expected_buf = 0.5 * buf + 2 * (w - x)
            np.testing.assert_allclose(new_state["momentum.w"], expected_buf, rtol=1e-6)
            np.testing.assert_allclose(new["w"], w - 0.1 * expected_buf, rtol=1e-6)
            np.testing.assert_allclose(loss, np.sum((w - x) ** 2), rtol=1e-6)
