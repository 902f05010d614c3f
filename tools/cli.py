"""The `stepc` command: compile, check, exec, run and opt.

Every error a user can cause prints `FILE:LINE:COL: error: MESSAGE` with the source line and
a caret, and exits 1; `--debug` shows the Python traceback as well.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

from stepc import __version__
from stepc.ir.diagnostics import StepcError, render

DESCRIPTION = """\
stepc compiles one training step, written in the step IR, into an XLA program:
reverse-mode differentiation, the seed of the scalar loss, the fused torch.optim.SGD
update, and StableHLO. After every pass its contract is checked on random inputs.

  stepc compile examples/linreg.ir --dump-dir dumps/   # StableHLO on stdout, each pass dumped
  stepc check examples/mlp_digits.ir                   # the contract table, one row per pass
  stepc exec examples/linreg.ir --inputs in.npz -o out.npz
  stepc run examples/mlp_digits.ir --steps 500 --out runs/digits
  stepc opt examples/linreg.ir -p differentiate,dce    # run passes, print the result

The language: docs/language.md. Each subcommand has its own --help.
"""

PASS_HELP = "differentiate, seed-scalar-loss, fuse-sgd, lower-to-stablehlo, simplify-stablehlo (and cse, dce, canonicalize; cut-at-logits)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stepc", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"stepc {_version()}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name, help=help, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show Python tracebacks")
        return p

    p = add(
        "compile",
        "compile a step through the pipeline",
        "Compile STEP.ir through the default pipeline, checking every pass's contract.\n\n"
        "  stepc compile step.ir                      # StableHLO text on stdout\n"
        "  stepc compile step.ir --emit step --until seed-scalar-loss\n"
        "  stepc compile step.ir --emit jax-py -o step_jax.py\n"
        "  stepc compile step.ir --dump-dir dumps/    # 00-input.mlir, 01-differentiate.mlir, ...",
    )
    p.add_argument("file", metavar="STEP.ir", help="the program ('-' reads stdin)")
    p.add_argument("-o", "--output", metavar="OUT", help="write here instead of stdout (atomically)")
    p.add_argument(
        "--emit",
        choices=("step", "stablehlo", "jax-py"),
        default="stablehlo",
        help="step: the step IR after the passes run; stablehlo (default): MLIR text XLA compiles; "
        "jax-py: a Python module needing only JAX and NumPy",
    )
    p.add_argument("--until", metavar="PASS", help=f"stop after this pass ({PASS_HELP})")
    p.add_argument("--dump-dir", metavar="DIR", help="write the program before the first pass and after each")
    p.add_argument("--print-after-all", action="store_true", help="print the program after each pass to stderr")
    p.add_argument("--time-passes", action="store_true", help="print each pass's time to stderr")
    p.add_argument("--no-check", action="store_true", help="skip the contracts (they run by default)")
    p.add_argument("--trials", type=int, default=3, help="random inputs per contract (default 3)")
    p.set_defaults(handler="stepc.tools.compile_cmd:run")

    p = add(
        "check",
        "run the pipeline with every contract and print the table",
        "Run the pipeline with every contract and print one row per pass:\n"
        "name, trials, worst absolute and relative error, tolerance, verdict, time.\n\n"
        "  stepc check step.ir\n"
        "  stepc check --pass differentiate BEFORE.mlir AFTER.mlir   # one pass's contract\n\n"
        "Exit status 0 when every contract holds, 1 otherwise.",
    )
    p.add_argument("files", metavar="FILE", nargs="+", help="STEP.ir, or BEFORE AFTER with --pass")
    p.add_argument("--pass", dest="pass_name", metavar="NAME", help="check one pass's contract between two programs")
    p.add_argument("--trials", type=int, default=5, help="random inputs per contract (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.set_defaults(handler="stepc.tools.check_cmd:run")

    p = add(
        "exec",
        "run the compiled step on named .npz inputs",
        "Run the compiled program through JAX on named inputs and write named outputs.\n\n"
        "Keys: arguments by their IR names; after seed-scalar-loss: loss and grad.NAME;\n"
        "after fuse-sgd (the default): loss, the new NAME of each parameter and momentum.NAME\n"
        "of each momentum buffer (give them as inputs to continue; absent, it is a first step).",
    )
    p.add_argument("file", metavar="STEP.ir")
    p.add_argument("--inputs", metavar="IN.npz", required=True, help="named inputs (loaded with allow_pickle=False)")
    p.add_argument("-o", "--output", metavar="OUT.npz", required=True, help="named outputs (written atomically)")
    p.add_argument("--until", metavar="PASS", help=f"run the program after this pass ({PASS_HELP})")
    p.add_argument("--steps", type=int, default=1, help="feed each step's parameters and state into the next")
    p.add_argument("--no-check", action="store_true", help="skip the contracts while compiling")
    p.set_defaults(handler="stepc.tools.exec_cmd:run")

    p = add(
        "run",
        "train: the main job",
        "Train the step on a data set with a progress bar; report the loss and test accuracy.\n\n"
        "  stepc run examples/mlp_digits.ir --steps 500 --out runs/digits\n"
        "  stepc run step.ir --data mydata.npz --epochs 3 --devices 8",
    )
    p.add_argument("file", metavar="STEP.ir")
    p.add_argument("--data", metavar="NAME|FILE.npz", help="a bundled data set (digits) or an .npz keyed by input names")
    p.add_argument("--steps", type=int, help="number of SGD steps")
    p.add_argument("--epochs", type=float, help="number of passes over the training set")
    p.add_argument("--seed", type=int, default=0, help="seed of initialization and shuffling")
    p.add_argument("--init", metavar="FILE.npz", help="initial parameters (default: PyTorch nn.Linear's init)")
    p.add_argument("--devices", type=int, default=1, help="data parallel across N devices")
    p.add_argument("--out", metavar="DIR", help="write summary.json, loss.png and params.npz here")
    p.add_argument("--no-check", action="store_true", help="skip the contracts while compiling")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler="stepc.tools.run_cmd:run")

    p = add(
        "opt",
        "run passes and print the result (like xdsl-opt)",
        "Run a comma-separated list of passes on a program and print the result.\n\n"
        "  stepc opt step.ir -p differentiate,cse,dce\n"
        "  cat step.ir | stepc opt - -p seed-scalar-loss\n"
        "  stepc opt dumps/04-seed-scalar-loss.mlir -p fuse-sgd   # any stage: the input or any dump\n\n"
        f"Passes: {PASS_HELP}. Contracts are not run unless --check is given.",
    )
    p.add_argument("file", metavar="FILE", help="the program ('-' reads stdin)")
    p.add_argument("-p", "--passes", metavar="PIPELINE", default="", help="comma-separated pass names")
    p.add_argument("-o", "--output", metavar="OUT", help="write here instead of stdout (atomically)")
    p.add_argument("--check", action="store_true", help="run each pass's contract")
    p.add_argument("--verify-only", action="store_true", help="parse and verify ops without the step-function rules")
    p.set_defaults(handler="stepc.tools.opt_cmd:run")
    return parser


def _version() -> str:
    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    debug = getattr(args, "debug", False)
    module_name, _, fn_name = args.handler.partition(":")
    try:
        handler = getattr(importlib.import_module(module_name), fn_name)
        return int(handler(args) or 0)
    except StepcError as e:
        if debug:
            traceback.print_exc()
        print(e.render(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stepc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug in stepc, not the user's fault: say so plainly
        if debug:
            traceback.print_exc()
        print(render(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", None),
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
