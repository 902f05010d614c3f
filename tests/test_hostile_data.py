"""Hostile data files (issue 18, findings 2, 4 and 13): `.npz` archives that declare far more
than they hold, that hold NaN, 100,000 unknown keys, parameter names that are `np.savez`'s own
keyword arguments, and inputs whose names collide with the held-out key scheme.

Each condition ends with `stepc: error: ...` or `FILE:LINE:COL: error: ...` and exit status 1, or
works; memory is measured on a real process (its own peak RSS from `os.wait4`) against the
`STEPC_MAX_BYTES` it ran under.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from stepc.ir.diagnostics import StepcError
from stepc.ir.parse import load, load_text
from stepc.tools import data as train_data
from stepc.tools import files
from stepc.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent
LINREG = ROOT / "examples" / "linreg.ir"
MiB = 1024**2
ERROR_LINE = re.compile(r"^(stepc: error: |.+:\d+:\d+: error: )", re.MULTILINE)


# ---------------------------------------------------------------------------------------------
# Helpers


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
    assert "Traceback" not in err and "internal error" not in err and "Warning" not in err, err
    assert ERROR_LINE.search(err), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


# The child's own peak: `VmHWM` of its address space. (`ru_maxrss` of a child on Linux starts at
# the parent's peak at the fork, which in a long test session is over a gigabyte.)
PEAK_CHILD = """
import os, sys
from stepc.tools.cli import main
try:
    status = main(sys.argv[1:])
finally:
    with open('/proc/self/status') as f:
        hwm = next(line for line in f if line.startswith('VmHWM:'))
    with open(os.environ['STEPC_TEST_PEAK_FILE'], 'w') as f:
        f.write(str(int(hwm.split()[1]) * 1024))
sys.exit(status)
"""


def measured(argv: list[str | Path], env: dict[str, str], timeout: float = 120) -> tuple[int, str, float, float]:
    """Run `stepc ARGV` as a process: (status, stderr, its own peak RSS in bytes, seconds)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryDirectory() as scratch:
        peak_file = Path(scratch) / "peak"
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", PEAK_CHILD, *map(str, argv)], stdout=out, stderr=err,
                                env={**os.environ, **env, "STEPC_TEST_PEAK_FILE": str(peak_file)}, cwd=ROOT)  # fmt: skip
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                raise AssertionError(f"stepc {argv} ran past {timeout} s")
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        err.seek(0)
        peak = float(peak_file.read_text()) if peak_file.exists() else usage.ru_maxrss * 1024.0
        return proc.returncode, err.read().decode(errors="replace"), peak, seconds


SEGMENT = 16 * MiB


def zeros_npz(path: Path, members: dict[str, tuple[str, tuple[int, ...]]]) -> Path:
    """A valid `.npz` whose members (KEY: (descr, shape)) hold zeros, written in well under a
    second whatever they declare: the deflate stream of 16 MiB of zeros is made once and
    repeated (each piece ends in a full flush, so it stands alone). Sizes go in zip64 fields."""
    deflate = lambda data, end: (lambda c: c.compress(data) + c.flush(end))(zlib.compressobj(9, zlib.DEFLATED, -15))  # noqa: E731
    segment = deflate(bytes(SEGMENT), zlib.Z_FULL_FLUSH)
    zero = bytes(SEGMENT)
    entries = []
    with open(path, "wb") as f:
        for key, (descr, shape) in members.items():
            buffer = io.BytesIO()
            np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
            header = buffer.getvalue()
            nbytes = np.dtype(descr).itemsize * math.prod(shape)
            full, rest = divmod(nbytes, SEGMENT)
            crc = zlib.crc32(header)
            for _ in range(full):
                crc = zlib.crc32(zero, crc)
            crc = zlib.crc32(bytes(rest), crc)
            first, last = deflate(header, zlib.Z_FULL_FLUSH), deflate(bytes(rest), zlib.Z_FINISH)
            size, packed = len(header) + nbytes, len(first) + full * len(segment) + len(last)
            name = f"{key}.npy".encode()
            extra = struct.pack("<HHQQ", 1, 16, size, packed)
            offset = f.tell()
            f.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 8, 0, 0x21, crc, 2**32 - 1, 2**32 - 1,
                                len(name), len(extra)) + name + extra)  # fmt: skip
            f.write(first)
            for _ in range(full):
                f.write(segment)
            f.write(last)
            entries.append((name, extra, crc, offset))
        start = f.tell()
        for name, extra, crc, offset in entries:
            f.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 8, 0, 0x21, crc, 2**32 - 1, 2**32 - 1,
                                len(name), len(extra), 0, 0, 0, 0, offset) + name + extra)  # fmt: skip
        end = f.tell()
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), end - start, start, 0))
    return path


