"""`stepc run` end to end: training on the bundled digits and on a user's data, the files of
`--out`, data parallel over 8 forced host devices, a non-finite loss, and the benchmark's
`--quick` smoke run.

Oracles: PyTorch (the same steps with torch.optim.SGD on the same batches), NumPy (the test
accuracy recomputed from the written parameters, least squares for the regression).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stepc.ir.parse import load
from stepc.tools import data as train_data
from stepc.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent
MLP = str(ROOT / "examples" / "mlp_digits.ir")
LINREG = str(ROOT / "examples" / "linreg.ir")
STEPC = [sys.executable, "-m", "stepc.tools.cli"]


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """30 steps on digits from the default init, seed 3 (shared by several tests)."""
    out = tmp_path_factory.mktemp("short")
    rc = main(["run", MLP, "--steps", "30", "--seed", "3", "--out", str(out), "--quiet", "--no-check"])
    assert rc == 0
    return out


def test_run_writes_summary_params_and_plot(short_run):
    summary = summary_of(short_run)
    assert summary["steps"] == 30 and len(summary["losses"]) == 30
    assert summary["final_loss"] == summary["losses"][-1]
    assert summary["data"] == "digits" and summary["devices"] == 1 and summary["stopped"] is None
    assert summary["train_examples"] + summary["test_examples"] == 1797
    for key in ("accuracy", "train_accuracy", "seconds", "train_seconds", "compile_seconds"):
        assert key in summary
    with np.load(short_run / "params.npz") as saved:
        assert sorted(saved.files) == ["b1", "b2", "w1", "w2"]
    assert (short_run / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_run_matches_pytorch_on_the_same_batches(short_run):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    module = load(MLP)
    spec = train_data.signature(module)
    data = train_data.load_data(None, spec)
    init = train_data.default_init(module, seed=3)
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in init.items()}
    opt = torch.optim.SGD(
        [{"params": [p["w1"], p["w2"]]}, {"params": [p["b1"], p["b2"]], "weight_decay": 0.0}],
        lr=0.1, momentum=0.9, weight_decay=5e-4,
    )
    stream = train_data.batches(data.train, spec.batch_size, seed=3)
    losses = []
    for _ in range(30):
        batch = next(stream)
        x = torch.tensor(batch["x"], dtype=torch.float64)
        logits = torch.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
        loss = F.cross_entropy(logits, torch.tensor(batch["labels"]).long())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    summary = summary_of(short_run)
    np.testing.assert_allclose(summary["losses"], losses, rtol=2e-4, atol=2e-5)
    with np.load(short_run / "params.npz") as saved:
        for k in p:
            np.testing.assert_allclose(saved[k], p[k].detach().numpy(), rtol=1e-3, atol=2e-4)


def test_reported_accuracy_is_the_test_sets(short_run):
    spec = train_data.signature(load(MLP))
    test = train_data.load_data(None, spec).test
    with np.load(short_run / "params.npz") as p:
        logits = np.maximum(test["x"] @ p["w1"] + p["b1"], 0) @ p["w2"] + p["b2"]
    correct = int(np.sum(np.argmax(logits, axis=1) == test["labels"]))
    summary = summary_of(short_run)
    assert summary["test_correct"] == correct
    assert summary["accuracy"] == pytest.approx(correct / len(test["labels"]), abs=1e-6)


def test_default_run_reaches_95_percent_on_held_out_digits(tmp_path, capsys):
    rc = main(["run", MLP, "--out", str(tmp_path), "--quiet", "--no-check"])
    assert rc == 0
    summary = summary_of(tmp_path)
    assert summary["accuracy"] >= 0.95
    assert "test accuracy" in capsys.readouterr().out


def test_eight_devices_give_the_losses_of_one(short_run, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # stepc run sets it itself
    proc = subprocess.run(
        [*STEPC, "run", MLP, "--steps", "30", "--seed", "3", "--devices", "8", "--out", str(tmp_path), "--quiet",
         "--no-check"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    eight, one = summary_of(tmp_path), summary_of(short_run)
    assert eight["devices"] == 8
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    with np.load(tmp_path / "params.npz") as a, np.load(short_run / "params.npz") as b:
        for k in a.files:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_too_many_devices_is_a_clear_error(capsys):
    rc = main(["run", MLP, "--steps", "1", "--devices", "4096", "--quiet", "--no-check"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "--devices 4096" in err and "XLA_FLAGS=--xla_force_host_platform_device_count=4096" in err
    assert "Traceback" not in err


def test_a_non_finite_loss_stops_and_keeps_the_last_finite_params(tmp_path, capsys):
    program = tmp_path / "diverge.ir"
    program.write_text(Path(MLP).read_text().replace("lr = 0.1,", "lr = 1.0e30,"))
    out = tmp_path / "out"
    rc = main(["run", str(program), "--steps", "50", "--out", str(out), "--quiet", "--no-check"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "training stopped" in err and "at step" in err
    summary = summary_of(out)
    assert summary["stopped"] and f"at step {summary['steps'] + 1}" in summary["stopped"]
    assert all(np.isfinite(summary["losses"]))
    with np.load(out / "params.npz") as saved:
        assert all(np.all(np.isfinite(saved[k])) for k in saved.files)


def test_user_data_regression_finds_least_squares(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((320, 4))
    t = x @ np.array([[1.0], [-2.0], [0.5], [3.0]]) + 0.7 + 0.01 * rng.standard_normal((320, 1))
    data = tmp_path / "lin.npz"
    np.savez(data, x=x.astype(np.float32), t=t.astype(np.float32))
    out = tmp_path / "out"
    rc = main(["run", LINREG, "--data", str(data), "--epochs", "150", "--out", str(out), "--quiet", "--no-check"])
    assert rc == 0
    summary = summary_of(out)
    assert "accuracy" not in summary and summary["data"] == "lin.npz" and summary["test_examples"] == 64
    train_rows = train_data.load_data(str(data), train_data.signature(load(LINREG))).train
    design = np.hstack([train_rows["x"], np.ones((len(train_rows["x"]), 1))]).astype(np.float64)
    solution, *_ = np.linalg.lstsq(design, train_rows["t"].astype(np.float64), rcond=None)
    with np.load(out / "params.npz") as p:
        np.testing.assert_allclose(p["w"][:, 0], solution[:4, 0], atol=0.02)
        np.testing.assert_allclose(p["b"], solution[4], atol=0.02)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--data", "/nonexistent/d.npz"], "no such file"),
        (["--steps", "3", "--epochs", "1"], "not both"),
        (["--init", "/nonexistent/i.npz"], "no such file"),
    ],
)
def test_user_errors_are_messages_not_tracebacks(argv, message, capsys):
    rc = main(["run", MLP, "--quiet", "--no-check", *argv])
    assert rc == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_benchmark_quick_smoke(tmp_path):
    result = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--no-check", "--models", "softmax784",
         "--scaling", "30", "--json", str(result)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for heading in ("Step time", "XLA cost", "Compile time by stage", "Compile-time scaling"):
        assert heading in proc.stdout
    numbers = json.loads(result.read_text())
    ratios = numbers["step_time"]["softmax784"]["ratio_vs_jax"]
    assert set(ratios) == {"stepc", "jax", "optax", "torch"} and ratios["jax"] == 1.0
    assert numbers["xla"]["softmax784"]["stepc"]["flops"] > 0


F64_LINREG = """func.func @lin(%w: tensor<4x1xf64> {step.param}, %x: tensor<32x4xf64>, %t: tensor<32x1xf64>,
                %lr: tensor<f64> {step.hyper = "lr"}) -> tensor<f64>
    attributes {step.sgd = #step.sgd<lr = 0.05>} {
  %y = step.matmul %x, %w : (tensor<32x4xf64>, tensor<4x1xf64>) -> tensor<32x1xf64>
  %loss = step.mse %y, %t : (tensor<32x1xf64>, tensor<32x1xf64>) -> tensor<f64>
  func.return %loss : tensor<f64>
}
"""


def test_a_float64_program_trains_in_float64(tmp_path: Path) -> None:
    """A float64 program (with a float64 run-time lr fed by a schedule) trains in float64: the
    parameters stay float64 on the device and equal NumPy's SGD on the same data (one batch,
    the whole set) to float64 rounding."""
    program = tmp_path / "lin64.ir"
    program.write_text(F64_LINREG)
    rng = np.random.default_rng(0)
    x, t, w0 = rng.standard_normal((32, 4)), rng.standard_normal((32, 1)), rng.standard_normal((4, 1))
    np.savez(tmp_path / "d.npz", x=x, t=t)
    np.savez(tmp_path / "init.npz", w=w0)
    out = tmp_path / "run"
    argv = ["run", str(program), "--data", str(tmp_path / "d.npz"), "--init", str(tmp_path / "init.npz"),
            "--steps", "5", "--lr-schedule", "step:step_size=2,gamma=0.5", "--no-check", "--quiet", "--out", str(out)]
    import jax

    x64_before = jax.config.read("jax_enable_x64")
    assert main(argv) == 0
    assert jax.config.read("jax_enable_x64") == x64_before  # put back for the rest of the process
    with np.load(out / "params.npz") as params:
        w = params["w"]
    assert w.dtype == np.float64
    expected = w0.copy()
    for step in range(5):
        lr = 0.05 * 0.5 ** (step // 2)
        grad = 2.0 / 32 * x.T @ (x @ expected - t)  # d mean((xw - t)^2) / dw, the batch in any row order
        expected = expected - lr * grad
    np.testing.assert_allclose(w, expected, rtol=1e-12, atol=1e-14)
