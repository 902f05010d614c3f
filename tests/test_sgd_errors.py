"""Invalid SGD hyperparameters are located errors, as torch.optim.SGD's ValueErrors.

Through the command line (`stepc opt`, `stepc compile`): each error is
`FILE:LINE:COL: error: MESSAGE` at the function's `step.sgd` entry or at the offending
parameter (its override), with the source line and a caret, exit status 1, no traceback.
For the function's group, torch.optim.SGD itself is the oracle: it must refuse the same
arguments. For a parameter's group torch checks nothing (it takes `lr = -1` in a group
silently); stepc applies the same rules to every group.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stepc.tools.cli import main

FORWARD = """\
// least squares with a parameter group on b
func.func @linreg(%w: tensor<4x3xf32> {{step.param}},
                  %b: tensor<3xf32> {b_attr},
                  %x: tensor<8x4xf32>, %t: tensor<8x3xf32>) -> tensor<f32>
    attributes {{step.sgd = #step.sgd<{sgd}>}} {{
  %xw = step.matmul %x, %w : (tensor<8x4xf32>, tensor<4x3xf32>) -> tensor<8x3xf32>
  %y = step.add %xw, %b : (tensor<8x3xf32>, tensor<3xf32>) -> tensor<8x3xf32>
  %loss = step.mse %y, %t : (tensor<8x3xf32>, tensor<8x3xf32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}}
"""

# The seeded gradient program (the input of fuse-sgd), for errors the pass itself reports.
GRADIENT = """\
func.func @linreg(%w: tensor<4x1xf64> {{step.param}}, %x: tensor<8x4xf64>, %t: tensor<8x1xf64>)
    -> (tensor<f64> {{step.output = "loss"}}, tensor<4x1xf64> {{step.output = "grad.w"}})
    attributes {{step.sgd = #step.sgd<{sgd}>}} {{
  %y = step.matmul %x, %w : (tensor<8x4xf64>, tensor<4x1xf64>) -> tensor<8x1xf64>
  %loss = step.mse %y, %t : (tensor<8x1xf64>, tensor<8x1xf64>) -> tensor<f64>
  %r = step.sub %y, %t : (tensor<8x1xf64>, tensor<8x1xf64>) -> tensor<8x1xf64>
  %c = step.constant 0.25 : tensor<f64>
  %dy = step.mul %r, %c : (tensor<8x1xf64>, tensor<f64>) -> tensor<8x1xf64>
  %xt = step.transpose %x perm [1, 0] : tensor<8x4xf64> -> tensor<4x8xf64>
  %gw = step.matmul %xt, %dy : (tensor<4x8xf64>, tensor<8x1xf64>) -> tensor<4x1xf64>
  func.return %loss, %gw : tensor<f64>, tensor<4x1xf64>
}}
"""

# (function's #step.sgd fields, b's override or None, torch's kwargs, words of the message)
FUNCTION_ERRORS = [
    ("lr = -0.1", dict(lr=-0.1), "invalid SGD lr: -0.1"),
    ("lr = 0.1, momentum = -0.9", dict(lr=0.1, momentum=-0.9), "invalid SGD momentum: -0.9"),
    ("lr = 0.1, weight_decay = -1.0e-4", dict(lr=0.1, weight_decay=-1e-4), "invalid SGD weight_decay: -0.0001"),
    ("lr = 0.1, nesterov = true", dict(lr=0.1, nesterov=True), "Nesterov momentum requires a momentum"),
    (
        "lr = 0.1, momentum = 0.9, dampening = 0.1, nesterov = true",
        dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
        "Nesterov momentum requires a momentum and zero dampening",
    ),
]

PARAM_ERRORS = [
    ("lr = 0.1", "lr = -1.0", "invalid SGD lr: -1.0"),
    ("lr = 0.1, momentum = 0.9", "momentum = -0.5", "invalid SGD momentum: -0.5"),
    ("lr = 0.1", "weight_decay = -0.5", "invalid SGD weight_decay: -0.5"),
    ("lr = 0.1", "nesterov = true", "Nesterov momentum requires a momentum"),
    ("lr = 0.1, momentum = 0.9, nesterov = true", "dampening = 0.5", "zero dampening"),
    ("lr = 0.1, momentum = 0.9, nesterov = true", "momentum = 0.0", "Nesterov momentum requires a momentum"),
]


# Where errors about the function's group point: its `step.sgd` entry (the first in both texts).
FUNCTION_SGD = "step.sgd = #step.sgd<"


def write(tmp_path: Path, text: str, name: str = "step.ir") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def position(text: str, needle: str) -> tuple[int, int]:
    """1-based line and column of the first `needle` in `text`."""
    offset = text.index(needle)
    return text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def assert_located(err: str, path: Path, text: str, needle: str, words: str) -> None:
    line, col = position(text, needle)
    first = err.splitlines()[0]
    assert first.startswith(f"{path}:{line}:{col}: error: "), err
    assert words in first, err
    source_line, caret = err.splitlines()[1:3]
    assert source_line == text.splitlines()[line - 1]
    assert caret.index("^") == col - 1
    assert "Traceback" not in err


@pytest.mark.parametrize("sgd, torch_kwargs, words", FUNCTION_ERRORS, ids=[c[2] for c in FUNCTION_ERRORS])
@pytest.mark.parametrize("command", [["opt", "-p", "differentiate"], ["compile", "--no-check"]])
def test_function_group_errors(tmp_path, capsys, sgd, torch_kwargs, words, command) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        torch.optim.SGD([torch.zeros(2, requires_grad=True)], **torch_kwargs)
    text = FORWARD.format(b_attr="{step.param}", sgd=sgd)
    path = write(tmp_path, text)
    status, out, err = run_cli([command[0], str(path), *command[1:]], capsys)
    assert status == 1 and out == ""
    assert_located(err, path, text, FUNCTION_SGD, words)


@pytest.mark.parametrize("sgd, override, words", PARAM_ERRORS, ids=[f"{c[1]} on {c[0]}" for c in PARAM_ERRORS])
def test_parameter_group_errors(tmp_path, capsys, sgd, override, words) -> None:  # type: ignore[no-untyped-def]
    text = FORWARD.format(b_attr=f"{{step.param = #step.sgd<{override}>}}", sgd=sgd)
    path = write(tmp_path, text)
    status, out, err = run_cli(["opt", str(path), "-p", "differentiate"], capsys)
    assert status == 1 and out == ""
    assert_located(err, path, text, "%b:", words)
    assert "parameter %b" in err


@pytest.mark.parametrize("sgd, torch_kwargs, words", FUNCTION_ERRORS, ids=[c[2] for c in FUNCTION_ERRORS])
def test_the_pass_checks_its_input_too(tmp_path, capsys, sgd, torch_kwargs, words) -> None:  # type: ignore[no-untyped-def]
    # --verify-only skips the step-function rules at load: fuse-sgd itself must refuse.
    text = GRADIENT.format(sgd=sgd)
    path = write(tmp_path, text)
    status, out, err = run_cli(["opt", str(path), "--verify-only", "-p", "fuse-sgd"], capsys)
    assert status == 1 and out == ""
    assert_located(err, path, text, FUNCTION_SGD, words)


def test_missing_lr_is_located_at_the_function(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    text = GRADIENT.format(sgd="momentum = 0.9")
    path = write(tmp_path, text)
    status, _, err = run_cli(["opt", str(path), "--verify-only", "-p", "fuse-sgd"], capsys)
    assert status == 1
    assert_located(err, path, text, FUNCTION_SGD, "must give lr")


def test_forward_program_is_refused_by_fuse_sgd(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    text = FORWARD.format(b_attr="{step.param}", sgd="lr = 0.1")
    path = write(tmp_path, text)
    status, _, err = run_cli(["opt", str(path), "-p", "fuse-sgd"], capsys)
    assert status == 1
    # at the function's result types, which are the forward program's
    assert_located(
        err,
        path,
        text,
        "tensor<f32>\n    attributes",
        "fuse-sgd needs the program after differentiate and seed-scalar-loss",
    )


def test_fusing_twice_is_refused(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    text = GRADIENT.format(sgd="lr = 0.1, momentum = 0.9")
    path = write(tmp_path, text)
    status, _, err = run_cli(["opt", str(path), "--verify-only", "-p", "fuse-sgd,fuse-sgd"], capsys)
    assert status == 1
    assert_located(err, path, text, "func.func", "fuse-sgd has already run")


def test_the_real_command_prints_no_traceback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    text = FORWARD.format(b_attr="{step.param = #step.sgd<lr = -1.0>}", sgd="lr = 0.1")
    path = write(tmp_path, text)
    stepc = Path(sys.executable).with_name("stepc")
    proc = subprocess.run([str(stepc), "opt", str(path), "-p", "differentiate"], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout == ""
    assert_located(proc.stderr, path, text, "%b:", "invalid SGD lr: -1.0")
