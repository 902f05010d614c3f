"""`stepc check`: the contract table for every example, and `--pass NAME BEFORE AFTER` on dumps,
including a hand-broken one (a `step.add` of the backward part turned into `step.sub`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stepc.passes import DEFAULT_PIPELINE
from stepc.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.ir"))

# A residual layer: %h is read twice, so the backward part adds two cotangents (a step.add).
RESIDUAL = """\
func.func @residual(%w1: tensor<4x4xf32> {step.param}, %w2: tensor<4x4xf32> {step.param},
                    %x: tensor<8x4xf32>, %t: tensor<8x4xf32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %a = step.matmul %x, %w1 : (tensor<8x4xf32>, tensor<4x4xf32>) -> tensor<8x4xf32>
  %h = step.tanh %a : tensor<8x4xf32>
  %g = step.matmul %h, %w2 : (tensor<8x4xf32>, tensor<4x4xf32>) -> tensor<8x4xf32>
  %y = step.add %h, %g : (tensor<8x4xf32>, tensor<8x4xf32>) -> tensor<8x4xf32>
  %loss = step.mse %y, %t : (tensor<8x4xf32>, tensor<8x4xf32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}
"""


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_check_every_example(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(example), "--trials", "2"]) == 0
    out = capsys.readouterr().out
    print(out)  # the table, for the record (pytest -s)
    lines = out.splitlines()
    rows = [line.split() for line in lines[2:-1]]
    assert [row[0] for row in rows] == list(DEFAULT_PIPELINE)
    assert all("ok" in row for row in rows)
    assert "FAILED" not in out
    assert lines[-1].startswith("contracts: ") and "--check-mode auto" in lines[-1]


def dumps(tmp_path: Path, until: str) -> Path:
    source = tmp_path / "residual.ir"
    source.write_text(RESIDUAL)
    out = tmp_path / "dumps"
    assert main(["compile", str(source), "--emit", "step", "--until", until, "--dump-dir", str(out), "-o",
                 str(tmp_path / "out.mlir")]) == 0  # fmt: skip
    return out


def test_check_pass_differentiate_on_its_dump_and_on_a_broken_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = dumps(tmp_path, "differentiate")
    before, after = out / "00-input.mlir", out / "01-differentiate.mlir"
    assert main(["check", "--pass", "differentiate", str(before), str(after)]) == 0
    assert " ok " in capsys.readouterr().out

    lines = after.read_text().splitlines()
    first_backward = next(i for i, line in enumerate(lines) if "%loss = " in line) + 1
    index = next(i for i in range(first_backward, len(lines)) if " = step.add " in lines[i])
    lines[index] = lines[index].replace(" = step.add ", " = step.sub ")
    broken = tmp_path / "01-differentiate-broken.mlir"
    broken.write_text("\n".join(lines) + "\n")
    assert main(["check", "--pass", "differentiate", str(before), str(broken)]) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.out
    assert "contract of pass differentiate" in captured.err
    assert "worst output grad." in captured.err and "times its rounding-error bound" in captured.err


def test_check_pass_seed_scalar_loss(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = dumps(tmp_path, "seed-scalar-loss")
    names = sorted(p.name for p in out.iterdir())
    before = out / names[names.index("04-seed-scalar-loss.mlir") - 1]
    after = out / "04-seed-scalar-loss.mlir"
    assert main(["check", "--pass", "seed-scalar-loss", str(before), str(after)]) == 0
    # A different seed: the loss's cotangent becomes 2, not 1.
    after.write_text(after.read_text().replace("%loss_cotangent = step.constant 1.0", "%loss_cotangent = step.constant 2.0"))
    assert main(["check", "--pass", "seed-scalar-loss", str(before), str(after)]) == 1
    assert "contract of pass seed-scalar-loss" in capsys.readouterr().err


def test_check_pass_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "residual.ir"
    source.write_text(RESIDUAL)
    assert main(["check", "--pass", "differentiate", str(source)]) == 1
    assert "takes two programs" in capsys.readouterr().err
    assert main(["check", "--pass", "no-such-pass", str(source), str(source)]) == 1
    assert "no such pass" in capsys.readouterr().err


def test_check_file_reports_a_broken_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from stepc.ir.dialect import TanhOp
    from stepc.passes import vjp

    correct = vjp.VJP_RULES[TanhOp]
    monkeypatch.setitem(vjp.VJP_RULES, TanhOp, lambda emit, op, ct: correct(emit, op, emit(vjp.NegOp(ct))))
    source = tmp_path / "residual.ir"
    source.write_text(RESIDUAL)
    assert main(["check", str(source), "--trials", "1"]) == 1
    captured = capsys.readouterr()
    assert "differentiate" in captured.out and "FAILED" in captured.out
    assert "contract of pass differentiate" in captured.err and "grad.w1" in captured.err


def test_a_split_is_checked_at_reduced_shapes_with_its_sizes_kept() -> None:
    """A slice holds sizes in its attributes (a qkv split, as imported models have): those sizes
    and the sliced dims stay at full size, the others (the batch) shrink; the pass's own slices
    and pads are matched under the map by the commuting check."""
    from stepc.ir.parse import load_text
    from stepc.pipeline import Pipeline

    text = """func.func @split(%w: tensor<24x96xf32> {step.param}, %x: tensor<64x24xf32>, %t: tensor<64x32xf32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %h = step.matmul %x, %w : (tensor<64x24xf32>, tensor<24x96xf32>) -> tensor<64x96xf32>
  %q = step.slice %h start [0, 0] limit [64, 32] : tensor<64x96xf32> -> tensor<64x32xf32>
  %k = step.slice %h start [0, 32] limit [64, 64] : tensor<64x96xf32> -> tensor<64x32xf32>
  %v = step.slice %h start [0, 64] limit [64, 96] : tensor<64x96xf32> -> tensor<64x32xf32>
  %a = step.mul %q, %k : (tensor<64x32xf32>, tensor<64x32xf32>) -> tensor<64x32xf32>
  %b = step.add %a, %v : (tensor<64x32xf32>, tensor<64x32xf32>) -> tensor<64x32xf32>
  %loss = step.mse %b, %t : (tensor<64x32xf32>, tensor<64x32xf32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}
"""
    events = Pipeline(["differentiate", "seed-scalar-loss"], check=True, trials=2, check_mode="reduced").run(
        load_text(text, "split.ir"))
    for event in events[1:]:
        assert event.report is not None and event.report.ok
        assert event.report.mode.split(",")[0] == "reduced", event.report.mode
