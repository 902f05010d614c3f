"""Hostile use of `stepc run` (issue 18, findings 5, 6, 11 and 13): an empty held-out set, an
`--out` holding an earlier run, programs read through a guess, devices and output problems found
only after training, `--out ''` and a negative seed.

Each condition ends with `stepc: error: ...` or `FILE:LINE:COL: error: ...` and exit status 1
before any training, or works; `--out` ends holding one run's files, never a mix of two.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stepc.ir.diagnostics import StepcError
from stepc.tools import loop as train_loop
from stepc.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent
LINREG = ROOT / "examples" / "linreg.ir"
MLP = ROOT / "examples" / "mlp_digits.ir"
FAST = ["--steps", "2", "--quiet", "--no-check"]
ERROR_LINE = re.compile(r"^(stepc: error: |.+:\d+:\d+: error: )", re.MULTILINE)


def run_cli(argv: list[str | Path]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main([str(a) for a in argv])
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else 1
    return status, out.getvalue(), err.getvalue()


def assert_user_error(status: int, err: str, *fragments: str) -> None:
    assert status == 1, (status, err)
    assert "Traceback" not in err and "internal error" not in err, err
    assert ERROR_LINE.search(err), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    np.savez(path, x=rng.standard_normal((64, 4)).astype(np.float32), t=rng.standard_normal((64, 1)).astype(np.float32))
    return path


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that reaches the training loop fails the test: the error must come before it."""

    def trained(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the run trained before finding the error")

    monkeypatch.setattr(train_loop, "train", trained)


# ---------------------------------------------------------------------------------------------
# 5. An empty held-out set; one run's outputs together or not at all


def test_empty_held_out_set_is_refused_before_training(tmp_path: Path, no_training: None) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.standard_normal((64, 64)).astype(np.float32), labels=rng.integers(0, 10, 64).astype(np.int32),
             **{"test.x": np.zeros((0, 64), np.float32), "test.labels": np.zeros(0, np.int32)})  # fmt: skip
    status, _, err = run_cli(["run", MLP, "--data", path, *FAST, "--out", tmp_path / "run"])
    assert_user_error(status, err, "held-out", "no examples")
    assert not (tmp_path / "run").exists()


EARLIER = {"summary.json": b'{"earlier": true}\n', "params.npz": b"earlier params", "loss.png": b"earlier png"}


def earlier_run(out: Path) -> None:
    out.mkdir(exist_ok=True)
    for name, content in EARLIER.items():
        (out / name).write_bytes(content)


def assert_earlier_run(out: Path) -> None:
    assert {p.name: p.read_bytes() for p in out.iterdir()} == EARLIER


PARAMS = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}


def failing_on_call(number: int, error: BaseException, real):  # type: ignore[no-untyped-def]
    calls = [0]

    def fake(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == number:
            raise error
        return real(*args, **kwargs)

    return fake


@pytest.mark.parametrize(
    "where,call,error",
    [("fsync", 2, OSError(28, "No space left on device")), ("fsync", 3, KeyboardInterrupt()),
     ("replace", 2, OSError(5, "Input/output error")), ("replace", 3, KeyboardInterrupt())],
    ids=["disk full at the second file", "Ctrl-C at the third file", "I/O error renaming the second",
         "Ctrl-C renaming the third"],
)  # fmt: skip
def test_a_failing_write_leaves_the_earlier_run_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str,
                                                      call: int, error: BaseException) -> None:  # fmt: skip
    out = tmp_path / "out"
    earlier_run(out)
    monkeypatch.setattr(os, where, failing_on_call(call, error, getattr(os, where)))
    with pytest.raises(KeyboardInterrupt if isinstance(error, KeyboardInterrupt) else StepcError):
        train_loop.write_run(out, {"steps": 4}, PARAMS, [1.0, 0.5])
    monkeypatch.undo()
    assert_earlier_run(out)


