"""`stepc opt` reads a program at any stage, like `xdsl-opt`: the input and every dump of
`stepc compile --dump-dir`, and runs any pass whose input form that stage has."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from stepc.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dumps(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    directory = tmp_path_factory.mktemp("dumps")
    assert main(["compile", str(ROOT / "examples" / "mlp_digits.ir"), "--no-check", "--dump-dir", str(directory),
                 "-o", str(directory / "out.mlir")]) == 0
    return sorted(directory.glob("[0-9][0-9]-*.mlir"))


def pass_of(dump: Path) -> str:
    return dump.stem.split("-", 1)[1]


def test_every_dump_runs_the_next_pass_to_the_next_dump(dumps: list[Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Dump k through pass k+1, with the pass's contract checked, prints exactly dump k+1: each
    stage reads back, the pass accepts it, and reading it back changed nothing."""
    assert [pass_of(d) for d in dumps][:2] == ["input", "differentiate"] and len(dumps) == 11
    for before, after in itertools.pairwise(dumps):
        out = tmp_path / f"{after.stem}.mlir"
        # --check: each pass also meets its contract (the independent oracle) on the stage it read.
        assert main(["opt", str(before), "-p", pass_of(after), "--check", "-o", str(out)]) == 0, (
            before.name, pass_of(after),
        )  # fmt: skip
        assert out.read_text() == after.read_text(), (before.name, pass_of(after))


def test_seed_dump_through_fuse_sgd_with_its_contract(dumps: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's example: `stepc opt 04-seed-scalar-loss.mlir -p fuse-sgd`, contract checked."""
    seeded = next(d for d in dumps if pass_of(d) == "seed-scalar-loss")
    assert main(["opt", str(seeded), "-p", "fuse-sgd", "--check"]) == 0
    assert '{step.state = "momentum.w1"}' in capsys.readouterr().out


def test_every_dump_parses_with_no_pass(dumps: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    for dump in dumps:
        assert main(["opt", str(dump)]) == 0, dump.name
        assert capsys.readouterr().out == dump.read_text(), dump.name


def test_a_pass_on_the_wrong_stage_names_the_pass_to_run_first(dumps: list[Path],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    differentiated = next(d for d in dumps if pass_of(d) == "differentiate")
    assert main(["opt", str(differentiated), "-p", "fuse-sgd"]) == 1
    assert "run seed-scalar-loss first" in capsys.readouterr().err


def test_a_program_as_written_still_gets_every_function_rule(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Reading any stage does not loosen the rules of a program as written: two unnamed results
    are still the located error of a step that must return one loss."""
    path = tmp_path / "two.ir"
    path.write_text(
        "func.func @f(%w: tensor<3xf32> {step.param}) -> (tensor<f32>, tensor<f32>)\n"
        "    attributes {step.sgd = #step.sgd<lr = 0.1>} {\n"
        "  %s = step.sum %w : tensor<3xf32> -> tensor<f32>\n"
        "  func.return %s, %s : tensor<f32>, tensor<f32>\n}\n"
    )
    assert main(["opt", str(path)]) == 1
    assert "a step returns exactly one value" in capsys.readouterr().err
