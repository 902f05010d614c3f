"""Resource limits: static shapes too big for the machine get a located error, not an OOM kill."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stepc.ir import limits
from stepc.ir.diagnostics import StepcError
from stepc.ir.parse import load_text
from stepc.ir.program import step_function
from stepc.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent
LINREG = (ROOT / "examples" / "linreg.ir").read_text()

BIG = """\
func.func @big(%w: tensor<100000x100000xf32> {step.param}, %x: tensor<100000x100000xf32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.01>} {
  %y = step.mul %x, %w : (tensor<100000x100000xf32>, tensor<100000x100000xf32>) -> tensor<100000x100000xf32>
  %loss = step.mean %y : tensor<100000x100000xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
"""


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def numpy_bytes(shapes_and_dtypes: list[tuple[tuple[int, ...], str]]) -> int:
    """The oracle: NumPy's own idea of the bytes of each tensor."""
    return sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for shape, dtype in shapes_and_dtypes)


def test_estimate_of_linreg_matches_numpy() -> None:
    fn = step_function(load_text(LINREG, "linreg.ir"))
    expected = numpy_bytes([
        ((4, 1), "f4"), ((1,), "f4"), ((32, 4), "f4"), ((32, 1), "f4"),  # arguments
        ((32, 1), "f4"), ((32, 1), "f4"), ((), "f4"),  # %xw, %y, %loss
    ])  # fmt: skip
    assert limits.footprint(fn).total_bytes == expected


@pytest.mark.parametrize("element,itemsize", [("f16", 2), ("bf16", 2), ("f32", 4), ("f64", 8)])
def test_element_sizes(element: str, itemsize: int) -> None:
    text = LINREG.replace("f32", element)
    fn = step_function(load_text(text, f"linreg_{element}.ir"))
    assert limits.footprint(fn).total_bytes == (4 + 1 + 128 + 32 + 32 + 32 + 1) * itemsize


def test_too_big_program_gets_a_located_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(limits.ENV_VAR, raising=False)
    path = tmp_path / "big.ir"
    path.write_text(BIG)
    status, out, err = run_cli(["compile", str(path), "--emit", "step", "--no-check"])
    assert status == 1 and out == ""
    first = err.splitlines()[0]
    assert first.startswith(f"{path}:1:16: error: "), err  # at %w, the largest value
    assert "111.8 GiB" in first and "STEPC_MAX_BYTES" in first and "tensor<100000x100000xf32>" in first


