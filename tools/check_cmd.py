"""`stepc check`: every pass's contract, as a table.

    stepc check STEP.ir [STEP2.ir ...]               # the default pipeline, one row per pass
    stepc check --pass NAME BEFORE.mlir AFTER.mlir   # one pass's contract between two programs

Exit status 0 when every contract holds, 1 otherwise (with the worst difference on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xdsl.dialects.builtin import ModuleOp

from stepc.check import ContractReport, contract_for, format_table
from stepc.check.reduced import ContractRunner
from stepc.ir.diagnostics import StepcError
from stepc.ir.limits import check_memory
from stepc.ir.parse import load, parse_text, read_source, verify
from stepc.ir.program import step_function, verify_any_stage
from stepc.passes import get_all_passes
from stepc.pipeline import PassEvent, Pipeline
from stepc.tools import compile_cmd, evidence


def run(args: argparse.Namespace) -> int:
    mode = getattr(args, "check_mode", "auto")
    if getattr(args, "artifact", None) is not None:
        if args.pass_name:
            raise StepcError("--artifact and --pass check different things: give one")
        return check_artifact(args.artifact, args.files)
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


def check_artifact(path: str, files: list[str]) -> int:
    """`stepc check --artifact OUT STEP.ir`: OUT (a `stepc compile --emit stablehlo|jax-py`
    output) was compiled from STEP.ir by this pipeline and still passes: its header's source
    hash, versions and passes are those of compiling STEP.ir again with the options it records,
    every contract holds again, and the text after the header is the compilation's, line for
    line. Exit 0, or a StepcError naming each thing that differs."""
    if len(files) != 1:
        raise StepcError(f"--artifact {path} takes one program, the STEP.ir it was compiled from; found {len(files)}")
    source = files[0]
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise StepcError(f"--artifact {path}: cannot read it: {getattr(e, 'strerror', None) or e}") from None
    recorded, _, body = evidence.split(text, path)
    options = _compile_options(recorded.options, path)
    try:
        compiled, now = compile_cmd.build(argparse.Namespace(file=source, no_check=False, dump_dir=None, **options))
    except StepcError as e:
        raise StepcError(f"{path} no longer passes: compiling {source} again with {recorded.options} fails: "
                         f"{e.message}", e.loc, e.notes) from None  # fmt: skip
    assert now is not None
    _, _, compiled_body = evidence.split(compiled, "the compilation")
    problems = evidence.differences(recorded, now)
    if not problems:  # the text is compared only for the same source and pipeline: else it differs anyway
        header_lines = len(text.split("\n")) - len(body.split("\n"))
        diff = evidence.first_difference(body.split("\n"), compiled_body.split("\n"))
        if diff is not None:
            line, theirs, ours = diff
            problems.append(f"the text differs from the compilation of {source} at line {line + header_lines}: "
                            f"the artifact has {theirs.strip()[:120]!r}, compiling gives {ours.strip()[:120]!r}")  # fmt: skip
    if problems:
        raise StepcError(f"{path} is not what this pipeline compiles from {source}: {problems[0]}", None,
                         tuple(problems[1:]))  # fmt: skip
    print(f"{path}: compiled from {source} (sha256 {now.source_sha256}) by this pipeline ({now.versions}; "
          f"{recorded.options}); the same text as compiling it now, and every contract holds:")  # fmt: skip
    for row in now.contracts:
        print(f"  {row}")
    return 0


def _compile_options(recorded: str, path: str) -> dict[str, object]:
    """The `stepc compile` options an artifact's header records (`--emit E --until P --trials N
    --check-mode M`)."""
    words = recorded.split()
    options: dict[str, object] = {"emit": None, "until": None, "trials": 3, "check_mode": "auto"}
    index = 0
    try:
        while index < len(words):
            word = words[index]
            if word == "--no-check":
                index += 1
                continue
            key = word.removeprefix("--").replace("-", "_")
            if key not in options:
                raise ValueError(word)
            options[key] = int(words[index + 1]) if key == "trials" else words[index + 1]
            index += 2
    except (ValueError, IndexError):
        raise StepcError(f"{path}: its stepc header's 'compile:' line is not stepc compile's options: {recorded!r}") from None
    if options["emit"] not in evidence.PREFIXES:
        raise StepcError(f"{path}: its stepc header records --emit {options['emit']}, not stablehlo or jax-py")
    return options