def test_a_failing_run_after_training_leaves_the_earlier_run_whole(tmp_path: Path, data: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    out = tmp_path / "out"
    earlier_run(out)

    def broken_chart(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise StepcError("the picture cannot be drawn")

    monkeypatch.setattr(train_loop, "loss_chart", broken_chart)
    status, _, err = run_cli(["run", LINREG, "--data", data, *FAST, "--out", out])
    assert_user_error(status, err, "picture")
    # The earlier run's outputs are whole; beside them, the failed run's record (run.json,
    # written before training so that a run killed at any moment can be resumed).
    record = out / "run.json"
    assert record.exists() and json.loads(record.read_text())["program"]["name"] == str(LINREG)
    record.unlink()
    assert_earlier_run(out)


def test_a_new_run_replaces_every_file(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "out"
    earlier_run(out)
    (out / "notes.txt").write_text("mine")
    status, _, err = run_cli(["run", LINREG, "--data", data, *FAST, "--out", out])
    assert status == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["loss.png", "notes.txt", "params.npz", "run.json", "summary.json"]
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    assert (out / "notes.txt").read_text() == "mine"


def test_summary_is_strict_json_whatever_it_holds(tmp_path: Path) -> None:
    """A non-finite number in the summary is written as null (JSON has no NaN), never a crash."""
    train_loop.write_run(tmp_path / "o", {"accuracy": float("nan"), "loss": float("inf")}, PARAMS, [1.0])
    assert json.loads((tmp_path / "o" / "summary.json").read_text()) == {"accuracy": None, "loss": None}


# ---------------------------------------------------------------------------------------------
# 6. The program is read once, from a path or stdin, never guessed


def test_a_path_holding_func_func_is_a_path(tmp_path: Path, data: Path) -> None:
    program = tmp_path / "mlp.func.func.ir"
    program.write_text(LINREG.read_text())
    status, _, err = run_cli(["run", program, "--data", data, *FAST])
    assert status == 0, err


def test_a_path_holding_a_newline_is_a_path(tmp_path: Path, data: Path) -> None:
    folder = tmp_path / "a\nb"
    folder.mkdir()
    program = folder / "linreg.ir"
    program.write_text(LINREG.read_text())
    status, _, err = run_cli(["run", program, "--data", data, *FAST])
    assert status == 0, err


def test_run_reads_stdin_once(data: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "stepc.tools.cli", "run", "-", "--data", str(data), *FAST],
                          input=LINREG.read_bytes(), capture_output=True, timeout=120, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"2 steps" in proc.stdout


def test_errors_point_at_the_file_read(tmp_path: Path, data: Path) -> None:
    program = tmp_path / "bad.func.func.ir"
    program.write_text(LINREG.read_text().replace("step.mse", "step.nope"))
    status, _, err = run_cli(["run", program, "--data", data, *FAST])
    assert_user_error(status, err, f"{program}:")


# ---------------------------------------------------------------------------------------------
# 11. Devices and --out checked before the expensive part


def test_devices_that_do_not_split_the_batch_fail_at_once() -> None:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "stepc.tools.cli", "run", str(MLP), "--devices", "100000", *FAST],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert_user_error(proc.returncode, proc.stderr, "--devices 100000", "does not split evenly")
    assert time.perf_counter() - start < 30


# (in this process JAX has started: 3 devices may be refused as unavailable before the split)
@pytest.mark.parametrize("devices,message", [("3", "--devices 3"), ("0", "at least 1"), ("-4", "at least 1")])
def test_bad_device_counts_are_refused_before_training(data: Path, no_training: None, devices: str,
                                                       message: str) -> None:  # fmt: skip
    status, _, err = run_cli(["run", LINREG, "--data", data, *FAST, "--devices", devices])
    assert_user_error(status, err, "--devices", message)


def _params_is_a_directory(tmp_path: Path) -> Path:
    (tmp_path / "out" / "params.npz").mkdir(parents=True)
    return tmp_path / "out"


def _file_where_the_dir_should_be(tmp_path: Path) -> Path:
    (tmp_path / "file").write_text("x")
    return tmp_path / "file" / "run"


def _read_only_dir(tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    return tmp_path / "ro" / "run"


def _unwritable_file_system(tmp_path: Path) -> Path:
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc")
    return Path("/proc/stepc-run-output")


@pytest.mark.parametrize(
    "make,message",
    [(_params_is_a_directory, "params.npz"), (_file_where_the_dir_should_be, "not a directory"),
     (_read_only_dir, "cannot write"), (_unwritable_file_system, "cannot write")],
    ids=["params.npz is a directory", "a file where the directory should be", "read-only", "unwritable /proc"],
)  # fmt: skip
def test_out_problems_are_found_before_training(tmp_path: Path, data: Path, no_training: None, make,  # type: ignore[no-untyped-def]
                                                message: str) -> None:  # fmt: skip
    out = make(tmp_path)
    status, _, err = run_cli(["run", LINREG, "--data", data, *FAST, "--out", out])
    assert_user_error(status, err, "--out", message)


# ---------------------------------------------------------------------------------------------
# 13. --out '' and a negative seed


def test_empty_out_is_an_error(data: Path, no_training: None) -> None:
    status, _, err = run_cli(["run", LINREG, "--data", data, *FAST, "--out", ""])
    assert_user_error(status, err, "--out")


@pytest.mark.parametrize("seed", ["-1", "-5"])
def test_negative_seed_is_an_error(data: Path, no_training: None, seed: str) -> None:
    status, _, err = run_cli(["run", LINREG, "--data", data, *FAST, "--seed", seed])
    assert_user_error(status, err, "--seed")
