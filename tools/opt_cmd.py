"""`stepc opt`: run named passes on a program and print it (like xdsl-opt).

Like `xdsl-opt`, it reads a program at any stage: the input as written, or any dump of
`stepc compile --dump-dir` (StableHLO included), and runs any pass whose input form the program
has (`stepc opt 04-seed-scalar-loss.mlir -p fuse-sgd`); a pass given the wrong stage says
which pass must run first.
"""

from __future__ import annotations

import argparse
import sys

from stepc.ir.parse import parse_text, read_source, verify
from stepc.ir.program import verify_any_stage
from stepc.pipeline import Pipeline
from stepc.tools.compile_cmd import module_text
from stepc.tools.files import atomic_write


def run(args: argparse.Namespace) -> int:
    text, name = read_source(args.file)
    module = parse_text(text, name)
    verify(module)
    if not args.verify_only:
        verify_any_stage(module)
    Pipeline.parse(args.passes, check=args.check).run(module)
    out = module_text(module)
    if args.output:
        atomic_write(args.output, out, protect=(args.file,))
    else:
        sys.stdout.write(out)
    return 0
