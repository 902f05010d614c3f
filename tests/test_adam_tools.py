"""The entry points that once knew only fuse-sgd, with Adam: `stepc exec --steps`, its `--until`
message, `Program.step`'s message, and `stepc run` (each against torch.optim.Adam(W) where it
computes something)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import stepc
from stepc.ir.diagnostics import StepcError
from stepc.tools.cli import main

PROGRAM = """\
func.func @linreg(%w: tensor<4x2xf64> {step.param}, %b: tensor<2xf64> {step.param = #step.adam<weight_decay = 0.0>},
                  %x: tensor<16x4xf64>, %t: tensor<16x2xf64>) -> tensor<f64>
    attributes {step.adam = #step.adam<lr = 0.05, weight_decay = 0.1, amsgrad = true>} {
  %xw = step.matmul %x, %w : (tensor<16x4xf64>, tensor<4x2xf64>) -> tensor<16x2xf64>
  %y = step.add %xw, %b : (tensor<16x2xf64>, tensor<2xf64>) -> tensor<16x2xf64>
  %loss = step.mse %y, %t : (tensor<16x2xf64>, tensor<16x2xf64>) -> tensor<f64>
  func.return %loss : tensor<f64>
}
"""


def torch_adam(params: dict, batch: dict, steps: int) -> tuple[dict, torch.optim.Optimizer]:  # type: ignore[type-arg]
    p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    opt = torch.optim.Adam([{"params": [p["w"]]}, {"params": [p["b"]], "weight_decay": 0.0}],
                           lr=0.05, weight_decay=0.1, amsgrad=True, foreach=False)  # fmt: skip
    x, t = torch.tensor(batch["x"]), torch.tensor(batch["t"])
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(x @ p["w"] + p["b"], t).backward()
        opt.step()
    return p, opt


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path, dict, dict]:  # type: ignore[type-arg]
    source = tmp_path / "adam.ir"
    source.write_text(PROGRAM)
    rng = np.random.default_rng(3)
    params = {"w": rng.standard_normal((4, 2)), "b": rng.standard_normal(2)}
    batch = {"x": rng.standard_normal((16, 4)), "t": rng.standard_normal((16, 2))}
    np.savez(tmp_path / "in.npz", **params, **batch)
    return source, tmp_path / "in.npz", params, batch


def test_exec_steps_runs_adam_as_torch(inputs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source, npz, params, batch = inputs
    assert main(["exec", str(source), "--inputs", str(npz), "-o", str(tmp_path / "out.npz"), "--steps", "4"]) == 0
    out = np.load(tmp_path / "out.npz")
    p, opt = torch_adam(params, batch, 4)
    worst = 0.0
    for k, v in p.items():
        state = opt.state[v]
        expected = {k: v.detach(), f"exp_avg.{k}": state["exp_avg"], f"exp_avg_sq.{k}": state["exp_avg_sq"],
                    f"max_exp_avg_sq.{k}": state["max_exp_avg_sq"]}  # fmt: skip
        for key, want in expected.items():
            want_np = want.numpy()
            worst = max(worst, float(np.max(np.abs(out[key] - want_np)) / np.max(np.abs(want_np))))
        assert float(out["step"]) == float(state["step"]) == 4.0
    assert worst <= 1e-12, worst


def test_exec_steps_needs_the_optimizer_pass(inputs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source, npz, _, _ = inputs
    result = subprocess.run(
        [sys.executable, "-m", "stepc.tools.cli", "exec", str(source), "--inputs", str(npz), "-o", str(tmp_path / "o.npz"),
         "--steps", "2", "--until", "seed-scalar-loss"], capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1
    assert "(through fuse-adam, the optimizer's pass), not --until seed-scalar-loss" in result.stderr


def test_program_step_names_fuse_adam() -> None:
    prog = stepc.compile_text(PROGRAM, until="seed-scalar-loss", check=False)
    with pytest.raises(StepcError, match=r"Program\.step needs the optimizer.s pass fuse-adam"):
        prog.step({}, {}, {})


def test_run_trains_with_adam(tmp_path: Path) -> None:
    f32 = tmp_path / "adam32.ir"
    f32.write_text(PROGRAM.replace("f64", "f32"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, t=(x @ rng.standard_normal((4, 2))).astype(np.float32))
    out = tmp_path / "run"
    assert main(["run", str(f32), "--data", str(tmp_path / "data.npz"), "--steps", "40", "--quiet", "--out", str(out)]) == 0
    import json

    losses = json.loads((out / "summary.json").read_text())["losses"]
    assert len(losses) == 40 and losses[-1] < 0.5 * losses[0]
