"""No lost files: outputs are written atomically, inputs are never overwritten, and a failure
midway leaves what was there before (earlier outputs complete, older files unchanged)."""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from stepc.ir.diagnostics import StepcError
from stepc.ir.parse import parse_text
from stepc.tools import files
from stepc.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent
LINREG = (ROOT / "examples" / "linreg.ir").read_text()
BROKEN = LINREG.replace("step.add", "step.nope")
PRECIOUS = "precious: the user's own file\n"


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def program(tmp_path: Path) -> Path:
    path = tmp_path / "linreg.ir"
    path.write_text(LINREG)
    return path


# ---------------------------------------------------------------------------------------------
# atomic_write itself


def test_atomic_write_replaces_and_keeps_mode(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    os.chmod(target, 0o640)
    files.atomic_write(target, "new")
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    files.atomic_write(tmp_path / "sub" / "dir" / "b.bin", b"\x00\x01")
    assert (tmp_path / "sub" / "dir" / "b.bin").read_bytes() == b"\x00\x01"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("fail_in", ["fsync", "replace", "chmod"])
def test_failure_midway_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_in: str) -> None:
    target = tmp_path / "out.txt"
    target.write_text(PRECIOUS)

    def no_space(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, fail_in, no_space)
    with pytest.raises(StepcError, match="No space left on device"):
        files.atomic_write(target, "x" * 10000)
    monkeypatch.undo()
    assert target.read_text() == PRECIOUS
    assert leftovers(tmp_path) == []


def test_interrupt_midway_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.txt"
    target.write_text(PRECIOUS)

    def interrupted(*args):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(target, "new")
    monkeypatch.undo()
    assert target.read_text() == PRECIOUS
    assert leftovers(tmp_path) == []


