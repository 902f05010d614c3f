"""`stepc opt`: run named passes on a program and print it (like xdsl-opt).

Like `xdsl-opt`, it reads a program at any stage: the input as written, or any dump of
`stepc compile --dump-dir` (StableHLO included), and runs any pass whose input form the program
has (`stepc opt 04-seed-scalar-loss.mlir -p fuse-sgd`); a pass given the wrong stage says
which pass must run first.
"""

from __future__ import annotations

import argparse

from stepc.ir.limits import check_memory
from stepc.ir.parse import parse_text, read_source, verify
from stepc.ir.program import step_function, verify_any_stage
from stepc.pipeline import Pipeline
from stepc.tools.compile_cmd import module_text, output_path, write_output


def run(args: argparse.Namespace) -> int:
    output = output_path(args.output)
    pipeline = Pipeline.parse(args.passes, check=args.check, check_mode=args.check_mode)  # a bad pipeline before reading anything
    pipeline.passes()
    text, name = read_source(args.file)
    module = parse_text(text, name)
    verify(module)
    if not args.verify_only:
        verify_any_stage(module)
    elif args.check:  # the contracts allocate: the memory estimate still holds them back
        check_memory(step_function(module))
    pipeline.run(module)
    write_output(output, module_text(module), protect=(args.file,))
    return 0
