"""What the contracts cost against XLA's own compile, over the generated family (issue 12).

    .venv/bin/python benchmarks/contracts.py                        # every point of benchmarks/family.py
    .venv/bin/python benchmarks/contracts.py mlp784_2048            # named points only
    .venv/bin/python benchmarks/contracts.py --small                # the quick points (family.SMALL)
    .venv/bin/python benchmarks/contracts.py mlp784_2048 --repeat 1 --profile prof.out
    .venv/bin/python benchmarks/contracts.py --stepc /tmp/stepc-before mlp784_2048   # another checkout
    .venv/bin/python benchmarks/contracts.py --json results.json mlp784_2048

For each point, in one process, with the median of `--repeat` runs (3 by default) of each time:

- `parse`: `load_text` (parse, verify, the step-function rules);
- `passes`: the default pipeline with `check=False` (the sum of `PassEvent.seconds`, and its wall time);
- each contract: the default pipeline with `check=True` and `--trials` (the `Pipeline` default
  unless given), each pass's `report.seconds`; a contract that does not hold is recorded
  (`ok` False, its `failure_message`) and the pipeline goes on from the next pass with the
  seed it would have had (`seed + index`), so every contract is still timed;
- `xla`: the lowered end of the pipeline as stepc's JAX backend runs it
  (`backends.jax.jax_function(...).fn` under `jax.jit`), `.lower(ShapeDtypeStruct...)` and
  `.compile()`, a fresh function each time (no cache), contracts excluded;
- `contract / xla`: the sum of the contracts' `report.seconds` over XLA's lower + compile.
  `overhead` is the checked pipeline's wall time minus the unchecked one's (it adds the
  clone of the module the pipeline keeps for each contract).

Each contract's report row is printed too: trials, max_abs, max_rel, tolerance, ok, and the
fields `ratio` and `tightness` where the report has them (read with `getattr`).

`--stepc DIR` imports `stepc` from DIR (a checkout, e.g. a `git worktree` of an older commit)
instead of the installed one: a link named `stepc` to DIR goes first on `sys.path`, ahead of
the editable install's finder (which Python consults after `sys.path`), and the script checks
where `stepc` came from. `--profile FILE` runs the checked pipeline once more under cProfile
and prints the 30 costliest functions by cumulative time, then a breakdown by cause.

Timings on the 2-core shared development machine are noisy (10-30% between runs): compare
medians of repeats, and ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import gc
import io
import json
import math
import os
import pstats
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from family import BY_NAME, FAMILY, SMALL, Point, human  # benchmarks/family.py, beside this file

# ---------------------------------------------------------------------------------------------
# Which stepc


def use_stepc(checkout: str | None) -> str:
    """Import `stepc` from `checkout` (a directory holding the package's files) when given;
    returns the directory `stepc` was imported from (resolved)."""
    if checkout:
        root = Path(checkout).resolve()
        if not (root / "__init__.py").is_file() or not (root / "pipeline.py").is_file():
            raise SystemExit(f"--stepc {checkout}: not a stepc checkout (no __init__.py and pipeline.py)")
        if "stepc" in sys.modules:
            raise SystemExit("--stepc: stepc is already imported")
        links = Path(tempfile.mkdtemp(prefix="stepc-path-"))
        (links / "stepc").symlink_to(root, target_is_directory=True)
        sys.path.insert(0, str(links))
    import stepc

    where = Path(os.path.realpath(stepc.__file__)).parent
    if checkout and where != Path(checkout).resolve():
        raise SystemExit(f"--stepc {checkout}: stepc was imported from {where} instead")
    return str(where)


# ---------------------------------------------------------------------------------------------
# Measurements


@dataclass
class ContractRow:
    """One contract's report, with its position in the pipeline."""

    index: int
    pass_name: str
    contract: str
    seconds: list[float]  # one per repeat
    trials: int
    max_abs: float
    max_rel: float
    tolerance: str
    ok: bool
    worst: str
    ratio: float | None = None
    tightness: float | None = None
    failure: str = ""
    mode: str = ""  # the report's check mode, where it has one

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def label(self) -> str:
        return f"{self.index:02d}-{self.pass_name}"


@dataclass
class PointResult:
    name: str
    params: int
    parse: list[float] = field(default_factory=list[float])
    passes: list[float] = field(default_factory=list[float])  # sum of PassEvent.seconds, check off
    passes_wall: list[float] = field(default_factory=list[float])
    checked_wall: list[float] = field(default_factory=list[float])  # the whole checked pipeline
    contracts_total: list[float] = field(default_factory=list[float])  # sum of report.seconds
    xla_lower: list[float] = field(default_factory=list[float])
    xla_compile: list[float] = field(default_factory=list[float])
    rows: list[ContractRow] = field(default_factory=list[ContractRow])
    failures: list[str] = field(default_factory=list[str])
    error: str = ""  # a failure that is not a contract's (a pass, memory, ...)
    load: list[float] = field(default_factory=list[float])  # the 1-minute load average before each run

    @property
    def xla(self) -> float:
        """Median of lower + compile."""
        return statistics.median(a + b for a, b in zip(self.xla_lower, self.xla_compile)) if self.xla_lower else 0.0

    @property
    def contracts(self) -> float:
        return statistics.median(self.contracts_total) if self.contracts_total else 0.0

    @property
    def ratio(self) -> float:
        return self.contracts / self.xla if self.xla else float("nan")

    @property
    def overhead(self) -> float:
        if not self.checked_wall or not self.passes_wall:
            return float("nan")
        return statistics.median(self.checked_wall) - statistics.median(self.passes_wall)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@contextlib.contextmanager
def _timer(out: list[float]) -> Iterator[None]:
    start = time.perf_counter()
    yield
    out.append(time.perf_counter() - start)


@dataclass
class Outcome:
    """One contract's run in the checked pipeline: its report, or the exception it raised."""

    index: int  # the pass's position in the whole pipeline (1 = the first pass)
    name: str
    seconds: float
    report: Any = None  # the ContractReport; None when the contract crashed
    crash: str = ""  # `TypeError: ...` when the contract raised instead of reporting


def checked_run(text: str, name: str, trials: int | None, seed: int | None) -> tuple[list[Outcome], list[str], Any]:
    """The default pipeline with every contract, going on after a contract that fails.

    A contract that does not hold (the pipeline's `StepcError` after its event) or that raises
    an exception of its own (a crash inside `Contract.check`) is recorded, and the pipeline
    resumes at the next pass with the seed the whole pipeline would give it. Returns (one
    outcome per contract, the failure messages, the final module)."""
    from stepc.check import contract_for
    from stepc.ir.diagnostics import StepcError
    from stepc.ir.parse import load_text
    from stepc.pipeline import PassEvent, Pipeline

    module = load_text(text, f"{name}.ir")
    options: dict[str, Any] = {"check": True}
    if trials is not None:
        options["trials"] = trials
    if seed is not None:
        options["seed"] = seed
    pipeline = Pipeline.default(**options)
    names = list(pipeline.names)
    outcomes: list[Outcome] = []
    failures: list[str] = []
    done = 0  # passes of the whole pipeline done so far
    last_event = time.perf_counter()

    def listen(event: PassEvent) -> None:
        nonlocal done, last_event
        if event.index:
            done += 1
            if event.report is not None:
                outcomes.append(Outcome(done, event.name, event.report.seconds, event.report))
        last_event = time.perf_counter()

    pipeline.listeners.append(listen)
    current = pipeline
    while True:
        done_before = done
        try:
            current.run(module)
            break
        except StepcError as e:
            last = outcomes[-1] if outcomes and done > done_before and outcomes[-1].index == done else None
            if last is None or last.report is None or last.report.ok:
                raise  # not a contract: a pass that failed outright
            failures.append(f"{last.name}: {e.message}")
        except Exception as e:
            if not _raised_in_contract(e):
                raise
            done += 1  # the pass ran (and verified); its contract raised before the event
            pass_name = names[done - 1].partition("{")[0]
            contract = contract_for(pass_name)
            crash = f"{type(e).__name__}: {e}"
            outcomes.append(Outcome(done, pass_name, time.perf_counter() - last_event, None, crash))
            failures.append(f"{pass_name}: contract {contract.name if contract else '?'} raised {crash}")
        if done >= len(names):
            break
        # The rest of the pipeline, each pass with the seed the whole pipeline gives it.
        current = dataclasses.replace(pipeline, names=names[done:], seed=pipeline.seed + done)
        last_event = time.perf_counter()
    return outcomes, failures, module


def _raised_in_contract(error: BaseException) -> bool:
    """Whether the traceback passes through `Contract.check` (check/contract.py)."""
    frames = traceback.extract_tb(error.__traceback__)
    return any(f.name == "check" and f.filename.replace("\\", "/").endswith("check/contract.py") for f in frames)


def unchecked_run(text: str, name: str) -> tuple[float, float, Any]:
    """(sum of the passes' seconds, wall seconds, the final module) with check=False."""
    from stepc.ir.parse import load_text
    from stepc.pipeline import Pipeline

    module = load_text(text, f"{name}.ir")
    start = time.perf_counter()
    events = Pipeline.default(check=False).run(module)
    wall = time.perf_counter() - start
    return sum(e.seconds for e in events[1:]), wall, module


def xla_compile(module: Any) -> tuple[float, float]:
    """(trace + lower, compile) seconds of the lowered step as stepc's JAX backend runs it."""
    import jax

    from stepc.backends.jax import jax_function, x64_enabled

    jf = jax_function(module)
    shapes = [jax.ShapeDtypeStruct(s.shape, s.dtype) for s in jf.specs]
    with x64_enabled(jf.needs_x64):
        start = time.perf_counter()
        lowered = jax.jit(jf.fn).lower(*shapes)
        lower = time.perf_counter() - start
        start = time.perf_counter()
        lowered.compile()
        return lower, time.perf_counter() - start


def measure(
    point: Point, *, repeat: int, trials: int | None, seed: int | None, log: Callable[[str], None]
) -> PointResult:
    from stepc.ir.parse import load_text

    step = point.build()
    result = PointResult(point.name, step.param_count)
    for r in range(repeat):
        gc.collect()
        result.load.append(os.getloadavg()[0])
        with _timer(result.parse):
            load_text(step.text, f"{point.name}.ir")
        passes, wall, lowered = unchecked_run(step.text, point.name)
        result.passes.append(passes)
        result.passes_wall.append(wall)
        lower, compile_ = xla_compile(lowered)
        result.xla_lower.append(lower)
        result.xla_compile.append(compile_)
        del lowered
        gc.collect()
        start = time.perf_counter()
        outcomes, failures, _ = checked_run(step.text, point.name, trials, seed)
        result.checked_wall.append(time.perf_counter() - start)
        result.contracts_total.append(sum(o.seconds for o in outcomes))
        if r == 0:
            result.failures = failures
            result.rows = [_row(o) for o in outcomes]
        else:
            for row, o in zip(result.rows, outcomes):
                row.seconds.append(o.seconds)
        log(
            f"  {point.name} run {r + 1}/{repeat} (load {result.load[-1]:.1f}): parse {result.parse[-1]:.2f}s, passes {passes:.2f}s, "
            f"xla {lower:.2f}+{compile_:.2f}s, contracts {result.contracts_total[-1]:.2f}s"
            + (f" ({len(failures)} failed)" if failures else "")
        )
    return result


def _row(o: Outcome) -> ContractRow:
    from stepc.check import contract_for

    rep = o.report
    if rep is None:
        contract = contract_for(o.name)
        name = contract.name if contract is not None else "?"
        return ContractRow(o.index, o.name, name, [o.seconds], 0, math.nan, math.nan, "-", False, "", failure=o.crash)
    # Fields read with getattr: the report's shape changes with the contract framework (the
    # fixed-tolerance report has max_rel and tolerance; the error-bound one ratio, tightness, model, mode).
    max_rel = _number(getattr(rep, "max_rel", None))
    return ContractRow(
        o.index,
        o.name,
        str(getattr(rep, "contract", "?")),
        [o.seconds],
        int(getattr(rep, "trials", 0)),
        _number(getattr(rep, "max_abs", None)) or 0.0,
        math.nan if max_rel is None else max_rel,
        str(getattr(rep, "tolerance", None) or getattr(rep, "model", "-")),
        bool(rep.ok),
        str(getattr(rep, "worst", "")),
        _number(getattr(rep, "ratio", None)),
        _number(getattr(rep, "tightness", None)),
        "" if rep.ok else rep.failure_message(),
        str(getattr(rep, "mode", "")),
    )


def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# Profile


# Causes of contract time: (label, file suffix, function name); a function's cumulative time.
CAUSES: list[tuple[str, str, str]] = [
    ("Contract.check (all contracts)", "check/contract.py", "check"),
    ("reference interpreter (run_program)", "check/contract.py", "run_program"),
    ("random inputs (random_inputs)", "check/contract.py", "random_inputs"),
    (
        "numpy Generator.standard_normal (all draws)",
        "~",
        "<method 'standard_normal' of 'numpy.random._generator.Generator' objects>",
    ),
    ("path_precisions", "check/contract.py", "path_precisions"),
    ("comparing (Comparison.compare_all)", "check/contract.py", "compare_all"),
    ("array_difference", "check/contract.py", "array_difference"),
    ("VJP add_pairing", "check/differentiate.py", "add_pairing"),
    ("VJPContract.prepare (promote, jvp setup)", "check/differentiate.py", "prepare"),
    ("promote_to_f64", "check/differentiate.py", "promote_to_f64"),
    ("jax.jvp calls (trace + XLA compile + run)", "check/differentiate.py", "jvp"),
    ("lowered_clone (lowering inside contracts)", "passes/lower_to_stablehlo.py", "lowered_clone"),
    ("jax_function (building JAX functions)", "backends/jax.py", "jax_function"),
    ("JaxFunction.__call__ (jit + run)", "backends/jax.py", "__call__"),
    ("XLA backend compiles (all)", "jax/_src/compiler.py", "backend_compile_and_load"),
    ("XLA backend compiles (all, older JAX)", "jax/_src/compiler.py", "backend_compile"),
    ("JAX tracing to jaxpr", "jax/_src/interpreters/partial_eval.py", "trace_to_jaxpr"),
    ("MLIR lowering of jaxprs", "jax/_src/interpreters/mlir.py", "lower_jaxpr_to_module"),
    ("xDSL clone", "xdsl/ir/core.py", "clone"),
    ("xDSL printing", "xdsl/printer.py", "print_op"),
    ("pipeline passes (apply)", "xdsl/passes.py", "apply"),
]


def profile(text: str, name: str, trials: int | None, seed: int | None, out: str | None) -> str:
    """cProfile of one checked pipeline: the 30 costliest functions by cumulative time, and
    the cumulative seconds of each entry of `CAUSES`."""
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        checked_run(text, name, trials, seed)
    finally:
        profiler.disable()
    if out:
        profiler.dump_stats(out)
    buffer = io.StringIO()
    stats = pstats.Stats(profiler, stream=buffer)
    stats.sort_stats("cumulative").print_stats(30)
    lines = [buffer.getvalue().rstrip(), "", "By cause (cumulative seconds; causes overlap):"]
    table: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    for label, suffix, function in CAUSES:
        total, calls = 0.0, 0
        for (file, _line, fn), (_cc, nc, _tt, ct, _callers) in table.items():
            if fn == function and (file.replace("\\", "/").endswith(suffix) or (suffix == "~" and file == "~")):
                total += ct
                calls += nc
        if calls:
            lines.append(f"  {label:<48} {total:8.2f} s  ({calls} calls)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Tables


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def summary_table(results: list[PointResult]) -> str:
    header = (
        f"{'point':<26} {'params':>8} {'parse s':>8} {'passes s':>8} {'XLA s':>7} {'(lower+comp)':>13} "
        f"{'contracts s':>11} {'overhead s':>10} {'contr/XLA':>9} {'load':>5}  failed"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        if r.error:
            lines.append(f"{r.name:<26} {human(r.params):>8}  error: {r.error}")
            continue
        failed = ", ".join(row.label for row in r.rows if not row.ok) or "-"
        lines.append(
            f"{r.name:<26} {human(r.params):>8} {_median(r.parse):>8.2f} {_median(r.passes):>8.2f} {r.xla:>7.2f} "
            f"{_median(r.xla_lower):>6.2f}+{_median(r.xla_compile):<6.2f} {r.contracts:>11.2f} {r.overhead:>10.2f} "
            f"{r.ratio:>9.1f} {_median(r.load):>5.1f}  {failed}"
        )
    return "\n".join(lines)


def pass_table(results: list[PointResult]) -> str:
    """Per-pass contract seconds (median), one column per pass in pipeline order."""
    labels: list[str] = []
    for r in results:
        for row in r.rows:
            if row.label not in labels:
                labels.append(row.label)
    short = [label.split("-", 1)[0] + "-" + label.split("-", 1)[1][:8] for label in labels]
    header = f"{'point':<26} " + " ".join(f"{s:>11}" for s in short) + f" {'total':>8}"
    lines = ["Contract seconds per pass (median):", header, "-" * len(header)]
    for r in results:
        by = {row.label: row for row in r.rows}
        cells = [
            f"{by[label].median:>10.2f}{'' if by[label].ok else '!'}" if label in by else f"{'':>10} "
            for label in labels
        ]
        lines.append(f"{r.name:<26} " + " ".join(f"{c:>11}" for c in cells) + f" {r.contracts:>8.2f}")
    lines.append("(! = the contract did not hold)")
    return "\n".join(lines)


def _verdict(row: ContractRow) -> str:
    if row.ok:
        return "ok"
    return "ERR" if row.trials == 0 and row.failure and not row.worst else "NO"


def report_table(results: list[PointResult]) -> str:
    header = (
        f"{'point':<26} {'pass':<22} {'contract':<26} {'trials':>6} {'max_abs':>10} {'max_rel':>10} "
        f"{'tolerance':<18} {'ok':<3} {'ratio':>9} {'tightness':>9} {'s':>7}  worst"
    )
    lines = ["Contract reports:", header, "-" * len(header)]
    for r in results:
        for row in r.rows:
            lines.append(
                f"{r.name:<26} {row.label:<22} {row.contract[:26]:<26} {row.trials:>6} {row.max_abs:>10.3e} "
                f"{_fmt(None if math.isnan(row.max_rel) else row.max_rel, '.3e'):>10} {(row.tolerance + (' ' + row.mode if row.mode else ''))[:18]:<18} {_verdict(row):<3} {_fmt(row.ratio):>9} "
                f"{_fmt(row.tightness):>9} {row.median:>7.2f}  {row.worst or row.failure[:100]}"
            )
    return "\n".join(lines)


def to_json(results: list[PointResult], where: str) -> dict[str, Any]:
    import jax

    points: list[dict[str, Any]] = []
    for r in results:
        d = dataclasses.asdict(r)
        d["xla_median"], d["contracts_median"], d["ratio"] = r.xla, r.contracts, r.ratio
        p = BY_NAME.get(r.name)
        if p is not None:
            d["point"] = {"kind": p.kind, **dict(p.kwargs)}
        points.append(d)
    return {"stepc": where, "jax": jax.__version__, "cpus": os.cpu_count(), "points": points}


# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"family points (default: all {len(FAMILY)})")
    parser.add_argument("--small", action="store_true", help="the quick points only (family.SMALL)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per point; times are medians (default 3)")
    parser.add_argument("--trials", type=int, help="trials per contract (default: the Pipeline's)")
    parser.add_argument("--seed", type=int, help="seed of the contracts (default: the Pipeline's)")
    parser.add_argument("--stepc", metavar="DIR", help="import stepc from this checkout instead of the installed one")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        nargs="?",
        const="",
        help="cProfile one checked run per point (FILE: dump the stats)",
    )
    parser.add_argument("--json", metavar="FILE", help="write every number as JSON")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown point(s) {', '.join(unknown)}; the points are: {', '.join(BY_NAME)}")
    points = [BY_NAME[n] for n in args.names] if args.names else [BY_NAME[n] for n in SMALL] if args.small else FAMILY

    where = use_stepc(args.stepc)
    import jax

    from stepc.pipeline import Pipeline

    trials = args.trials if args.trials is not None else Pipeline().trials
    jax.jit(lambda x: x + 1)(1.0).block_until_ready()  # start the backend before anything is timed
    print(
        f"stepc from {where}; JAX {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs; "
        f"trials {trials}; median of {args.repeat} run(s). Shared machine: times are noisy.",
        flush=True,
    )

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    results: list[PointResult] = []
    profiles: list[str] = []
    for p in points:
        log(f"{p.name}: {human(p.params)} parameters")
        try:
            results.append(measure(p, repeat=args.repeat, trials=args.trials, seed=args.seed, log=log))
        except Exception as e:  # a pass that fails, memory, ...: recorded, the next point runs
            log(f"  {p.name}: {type(e).__name__}: {e}")
            results.append(PointResult(p.name, p.params, error=f"{type(e).__name__}: {e}"))
        if args.profile is not None:
            out = None
            if args.profile:
                out = args.profile if len(points) == 1 else f"{args.profile}.{p.name}"
            profiles.append(
                f"== profile of {p.name} (one checked pipeline)\n"
                + profile(p.build().text, p.name, args.trials, args.seed, out)
            )
        gc.collect()
        jax.clear_caches()

    print()
    print(summary_table(results))
    print()
    print(pass_table(results))
    print()
    print(report_table(results))
    for r in results:
        for failure in r.failures:
            print(f"{r.name}: contract failed: {failure}")
    for text in profiles:
        print()
        print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(results, where), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
