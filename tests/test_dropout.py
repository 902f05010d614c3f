"""`step.dropout` and `tensor<2xui32>` keys end to end: the NumPy threefry against JAX bit for bit,
the lowered mask against `jax.random.bernoulli`, dropped elements as +0 whatever x holds, keys
through the Python API, `.npz` files, `stepc exec`, the emitted module, and `stepc run` (a fresh
key per step from `--seed`, one device or two; accuracy with dropout as the identity).

Oracles: `jax.random.bits` / `jax.random.bernoulli` of `jax.random.wrap_key_data(key,
impl="threefry2x32")` in JAX's default configuration, `jax.grad` of the same formula, PyTorch
training on the same batches with the masks JAX draws, NumPy logits.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stepc
from stepc.backends.jax import jax_function
from stepc.check.contract import random_inputs
from stepc.ir import threefry
from stepc.ir.diagnostics import StepcError
from stepc.ir.interpreter import run_function
from stepc.ir.parse import load_text, parse_text, verify
from stepc.ir.program import step_function
from stepc.passes.lower_to_stablehlo import lowered_clone
from stepc.tools import data as train_data
from stepc.tools import loop as train_loop
from stepc.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent
STEPC = [sys.executable, "-m", "stepc.tools.cli"]
KEYS = [(0, 0), (0, 42), (12345, 4000000000), (2**32 - 1, 2**32 - 1), (7, 3)]
SHAPES = [(), (1,), (7,), (3, 5), (2, 3, 5), (33, 17)]


def wrapped(key: Any) -> Any:
    return jax.random.wrap_key_data(jnp.asarray(key, dtype=jnp.uint32), impl="threefry2x32")


def jax_mask(key: Any, rate: float, shape: tuple[int, ...]) -> np.ndarray:
    return np.asarray(jax.random.bernoulli(wrapped(key), np.float32(1 - rate), shape))


def test_jax_default_is_the_partitionable_threefry() -> None:
    """The spec's mask is JAX's default configuration's; in JAX 0.10 that draws each element
    from its own counter (`jax_threefry_partitionable` on), which `ir/threefry.py` implements."""
    assert jax.config.jax_threefry_partitionable  # pyright: ignore[reportAttributeAccessIssue]


@pytest.mark.parametrize("x64", [False, True])
def test_numpy_threefry_is_jax_bit_for_bit(x64: bool) -> None:
    with jax.enable_x64(x64):
        for key in KEYS:
            k = np.array(key, dtype=np.uint32)
            for shape in SHAPES:
                bits = np.asarray(jax.random.bits(wrapped(k), shape, jnp.uint32))
                np.testing.assert_array_equal(threefry.random_bits(k, shape), bits, err_msg=f"{key} {shape}")
                for rate in (0.0, 0.1, 0.5, 0.9, 1.0, 1e-9, 1 - 1e-9, 1 / 3):
                    np.testing.assert_array_equal(threefry.keep_mask(k, rate, shape), jax_mask(k, rate, shape),
                                                  err_msg=f"{key} {shape} {rate}")  # fmt: skip


def one_dropout(shape: tuple[int, ...], rate: float, element: str = "f32") -> Any:
    """A one-op function (not a training step: no parameter, no loss), its result keyed `loss`."""
    t = f"tensor<{''.join(f'{d}x' for d in shape)}{element}>"
    module = parse_text(
        f"func.func @d(%x: {t}, %key: tensor<2xui32>) -> {t} {{\n"
        f"  %r = step.dropout %x, %key rate {rate!r} : ({t}, tensor<2xui32>) -> {t}\n"
        f"  func.return %r : {t}\n}}\n",
        "d.ir",
    )
    verify(module)
    return module


@pytest.mark.parametrize("shape", [(), (7,), (5, 7), (2, 3, 5)])
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 1.0])
def test_lowered_mask_and_scale_are_jax_bernoullis(shape: tuple[int, ...], rate: float) -> None:
    module = one_dropout(shape, rate)
    jf = jax_function(lowered_clone(module))
    for key in KEYS[:3]:
        k = np.array(key, dtype=np.uint32)
        ones = np.ones(shape, np.float32)
        for how, out in (("xla", jf({"x": ones, "key": k})["loss"]), ("interpreter", run_function(module, {"x": ones, "key": k})["loss"])):
            keep = jax_mask(k, rate, shape)
            np.testing.assert_array_equal(out != 0, keep, err_msg=how)
            if rate < 1:
                np.testing.assert_array_equal(out[keep], np.float32(1 / (1 - rate)), err_msg=how)


def test_dropped_elements_are_positive_zero_even_for_inf_and_nan() -> None:
    shape = (4, 8)
    module = one_dropout(shape, 0.5)
    x = np.full(shape, np.inf, np.float32)
    x[::2] = np.nan
    x[1::4] = -np.inf
    k = np.array([1, 2], np.uint32)
    keep = jax_mask(k, 0.5, shape)
    assert keep.any() and not keep.all()
    for how, out in (("xla", jax_function(lowered_clone(module))({"x": x, "key": k})["loss"]),
                     ("interpreter", run_function(module, {"x": x, "key": k})["loss"])):  # fmt: skip
        dropped = out[~keep]
        assert np.all(dropped == 0) and not np.any(np.signbit(dropped)), how
        np.testing.assert_array_equal(out[keep], x[keep] * np.float32(2), err_msg=how)  # inf stays inf, NaN NaN


PROGRAM = """func.func @drop(%w: tensor<4x3xf32> {step.param}, %x: tensor<8x4xf32>, %labels: tensor<8xi32>,
                 %key: tensor<2xui32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %h = step.matmul %x, %w : (tensor<8x4xf32>, tensor<4x3xf32>) -> tensor<8x3xf32>
  %d = step.dropout %h, %key rate 0.25 : (tensor<8x3xf32>, tensor<2xui32>) -> tensor<8x3xf32>
  %loss = step.cross_entropy %d, %labels : (tensor<8x3xf32>, tensor<8xi32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray], Any, np.ndarray]:
    """The program's file, inputs, and the jax.grad oracle's loss and gradient (f32)."""
    path = tmp_path_factory.mktemp("drop") / "drop.ir"
    path.write_text(PROGRAM)
    rng = np.random.default_rng(1)
    inputs = {"w": rng.standard_normal((4, 3)).astype(np.float32), "x": rng.standard_normal((8, 4)).astype(np.float32),
              "labels": rng.integers(0, 3, 8).astype(np.int32), "key": np.array([12345, 4000000000], np.uint32)}  # fmt: skip

    def loss(w: Any) -> Any:
        h = inputs["x"] @ w
        d = jnp.where(jax_mask(inputs["key"], 0.25, h.shape), h * np.float32(1 / 0.75), 0)
        return -jnp.mean(jax.nn.log_softmax(d)[jnp.arange(8), inputs["labels"]])

    value, grad = jax.value_and_grad(loss)(inputs["w"])
    return path, inputs, float(value), np.asarray(grad)