def test_symlink_is_followed_not_replaced(tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    files.atomic_write(link, "new")
    assert link.is_symlink() and real.read_text() == "new"


def test_devices_and_directories(tmp_path: Path) -> None:
    files.atomic_write("/dev/null", "discarded")  # written in place, /dev/null stays a device
    assert Path("/dev/null").is_char_device()
    with pytest.raises(StepcError, match="is a directory"):
        files.atomic_write(tmp_path, "x")


def test_npz_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "params.npz"
    files.atomic_write_npz(target, {"w": np.arange(3.0)})
    with np.load(target) as data:
        np.testing.assert_array_equal(data["w"], np.arange(3.0))

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(files.os, "fsync", broken)
    with pytest.raises(StepcError):
        files.atomic_write_npz(target, {"w": np.zeros(3)})
    monkeypatch.undo()
    with np.load(target) as data:
        np.testing.assert_array_equal(data["w"], np.arange(3.0))


# ---------------------------------------------------------------------------------------------
# Never overwrite an input


def test_refuses_to_overwrite_the_input(program: Path) -> None:
    for argv in (
        ["compile", program, "--emit", "step", "--no-check", "-o", program],
        ["opt", program, "-o", program],
        ["compile", program, "--emit", "step", "--no-check", "-o", program.parent / ".." / program.parent.name / program.name],
    ):
        status, _, err = run_cli(argv)
        assert status == 1 and "refusing to overwrite the input file" in err, err
        assert program.read_text() == LINREG


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_refuses_to_overwrite_the_input_through_a_link(program: Path, link: str) -> None:
    alias = program.parent / "alias.mlir"
    if link == "symlink":
        alias.symlink_to(program)
    else:
        os.link(program, alias)
    status, _, err = run_cli(["opt", program, "-o", alias])
    assert status == 1 and "refusing to overwrite the input file" in err
    assert program.read_text() == LINREG


def test_dump_dir_holding_the_input_is_refused(tmp_path: Path) -> None:
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    program = dumps / "00-input.mlir"  # the name the first dump would take
    program.write_text(LINREG)
    status, _, err = run_cli(["compile", program, "--emit", "step", "--no-check", "--dump-dir", dumps])
    assert status == 1 and "refusing to overwrite the input file" in err, err
    assert program.read_text() == LINREG
    assert leftovers(dumps) == []


@pytest.mark.skipif(not has("stepc.tools.exec_cmd"), reason="stepc exec is not built yet")
def test_exec_refuses_to_write_over_its_inputs(program: Path) -> None:
    inputs = program.parent / "in.npz"
    rng = np.random.default_rng(0)
    arrays = {"w": rng.standard_normal((4, 1)), "b": rng.standard_normal(1), "x": rng.standard_normal((32, 4)),
              "t": rng.standard_normal((32, 1))}  # fmt: skip
    np.savez(inputs, **{k: v.astype(np.float32) for k, v in arrays.items()})
    before = inputs.read_bytes()
    status, _, err = run_cli(["exec", program, "--inputs", inputs, "-o", inputs, "--no-check"])
    assert status == 1 and "refusing to overwrite" in err, err
    assert inputs.read_bytes() == before


@pytest.mark.skipif(not has("stepc.tools.run_cmd"), reason="stepc run is not built yet")
def test_run_out_dir_holding_an_input_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    program = out / "summary.json"  # an input that --out would overwrite
    program.write_text(LINREG)
    status, _, err = run_cli(["run", program, "--steps", "1", "--quiet", "--out", out])
    assert status == 1 and "refusing to overwrite the input file" in err, err
    assert program.read_text() == LINREG


# ---------------------------------------------------------------------------------------------
# A failure leaves earlier outputs intact


@pytest.mark.parametrize("emit", ["step", "stablehlo", "jax-py"])
def test_failing_compile_keeps_the_existing_output(tmp_path: Path, emit: str) -> None:
    if emit == "jax-py" and not has("stepc.backends.jax_py"):
        pytest.skip("--emit jax-py is not built yet")
    program = tmp_path / "broken.ir"
    program.write_text(BROKEN)
    out = tmp_path / "out.txt"
    out.write_text(PRECIOUS)
    status, _, err = run_cli(["compile", program, "--emit", emit, "--no-check", "-o", out])
    assert status == 1 and err.startswith(f"{program}:6:"), err
    assert out.read_text() == PRECIOUS
    assert leftovers(tmp_path) == []


def _failing_pass(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make the pass `name` fail when it runs (as a pass with a bug would)."""
    from xdsl.utils.exceptions import PassFailedException

    from stepc.passes import get_all_passes

    cls = get_all_passes()[name]()

    def apply(self, ctx, module):  # type: ignore[no-untyped-def]
        raise PassFailedException(f"{name} gave up (injected by the test)")

    monkeypatch.setattr(cls, "apply", apply)


def test_partially_failing_pipeline_leaves_complete_earlier_dumps(
    program: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stepc.passes import DEFAULT_PIPELINE

    failing = "fuse-sgd"
    try:
        _failing_pass(monkeypatch, failing)
    except ImportError:
        pytest.skip("fuse-sgd is not built yet")
    dumps = tmp_path / "dumps"
    out = tmp_path / "out.mlir"
    out.write_text(PRECIOUS)
    status, _, err = run_cli(["compile", program, "--emit", "step", "--no-check", "--dump-dir", dumps, "-o", out])
    assert status == 1 and "fuse-sgd" in err
    assert out.read_text() == PRECIOUS
    before_failure = DEFAULT_PIPELINE[: DEFAULT_PIPELINE.index(failing)]
    expected = ["00-input.mlir"] + [f"{i:02d}-{n}.mlir" for i, n in enumerate(before_failure, start=1)]
    assert sorted(p.name for p in dumps.iterdir()) == expected
    for dump in dumps.iterdir():  # each earlier dump is whole: it parses back
        parse_text(dump.read_text(), str(dump))


def test_failing_dump_write_keeps_earlier_dumps_whole(
    program: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash while writing the third dump leaves the first two whole and no half third."""
    dumps = tmp_path / "dumps"
    real_replace = os.replace
    calls = {"n": 0}

    def replace(src, dst):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    status, _, err = run_cli(["compile", program, "--emit", "step", "--no-check", "--dump-dir", dumps])
    assert status == 1 and "No space left on device" in err, err
    written = sorted(p.name for p in dumps.iterdir())
    assert len(written) == 2 and leftovers(dumps) == []
    for dump in dumps.iterdir():
        parse_text(dump.read_text(), str(dump))


@pytest.mark.skipif(not has("stepc.tools.exec_cmd"), reason="stepc exec is not built yet")
def test_failing_exec_keeps_the_existing_output(program: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in.npz"
    np.savez(inputs, w=np.zeros((4, 1), np.float32))  # b, x and t missing
    out = tmp_path / "out.npz"
    out.write_text(PRECIOUS)
    status, _, err = run_cli(["exec", program, "--inputs", inputs, "-o", out, "--no-check"])
    assert status == 1, err
    assert out.read_text() == PRECIOUS


# ---------------------------------------------------------------------------------------------
# Every writer goes through atomic_write

# (file, function or call) that may write directly, and why
ALLOWED_DIRECT_WRITES = {
    ("tools/files.py", "_write_in_place"),  # devices and FIFOs cannot be renamed over
    ("tools/files.py", "atomic_write"),  # the temporary file itself
    ("tools/fuzz.py", "campaign"),  # the fuzzer's own scratch input and crash files
    # the surface fuzzer's scratch files: hostile inputs laid out for a case, and its crash records
    ("tools/fuzz_surface.py", "npz_of_zeros"),
    ("tools/fuzz_surface.py", "run_process"),
    ("tools/fuzz_surface.py", "lay_out"),
    ("tools/fuzz_surface.py", "record"),
}
DIRECT_WRITES = {"write_text", "write_bytes", "tofile", "copyfile", "copy2", "move"}
SHUTIL_ONLY = {"copy"}  # `shutil.copy` writes a file; `array.copy()` does not
SAVES = {"savez", "savez_compressed", "save", "savefig"}  # fine into an in-memory buffer
BUFFERS = {"buffer", "buf", "stream"}


def _is_write(call: ast.Call) -> bool:
    func = call.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    if called in DIRECT_WRITES:
        return True
    if called in SHUTIL_ONLY:
        return isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "shutil"
    if called == "open":
        mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
        return isinstance(mode, ast.Constant) and any(c in str(mode.value) for c in "wax+")
    if called in SAVES and call.args:
        first = call.args[0]
        into_memory = (isinstance(first, ast.Name) and first.id in BUFFERS) or (
            isinstance(first, ast.Call) and getattr(first.func, "attr", "") == "BytesIO"
        )
        return not into_memory
    return False


def _direct_writes(path: Path) -> list[str]:
    """`function:line` of each call in `path` that writes a file other than through atomic_write."""
    found: list[str] = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Call) and _is_write(child):
                found.append(f"{name}:{child.lineno}")
            visit(child, name)

    visit(ast.parse(path.read_text()), "<module>")
    rel = str(path.relative_to(ROOT))
    return [w for w in found if (rel, w.split(":")[0]) not in ALLOWED_DIRECT_WRITES]


def test_every_writer_goes_through_atomic_write() -> None:
    sources = [*sorted((ROOT / "tools").glob("*.py")), *sorted((ROOT / "backends").glob("*.py"))]
    if (ROOT / "api.py").exists():
        sources.append(ROOT / "api.py")
    offenders = {str(p.relative_to(ROOT)): w for p in sources if (w := _direct_writes(p))}
    assert offenders == {}, f"outputs written without tools/files.atomic_write: {offenders}"
