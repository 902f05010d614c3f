"""A step that stops being finite: `stepc run` and `stepc exec` re-run it in the reference
interpreter and point at the op where a value first stops being finite, saying whether it was
the forward value or the derivative (located at the line of the op differentiated).

Oracles: the three faults are made by construction, each at a known element of a known op
(NumPy: sqrt(-1) is NaN, exp(100) overflows float32, d sqrt(x)/dx = 1 / (2 sqrt(x)) is
infinite at x = 0 where sqrt(0) = 0 is finite); the messages are checked whole.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from stepc.tools.cli import main

# y = x * w (every row of x the same, so a shuffled batch changes nothing), then one op, then the MSE.
PROGRAM = """\
// {what}
func.func @fault(%w: tensor<4xf32> {{step.param}}, %x: tensor<8x4xf32>, %t: tensor<8x4xf32>) -> tensor<f32>
    attributes {{step.sgd = #step.sgd<lr = 0.1, momentum = 0.9>}} {{
  %y = step.mul %x, %w : (tensor<8x4xf32>, tensor<4xf32>) -> tensor<8x4xf32>
  %r = step.{op} %y : tensor<8x4xf32>
  %loss = step.mse %r, %t : (tensor<8x4xf32>, tensor<8x4xf32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}}
"""

CASES = {
    # name: (op, the second column of x, the message after `FILE:5:3: error: `)
    "forward-nan": ("sqrt", -1.0, "step.sqrt gives nan at [0, 1] from the finite operand -1.0: "
                    "the forward value stops being finite here"),
    "forward-overflow": ("exp", 100.0, "step.exp gives inf at [0, 1] from the finite operand 100.0: "
                         "the forward value stops being finite here"),
    "derivative-inf": ("sqrt", 0.0, "the derivative of step.sqrt gives -inf at [0, 1] (step.div of its derivative "
                       "rule) where the forward value 0.0 is finite: the derivative stops being finite here"),
}  # fmt: skip


def cli(argv: list[object]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def make_case(directory: Path, name: str) -> tuple[Path, Path, Path]:
    op, second, _ = CASES[name]
    program = directory / f"{name}.ir"
    program.write_text(PROGRAM.format(what=name, op=op))
    x = np.ones((8, 4), np.float32)
    x[:, 1] = second
    np.savez(directory / "data.npz", x=x, t=np.full((8, 4), 2.0, np.float32))
    np.savez(directory / "init.npz", w=np.ones(4, np.float32))
    return program, directory / "data.npz", directory / "init.npz"


@pytest.mark.parametrize("name", list(CASES))
def test_run_points_at_the_op_that_stops_being_finite(tmp_path: Path, name: str) -> None:
    program, data, init = make_case(tmp_path, name)
    out = tmp_path / "out"
    status, _, err = cli(["run", program, "--data", data, "--init", init, "--steps", 5, "--quiet", "--no-check",
                          "--out", out, "--checkpoint-every", 1])  # fmt: skip
    assert status == 1
    lines = err.splitlines()
    assert lines[0] == f"{program}:5:3: error: training stopped at step 1: {CASES[name][2]}"
    assert lines[1] == f"  %r = step.{CASES[name][0]} %y : tensor<8x4xf32>"
    assert lines[2] == "  ^~"
    assert lines[4] == f"note: kept the parameters from before step 1 (params.npz in {out}; the last checkpoint, of finite values, is kept)"
    assert "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 0 and "at step 1" in summary["stopped"]
    with np.load(out / "params.npz") as saved:
        assert np.array_equal(saved["w"], np.ones(4, np.float32))
    assert not (out / "checkpoint.npz").exists()  # no step was whole: no checkpoint of a non-finite value


def test_the_derivative_fault_is_found_when_only_the_update_shows_it(tmp_path: Path) -> None:
    """sqrt at 0: the loss of step 1 is finite, its gradient (and so the new w) is not. Without
    --check-numerics the next loss shows it; with it, step 1's own check does; both name step 1."""
    program, data, init = make_case(tmp_path, "derivative-inf")
    for extra in ([], ["--check-numerics"]):
        status, _, err = cli(["run", program, "--data", data, "--init", init, "--steps", 5, "--quiet", "--no-check",
                              *extra])  # fmt: skip
        assert status == 1
        assert err.splitlines()[0].endswith(f"training stopped at step 1: {CASES['derivative-inf'][2]}")
        assert "note: the updated parameters or optimizer state are not finite at step 1" in err


def test_a_fault_at_a_later_step_keeps_the_checkpoint_before_it(tmp_path: Path) -> None:
    """exp(x w) with lr large enough that w grows: the first steps are finite and checkpointed,
    then exp overflows at a step > 1; the checkpoint holds the last finite step."""
    program = tmp_path / "grow.ir"
    program.write_text(PROGRAM.format(what="grow", op="exp").replace("lr = 0.1, momentum = 0.9", "lr = -0.02"
                       ).replace("#step.sgd<lr = -0.02>", "#step.sgd<lr = 0.02, maximize = true>"))  # fmt: skip
    x = np.full((8, 4), 1.0, np.float32)
    np.savez(tmp_path / "data.npz", x=x, t=np.zeros((8, 4), np.float32))
    out = tmp_path / "out"
    status, _, err = cli(["run", program, "--data", tmp_path / "data.npz", "--steps", 200, "--quiet", "--no-check",
                          "--out", out, "--checkpoint-every", 1])  # fmt: skip
    assert status == 1
    first = err.splitlines()[0]
    assert first.startswith(f"{program}:5:3: error: training stopped at step ") and "step.exp gives inf" in first
    step = int(first.split("training stopped at step ")[1].split(":")[0])
    assert step > 1
    with np.load(out / "checkpoint.npz") as saved:
        assert json.loads(bytes(saved["checkpoint.json"]))["step"] == step - 1
        assert np.all(np.isfinite(saved["params/w"]))


@pytest.mark.parametrize("name", list(CASES))
def test_exec_points_at_the_same_op(tmp_path: Path, name: str) -> None:
    program, _, _ = make_case(tmp_path, name)
    x = np.ones((8, 4), np.float32)
    x[:, 1] = CASES[name][1]
    np.savez(tmp_path / "in.npz", w=np.ones(4, np.float32), x=x, t=np.full((8, 4), 2.0, np.float32))
    output = tmp_path / "out.npz"
    status, _, err = cli(["exec", program, "--inputs", tmp_path / "in.npz", "-o", output, "--no-check"])
    assert status == 1
    assert err.splitlines()[0] == f"{program}:5:3: error: step 1: {CASES[name][2]}"
    assert "note: no output written" in err and not output.exists()


def test_check_numerics_reports_its_cost(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "out"
    status, stdout, err = cli(["run", root / "examples" / "mlp_digits.ir", "--steps", 50, "--quiet", "--no-check",
                               "--check-numerics", "--out", out])  # fmt: skip
    assert status == 0, err
    assert "--check-numerics: " in stdout and " ms a step, " in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["check_numerics_ms_per_step"] > 0 and summary["check_numerics_seconds"] > 0
