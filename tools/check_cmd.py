"""`stepc check`: every pass's contract, as a table.

    stepc check STEP.ir [STEP2.ir ...]               # the default pipeline, one row per pass
    stepc check --pass NAME BEFORE.mlir AFTER.mlir   # one pass's contract between two programs

Exit status 0 when every contract holds, 1 otherwise (with the worst difference on stderr).
"""

from __future__ import annotations

import argparse
import sys

from xdsl.dialects.builtin import ModuleOp

from stepc.check import ContractReport, contract_for, format_table
from stepc.check.reduced import ContractRunner
from stepc.ir.diagnostics import StepcError
from stepc.ir.limits import check_memory
from stepc.ir.parse import load, parse_text, read_source, verify
from stepc.ir.program import step_function, verify_any_stage
from stepc.passes import get_all_passes
from stepc.pipeline import PassEvent, Pipeline


def run(args: argparse.Namespace) -> int:
    mode = getattr(args, "check_mode", "auto")
    if args.pass_name:
        return check_pass(args.pass_name, args.files, trials=args.trials, seed=args.seed, mode=mode)
    status = 0
    for index, path in enumerate(args.files):
        if len(args.files) > 1:
            print(("\n" if index else "") + f"== {path}")
        status = max(status, check_file(path, Pipeline.default(trials=args.trials, seed=args.seed, check_mode=mode)))
    return status


def summary(reports: list[ContractReport], mode: str) -> str:
    """The line under the table: the contracts' total time and where they ran."""
    seconds = sum(r.seconds for r in reports)
    where = sorted({r.mode.split(",")[0].split(" (")[0] for r in reports})
    return f"contracts: {seconds:.2f} s in all; --check-mode {mode}: ran at {' and '.join(where)} shapes"


def check_file(path: str, pipeline: Pipeline) -> int:
    """Run `pipeline` on the program with every contract on; print the table."""
    module = load(path)
    reports: list[ContractReport] = []

    def collect(event: PassEvent) -> None:
        if event.report is not None:
            reports.append(event.report)

    pipeline.check = True
    pipeline.listeners.append(collect)
    try:
        pipeline.run(module)
    except StepcError:
        if not reports or reports[-1].ok:
            raise  # not a contract: a pass that failed outright
        print(format_table(reports))
        print(summary(reports, pipeline.check_mode))
        print(f"stepc: error: {reports[-1].failure_message()}", file=sys.stderr)
        return 1
    print(format_table(reports))
    print(summary(reports, pipeline.check_mode))
    return 0


def check_pass(name: str, files: list[str], *, trials: int, seed: int, mode: str = "auto") -> int:
    """One pass's contract between two programs, parsed without the user-level function rules
    (a dump after `differentiate` returns more than the loss)."""
    if len(files) != 2:
        raise StepcError(f"--pass {name} takes two programs, BEFORE and AFTER; found {len(files)}")
    available = get_all_passes()
    if name not in available:
        raise StepcError(f"--pass {name}: no such pass; the passes are: {', '.join(sorted(available))}")
    contract = contract_for(name)
    if contract is None:
        raise StepcError(f"--pass {name}: the pass states no contract")
    before, after = (read_program(path) for path in files)
    report = ContractRunner(mode).check(contract, available[name]()(), before, after, trials=trials, seed=seed)
    print(format_table([report]))
    if not report.ok:
        print(f"stepc: error: {report.failure_message()}", file=sys.stderr)
        return 1
    return 0


def read_program(path: str) -> ModuleOp:
    """A program at any stage (a dump), its names checked as `stepc opt` checks them and its
    static shapes against the memory limit before a contract allocates anything."""
    text, display = read_source(path)
    module = parse_text(text, display)
    verify(module)
    verify_any_stage(module)
    check_memory(step_function(module))
    return module
