"""`stepc run` survives faults: a run killed with SIGKILL at any moment (a checkpoint write
included) or stopped by Ctrl-C, then resumed with `--resume DIR`, ends with exactly the
parameters of a run never stopped.

The oracle is the uninterrupted run itself: the same program, data, seed and options trained
in one go; equality is bit for bit (`np.array_equal`), of the parameters and of every loss.
The programs hold every kind of state a run carries: momentum buffers (SGD) or Adam's moments
and step count, dropout keys drawn per step, a learning-rate schedule, epochs reshuffled, and
gradient accumulation.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stepc.tools import loop as train_loop
from stepc.tools.checkpoint import CHECKPOINT, RECORD, TEST_DELAY
from stepc.tools.cli import main

# A small regression with dropout, momentum and a run-time learning rate.
DROPOUT_MLP = """\
func.func @drop(%w1: tensor<4x8xf32> {step.param}, %b1: tensor<8xf32> {step.param},
                %w2: tensor<8x1xf32> {step.param}, %x: tensor<16x4xf32>, %t: tensor<16x1xf32>,
                %key: tensor<2xui32>, %lr: tensor<f32> {step.hyper = "lr"}) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.05, momentum = 0.9>} {
  %h0 = step.matmul %x, %w1 : (tensor<16x4xf32>, tensor<4x8xf32>) -> tensor<16x8xf32>
  %h1 = step.add %h0, %b1 : (tensor<16x8xf32>, tensor<8xf32>) -> tensor<16x8xf32>
  %h = step.tanh %h1 : tensor<16x8xf32>
  %d = step.dropout %h, %key rate 0.25 : (tensor<16x8xf32>, tensor<2xui32>) -> tensor<16x8xf32>
  %y = step.matmul %d, %w2 : (tensor<16x8xf32>, tensor<8x1xf32>) -> tensor<16x1xf32>
  %loss = step.mse %y, %t : (tensor<16x1xf32>, tensor<16x1xf32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}
"""
# Adam with gradient accumulation (4 micro-batches a step) and dropout.
ADAM_ACCUMULATED = (
    DROPOUT_MLP.replace("step.sgd = #step.sgd<lr = 0.05, momentum = 0.9>", "step.adam = #step.adam<lr = 0.01>, step.accumulate = 4 : i64")
    .replace(', %lr: tensor<f32> {step.hyper = "lr"}', "")
)
STEPS = 300
OPTIONS = ["--steps", STEPS, "--seed", 7, "--quiet", "--no-check", "--lr-schedule", "cosine:warmup=20"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("resume")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 4)).astype(np.float32)  # 12 batches an epoch: 25 epochs, reshuffled
    np.savez(d / "data.npz", x=x, t=np.sin(x @ rng.standard_normal((4, 1))).astype(np.float32))
    (d / "drop.ir").write_text(DROPOUT_MLP)
    (d / "adam.ir").write_text(ADAM_ACCUMULATED)
    return d


def run_cli(argv: list[object]) -> int:
    return main([str(a) for a in argv])


def params_of(out: Path) -> dict[str, np.ndarray]:
    with np.load(out / "params.npz") as saved:
        return {k: saved[k] for k in saved.files}


def assert_same_run(resumed: Path, reference: Path) -> None:
    got, want = params_of(resumed), params_of(reference)
    assert sorted(got) == sorted(want)
    for key in want:
        assert np.array_equal(got[key], want[key]), key
    got_summary = json.loads((resumed / "summary.json").read_text())
    want_summary = json.loads((reference / "summary.json").read_text())
    assert got_summary["losses"] == want_summary["losses"]
    assert got_summary["steps"] == want_summary["steps"] == STEPS


@pytest.fixture(scope="module")
def reference(files: Path) -> Path:
    """The run never stopped (in this process)."""
    out = files / "reference"
    assert run_cli(["run", files / "drop.ir", "--data", files / "data.npz", *OPTIONS, "--out", out]) == 0
    return out


def stepc_process(argv: list[object], **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "stepc.tools.cli", *map(str, argv)],
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def checkpoint_step(out: Path) -> int:
    """The step of the checkpoint in `out` (-1 when there is none yet)."""
    try:
        with np.load(out / CHECKPOINT) as saved:
            return int(json.loads(bytes(saved["checkpoint.json"]))["step"])
    except FileNotFoundError:
        return -1


def wait_for(condition, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_parameters(files: Path, reference: Path) -> None:
    """Killed four times, each time resumed: at a random moment of start-up, twice at random
    moments of training (checkpoints every 7 steps), and once inside a checkpoint write (the
    temporary written, not yet renamed); then resumed to the end."""
    rng = random.Random(17)
    out = files / "killed"
    first = ["run", files / "drop.ir", "--data", files / "data.npz", *OPTIONS, "--out", out, "--checkpoint-every", 7]
    resume = ["run", "--resume", out, "--quiet"]
    started = time.monotonic()

    # 1. during start-up (imports, compiling), or the first steps
    process = stepc_process(first)
    time.sleep(rng.uniform(0.5, 3.0))
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL  # run.json may not be written yet: then it starts afresh

    # 2. and 3. at random moments of training, past a checkpoint (slowed down: each checkpoint
    # write sleeps, so that the 300 steps take a few seconds)
    for _ in range(2):
        process = stepc_process(resume if (out / RECORD).exists() else first, **{TEST_DELAY: "0.02"})
        before = checkpoint_step(out)
        wait_for(lambda before=before: checkpoint_step(out) > before)  # type: ignore[misc]
        time.sleep(rng.uniform(0.0, 0.3))
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL, process.stderr.read() if process.stderr else ""
    killed_at = checkpoint_step(out)
    assert 0 < killed_at < STEPS

    # 4. inside a checkpoint write: the temporary exists, the rename has not happened
    process = stepc_process(resume, **{TEST_DELAY: "30"})
    wait_for(lambda: any(out.glob(f".{CHECKPOINT}.*.tmp")))
    time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert any(out.glob(f".{CHECKPOINT}.*.tmp"))  # the half-made checkpoint, never renamed into place
    assert checkpoint_step(out) == killed_at  # the previous checkpoint, whole

    # the last resume runs to the end
    done = subprocess.run([sys.executable, "-m", "stepc.tools.cli", *map(str, resume)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not any(out.glob(f".{CHECKPOINT}.*.tmp"))  # the killed write's temporary is cleaned up
    assert checkpoint_step(out) == STEPS
    assert_same_run(out, reference)
    assert time.monotonic() - started < 50


def test_ctrl_c_writes_a_checkpoint_and_resume_continues(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (here a stop request after step 13, as the SIGINT handler makes it) writes a
    checkpoint of the last whole step and exits 130; the resumed run equals one never stopped.
    Adam (moments and step count) with accumulation over 4 micro-batches, without
    --checkpoint-every: the Ctrl-C checkpoint is the only one."""
    program, data = files / "adam.ir", files / "data.npz"
    options = ["--steps", 40, "--seed", 3, "--quiet", "--no-check"]
    whole = files / "adam-whole"
    assert run_cli(["run", program, "--data", data, *options, "--out", whole]) == 0

    stopped = files / "adam-stopped"
    original = train_loop.StopRequests.__call__
    steps_seen: list[int] = []

    def stop_after_13(self: train_loop.StopRequests) -> bool:
        steps_seen.append(1)
        return len(steps_seen) > 13 or original(self)

    monkeypatch.setattr(train_loop.StopRequests, "__call__", stop_after_13)
    assert run_cli(["run", program, "--data", data, *options, "--out", stopped]) == 130
    monkeypatch.undo()
    assert checkpoint_step(stopped) == 13
    assert not (stopped / "params.npz").exists()
    assert run_cli(["run", "--resume", stopped, "--quiet"]) == 0
    got, want = params_of(stopped), params_of(whole)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    summary = json.loads((stopped / "summary.json").read_text())
    assert summary["losses"] == json.loads((whole / "summary.json").read_text())["losses"]
    assert summary["resumed_after_step"] == 13 and summary["accumulate"] == 4


def test_real_sigint_stops_between_steps_with_a_checkpoint(files: Path, reference: Path) -> None:
    out = files / "sigint"
    argv = ["run", files / "drop.ir", "--data", files / "data.npz", *OPTIONS, "--out", out, "--checkpoint-every", 50]
    process = stepc_process(argv, **{TEST_DELAY: "0.3"})
    wait_for(lambda: checkpoint_step(out) >= 50)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err.decode()
    text = err.decode()
    assert "checkpoint written to" in text and f"stepc run --resume {out}" in text and "Traceback" not in text
    assert 50 <= checkpoint_step(out) < STEPS
    assert run_cli(["run", "--resume", out, "--quiet"]) == 0
    assert_same_run(out, reference)


def test_resume_of_a_finished_run_writes_the_same_outputs(files: Path, reference: Path) -> None:
    out = files / "finished"
    argv = ["run", files / "drop.ir", "--data", files / "data.npz", *OPTIONS, "--out", out, "--checkpoint-every", 100]
    assert run_cli(argv) == 0
    assert checkpoint_step(out) == STEPS
    (out / "params.npz").unlink()
    assert run_cli(["run", "--resume", out, "--quiet"]) == 0
    assert_same_run(out, reference)


@pytest.mark.parametrize(("extra", "message"), [
    (["--seed", "3"], "leave out --seed"),
    (["STEP.ir"], "leave out STEP.ir"),
    (["--steps", "5", "--devices", "2"], "leave out --steps, --devices"),
])  # fmt: skip
def test_resume_refuses_options_it_would_ignore(files: Path, reference: Path, extra: list[str], message: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    argv = ["run", "--resume", reference, *extra]
    if extra == ["STEP.ir"]:
        argv = ["run", files / "drop.ir", "--resume", reference]
    assert run_cli(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "run.json" in err and "Traceback" not in err


def test_resume_refuses_changed_data(files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data.npz"
    data.write_bytes((files / "data.npz").read_bytes())
    out = tmp_path / "out"
    assert run_cli(["run", files / "drop.ir", "--data", data, "--steps", 3, "--quiet", "--no-check",
                    "--lr-schedule", "constant", "--out", out]) == 0
    with np.load(data) as arrays:
        np.savez(data, x=arrays["x"] + 1, t=arrays["t"])
    assert run_cli(["run", "--resume", out]) == 1
    err = capsys.readouterr().err
    assert "changed since the run started" in err and str(data) in err


def test_resume_needs_a_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["run", "--resume", tmp_path]) == 1
    assert f"no {RECORD} there" in capsys.readouterr().err
    assert run_cli(["run"]) == 1
    assert "give STEP.ir" in capsys.readouterr().err
