"""Fuzzing the surface: the command line, `.npz` data files and the Python API.

The CI campaign runs a fixed budget of hostile cases (fixed seed) through `stepc.tools.cli.main`
and the API in this process, with a fixed share of process-level cases in child processes, and
requires zero findings. The long campaign is `python -m stepc.tools.fuzz_surface` (see
docs/robustness.md). The other tests show that the judge catches every kind of finding, so that
the campaign cannot pass by seeing nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from stepc.tools import cli
from stepc.tools import fuzz_surface as fs

CI_CASES = 500
CI_SEED = 20240618
PROCESS_EVERY = 50  # 10 of the 500 in child processes: the first ten of `fs.process_cases`


@pytest.fixture(autouse=True)
def small_memory_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPC_MAX_BYTES", fs.DEFAULT_LIMIT)


def test_ci_campaign_has_no_findings(tmp_path: Path) -> None:
    summary = fs.campaign(count=CI_CASES, seed=CI_SEED, process_every=PROCESS_EVERY, workdir=tmp_path / "work",
                          crash_dir=tmp_path / "crashes")  # fmt: skip
    print("\n" + summary.table())
    assert summary.total == CI_CASES
    assert summary.process_cases == CI_CASES // PROCESS_EVERY
    for surface in fs.SURFACES:  # every surface exercised on both sides: accepted and refused
        kinds = summary.kinds[surface]
        assert summary.tried[surface] >= 80, (surface, summary.tried)
        assert kinds["ok"] > 0 and kinds["error"] > 0, (surface, kinds)
    assert not summary.findings, summary.table()
    assert summary.peak_process_bytes - summary.baseline_bytes <= 1.5 * summary.limit_bytes


def test_generation_is_deterministic_and_varied() -> None:
    first = [(c.recipe, c.argv, c.code, [(lay.path, lay.data) for lay in c.lays]) for c in fs.generate(7, 80)]
    again = [(c.recipe, c.argv, c.code, [(lay.path, lay.data) for lay in c.lays]) for c in fs.generate(7, 80)]
    assert first == again
    assert len({recipe for recipe, *_ in first}) > 60
    other = [c.recipe for c in fs.generate(8, 80)]
    assert other != [recipe for recipe, *_ in first]


def test_every_generator_makes_cases() -> None:
    import random

    for surface, generators in fs.GENERATORS.items():
        for make, _ in generators:
            for seed in range(15):
                case = make(fs.Ctx(random.Random(seed), seed, surface))
                assert case.recipe and (case.argv or case.code or make is fs.cli_argv), make.__name__
                assert case.expect in ("any", "error", "ok")


# ---------------------------------------------------------------------------------------------
# The judge catches each kind of finding: fake cases through the real runner


def _fake_main(monkeypatch: pytest.MonkeyPatch, behaviour) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(cli, "main", behaviour)


def _run(case: fs.Case, tmp_path: Path, timeout: float = 5.0) -> fs.Outcome:
    directory = tmp_path / f"case-{case.index}"
    directory.mkdir()
    outcome, _ = fs.run_case(case, directory, timeout=timeout)
    return outcome


PROG = (fs.Lay("prog.ir", fs.LINREG.text.encode()),)


def _case(**fields) -> fs.Case:  # type: ignore[no-untyped-def]
    base = {"surface": "cli", "index": 0, "recipe": "fake", "argv": ("compile", "prog.ir"), "lays": PROG}
    return fs.Case(**(base | fields))


def test_the_judge_accepts_results_and_user_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def ok(argv):  # type: ignore[no-untyped-def]
        print("module {}")
        return 0

    def located(argv):  # type: ignore[no-untyped-def]
        import sys

        print("prog.ir:3:4: error: bad\n  x\n  ^", file=sys.stderr)
        return 1

    def usage(argv):  # type: ignore[no-untyped-def]
        import sys

        print("usage: stepc compile ...\nstepc compile: error: argument --emit: invalid choice", file=sys.stderr)
        raise SystemExit(2)

    for i, (behaviour, kind) in enumerate(((ok, "ok"), (located, "error"), (usage, "usage"))):
        _fake_main(monkeypatch, behaviour)
        assert _run(_case(index=i), tmp_path).kind == kind


@pytest.mark.parametrize(
    "name,expect,kind",
    [("raises", "any", "internal"), ("exit-2", "any", "internal"), ("hangs", "any", "hang"),
     ("ok-where-error-due", "error", "accepted-bad"), ("traceback", "any", "traceback"),
     ("unlocated", "any", "bad-status"), ("status-3", "any", "bad-status"), ("modifies-input", "any", "input-modified"),
     ("dash-file", "any", "lost-output"), ("temp-left", "any", "temp-left"), ("floods", "any", "flood"),
     ("warns", "any", "warning"), ("refuses-valid", "ok", "refused-valid")],
)  # fmt: skip
def test_the_judge_catches_each_finding(name: str, expect: str, kind: str, monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:  # fmt: skip
    import sys
    import warnings

    def behaviour(argv):  # type: ignore[no-untyped-def]
        if name == "raises":
            raise KeyError("w")
        if name == "exit-2":
            print("stepc: error: internal error: KeyError: 'w' (rerun with --debug for the traceback)", file=sys.stderr)
            return 2
        if name == "hangs":
            time.sleep(30)
        if name == "traceback":
            print('Traceback (most recent call last):\n  File "x.py", line 1\nKeyError: 1', file=sys.stderr)
            return 1
        if name == "unlocated":
            print("something went wrong", file=sys.stderr)
            return 1
        if name == "status-3":
            return 3
        if name == "modifies-input":
            Path("prog.ir").write_text("// gone\n")
        if name == "dash-file":
            Path("-").write_text("module {}")
        if name == "temp-left":
            Path(".out.mlir.abc123.tmp").write_text("half")
        if name == "floods":
            print("stepc: error: unknown keys " + "k, " * 40000, file=sys.stderr)
            return 1
        if name == "warns":
            warnings.warn("overflow encountered in cast", RuntimeWarning, stacklevel=1)
        if name == "refuses-valid":
            print("stepc: error: cannot write", file=sys.stderr)
            return 1
        return 0

    _fake_main(monkeypatch, behaviour)
    checks = ("no-dash-file",) if name == "dash-file" else ()
    start = time.perf_counter()
    outcome = _run(_case(expect=expect, checks=checks), tmp_path, timeout=1.0)
    assert outcome.kind == kind, outcome
    assert not outcome.ok
    assert time.perf_counter() - start < 10


def test_the_judge_catches_a_lost_parameter_and_a_mixed_run(tmp_path: Path) -> None:
    import numpy as np

    case = _case(argv=("exec", "prog.ir", "--inputs", "in.npz", "-o", "out.npz"), checks=("exec-output",), prog=fs.LINREG)
    np.savez(tmp_path / "out.npz", loss=np.float32(1), w=np.zeros((4, 1)))  # b is missing
    raw = fs.Raw(0, b"", "", 0.1)
    found = fs.postconditions(case, raw, fs.Outcome("ok", "", 0.1), {}, fs.snapshot(tmp_path), tmp_path)
    assert found is not None and found.kind == "lost-output" and "'b'" in found.detail

    earlier = tuple(fs.Lay(f"runs/{n}", b"old", role="output") for n in ("summary.json", "params.npz"))
    run = _case(argv=("run", "prog.ir", "--out", "runs"), checks=("run-out",), prog=fs.LINREG, lays=PROG + earlier)
    before = {"runs/summary.json": "old", "runs/params.npz": "old"}
    after = {"runs/summary.json": "old", "runs/params.npz": "new"}
    raw = fs.Raw(1, b"", "stepc: error: an empty held-out set", 0.1)
    found = fs.postconditions(run, raw, fs.Outcome("error", "", 0.1), before, after, tmp_path)
    assert found is not None and found.kind == "mixed-output"


def test_the_judge_catches_a_pickle_that_ran(tmp_path: Path) -> None:
    import numpy as np

    data = fs.npz({"w": fs.npy(np.array([fs.PickleBomb()], dtype=object))})
    path = tmp_path / "evil.npz"
    path.write_bytes(data)
    before = fs.snapshot(tmp_path)
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        np.load(path, allow_pickle=True)["w"]  # what a careless loader would do
    finally:
        os.chdir(cwd)
    found = fs.postconditions(_case(), fs.Raw(1, b"", "", 0.1), fs.Outcome("error", "", 0.1), before,
                              fs.snapshot(tmp_path), tmp_path)  # fmt: skip
    assert found is not None and found.kind == "code-ran"


@pytest.mark.parametrize(
    "code,expect,kind",
    [("raise KeyError('w')", "any", "internal"), ("import numpy\nnumpy.random.default_rng(-5)", "any", "raw-error"),
     ("require(False, 'grad differs')", "ok", "wrong-result"),
     ("from stepc.ir.diagnostics import StepcError\nraise StepcError('params: missing w')", "any", "error"),
     ("from stepc.ir.diagnostics import StepcError\nraise StepcError('x')", "ok", "refused-valid"),
     ("x = 1", "error", "accepted-bad"), ("import time\ntime.sleep(30)", "any", "hang"),
     ("import warnings\nwarnings.warn('overflow', RuntimeWarning)", "any", "warning"),
     ("def f(a): pass\nf(b=1)", "any", "error"), ("x = 1", "ok", "ok")],
)  # fmt: skip
def test_the_api_judge(code: str, expect: str, kind: str, tmp_path: Path) -> None:
    case = fs.Case("api", 0, "fake", code=code, expect=expect)
    assert _run(case, tmp_path, timeout=1.0).kind == kind


def test_who_raised_a_type_error() -> None:
    """A TypeError from a `raise` in stepc's own code is a user error; one from an operator in
    stepc's code, or from inside NumPy, is `raw-error`; Python's own refusal of a call is the caller's."""

    def caught(source: str, filename: str) -> BaseException:
        try:
            exec(compile(source, filename, "exec"), {})
        except Exception as e:
            return e
        raise AssertionError("no exception")

    inside = str(fs.ROOT / "api.py")
    assert fs.raised_by(caught("raise TypeError('params must be a dict keyed by IR names')", inside)) == "stepc"
    assert fs.raised_by(caught("'func.func' in 42", inside)).startswith("stepc's api.py:1")
    assert fs.raised_by(caught("import numpy\nnumpy.random.default_rng(-5)", inside)).startswith("bit_generator")
    assert fs.raised_by(caught("def f(): pass\nf(x=1)", inside)) == "caller"


