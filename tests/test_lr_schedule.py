"""`stepc run --lr-schedule`: the host's learning rates against torch.optim.lr_scheduler's, and a
run fed them against torch's AdamW driven by the same scheduler on the same batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stepc.ir.diagnostics import StepcError
from stepc.ir.parse import load
from stepc.tools import data as train_data
from stepc.tools.cli import main
from stepc.tools.schedule import parse_schedule

STEPS = 40


def torch_rates(make, lr: float, steps: int = STEPS) -> list[float]:  # type: ignore[no-untyped-def]
    """The lr of each of `steps` optimizer steps under a torch scheduler (stepped after each)."""
    w = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([w], lr=lr)
    scheduler = make(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if scheduler is not None:
            scheduler.step()
    return out


def sequential(warmup: int, total: int, start: float, low: float):  # type: ignore[no-untyped-def]
    def make(opt):  # type: ignore[no-untyped-def]
        linear = torch.optim.lr_scheduler.LinearLR(opt, start_factor=start, end_factor=1.0, total_iters=warmup)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=low)
        return torch.optim.lr_scheduler.SequentialLR(opt, [linear, cosine], milestones=[warmup])

    return make


CASES = [
    ("constant", 0.1, lambda opt: None),
    ("constant:lr=0.03", 0.03, lambda opt: None),
    ("step:step_size=7,gamma=0.5", 0.2, lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)),
    ("step:step_size=1", 0.2, lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1)),
    ("cosine", 0.1, lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS)),
    ("cosine:total=25,min_lr=0.001", 0.1, lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=25, eta_min=0.001)),
    ("cosine:warmup=5,total=30", 0.1, sequential(5, 30, 1.0 / 3.0, 0.0)),
    ("cosine:warmup=8,total=40,start_factor=0.01,min_lr=1e-4,lr=0.5", 0.5, sequential(8, 40, 0.01, 1e-4)),
]


@pytest.mark.parametrize("spec, lr, make", CASES, ids=[c[0] for c in CASES])
def test_rates_match_torch_schedulers(spec: str, lr: float, make) -> None:  # type: ignore[no-untyped-def]
    schedule = parse_schedule(spec, lr if "lr=" not in spec else 0.1, STEPS)
    ours = [schedule(t) for t in range(STEPS)]
    theirs = torch_rates(make, lr)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("linear", "unknown schedule 'linear'"),
        ("step", "step_size=N is required"),
        ("step:step_size=2.5", "step_size must be an integer of at least 1"),
        ("cosine:warmup=10,total=10", "total (10) must exceed warmup (10)"),
        ("cosine:gamma=0.1", "'gamma=0.1' is not KEY=VALUE with a key of cosine"),
        ("constant:lr=x", "lr='x' is not a number"),
        ("cosine:start_factor=0", "start_factor must be in (0, 1]"),
    ],
)
def test_schedule_errors(spec: str, message: str) -> None:
    with pytest.raises(StepcError) as info:
        parse_schedule(spec, 0.1, STEPS)
    assert message in str(info.value)


def test_no_base_rate_is_an_error() -> None:
    with pytest.raises(StepcError, match="no base learning rate: give lr=BASE"):
        parse_schedule("constant", None, STEPS)


PROGRAM = """\
func.func @linreg(%w: tensor<4x2xf32> {step.param}, %b: tensor<2xf32> {step.param},
                  %x: tensor<16x4xf32>, %t: tensor<16x2xf32>, %lr: tensor<f32> {step.hyper = "lr"}) -> tensor<f32>
    attributes {step.adamw = #step.adamw<lr = 0.05, weight_decay = 0.1>} {
  %xw = step.matmul %x, %w : (tensor<16x4xf32>, tensor<4x2xf32>) -> tensor<16x2xf32>
  %y = step.add %xw, %b : (tensor<16x2xf32>, tensor<2xf32>) -> tensor<16x2xf32>
  %loss = step.mse %y, %t : (tensor<16x2xf32>, tensor<16x2xf32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}
"""


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    program = tmp_path / "linreg.ir"
    program.write_text(PROGRAM)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4))
    np.savez(tmp_path / "data.npz", x=x, t=x @ rng.standard_normal((4, 2)) + 0.1 * rng.standard_normal((64, 2)))
    return program, tmp_path / "data.npz"


def test_run_feeds_the_schedule_as_torch_adamw_with_its_scheduler(files: tuple[Path, Path], tmp_path: Path) -> None:
    program, data_file = files
    out = tmp_path / "run"
    steps = 12
    rc = main(["run", str(program), "--data", str(data_file), "--steps", str(steps), "--seed", "1", "--quiet",
               "--lr-schedule", "cosine:warmup=3,total=12,min_lr=0.001", "--out", str(out)])  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lr_schedule"] == "cosine:warmup=3,total=12,min_lr=0.001"

    module = load(str(program))
    spec = train_data.signature(module)
    data = train_data.load_data(str(data_file), spec, 1)
    init = train_data.default_init(module, seed=1)
    p = {k: torch.tensor(v, dtype=torch.float32, requires_grad=True) for k, v in init.items()}
    opt = torch.optim.AdamW(list(p.values()), lr=0.05, weight_decay=0.1, foreach=False)
    scheduler = sequential(3, 12, 1.0 / 3.0, 0.001)(opt)
    stream = train_data.batches(data.train, spec.batch_size, seed=1)
    losses = []
    for _ in range(steps):
        batch = next(stream)
        x, t = torch.tensor(batch["x"], dtype=torch.float32), torch.tensor(batch["t"], dtype=torch.float32)
        loss = torch.nn.functional.mse_loss(x @ p["w"] + p["b"], t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        scheduler.step()
        losses.append(loss.item())
    np.testing.assert_allclose(summary["losses"], losses, rtol=1e-5)
    with np.load(out / "params.npz") as saved:
        for k, v in p.items():  # f32 (stepc run trains f32 programs), XLA's sums against torch's
            np.testing.assert_allclose(saved[k], v.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_schedule_without_a_run_time_lr_says_how_to_add_one(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    program = tmp_path / "fixed.ir"
    program.write_text(PROGRAM.replace(', %lr: tensor<f32> {step.hyper = "lr"}', ""))
    rc = main(["run", str(program), "--steps", "2", "--quiet", "--lr-schedule", "constant", "--data", str(files[1])])
    err = capsys.readouterr().err
    assert rc == 1
    assert "fixed.ir:1:1: error: --lr-schedule 'constant' feeds a run-time lr, which @linreg has not" in err
    assert '%lr: tensor<f64> {step.hyper = "lr"}' in err


def test_run_time_lr_without_a_schedule_is_an_error(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    program, data_file = files
    rc = main(["run", str(program), "--data", str(data_file), "--steps", "2", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "linreg.ir:2:63: error: %lr gives the learning rate at run time: give --lr-schedule" in err
