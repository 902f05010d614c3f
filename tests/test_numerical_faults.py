"""Numerical faults: `stepc run` stops at a non-finite loss, names the step, and keeps the last
finite parameters (checked against a float64 NumPy simulation of the same SGD run)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest

from stepc.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent
LINREG = (ROOT / "examples" / "linreg.ir").read_text()
F32_MAX = float(np.finfo(np.float32).max)
LR = 1.0e4

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("stepc.tools.run_cmd") is None, reason="stepc run is not built yet"
)


def run_cli(argv: list[object]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def simulate(w: np.ndarray, b: np.ndarray, x: np.ndarray, t: np.ndarray, lr: float, steps: int):  # type: ignore[no-untyped-def]
    """Plain SGD on the MSE of x w + b, full batch, float64: (losses, params before each step)."""
    w, b = w.astype(np.float64), b.astype(np.float64)
    x, t = x.astype(np.float64), t.astype(np.float64)
    losses, params = [], []
    for _ in range(steps):
        with np.errstate(over="ignore", invalid="ignore"):
            residual = x @ w + b - t
            params.append((w.copy(), b.copy()))
            losses.append(float(np.mean(residual**2)))
            n = residual.size
            w = w - lr * (2.0 / n) * x.T @ residual
            b = b - lr * (2.0 / n) * residual.sum(axis=0)
    return losses, params


@pytest.fixture
def diverging_run(tmp_path: Path):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, 4)).astype(np.float32)
    t = rng.standard_normal((32, 1)).astype(np.float32)
    w = (0.1 * rng.standard_normal((4, 1))).astype(np.float32)
    b = np.zeros(1, np.float32)
    program = tmp_path / "linreg_huge_lr.ir"
    program.write_text(LINREG.replace("lr = 0.01", f"lr = {LR:.1e}"))
    np.savez(tmp_path / "data.npz", x=x, t=t)  # one batch of 32: every step sees all of it
    np.savez(tmp_path / "init.npz", w=w, b=b)
    out = tmp_path / "run"
    status, stdout, err = run_cli([
        "run", program, "--data", tmp_path / "data.npz", "--init", tmp_path / "init.npz",
        "--steps", "50", "--quiet", "--no-check", "--out", out,
    ])  # fmt: skip
    losses, params = simulate(w, b, x, t, LR, 50)
    return status, stdout, err, out, losses, params


def first_overflow(losses: list[float], factor: float) -> int:
    """The 1-based step whose float32 loss overflows when `factor * loss` exceeds float32's max."""
    return next(i + 1 for i, loss in enumerate(losses) if not np.isfinite(loss) or factor * loss > F32_MAX)


def test_non_finite_loss_stops_the_run_and_names_the_step(diverging_run) -> None:  # type: ignore[no-untyped-def]
    status, _, err, out, losses, _ = diverging_run
    assert status == 1, err
    assert "Traceback" not in err and "internal error" not in err
    # float32 overflows between the sum of squares (32 x the mean) and the mean itself
    earliest, latest = first_overflow(losses, 32.0), first_overflow(losses, 1.0)
    summary = json.loads((out / "summary.json").read_text())
    stopped_at = summary["steps"] + 1
    assert earliest <= stopped_at <= latest, (stopped_at, earliest, latest)
    assert 2 <= stopped_at < 50
    assert f"step {stopped_at}" in err


def test_keeps_the_last_finite_parameters(diverging_run) -> None:  # type: ignore[no-untyped-def]
    _status, _, _, out, losses, params = diverging_run
    summary = json.loads((out / "summary.json").read_text())
    finite_steps = summary["steps"]
    with np.load(out / "params.npz") as saved:
        w, b = saved["w"], saved["b"]
    assert np.all(np.isfinite(w)) and np.all(np.isfinite(b))
    # the parameters the failing step started from: after `finite_steps` updates
    w_oracle, b_oracle = params[finite_steps]
    np.testing.assert_allclose(w, w_oracle, rtol=2e-3)
    np.testing.assert_allclose(b, b_oracle, rtol=2e-3, atol=1e-6 * float(np.abs(w_oracle).max()))
    assert np.isfinite(summary["final_loss"])
    np.testing.assert_allclose(summary["final_loss"], losses[finite_steps - 1], rtol=2e-3)
    assert all(np.isfinite(v) for v in summary["losses"])


def test_a_healthy_run_is_not_stopped(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "data.npz", x=rng.standard_normal((32, 4)).astype(np.float32),
             t=rng.standard_normal((32, 1)).astype(np.float32))  # fmt: skip
    program = tmp_path / "linreg.ir"
    program.write_text(LINREG)
    status, _, err = run_cli(["run", program, "--data", tmp_path / "data.npz", "--steps", "5", "--quiet",
                              "--no-check", "--out", tmp_path / "run"])  # fmt: skip
    assert status == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 5 and not summary.get("stopped")
