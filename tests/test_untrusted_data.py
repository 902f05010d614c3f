"""Untrusted data: `.npz` files are never unpickled, and their keys, shapes, dtypes and label
ranges are validated with clear errors before anything runs (`stepc exec`, `stepc run --data`)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from stepc.ir.diagnostics import StepcError
from stepc.tools import files
from stepc.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent
LINREG = ROOT / "examples" / "linreg.ir"
MLP = ROOT / "examples" / "mlp_digits.ir"
HAS_EXEC = importlib.util.find_spec("stepc.tools.exec_cmd") is not None
HAS_RUN = importlib.util.find_spec("stepc.tools.run_cmd") is not None


class Payload:
    """Unpickling this touches a marker file: proof that a loader ran smuggled code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def run_cli(argv: list[object]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def linreg_inputs(rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    rng = rng or np.random.default_rng(0)
    shapes = {"w": (4, 1), "b": (1,), "x": (32, 4), "t": (32, 1)}
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def pickled_npz(path: Path, marker: Path, **plain: np.ndarray) -> Path:
    arrays = dict(plain)
    arrays["evil"] = np.array([Payload(marker)], dtype=object)
    np.savez(path, **arrays)
    return path


def huge_header_npz(path: Path, key: str, shape: tuple[int, ...]) -> Path:
    """An .npz whose member declares `shape` of float64 but holds 8 bytes of data."""
    header = {"descr": "<f8", "fortran_order": False, "shape": shape}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    buffer.write(struct.pack("<d", 1.0))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{key}.npy", buffer.getvalue())
    return path


# ---------------------------------------------------------------------------------------------
# The loader


def test_object_arrays_are_refused_not_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "UNPICKLED"
    path = pickled_npz(tmp_path / "evil.npz", marker, x=np.zeros(3))
    with pytest.raises(StepcError, match="never unpickles") as info:
        files.load_npz(path)
    assert "'evil'" in str(info.value)
    assert not marker.exists()
    # the oracle: NumPy itself would run the payload when allowed to
    with np.load(path, allow_pickle=True) as data:
        data["evil"]
    assert marker.exists()


@pytest.mark.parametrize(
    "content,message",
    [(b"", "not an .npz"), (b"PK\x03\x04 truncated", "not an .npz"), (b"\x93NUMPY\x01\x00", "not an .npz"),
     (b"just text\n", "not an .npz")],
)  # fmt: skip
def test_garbage_files_are_clear_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(StepcError, match=message):
        files.load_npz(path)


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(StepcError, match="no such file"):
        files.load_npz(tmp_path / "absent.npz")
    with pytest.raises(StepcError, match="is a directory"):
        files.load_npz(tmp_path)


def test_huge_declared_shape_is_refused_before_reading(tmp_path: Path) -> None:
    path = huge_header_npz(tmp_path / "bomb.npz", "x", (10**12,))
    with pytest.raises(StepcError, match="exceed the memory limit"):
        files.load_npz(path, max_bytes=1024**3)


def test_truncated_member_is_a_clear_error(tmp_path: Path) -> None:
    path = huge_header_npz(tmp_path / "short.npz", "x", (100,))
    with pytest.raises(StepcError, match="array 'x' cannot be read"):
        files.load_npz(path)


def test_valid_archive_round_trips(tmp_path: Path) -> None:
    arrays = linreg_inputs()
    np.savez(tmp_path / "ok.npz", **arrays)
    loaded = files.load_npz(tmp_path / "ok.npz")
    assert set(loaded) == set(arrays)
    for key in arrays:
        np.testing.assert_array_equal(loaded[key], arrays[key])


SPECS = {
    "x": files.ArraySpec((4, 3), np.dtype(np.float32)),
    "labels": files.ArraySpec((4,), np.dtype(np.int32), classes=3),
}


@pytest.mark.parametrize(
    "arrays,message",
    [
        ({"x": np.zeros((4, 3))}, "lacks key labels"),
        ({"x": np.zeros((4, 3)), "labels": np.zeros(4, int), "lables": np.zeros(4)}, "unknown key 'lables'"),
        ({"x": np.zeros((3, 4)), "labels": np.zeros(4, int)}, r"shape \(3, 4\), the program expects \(4, 3\)"),
        ({"x": np.zeros((4, 3), np.int64), "labels": np.zeros(4, int)}, "expects floats"),
        ({"x": np.zeros((4, 3)), "labels": np.zeros(4)}, "expects integer labels"),
        ({"x": np.zeros((4, 3)), "labels": np.array([0, 1, 3, 2])}, r"label 3, outside \[0, 3\)"),
        ({"x": np.zeros((4, 3)), "labels": np.array([0, -1, 2, 2])}, r"label -1, outside \[0, 3\)"),
        ({"x": np.zeros((4, 3)), "labels": np.array(["a", "b", "c", "d"])}, "expects integer labels"),
    ],
)
def test_check_arrays_errors(arrays: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(StepcError, match=message):
        files.check_arrays(arrays, SPECS, source="data.npz")


def test_check_arrays_casts_to_the_program_dtypes() -> None:
    out = files.check_arrays({"x": np.ones((4, 3)), "labels": np.array([0, 1, 2, 2], np.int64)}, SPECS, source="d")
    assert out["x"].dtype == np.float32 and out["labels"].dtype == np.int32


# ---------------------------------------------------------------------------------------------
# stepc exec


needs_exec = pytest.mark.skipif(not HAS_EXEC, reason="stepc exec is not built yet")


def exec_with(tmp_path: Path, program: Path, arrays: dict[str, np.ndarray]) -> tuple[int, str, Path]:
    inputs = tmp_path / "in.npz"
    np.savez(inputs, **arrays)
    out = tmp_path / "out.npz"
    status, _, err = run_cli(["exec", program, "--inputs", inputs, "-o", out, "--no-check"])
    return status, err, out


@needs_exec
def test_exec_refuses_pickles(tmp_path: Path) -> None:
    marker = tmp_path / "UNPICKLED"
    inputs = pickled_npz(tmp_path / "in.npz", marker, **linreg_inputs())
    out = tmp_path / "out.npz"
    status, _, err = run_cli(["exec", LINREG, "--inputs", inputs, "-o", out, "--no-check"])
    assert status == 1 and "internal error" not in err
    assert "pickle" in err
    assert not marker.exists() and not out.exists()


@needs_exec
def test_exec_refuses_a_huge_declared_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPC_MAX_BYTES", "1G")
    inputs = huge_header_npz(tmp_path / "in.npz", "x", (10**12,))
    status, _, err = run_cli(["exec", LINREG, "--inputs", inputs, "-o", tmp_path / "out.npz", "--no-check"])
    assert status == 1 and "internal error" not in err, err


@needs_exec
@pytest.mark.parametrize(
    "change,message",
    [
        (lambda a: a.pop("t"), "missing"),
        (lambda a: a.update(t=np.zeros((32, 2), np.float32)), "shape"),
        (lambda a: a.update(x=a["x"].astype(np.float64)), "dtype"),
        (lambda a: a.update(typo=np.zeros(1, np.float32)), "typo"),
    ],
    ids=["missing key", "wrong shape", "wrong dtype", "unknown key"],
)
def test_exec_validates_inputs(tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    arrays = linreg_inputs()
    change(arrays)
    status, err, out = exec_with(tmp_path, LINREG, arrays)
    assert status == 1 and message in err and "internal error" not in err, err
    assert not out.exists()


@needs_exec
@pytest.mark.parametrize("bad_label", [10, -1, 2**31 - 1])
def test_exec_checks_label_range(tmp_path: Path, bad_label: int) -> None:
    rng = np.random.default_rng(1)
    arrays = {
        "w1": rng.standard_normal((64, 128)).astype(np.float32), "b1": np.zeros(128, np.float32),
        "w2": rng.standard_normal((128, 10)).astype(np.float32), "b2": np.zeros(10, np.float32),
        "x": rng.standard_normal((64, 64)).astype(np.float32), "labels": rng.integers(0, 10, 64).astype(np.int32),
    }  # fmt: skip
    arrays["labels"][5] = bad_label
    status, err, out = exec_with(tmp_path, MLP, arrays)
    assert status == 1 and str(bad_label) in err and "classes" in err, err
    assert err.startswith(f"{MLP}:"), err  # located at the labels argument
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# stepc run --data


needs_run = pytest.mark.skipif(not HAS_RUN, reason="stepc run is not built yet")


def run_with_data(tmp_path: Path, program: Path, arrays: dict[str, np.ndarray]) -> tuple[int, str, Path]:
    data = tmp_path / "data.npz"
    np.savez(data, **arrays)
    out = tmp_path / "run"
    status, _, err = run_cli(["run", program, "--data", data, "--steps", "2", "--quiet", "--no-check", "--out", out])
    return status, err, out


def digits_like(n: int = 128, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    rng = rng or np.random.default_rng(2)
    return {"x": rng.standard_normal((n, 64)).astype(np.float32), "labels": rng.integers(0, 10, n).astype(np.int32)}


@needs_run
def test_run_refuses_pickles(tmp_path: Path) -> None:
    marker = tmp_path / "UNPICKLED"
    data = pickled_npz(tmp_path / "data.npz", marker, **digits_like())
    status, _, err = run_cli(["run", MLP, "--data", data, "--steps", "1", "--quiet", "--out", tmp_path / "run"])
    assert status == 1 and "pickle" in err and "internal error" not in err, err
    assert not marker.exists() and not (tmp_path / "run" / "summary.json").exists()


@needs_run
@pytest.mark.parametrize(
    "change,message",
    [
        (lambda a: a.pop("labels"), "missing labels"),
        (lambda a: a.update(x=a["x"][:, :63]), "shape"),
        (lambda a: a["labels"].__setitem__(3, 10), "labels must lie in 0..9"),
        (lambda a: a["labels"].__setitem__(3, -2), "labels must lie in 0..9"),
        (lambda a: a.update(labels=a["labels"].astype(np.float32)), "needs integers"),
        (lambda a: a["x"].__setitem__((0, 0), np.nan), "non-finite"),
        (lambda a: a.update(extra=np.zeros(3)), "unknown keys extra"),
    ],
    ids=["missing key", "wrong shape", "label too big", "negative label", "float labels", "NaN input", "unknown key"],
)
def test_run_validates_data(tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    arrays = digits_like()
    change(arrays)
    status, err, out = run_with_data(tmp_path, MLP, arrays)
    assert status == 1 and message in err and "internal error" not in err, err
    assert not (out / "summary.json").exists()