def test_zeros_npz_is_a_valid_archive(tmp_path: Path) -> None:
    path = zeros_npz(tmp_path / "z.npz", {"a": ("<f4", (3, 5)), "b": ("<i8", (SEGMENT // 8 + 3,))})
    with np.load(path) as archive:
        assert archive["a"].shape == (3, 5) and not archive["a"].any()
        assert archive["b"].shape == (SEGMENT // 8 + 3,) and not archive["b"].any()


def linreg_arrays(rng: np.random.Generator | None = None, n: int = 32) -> dict[str, np.ndarray]:
    rng = rng or np.random.default_rng(0)
    shapes = {"w": (4, 1), "b": (1,), "x": (n, 4), "t": (n, 1)}
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Like np.savez, but any key (np.savez takes some as its own arguments)."""
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(value), allow_pickle=False)
            archive.writestr(f"{key}.npy", buffer.getvalue())
    return path


# ---------------------------------------------------------------------------------------------
# 2. Amplification: declared shapes compared with the program before any data is read; the
#    copies bounded


def test_exec_refuses_a_declared_shape_from_the_header(tmp_path: Path) -> None:
    """4 MB on disk, `x` declared as (2**30,) float32 (4 GiB of zeros): refused from the header.
    Before: 4.4 GB read for 20 s, then an error."""
    inputs = zeros_npz(tmp_path / "in.npz", {"w": ("<f4", (4, 1)), "b": ("<f4", (1,)), "x": ("<f4", (2**30,)),
                                             "t": ("<f4", (32, 1))})  # fmt: skip
    assert inputs.stat().st_size < 5 * MiB
    status, err, peak, seconds = measured(
        ["exec", LINREG, "--inputs", inputs, "-o", tmp_path / "out.npz", "--no-check"], {"STEPC_MAX_BYTES": "8G"}
    )
    assert_user_error(status, err, "'x' has shape (1073741824,), expected (32, 4)")
    assert peak < 600 * MiB, f"peak RSS {peak / MiB:.0f} MiB: the data was read"
    assert seconds < 30
    assert not (tmp_path / "out.npz").exists()


def test_run_data_stays_under_the_memory_limit(tmp_path: Path) -> None:
    """330 MiB of float64 data for a float32 program (165 MiB as the program takes it) under a
    350 MiB limit: read with bounded copies, the run's peak RSS at most 1.5x the limit.
    Before: the whole file, a float32 copy, a float64 copy for the finiteness check, a
    boolean mask and the split's copies at once (peak about 2.3x the file, plus the process)."""
    n = 8_650_000
    data = zeros_npz(tmp_path / "data.npz", {"x": ("<f8", (n, 4)), "t": ("<f8", (n, 1))})
    limit = 350 * MiB
    status, err, peak, _ = measured(
        ["run", LINREG, "--data", data, "--steps", "1", "--quiet", "--no-check"], {"STEPC_MAX_BYTES": str(limit)}
    )
    assert status == 0, err
    assert peak <= 1.5 * limit, f"peak RSS {peak / MiB:.0f} MiB over 1.5x the limit of {limit / MiB:.0f} MiB"


def test_run_data_over_the_limit_is_refused_from_the_header(tmp_path: Path) -> None:
    """What the data needs in memory as the program takes it is compared with the limit before
    reading: 2**25 rows of float32 `x` (512 MiB) under a 256 MiB limit."""
    data = zeros_npz(tmp_path / "data.npz", {"x": ("<f4", (2**25, 4)), "t": ("<f2", (2**25, 1))})
    status, err, peak, seconds = measured(
        ["run", LINREG, "--data", data, "--steps", "1", "--quiet", "--no-check"], {"STEPC_MAX_BYTES": "256M"}
    )
    assert_user_error(status, err, "memory limit", "STEPC_MAX_BYTES")
    assert peak < 500 * MiB and seconds < 30


def test_declared_shapes_are_checked_before_reading_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No member's data is read when any declared shape or dtype is wrong (--data, --init, exec)."""
    spec = train_data.signature(load(LINREG))
    wrong = write_npz(tmp_path / "d.npz", {"x": np.zeros((64, 4)), "t": np.zeros((64, 2))})
    wrong_init = write_npz(tmp_path / "i.npz", {"w": np.zeros((4, 1)), "b": np.zeros(2)})

    def no_reading(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("data read before the headers were checked")

    monkeypatch.setattr(np.lib.format, "read_array", no_reading)
    monkeypatch.setattr(np, "frombuffer", no_reading)
    with pytest.raises(StepcError, match=r"'t' has shape \(64, 2\)"):
        train_data.load_data(str(wrong), spec)
    with pytest.raises(StepcError, match=r"%b is tensor<1xf32>, the file holds shape \(2,\)"):
        train_data.load_params(wrong_init, spec)


def test_float_conversion_and_split_keep_their_values(tmp_path: Path) -> None:
    """The bounded reader gives what the plain one did: float64 rows cast to float32, the fixed
    80/20 split, big-endian and Fortran-ordered members."""
    rng = np.random.default_rng(5)
    x, t = rng.standard_normal((1000, 4)), rng.standard_normal((1000, 1))
    spec = train_data.signature(load(LINREG))
    for name, arrays in (("c", {"x": x, "t": t}), ("be", {"x": x.astype(">f8"), "t": t.astype(">f4")}),
                         ("f", {"x": np.asfortranarray(x), "t": t})):  # fmt: skip
        data = train_data.load_data(str(write_npz(tmp_path / f"{name}.npz", arrays)), spec)
        order = np.random.default_rng(train_data.SPLIT_SEED).permutation(1000)
        assert data.test is not None
        np.testing.assert_array_equal(data.test["x"], x[order[:200]].astype(np.float32))
        np.testing.assert_array_equal(data.train["x"], x[order[200:]].astype(np.float32))
        np.testing.assert_array_equal(data.train["t"], t[order[200:]].astype(np.float32))
        assert data.train["x"].dtype == np.float32


def test_batches_keep_their_order() -> None:
    """The epoch permutation (int32 now, to halve its memory) is NumPy's `permutation`."""
    data = {"x": np.arange(1000)}
    got = [b["x"] for _, b in zip(range(20), train_data.batches(data, 100, seed=4))]
    rng = np.random.default_rng(np.random.SeedSequence([4, 2]))
    orders = [rng.permutation(1000) for _ in range(2)]
    want = [data["x"][orders[e][i * 100 : (i + 1) * 100]] for e in range(2) for i in range(10)]
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# 4. Parameter names that are np.savez's own arguments


SAVEZ_NAMES = """\
func.func @names(%file: tensor<4x1xf32> {step.param}, %allow_pickle: tensor<1xf32> {step.param},
                 %args: tensor<1xf32> {step.param},
                 %x: tensor<32x4xf32>, %t: tensor<32x1xf32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.01>} {
  %xw = step.matmul %x, %file : (tensor<32x4xf32>, tensor<4x1xf32>) -> tensor<32x1xf32>
  %y = step.add %xw, %allow_pickle : (tensor<32x1xf32>, tensor<1xf32>) -> tensor<32x1xf32>
  %z = step.add %y, %args : (tensor<32x1xf32>, tensor<1xf32>) -> tensor<32x1xf32>
  %loss = step.mse %z, %t : (tensor<32x1xf32>, tensor<32x1xf32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}
"""


def test_atomic_write_npz_keeps_every_name(tmp_path: Path) -> None:
    arrays = {name: np.full(2, i, np.float32) for i, name in enumerate(["file", "allow_pickle", "args", "kwds",
                                                                          "x.y", "grad.w", "momentum.file"])}  # fmt: skip
    files.atomic_write_npz(tmp_path / "o.npz", arrays)
    with np.load(tmp_path / "o.npz", allow_pickle=False) as saved:
        assert sorted(saved.files) == sorted(arrays)
        for key, value in arrays.items():
            np.testing.assert_array_equal(saved[key], value)
    assert [p.name for p in tmp_path.iterdir()] == ["o.npz"]  # no temporary left


def test_exec_and_run_keep_parameters_named_like_savez_options(tmp_path: Path) -> None:
    program = tmp_path / "names.ir"
    program.write_text(SAVEZ_NAMES)
    rng = np.random.default_rng(1)
    inputs = {"file": rng.standard_normal((4, 1)), "allow_pickle": np.zeros(1), "args": np.ones(1),
              "x": rng.standard_normal((32, 4)), "t": rng.standard_normal((32, 1))}  # fmt: skip
    inputs = {k: v.astype(np.float32) for k, v in inputs.items()}
    write_npz(tmp_path / "in.npz", inputs)
    status, _, err = run_cli(["exec", program, "--inputs", tmp_path / "in.npz", "-o", tmp_path / "out.npz", "--no-check"])
    assert status == 0, err
    with np.load(tmp_path / "out.npz") as out:
        assert {"file", "allow_pickle", "args", "loss"} <= set(out.files), out.files
    data = write_npz(tmp_path / "d.npz", {"x": inputs["x"], "t": inputs["t"]})
    status, _, err = run_cli(["run", program, "--data", data, "--steps", "2", "--quiet", "--no-check",
                              "--out", tmp_path / "run"])  # fmt: skip
    assert status == 0, err
    with np.load(tmp_path / "run" / "params.npz") as params:
        assert sorted(params.files) == ["allow_pickle", "args", "file"]


# ---------------------------------------------------------------------------------------------
# 13. NaN into exec; 100,000 unknown keys; held-out keys; the --init overflow warning


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_exec_refuses_non_finite_inputs(tmp_path: Path, bad: float) -> None:
    arrays = linreg_arrays()
    arrays["x"][3, 1] = bad
    write_npz(tmp_path / "in.npz", arrays)
    status, _, err = run_cli(["exec", LINREG, "--inputs", tmp_path / "in.npz", "-o", tmp_path / "o.npz", "--no-check"])
    assert_user_error(status, err, "'x'", "non-finite")
    assert not (tmp_path / "o.npz").exists()


@pytest.fixture(scope="module")
def many_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """linreg's four arrays (64 rows) and 100,000 unknown keys."""
    path = tmp_path_factory.mktemp("many") / "many.npz"
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.zeros(1, np.float32))
    tiny = buffer.getvalue()
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in linreg_arrays(n=64).items():
            one = io.BytesIO()
            np.lib.format.write_array(one, value)
            archive.writestr(f"{key}.npy", one.getvalue())
        for i in range(100_000):
            archive.writestr(f"junk{i:06d}.npy", tiny)
    return path


def test_unknown_keys_are_listed_up_to_ten(many_keys: Path, tmp_path: Path) -> None:
    status, _, err = run_cli(["exec", LINREG, "--inputs", many_keys, "-o", tmp_path / "o.npz", "--no-check"])
    assert_user_error(status, err, "'junk000000'", "and 99990 more")
    assert len(err) < 2000, len(err)
    status, _, err = run_cli(["run", LINREG, "--data", many_keys, "--steps", "1", "--quiet", "--no-check"])
    assert_user_error(status, err, "junk000000", "and 99992 more")  # w and b are no data keys either
    assert len(err) < 2000, len(err)


TEST_NAMES = """\
func.func @names(%w: tensor<4x1xf32> {step.param}, %t: tensor<32x4xf32>,
                 %test.t: tensor<32x1xf32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.01>} {
  %y = step.matmul %t, %w : (tensor<32x4xf32>, tensor<4x1xf32>) -> tensor<32x1xf32>
  %loss = step.mse %y, %test.t : (tensor<32x1xf32>, tensor<32x1xf32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}
"""


def test_inputs_named_t_and_test_t_can_be_trained(tmp_path: Path) -> None:
    """Held-out data goes under `test/NAME` ('/' is in no IR name), so `%t` and `%test.t` are
    plain keys; `test.NAME` still means held-out when no input's name starts with `test.`."""
    program = tmp_path / "names.ir"
    program.write_text(TEST_NAMES)
    spec = train_data.signature(load_text(TEST_NAMES, str(program)))
    rng = np.random.default_rng(2)
    t, tt = rng.standard_normal((100, 4)), rng.standard_normal((100, 1))
    data = train_data.load_data(str(write_npz(tmp_path / "a.npz", {"t": t, "test.t": tt})), spec)
    assert (data.n_train, data.n_test) == (80, 20)
    held = write_npz(tmp_path / "b.npz", {"t": t, "test.t": tt, "test/t": t[:10], "test/test.t": tt[:10]})
    data = train_data.load_data(str(held), spec)
    assert (data.n_train, data.n_test) == (100, 10) and data.test is not None
    np.testing.assert_array_equal(data.test["test.t"], tt[:10].astype(np.float32))
    with pytest.raises(StepcError, match=r"test\.test\.t"):  # no alias when an input starts with `test.`
        train_data.load_data(str(write_npz(tmp_path / "c.npz", {"t": t, "test.t": tt, "test.test.t": tt})), spec)
    status, _, err = run_cli(["run", program, "--data", tmp_path / "a.npz", "--steps", "3", "--no-check", "--quiet"])
    assert status == 0, err
    # the older spelling of held-out keys still works for ordinary names
    lin = train_data.signature(load(LINREG))
    x, y = rng.standard_normal((100, 4)), rng.standard_normal((100, 1))
    data = train_data.load_data(str(write_npz(tmp_path / "d.npz", {"x": x, "t": y, "test.x": x[:7], "test.t": y[:7]})), lin)
    assert (data.n_train, data.n_test) == (100, 7)
    with pytest.raises(StepcError, match="both"):  # the same held-out input spelled two ways
        train_data.load_data(str(write_npz(tmp_path / "e.npz", {"x": x, "t": y, "test.x": x[:7], "test/x": x[:7],
                                                                 "test.t": y[:7]})), lin)  # fmt: skip


def test_init_overflow_is_a_message_without_a_numpy_warning(tmp_path: Path) -> None:
    init = write_npz(tmp_path / "init.npz", {"w": np.full((4, 1), 1e300), "b": np.zeros(1)})
    data = write_npz(tmp_path / "d.npz", {"x": np.zeros((64, 4)), "t": np.zeros((64, 1))})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status, _, err = run_cli(["run", LINREG, "--data", data, "--init", init, "--steps", "1", "--quiet",
                                  "--no-check"])  # fmt: skip
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]
    assert_user_error(status, err, "%w", "too large for float32")


def npy_header(shape_text: str, descr: str = "<f4") -> bytes:
    """A version 1.0 `.npy` header declaring `shape_text` literally (no data after it)."""
    text = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape_text + ", }"
    text += " " * ((64 - (10 + len(text) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode()


@pytest.mark.parametrize("shape_text", ["(" + "9" * 4000 + ", 4)", "(-5, 4)", f"({2**40}, {2**40})"],
                         ids=["4000 digits", "negative", "2**80 elements"])  # fmt: skip
def test_absurd_declared_shapes_are_short_errors(tmp_path: Path, shape_text: str) -> None:
    """(Finding 8, in tools/files.py.) A header declaring a dimension of 4,000 digits, a negative
    one, or more elements than a 64-bit size counts: a one-line error for every reader."""
    path = tmp_path / "h.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", npy_header(shape_text))
        archive.writestr("t.npy", npy_header("(64, 1)") + bytes(256))
    for argv in (["run", LINREG, "--data", path, "--steps", "1", "--quiet", "--no-check"],
                 ["run", LINREG, "--init", path, "--steps", "1", "--quiet", "--no-check"],
                 ["exec", LINREG, "--inputs", path, "-o", tmp_path / "o.npz", "--no-check"]):  # fmt: skip
        status, _, err = run_cli(argv)
        assert_user_error(status, err)
        assert len(err) < 1000, err[:2000]


def test_fuzzed_archives_are_user_errors(tmp_path: Path) -> None:
    """Found by `tools/fuzz_surface.py --surface npz`: a header the tokenizer cannot end (500
    braces, format 2.0) and a member with an empty name were internal errors."""
    braces = "{" * 500
    braces += " " * ((64 - (12 + len(braces) + 1) % 64) % 64) + "\n"
    cases = {
        "braces": {"w.npy": b"\x93NUMPY\x02\x00" + struct.pack("<I", len(braces)) + braces.encode()},
        "empty name": {"": npy_header("(64, 4)") + bytes(1024)},
    }
    for name, members in cases.items():
        path = tmp_path / f"{name}.npz"
        with zipfile.ZipFile(path, "w") as archive:
            for member, content in members.items():
                archive.writestr(zipfile.ZipInfo(member), content)  # (a str name of '' fails in zipfile)
        for argv in (["run", LINREG, "--data", path, "--steps", "1", "--quiet", "--no-check"],
                     ["exec", LINREG, "--inputs", path, "-o", tmp_path / "o.npz", "--no-check"]):  # fmt: skip
            status, _, err = run_cli(argv)
            assert_user_error(status, err)