def test_default_limit_is_half_the_physical_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(limits.ENV_VAR, raising=False)
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        pytest.skip("no /proc/meminfo to compare with")
    total_kib = int(re.search(r"MemTotal:\s+(\d+) kB", meminfo.read_text()).group(1))  # type: ignore[union-attr]
    assert abs(limits.memory_limit() - total_kib * 1024 // 2) <= 4096 * 1024


def test_limit_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    fn = step_function(load_text(LINREG, "linreg.ir"))
    need = limits.footprint(fn).total_bytes  # 920 bytes
    monkeypatch.setenv(limits.ENV_VAR, str(need - 1))
    with pytest.raises(StepcError, match="over the memory limit of 919 bytes"):
        load_text(LINREG, "linreg.ir")
    monkeypatch.setenv(limits.ENV_VAR, str(need))
    load_text(LINREG, "linreg.ir")


@pytest.mark.parametrize(
    "text,value",
    [("1000", 1000), ("8G", 8 * 1024**3), ("512M", 512 * 1024**2), ("2k", 2048), ("1.5K", 1536),
     ("4GiB", 4 * 1024**3), (" 7 ", 7), ("1T", 1024**4)],
)  # fmt: skip
def test_byte_counts(text: str, value: int) -> None:
    assert limits.parse_byte_count(text) == value


@pytest.mark.parametrize("text", ["abc", "-5", "0", "8Q", "1e9", ""])
def test_bad_limit_is_a_clear_error(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(limits.ENV_VAR, text or "x")
    with pytest.raises(StepcError, match="STEPC_MAX_BYTES"):
        load_text(LINREG, "linreg.ir")


def test_shape_product_overflow_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "overflow.ir"
    path.write_text(BIG.replace("100000x100000", "99999999999x99999999999"))
    status, _, err = run_cli(["opt", str(path)])
    assert status == 1
    assert err.startswith(f"{path}:1:16: error: argument %w has type tensor<99999999999x99999999999xf32>")
    assert "overflow a 64-bit size" in err


def test_op_result_counts_and_locates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An op whose result is the big value is the one pointed at."""
    monkeypatch.setenv(limits.ENV_VAR, "64M")
    text = LINREG.replace(
        "  %loss = step.mse",
        "  %wide = step.broadcast %t : tensor<32x1xf32> -> tensor<32x1000000xf32>\n  %loss = step.mse",
    )
    path = tmp_path / "wide.ir"
    path.write_text(text)
    status, _, err = run_cli(["opt", str(path)])
    assert status == 1
    assert err.startswith(f"{path}:7:3: error: "), err
    assert "the largest is %wide: tensor<32x1000000xf32> (122.1 MiB)" in err


def test_too_big_program_end_to_end_is_not_killed(tmp_path: Path) -> None:
    """The real command, default limit: a quick exit 1 with a located error (no OOM kill, no traceback)."""
    path = tmp_path / "big.ir"
    path.write_text(BIG)
    env = {k: v for k, v in os.environ.items() if k != limits.ENV_VAR}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "stepc.tools.cli", "compile", str(path), "-o", str(tmp_path / "out.mlir")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"{path}:1:16: error: the program's tensors need about 111.8 GiB")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out.mlir").exists()
    assert time.perf_counter() - start < 60


def _command_exists(command: str) -> bool:
    return importlib.util.find_spec(f"stepc.tools.{command}_cmd") is not None


@pytest.mark.parametrize(
    "command",
    [pytest.param(c, marks=pytest.mark.skipif(not _command_exists(c), reason=f"stepc {c} is not built yet"))
     for c in ("check", "exec", "run")],
)  # fmt: skip
def test_every_command_refuses_before_allocating(command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(limits.ENV_VAR, raising=False)
    path = tmp_path / "big.ir"
    path.write_text(BIG)
    argv = {
        "check": ["check", str(path)],
        "exec": ["exec", str(path), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out.npz")],
        "run": ["run", str(path), "--steps", "1", "--quiet"],
    }[command]
    np.savez(tmp_path / "in.npz", x=np.zeros(1, np.float32))
    status, _, err = run_cli(argv)
    assert status == 1, err
    assert "internal error" not in err
    assert f"{path}:1:16: error: the program's tensors need about 111.8 GiB" in err.splitlines()[0]


# The child's own peak, `VmHWM` (its `ru_maxrss` would start at this test process's peak).
PEAK_CHILD = """
import sys
from stepc.tools.cli import main
status = main(sys.argv[1:])
with open('/proc/self/status') as f:
    print("peak", int(next(line for line in f if line.startswith('VmHWM:')).split()[1]) * 1024, file=sys.stderr)
sys.exit(status)
"""


def test_contracts_stay_within_the_memory_limit(tmp_path: Path) -> None:
    """Issue 18, finding 1: linreg with x 131072x1024 (an estimate of 513.5 MiB) compiled with
    its contracts under STEPC_MAX_BYTES=520M peaked at 6.5 GB (216 s). The contracts now count
    against the limit too (they run at reduced shapes when a full-size check would not fit in
    half of it): the whole process, JAX's ~0.2 GB included, stays under 1.5x the limit."""
    path = tmp_path / "wide_linreg.ir"
    text = (ROOT / "examples" / "linreg.ir").read_text()
    path.write_text(text.replace("32x4", "131072x1024").replace("4x1", "1024x1").replace("32x1", "131072x1"))
    limit = 520 * 1024**2
    done = subprocess.run(
        [sys.executable, "-c", PEAK_CHILD, "compile", str(path), "-o", str(tmp_path / "out.mlir")],
        env={**os.environ, "STEPC_MAX_BYTES": "520M"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    peak = int(re.search(r"peak (\d+)", done.stderr).group(1))  # type: ignore[union-attr]
    assert peak < 1.5 * limit, f"peak {peak / 1024**2:.0f} MiB under a {limit / 1024**2:.0f} MiB limit"
