"""`stepc run` past one device: `--shard fsdp` (parameters and optimizer state sharded over the
devices) and multi-process jobs (`--coordinator --num-processes --process-id`, JAX's
`jax.distributed` with gloo collectives on the CPU), against the one-device run of the same
program, data and seed (its losses and parameters are the oracle: the sharded runs compute the
same sums in other orders, so they agree within rounding, 1e-5 relative).

Each run is its own process: a device count (XLA_FLAGS) and a multi-process job are fixed when
JAX starts its backends.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
MLP = ROOT / "examples" / "mlp_digits.ir"
STEPS = ["--steps", "6", "--seed", "2", "--no-check", "--quiet"]


def adam_program(tmp: Path) -> Path:
    """mlp_digits with AdamW: optimizer state (two moments per parameter and a step count) to shard."""
    text = MLP.read_text()
    text = text.replace("step.sgd = #step.sgd<lr = 0.1, momentum = 0.9, weight_decay = 5.0e-4>",
                        "step.adamw = #step.adamw<lr = 1.0e-2>")  # fmt: skip
    text = text.replace("{step.param = #step.sgd<weight_decay = 0.0>}", "{step.param = #step.adamw<weight_decay = 0.0>}")
    assert "step.adamw = " in text and "#step.sgd" not in text
    path = tmp / "mlp_adamw.ir"
    path.write_text(text)
    return path


def stepc(*args: object, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "stepc.tools.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})  # fmt: skip


def finish(process: subprocess.Popen[str], expect: int = 0) -> str:
    out, err = process.communicate(timeout=600)
    assert process.returncode == expect, err[-3000:]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


def outputs(directory: Path) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    summary = json.loads((directory / "summary.json").read_text())
    with np.load(directory / "params.npz") as npz:
        return summary, {k: npz[k] for k in npz.files}


def assert_same_run(got: Path, want: Path) -> None:
    summary, params = outputs(got)
    reference, reference_params = outputs(want)
    np.testing.assert_allclose(summary["losses"], reference["losses"], rtol=1e-5)
    assert set(params) == set(reference_params)
    for k, v in reference_params.items():
        assert np.max(np.abs(params[k] - v)) <= 1e-5 * np.max(np.abs(v)), k


@pytest.fixture(scope="module")
def one_device(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The oracle runs: each program on one device, in one process."""
    tmp = tmp_path_factory.mktemp("one")
    runs = {"sgd": (MLP, tmp / "sgd"), "adamw": (adam_program(tmp), tmp / "adamw")}
    procs = [stepc("run", program, *STEPS, "--out", out) for program, out in runs.values()]
    for p in procs:
        finish(p)
    return {name: out for name, (_, out) in runs.items()} | {"adamw_program": runs["adamw"][0]}


def test_fsdp_on_four_devices_equals_one_device_and_its_state_survives_a_checkpoint(one_device, tmp_path):
    """AdamW, parameters and moments sharded over 4 devices: stopped after step 3 (a stop request,
    as Ctrl-C makes it: a checkpoint of step 3), then `--resume` (the run's own --devices 4
    --shard fsdp, the state read back from the checkpoint and sharded again): the losses and
    parameters of the one-device run."""
    program = one_device["adamw_program"]
    stopped = tmp_path / "stopped"
    driver = (
        "import sys\n"
        "from stepc.tools import loop\n"
        "calls = []\n"
        "original = loop.StopRequests.__call__\n"
        "def stop_after_3(self):\n"
        "    calls.append(1)\n"
        "    return len(calls) > 3 or original(self)\n"
        "loop.StopRequests.__call__ = stop_after_3\n"
        "from stepc.tools.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    run = subprocess.run([sys.executable, "-c", driver, "run", str(program), *STEPS, "--devices", "4", "--shard", "fsdp",
                          "--out", str(stopped)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 130, run.stderr[-3000:]
    assert (stopped / "checkpoint.npz").exists() and not (stopped / "summary.json").exists()
    finish(stepc("run", "--resume", stopped, "--quiet"))
    summary, _ = outputs(stopped)
    assert summary["resumed_after_step"] == 3
    assert summary["devices"] == 4 and summary["shard"] == "fsdp" and summary["sharded_tensors"] == 3
    assert_same_run(stopped, one_device["adamw"])


@pytest.mark.parametrize(("processes", "extra"), [(2, []), (4, ["--shard", "fsdp"])])
def test_multi_process_run_equals_one_process(one_device, tmp_path, processes, extra):
    """N processes of one CPU device each, gloo collectives: each process feeds its rows of every
    batch; process 0 writes --out; the losses and parameters equal one process's."""
    port = free_port()
    out = tmp_path / "job"
    procs = [
        stepc("run", MLP, *STEPS, *extra, "--out", out, "--coordinator", f"localhost:{port}",
              "--num-processes", processes, "--process-id", i, "--checkpoint-every", 3)
        for i in range(processes)
    ]
    printed = [finish(p) for p in procs]
    assert all("final loss" in text for text in printed)
    assert sum("wrote" in text for text in printed) == 1  # process 0 alone writes
    summary, _ = outputs(out)
    assert summary["processes"] == processes and summary["devices"] == processes
    assert_same_run(out, one_device["sgd"])


def test_multi_process_options_are_checked_before_starting(tmp_path):
    p = stepc("run", MLP, *STEPS, "--coordinator", "nowhere", "--num-processes", 2, "--process-id", 0)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1 and "--coordinator must be HOST:PORT" in err
    p = stepc("run", MLP, *STEPS, "--coordinator", "localhost:1234", "--num-processes", 2, "--process-id", 2)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1 and "--process-id must lie in [0, 2)" in err
    p = stepc("run", MLP, *STEPS, "--coordinator", "localhost:1234", "--num-processes", 2)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1 and "all three" in err