def test_key_through_the_python_api(small) -> None:  # type: ignore[no-untyped-def]
    path, inputs, loss, grad = small
    prog = stepc.compile(str(path))
    batch = {k: v for k, v in inputs.items() if k != "w"}
    ours, grads = prog.grad({"w": inputs["w"]}, batch)
    assert float(ours) == pytest.approx(loss, rel=1e-6)
    np.testing.assert_allclose(grads["w"], grad, rtol=1e-5, atol=1e-6)
    step = jax.jit(prog.step)
    params, _, _ = step({"w": inputs["w"]}, prog.init_state({"w": inputs["w"]}), {**batch, "key": jnp.asarray(inputs["key"])})
    np.testing.assert_allclose(params["w"], inputs["w"] - 0.1 * grad, rtol=1e-5, atol=1e-6)
    other, _ = prog.grad({"w": inputs["w"]}, {**batch, "key": np.array([1, 2], np.uint32)})
    assert float(other) != float(ours)  # the key is read
    with pytest.raises(StepcError, match="'key' has dtype int32, expected uint32"):
        prog.grad({"w": inputs["w"]}, {**batch, "key": inputs["key"].astype(np.int32)})


def test_key_through_npz_exec_and_the_emitted_module(small, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, inputs, loss, grad = small
    np.savez(tmp_path / "in.npz", **inputs)
    rc = main(["exec", str(path), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out.npz"),
               "--until", "seed-scalar-loss"])  # fmt: skip
    assert rc == 0
    with np.load(tmp_path / "out.npz") as out:
        assert float(out["loss"]) == pytest.approx(loss, rel=1e-6)
        np.testing.assert_allclose(out["grad.w"], grad, rtol=1e-5, atol=1e-6)
    assert main(["compile", str(path), "--emit", "jax-py", "-o", str(tmp_path / "drop_step.py")]) == 0
    spec = importlib.util.spec_from_file_location("drop_step", tmp_path / "drop_step.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    emitted_loss, emitted = module.grad({"w": inputs["w"]}, {k: v for k, v in inputs.items() if k != "w"})
    assert float(emitted_loss) == pytest.approx(loss, rel=1e-6)
    np.testing.assert_allclose(emitted["w"], grad, rtol=1e-5, atol=1e-6)


def test_contracts_draw_uniform_uint32_keys() -> None:
    fn = step_function(load_text(PROGRAM, "drop.ir"))
    keys = np.stack([random_inputs(fn, np.random.default_rng(s))["key"] for s in range(200)])
    assert keys.dtype == np.uint32 and keys.shape == (200, 2)
    assert len({tuple(k) for k in keys}) == 200 and keys.max() > 2**31  # the high bit too


DIGITS = """func.func @mlp(%w1: tensor<64x32xf32> {step.param}, %b1: tensor<32xf32> {step.param},
               %w2: tensor<32x10xf32> {step.param}, %b2: tensor<10xf32> {step.param},
               %x: tensor<32x64xf32>, %labels: tensor<32xi32>, %key: tensor<2xui32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1, momentum = 0.9>} {
  %h0 = step.matmul %x, %w1 : (tensor<32x64xf32>, tensor<64x32xf32>) -> tensor<32x32xf32>
  %h1 = step.add %h0, %b1 : (tensor<32x32xf32>, tensor<32xf32>) -> tensor<32x32xf32>
  %h = step.relu %h1 : tensor<32x32xf32>
  %hd = step.dropout %h, %key rate 0.2 : (tensor<32x32xf32>, tensor<2xui32>) -> tensor<32x32xf32>
  %l0 = step.matmul %hd, %w2 : (tensor<32x32xf32>, tensor<32x10xf32>) -> tensor<32x10xf32>
  %logits = step.add %l0, %b2 : (tensor<32x10xf32>, tensor<10xf32>) -> tensor<32x10xf32>
  %loss = step.cross_entropy %logits, %labels : (tensor<32x10xf32>, tensor<32xi32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}
"""
STEPS, SEED = 12, 5


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("digits_drop")
    program = base / "digits_drop.ir"
    program.write_text(DIGITS)
    out = base / "one"
    assert main(["run", str(program), "--steps", str(STEPS), "--seed", str(SEED), "--out", str(out), "--quiet"]) == 0
    return program, out


def test_run_feeds_a_fresh_key_per_step_as_pytorch_with_jaxs_masks(digits_run: tuple[Path, Path]) -> None:
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    program, out = digits_run
    module = load_text(DIGITS, str(program))
    spec = train_data.signature(module)
    assert [s.name for s in spec.keys] == ["key"]
    data = train_data.load_data(None, spec)
    init = train_data.default_init(module, seed=SEED)
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in init.items()}
    opt = torch.optim.SGD(list(p.values()), lr=0.1, momentum=0.9)
    stream = train_data.batches(data.train, spec.batch_size, seed=SEED)
    losses, masks = [], set()
    for step in range(STEPS):
        batch = next(stream)
        key = np.random.SeedSequence([SEED, 3, 0, step]).generate_state(2, np.uint32)  # docs/training.md
        keep = torch.from_numpy(jax_mask(key, 0.2, (32, 32)).copy())
        masks.add(keep.numpy().tobytes())
        h = torch.relu(torch.tensor(batch["x"], dtype=torch.float64) @ p["w1"] + p["b1"])
        logits = torch.where(keep, h / 0.8, 0.0) @ p["w2"] + p["b2"]
        loss = F.cross_entropy(logits, torch.tensor(batch["labels"]).long())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert len(masks) == STEPS  # a fresh mask each step
    summary = json.loads((out / "summary.json").read_text())
    np.testing.assert_allclose(summary["losses"], losses, rtol=2e-4, atol=2e-5)


def test_accuracy_evaluates_dropout_as_the_identity(digits_run: tuple[Path, Path]) -> None:
    program, out = digits_run
    module = load_text(DIGITS, str(program))
    cut = train_loop.logits_module(module)
    assert cut is not None
    assert not any(op.name == "step.dropout" for op in cut[0].walk())
    spec = train_data.signature(module)
    test = train_data.load_data(None, spec).test
    with np.load(out / "params.npz") as saved:
        p = {k: saved[k] for k in saved.files}
    logits_fn = train_loop.logits_function(cut[0])
    rows = {"x": test["x"][:32], "labels": test["labels"][:32]}
    expected = np.maximum(rows["x"] @ p["w1"] + p["b1"], 0) @ p["w2"] + p["b2"]  # model.eval(): no dropout
    np.testing.assert_allclose(np.asarray(logits_fn(p, rows)), expected, rtol=1e-5, atol=1e-5)
    logits = np.maximum(test["x"] @ p["w1"] + p["b1"], 0) @ p["w2"] + p["b2"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_correct"] == int(np.sum(np.argmax(logits, axis=1) == test["labels"]))


def test_two_devices_draw_the_keys_of_one(digits_run: tuple[Path, Path], tmp_path: Path) -> None:
    program, out = digits_run
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # stepc run sets it itself
    proc = subprocess.run(
        [*STEPC, "run", str(program), "--steps", str(STEPS), "--seed", str(SEED), "--devices", "2", "--out",
         str(tmp_path), "--quiet", "--no-check"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    two, one = (json.loads((d / "summary.json").read_text()) for d in (tmp_path, out))
    assert two["devices"] == 2
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5, atol=1e-6)
