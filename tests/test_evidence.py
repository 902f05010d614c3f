"""Artifacts carry their evidence: `stepc compile --emit stablehlo|jax-py` outputs begin with a
header naming the source's hash, the versions, the options, the passes and each contract's
row; `stepc check --artifact OUT STEP.ir` re-checks it against a fresh compilation.

Oracles: `hashlib` on the source's bytes, `importlib.metadata` for the versions, the default
pipeline's pass list, and artifacts altered by hand (source, body, header) for the failures.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import io
from pathlib import Path

import jax
import pytest

from stepc import __version__
from stepc.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent
LINREG = ROOT / "examples" / "linreg.ir"
PASSES = ["differentiate", "cse", "dce", "seed-scalar-loss", "canonicalize", "fuse-sgd", "cse", "dce",
          "lower-to-stablehlo", "simplify-stablehlo"]  # fmt: skip


def cli(argv: list[object]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("artifacts")
    (d / "linreg.ir").write_bytes(LINREG.read_bytes())
    assert cli(["compile", d / "linreg.ir", "-o", d / "linreg.mlir"])[0] == 0
    assert cli(["compile", d / "linreg.ir", "--emit", "jax-py", "-o", d / "linreg_jax.py"])[0] == 0
    return d


@pytest.mark.parametrize(("name", "prefix", "emit"), [("linreg.mlir", "// ", "stablehlo"), ("linreg_jax.py", "# ", "jax-py")])
def test_the_header_names_source_versions_pipeline_and_contracts(artifacts: Path, name: str, prefix: str, emit: str) -> None:
    lines = (artifacts / name).read_text().split("\n")
    header = [line.removeprefix(prefix) for line in lines[: lines.index(f"{prefix}end of stepc artifact header") + 1]]
    assert all(line.startswith(prefix) for line in lines[: len(header)])
    fields = dict(line.split(": ", 1) for line in header[1:-1] if not line.startswith("contract:"))
    assert fields["source-sha256"] == hashlib.sha256((artifacts / "linreg.ir").read_bytes()).hexdigest()
    assert fields["versions"] == (f"stepc {__version__}, jax {jax.__version__}, jaxlib {importlib.metadata.version('jaxlib')}, "
                                  f"xdsl {importlib.metadata.version('xdsl')}")  # fmt: skip
    assert fields["compile"] == f"--emit {emit} --trials 3 --check-mode auto"
    assert fields["pipeline"].split(", ") == PASSES
    rows = [line.removeprefix("contract: ").split("; ") for line in header if line.startswith("contract: ")]
    assert [row[0] for row in rows] == PASSES  # one row per pass, every pass has a contract
    for row in rows:
        assert row[2].startswith("trials ") and row[3].startswith("worst error ") and "(abs " in row[3]
        assert row[4].startswith("tolerance: rounding-error bound (") and row[5] == "ok"


def test_the_python_artifact_still_imports(artifacts: Path) -> None:
    spec = importlib.util.spec_from_file_location("linreg_jax", artifacts / "linreg_jax.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.step) and module.__doc__ and module.__doc__.startswith("A training step compiled by stepc")


def test_check_artifact_holds_for_an_untouched_artifact(artifacts: Path) -> None:
    for name in ("linreg.mlir", "linreg_jax.py"):
        status, out, err = cli(["check", "--artifact", artifacts / name, artifacts / "linreg.ir"])
        assert status == 0, err
        assert "the same text as compiling it now, and every contract holds" in out
        assert out.count("; ok; ") == len(PASSES)


def test_check_artifact_names_a_changed_source(artifacts: Path, tmp_path: Path) -> None:
    changed = tmp_path / "linreg.ir"
    changed.write_text(LINREG.read_text().replace("lr = 0.01", "lr = 0.02"))
    status, _, err = cli(["check", "--artifact", artifacts / "linreg.mlir", changed])
    assert status == 1
    digest = hashlib.sha256(changed.read_bytes()).hexdigest()
    assert "the source differs" in err and f"{changed} has sha256 {digest}" in err and "Traceback" not in err


def test_check_artifact_names_an_edited_line(artifacts: Path, tmp_path: Path) -> None:
    text = (artifacts / "linreg.mlir").read_text()
    lines = text.split("\n")
    target = next(i for i, line in enumerate(lines) if "stablehlo.dot_general" in line)
    lines[target] = lines[target].replace("stablehlo.dot_general", "stablehlo.dot_general ", 1)
    edited = tmp_path / "edited.mlir"
    edited.write_text("\n".join(lines))
    status, _, err = cli(["check", "--artifact", edited, artifacts / "linreg.ir"])
    assert status == 1
    assert f"the text differs from the compilation of {artifacts / 'linreg.ir'} at line {target + 1}:" in err


def test_check_artifact_names_other_versions(artifacts: Path, tmp_path: Path) -> None:
    text = (artifacts / "linreg_jax.py").read_text()
    old = tmp_path / "old.py"
    old.write_text(text.replace(f"# versions: stepc {__version__},", "# versions: stepc 0.0.1,", 1))
    status, _, err = cli(["check", "--artifact", old, artifacts / "linreg.ir"])
    assert status == 1
    assert "the versions differ: the artifact was made by stepc 0.0.1" in err


def test_check_artifact_refuses_a_file_without_a_header(tmp_path: Path) -> None:
    plain = tmp_path / "plain.mlir"
    plain.write_text("module {}\n")
    status, _, err = cli(["check", "--artifact", plain, LINREG])
    assert status == 1 and "has no stepc artifact header" in err
