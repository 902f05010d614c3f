"""`stepc compile`: the pipeline from a file to StableHLO, step IR or a JAX module."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

from xdsl.dialects.builtin import ModuleOp

from stepc.backends.jax_py import emit_module
from stepc.ir.diagnostics import StepcError
from stepc.ir.parse import load, load_text, read_source
from stepc.ir.printing import program_text
from stepc.ir.program import Form, program_form
from stepc.ir.stablehlo import is_lowered
from stepc.ir.stablehlo import module_text as stablehlo_text
from stepc.passes import ACCUMULATE_GRADIENTS
from stepc.passes.lower_to_stablehlo import lowered_clone
from stepc.pipeline import LOWERING, PassEvent, Pipeline
from stepc.tools.evidence import PREFIXES, Evidence, compile_options, contract_row, sha256_text, versions
from stepc.tools.files import atomic_write


def module_text(event_or_module: PassEvent | ModuleOp) -> str:
    """Any module as text: StableHLO after the lowering, the step IR before it."""
    module = event_or_module.module if isinstance(event_or_module, PassEvent) else event_or_module
    if is_lowered(module):
        return stablehlo_text(module)
    return program_text(module)


class DumpWriter:
    """`--dump-dir`: `00-input.mlir`, `01-differentiate.mlir`, ... in pipeline order."""

    def __init__(self, directory: str, protect: tuple[str, ...]):
        if not directory:
            raise StepcError("--dump-dir: an empty path (give a directory)")
        self.directory = Path(directory)
        self.protect = protect
        try:
            info = os.stat(self.directory)
        except FileNotFoundError:
            return  # made at the first dump
        except OSError as e:
            raise StepcError(f"--dump-dir {directory}: {e.strerror or e}") from None
        if not stat.S_ISDIR(info.st_mode):
            raise StepcError(f"--dump-dir {directory} exists and is not a directory")

    def __call__(self, event: PassEvent) -> None:
        name = f"{event.index:02d}-{event.name}.mlir"
        atomic_write(self.directory / name, module_text(event), protect=self.protect)


def print_after(event: PassEvent) -> None:
    print(f"// ----- after {event.name} -----" if event.index else "// ----- input -----", file=sys.stderr)
    print(module_text(event), file=sys.stderr)


def time_passes(event: PassEvent) -> None:
    if event.index:
        check = f", contract {event.report.seconds * 1000:.1f} ms" if event.report else ""
        print(f"{event.name:<20} {event.seconds * 1000:8.1f} ms{check}", file=sys.stderr)


def configure(args: argparse.Namespace, lower: bool) -> Pipeline:
    pipeline = Pipeline.default(
        until=args.until, lower=lower, check=not args.no_check, trials=args.trials, check_mode=args.check_mode
    )
    protect = (args.file,)
    if getattr(args, "dump_dir", None) == "":
        raise StepcError("--dump-dir: an empty path (give a directory)")
    if getattr(args, "dump_dir", None):
        pipeline.listeners.append(DumpWriter(args.dump_dir, protect))
    if getattr(args, "print_after_all", False):
        pipeline.listeners.append(print_after)
    if getattr(args, "time_passes", False):
        pipeline.listeners.append(time_passes)
    return pipeline


def run(args: argparse.Namespace) -> int:
    output = output_path(args.output)
    text, _ = build(args)
    write_output(output, text, protect=(args.file,))
    return 0


def build(args: argparse.Namespace) -> tuple[str, Evidence | None]:
    """The text `stepc compile` writes, and for `--emit stablehlo` and `--emit jax-py` the
    evidence its header carries (`tools/evidence.py`): the source's hash, the versions, the
    options, the passes run and each contract's row."""
    source_text, name = read_source(args.file)
    module = load_text(source_text, name)
    lower = args.emit != "step" or args.until == LOWERING
    pipeline = configure(args, lower)
    passes: list[str] = []
    rows: list[str] = []

    def collect(event: PassEvent) -> None:
        if event.index:
            passes.append(event.name)
        if event.report is not None:
            rows.append(contract_row(event.report))

    pipeline.listeners.append(collect)
    pipeline.run(module)
    text = jax_module(module, args.file) if args.emit == "jax-py" else module_text(module)
    if args.emit not in PREFIXES:
        return text, None
    options = compile_options(args.emit, args.until, args.trials, args.check_mode, checked=not args.no_check)
    evidence = Evidence(name, sha256_text(source_text), versions(), options, passes, rows)
    return evidence.header(args.emit) + text, evidence


def output_path(option: str | None) -> str | None:
    """`-o OUT`: the file to write, or None for stdout (no `-o`, or `-o -`, as `-` is stdin
    for the input); `-o ''` is an error, not a silent stdout."""
    if option is None or option == "-":
        return None
    if not option:
        raise StepcError("-o: an empty path (give a file name, or '-' for stdout)")
    return option


def write_output(output: str | None, text: str, *, protect: tuple[str, ...]) -> None:
    """The result: atomically to `output`, or to stdout when it is None."""
    if output is not None:
        atomic_write(output, text, protect=protect)
    else:
        sys.stdout.write(text)


def jax_module(module: ModuleOp, source: str) -> str:
    """`--emit jax-py`: the module of the program compiled, with the earlier programs the API
    offers beside it (`forward` and `grad` beside a step), compiled again from `source`."""
    form = program_form(module)
    given = form if form in (Form.FORWARD, Form.GRAD, Form.STEP) else "program"
    programs = {given: lowered_clone(module)}
    if form in (Form.STEP, Form.GRAD):
        for key, earlier in earlier_programs(source, form).items():
            programs.setdefault(key, lowered_clone(earlier))
    return emit_module(programs, given, source)


def earlier_programs(source: str, form: Form) -> dict[str, ModuleOp]:
    """The input program and (for a step) the program just before the optimizer's pass (the gradient the
    step consumes), from the source file (no contracts); none when the source cannot be read
    again (stdin)."""
    if source == "-" or not Path(source).is_file():
        return {}
    try:
        forward = load(source)
        out = {Form.FORWARD.value: forward.clone()}
        if form == Form.STEP:
            # through `accumulate-gradients` (a no-op on a program without `step.accumulate`):
            # the step's gradient, of all its micro-batches
            pipeline = Pipeline.default(until=ACCUMULATE_GRADIENTS, lower=False, check=False)
            pipeline.run(forward)
            out[Form.GRAD.value] = forward
        return out
    except StepcError:
        return {}