def test_a_child_over_the_memory_limit_is_killed_and_reported(tmp_path: Path) -> None:
    """The watchdog: a child past twice the limit (here 1 MiB, so any stepc) is killed: `memory`."""
    case = _case(process=True, argv=("compile", "prog.ir", "--no-check"))
    directory = tmp_path / "child"
    directory.mkdir()
    outcome, raw = fs.run_case(case, directory, process_timeout=60.0, limit_bytes=fs.MIB, baseline_bytes=0)
    assert outcome.kind == "memory", outcome
    assert raw.killed_for_memory


def test_a_child_process_case_is_judged_end_to_end(tmp_path: Path) -> None:
    """The real `stepc` in a child: its exit status, messages and its own peak memory."""
    case = _case(process=True, argv=("compile", "missing.ir"), lays=(), expect="error")
    directory = tmp_path / "child"
    directory.mkdir()
    outcome, raw = fs.run_case(case, directory, process_timeout=60.0, limit_bytes=8 * 1024 * fs.MIB)
    assert outcome.kind == "error", outcome
    assert raw.status == 1 and "missing.ir" in raw.stderr
    assert raw.peak_bytes is not None and 20 * fs.MIB < raw.peak_bytes < 2048 * fs.MIB


def test_the_command_line_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    status = fs.main(["--cases", "6", "--seed", "3", "--surface", "api", "--quiet", "--process-every", "0"])
    out = capsys.readouterr().out
    assert status == (1 if "FINDING" in out else 0)
    assert "cases tried: 6" in out and "api" in out and "findings:" in out
    with pytest.raises(SystemExit):
        fs.main(["--surface", "nope"])
