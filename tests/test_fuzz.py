"""Fuzzing: every mutated program compiles or fails with `FILE:LINE:COL: error:` and status 1.

The fast campaign runs in CI in-process (`stepc.tools.cli.main`), with a fixed seed; a few
inputs go through the real `stepc` command in a subprocess to prove exit status and the
absence of tracebacks end to end. The long campaign is `python -m stepc.tools.fuzz`
(docs/robustness.md).
"""

from __future__ import annotations

import os
import random
import shutil
import sys
from pathlib import Path

import pytest

from stepc.tools import fuzz

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.ir"))
CI_INPUTS = 600
CI_SEED = 20240607
TIMEOUT = 10.0  # seconds per input; the slowest seen is well under one


@pytest.fixture(scope="module")
def pipeline() -> list[str]:
    """The passes of the default pipeline that compile every example (all of them, once built)."""
    return fuzz.working_pipeline(EXAMPLES)


@pytest.fixture(autouse=True)
def small_memory_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # a mutated shape may ask for gigabytes: the estimate must refuse it, not the machine
    monkeypatch.setenv("STEPC_MAX_BYTES", "256M")


def test_fast_fuzz_campaign(pipeline: list[str], tmp_path: Path) -> None:
    summary = fuzz.campaign(
        count=CI_INPUTS, seed=CI_SEED, timeout=TIMEOUT, passes=pipeline, crash_dir=tmp_path / "crashes",
        corpus_files=EXAMPLES, workdir=tmp_path,
    )  # fmt: skip
    print("\n" + summary.table())
    assert summary.tried == CI_INPUTS
    assert summary.tracebacks == 0, summary.table()
    assert summary.hangs == 0, summary.table()
    assert not summary.findings, summary.table()
    # the campaign exercises both sides: some inputs still compile, most are refused
    assert summary.kinds["compiled"] > 0 and summary.kinds["error"] > CI_INPUTS // 2


def test_every_mutation_changes_programs() -> None:
    text = EXAMPLES[0].read_text()
    for name, mutation in fuzz.MUTATIONS:
        rng = random.Random(1)
        changed = sum(mutation(rng, text) != text for _ in range(20))
        assert changed >= 10, f"mutation {name} rarely changes the program"


def test_generation_is_deterministic() -> None:
    corpus = fuzz.load_corpus(EXAMPLES)
    first = [i.data for i in fuzz.generate(corpus, 5, 50)]
    again = [i.data for i in fuzz.generate(corpus, 5, 50)]
    assert first == again
    assert len(set(first)) > 40


def _linreg() -> str:
    return (ROOT / "examples" / "linreg.ir").read_text()


# Inputs that once crashed or hung stepc (or would in a naive parser), and what must happen.
HOSTILE: tuple[tuple[str, bytes], ...] = (
    ("first character unlexable", b"'z"),
    ("control character first", b"\x13{"),
    ("empty file", b""),
    ("only a comment", b"// nothing here\n"),
    ("NUL bytes", _linreg().encode().replace(b"func.func", b"func\x00func", 1)),
    ("invalid UTF-8", b"\xff\xfe" + _linreg().encode()),
    ("declaration without a body", b"func.func @f(%w: tensor<4xf32> {step.param}) -> tensor<f32>\n"),
    ("unterminated string on a long line (was exponential)",
     _linreg().replace("tensor<32x1xf32>)", 'tensor<3"2x1xf32, ' + "x" * 200 + ")", 1).encode()),
    ("deeply nested attribute", _linreg().replace("{step.sgd", "{a = " * 3000 + "1" + "}" * 3000 + ", step.sgd", 1).encode()),
    ("deeply nested type", _linreg().replace("tensor<f32>", "tensor<" * 3000 + "f32" + ">" * 3000, 1).encode()),
    ("deeply nested dense constant", _linreg().replace(
        "  func.return", "  %c = step.constant dense<" + "[" * 3000 + "1.0" + "]" * 3000 + "> : tensor<f32>\n  func.return", 1
    ).encode()),
    ("deeply nested modules", ("builtin.module {" * 400 + _linreg() + "}" * 400).encode()),
    ("shape that overflows 64 bits", _linreg().replace("32x4xf32", "99999999999x99999999999xf32").encode()),
    ("shape over the memory limit", _linreg().replace("32x", "40000000x").encode()),
    ("negative learning rate", _linreg().replace("lr = 0.01", "lr = -1.0").encode()),
    ("unknown op", _linreg().replace("step.add", "step.nope").encode()),
    ("integer attribute out of range", (ROOT / "examples" / "softmax_regression.ir").read_text().replace(
        "axis 1", "axis 99999999999999999999999999").encode()),
    ("constant too big for f32", _linreg().replace("lr = 0.01", "lr = 1.0e308").encode()),
    ("string escapes in names", _linreg().replace("@linreg", '@"a\\22b\\0a"', 1).encode()),
)  # fmt: skip


@pytest.mark.parametrize("recipe,data", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_input_gets_a_located_error(recipe: str, data: bytes, tmp_path: Path, pipeline: list[str]) -> None:
    path = tmp_path / "hostile.ir"
    path.write_bytes(data)
    outcome = fuzz.run_in_process(str(path), fuzz.opt_argv(str(path), pipeline), TIMEOUT)
    assert outcome.kind in fuzz.ACCEPTED, f"{recipe}: {outcome}"
    assert outcome.seconds < 5.0, f"{recipe} took {outcome.seconds:.1f} s"
    if recipe not in ("string escapes in names", "constant too big for f32"):
        assert outcome.kind == "error", f"{recipe}: {outcome}"


def _stepc_command() -> list[str]:
    exe = Path(sys.executable).parent / "stepc"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("stepc")
    return [found] if found else [sys.executable, "-m", "stepc.tools.cli"]


def test_fuzz_end_to_end_through_the_command(tmp_path: Path) -> None:
    """A handful of inputs through the real `stepc compile` process: exit status and stderr."""
    corpus = fuzz.load_corpus(EXAMPLES)
    inputs = list(fuzz.generate(corpus, CI_SEED + 1, 5))
    inputs += [fuzz.FuzzInput(100 + i, recipe, data) for i, (recipe, data) in enumerate(HOSTILE[:3])]
    kinds = []
    env = dict(os.environ, STEPC_MAX_BYTES="256M")
    for fuzz_input in inputs:
        path = tmp_path / f"in{fuzz_input.index}.ir"
        path.write_bytes(fuzz_input.data)
        out = tmp_path / f"out{fuzz_input.index}.mlir"
        argv = ["compile", str(path), "--emit", "step", "--no-check", "-o", str(out)]
        outcome = fuzz.run_subprocess(str(path), argv, 120.0, _stepc_command(), env=env)
        assert outcome.ok, f"{fuzz_input.recipe}: {outcome}"
        assert outcome.status in (0, 1)
        kinds.append(outcome.kind)
    assert "error" in kinds


def test_judge_rejects_what_users_must_not_see() -> None:
    assert fuzz.judge("a.ir", 1, "a.ir:3:4: error: bad\nline\n   ^", 0).kind == "error"
    assert fuzz.judge("a.ir", 1, "stepc: error: no location", 0).kind == "unlocated"
    assert fuzz.judge("a.ir", 2, "stepc: error: internal error: KeyError", 0).kind == "internal"
    assert fuzz.judge("a.ir", 1, "Traceback (most recent call last):\n", 0).kind == "traceback"
    assert fuzz.judge("a.ir", 0, "", 0).kind == "compiled"
    assert fuzz.judge("a.ir", 3, "a.ir:1:1: error: x", 0).kind == "bad-status"
