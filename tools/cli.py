"""The `stepc` command: compile, check, exec, run and opt.

Every error a user can cause prints `FILE:LINE:COL: error: MESSAGE` with the source line and
a caret, or `stepc: error: MESSAGE`, and exits 1; `--debug` shows the Python traceback as well.
That includes usage errors (an unknown option, a missing argument, `--trials 0`: exit 1, as the
spec's "Errors" section fixes, not argparse's 2), a file that cannot be read or written (a
path over 255 bytes, no permission), a standard stream that is closed or full (`> /dev/full`),
and a `JAX_PLATFORMS` naming a backend this machine lacks. Exit 2 is kept for stepc's own bugs
("internal error"), 130 for Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

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
  stepc import examples/pytorch/models.py:cnn -o cnn.ir   # a PyTorch model, loss and optimizer

The language: docs/language.md. Each subcommand has its own --help.
"""

# Packages only some commands need: the import name -> how to get it.
OPTIONAL_PACKAGES = {"torch": "PyTorch: pip install 'stepc[torch]'"}


class UsageError(StepcError):
    """A command line that does not parse (argparse's errors, raised instead of exiting 2)."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a `UsageError` (one line, exit 1), not `sys.exit(2)`."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def positive_int(text: str) -> int:
    """`--trials N`: an integer of at least 1."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, found {text}")
    return value


MAX_SEED = 2**64 - 1


def seed_int(text: str) -> int:
    """`--seed S`: an integer from 0 to 2**64 - 1 (NumPy's seeds are non-negative)."""
    value = _integer(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**64 - 1, found {_short(text)}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # (also a string of more than 4,300 digits: Python's limit)
        raise argparse.ArgumentTypeError(f"not an integer: {_short(text)!r}") from None


def _short(text: str, most: int = 40) -> str:
    return text if len(text) <= most else f"{text[:most]}... ({len(text)} characters)"


# `stepc run --lr-schedule` (tools/schedule.py computes it; docs/optimizers.md)
LR_SCHEDULE_HELP = (
    'a learning-rate schedule fed each step into the program\'s run-time lr (an argument {step.hyper = "lr"}): '
    "constant | step:step_size=S[,gamma=0.1] (torch StepLR) | cosine[:warmup=W,total=T,start_factor=F,min_lr=M] "
    "(torch LinearLR(F, 1.0, W) warmup, then CosineAnnealingLR(T - W, M); defaults W=0, T=--steps, F=1/3, M=0); "
    "each takes lr=BASE (default: the optimizer attribute's lr). Step t (from 0) gets: constant lr; "
    "step lr*gamma**(t//S); cosine lr*(F+(1-F)*t/W) for t < W, then M+(lr-M)*(1+cos(pi*(t-W)/(T-W)))/2"
)
PASS_HELP = ("differentiate, seed-scalar-loss, fuse-sgd (fuse-adam for step.adam/step.adamw; accumulate-gradients and "
             "clip-grad-norm where asked), lower-to-stablehlo, simplify-stablehlo (and cse, dce, canonicalize; cut-at-logits)")


CHECK_MODE_HELP = (
    "where the contracts run: auto (default: at reduced shapes for a program over 2M multiply-adds "
    "or one whose full-size check would not fit in half the memory limit), full, or reduced "
    "(every dimension over 16 shrunk, plus a check that the pass did the same at full size); "
    "see docs/contracts.md"
)


def add_check_mode(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check-mode", choices=("auto", "full", "reduced"), default="auto", help=CHECK_MODE_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="stepc", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("-o", "--output", metavar="OUT", help="write here instead of stdout (atomically; '-' is stdout)")
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
    p.add_argument("--trials", type=positive_int, default=3, help="random inputs per contract (default 3, at least 1)")
    add_check_mode(p)
    p.set_defaults(handler="stepc.tools.compile_cmd:run")

    p = add(
        "check",
        "run the pipeline with every contract and print the table",
        "Run the pipeline with every contract and print one row per pass: its name, the\n"
        "trials, the worst error / bound (the bound is each element's rounding-error bound;\n"
        "<= 1 holds), the bound's tightness, the verdict, the time and where it ran (full or\n"
        "reduced shapes). See docs/contracts.md.\n\n"
        "  stepc check step.ir\n"
        "  stepc check --pass differentiate BEFORE.mlir AFTER.mlir   # one pass's contract\n"
        "  stepc check --artifact step.mlir step.ir                  # an artifact against its source\n\n"
        "Exit status 0 when every contract holds, 1 otherwise.",
    )
    p.add_argument("files", metavar="FILE", nargs="+", help="STEP.ir, or BEFORE AFTER with --pass")
    p.add_argument("--pass", dest="pass_name", metavar="NAME", help="check one pass's contract between two programs")
    p.add_argument("--artifact", metavar="OUT", help="re-check that OUT (stepc compile --emit stablehlo or jax-py) was "
                   "compiled from STEP.ir by this pipeline and still passes: its header's source hash, versions and "
                   "passes, every contract again, and its text against a fresh compilation")
    p.add_argument("--trials", type=positive_int, default=5, help="random inputs per contract (default 5, at least 1)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the random inputs (0 to 2**64 - 1)")
    add_check_mode(p)
    p.set_defaults(handler="stepc.tools.check_cmd:run")

    p = add(
        "exec",
        "run the compiled step on named .npz inputs",
        "Run the compiled program through JAX on named inputs and write named outputs.\n\n"
        "Keys: arguments by their IR names; after seed-scalar-loss: loss and grad.NAME;\n"
        "after the optimizer's pass (fuse-sgd or fuse-adam; the default): loss, the new NAME of each\n"
        "parameter and the optimizer state (momentum.NAME; exp_avg.NAME, exp_avg_sq.NAME, step ...:\n"
        "give them as inputs to continue; absent, it is a first step). A run-time optimizer field\n"
        "(an argument {step.hyper = \"lr\"}) is an input by its IR name.",
    )
    p.add_argument("file", metavar="STEP.ir")
    p.add_argument("--inputs", metavar="IN.npz", required=True, help="named inputs (loaded with allow_pickle=False)")
    p.add_argument(
        "-o", "--output", metavar="OUT.npz", required=True, help="named outputs (written atomically; '-' is stdout)"
    )
    p.add_argument("--until", metavar="PASS", help=f"run the program after this pass ({PASS_HELP})")
    p.add_argument("--steps", type=int, default=1, help="feed each step's parameters and state into the next")
    p.add_argument("--no-check", action="store_true", help="skip the contracts while compiling")
    add_check_mode(p)
    p.set_defaults(handler="stepc.tools.exec_cmd:run")

    p = add(
        "run",
        "train: the main job",
        "Train the step on a data set with a progress bar; report the loss and test accuracy.\n\n"
        "  stepc run examples/mlp_digits.ir --steps 500 --out runs/digits\n"
        "  stepc run step.ir --data mydata.npz --epochs 3 --devices 8\n"
        "  stepc run step.ir --steps 10000 --out runs/r --checkpoint-every 500\n"
        "  stepc run --resume runs/r        # after a kill or Ctrl-C: the same parameters as a run never stopped\n\n"
        "A loss, parameter or optimizer state that stops being finite stops the run (exit 1): the step is\n"
        "re-run in the reference interpreter, and the error points at the first op whose value stops being\n"
        "finite (FILE:LINE:COL, forward value or derivative), keeping the last finite parameters.",
    )
    p.add_argument("file", metavar="STEP.ir", nargs="?", help="the program ('-' reads stdin); none with --resume")
    p.add_argument(
        "--data",
        metavar="NAME|FILE.npz",
        help="a bundled data set (digits: 8x8 images as 64 features or 1x8x8; copy: token sequences for a language "
        "model, drawn from --seed) or an .npz keyed by input names (float features or images, i32 labels or ids); "
        "held-out arrays as test/NAME",
    )
    p.add_argument("--steps", type=int, help="number of SGD steps")
    p.add_argument("--epochs", type=float, help="number of passes over the training set")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of initialization, shuffling, the copy data and the dropout keys: a tensor<2xui32> input gets a "
                   "fresh key each step, SeedSequence([seed, 3, k, step]) for the k-th key (0 to 2**64 - 1)")
    p.add_argument("--init", metavar="FILE.npz", help="initial parameters (default: PyTorch nn.Linear's init)")
    p.add_argument("--lr-schedule", metavar="SPEC", help=LR_SCHEDULE_HELP)
    p.add_argument("--devices", type=int, default=1, help="data parallel across N devices (in a multi-process run: "
                   "each process's; the batch is split over all of them)")
    p.add_argument("--shard", choices=("data", "fsdp"), default="data", help="with several devices: data (default: "
                   "parameters and optimizer state replicated, the batch split) or fsdp (also the parameters and their "
                   "state sharded over their first dim, where it divides by the devices: ZeRO-3 through XLA's partitioner)")
    p.add_argument("--coordinator", metavar="HOST:PORT", help="join a multi-process JAX job (jax.distributed) whose "
                   "process 0 listens here; with --num-processes and --process-id. Every process runs the same command; "
                   "each feeds its share of every batch, process 0 writes --out and the checkpoints")
    p.add_argument("--num-processes", metavar="N", type=positive_int, help="the processes of the job")
    p.add_argument("--process-id", metavar="I", type=int, help="this process's rank, 0 to N-1")
    p.add_argument("--out", metavar="DIR", help="write summary.json, loss.png and params.npz here, and run.json (the "
                   "run's arguments) and checkpoint.npz (at Ctrl-C, every --checkpoint-every steps), to --resume from")
    p.add_argument("--checkpoint-every", metavar="N", type=positive_int, help="write a checkpoint to --out DIR every N "
                   "steps and at the end (atomically: the previous one is kept until the new one is whole)")
    p.add_argument("--resume", metavar="DIR", help="continue the run whose --out was DIR from its checkpoint (or its "
                   "start), with the arguments it was started with (DIR/run.json); give no STEP.ir or options")
    p.add_argument("--check-numerics", action="store_true", help="check every step's new parameters and optimizer "
                   "state for NaN and inf, not only its loss (its cost per step is reported)")
    p.add_argument("--no-check", action="store_true", help="skip the contracts while compiling")
    add_check_mode(p)
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
    p.add_argument("-o", "--output", metavar="OUT", help="write here instead of stdout (atomically; '-' is stdout)")
    p.add_argument("--check", action="store_true", help="run each pass's contract")
    add_check_mode(p)
    p.add_argument("--verify-only", action="store_true", help="parse and verify ops without the step-function rules")
    p.set_defaults(handler="stepc.tools.opt_cmd:run")

    p = add(
        "import",
        "import a PyTorch model, its loss and its optimizer as step IR (checked)",
        "Import a PyTorch training step as a step program. FUNCTION() returns\n"
        "(model, loss_fn, batch, optimizer): loss_fn(model, batch) gives the scalar loss, batch is a dict of\n"
        "example tensors (they fix the shapes), optimizer a torch.optim.SGD, Adam or AdamW over the model's\n"
        "parameters. The import is checked like a pass (its loss and gradients against autograd on a float64\n"
        "copy of the model) and prints its row; an op stepc cannot import is an error at your line.\n\n"
        "  stepc import examples/pytorch/models.py:cnn -o cnn.ir\n"
        "  stepc compile cnn.ir\n\n"
        "Needs PyTorch (pip install 'stepc[torch]'). See docs/importing.md.",
    )
    p.add_argument("target", metavar="FILE.py:FUNCTION", help="the Python file and the function in it to call")
    p.add_argument("-o", "--output", metavar="STEP.ir", help="write the program here (atomically) instead of stdout")
    p.add_argument("--no-check", action="store_true", help="skip the import's check")
    p.add_argument("--trials", type=positive_int, default=2, help="random draws of the check (default: 2)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the check's draws (default: 0)")
    p.set_defaults(handler="stepc.tools.import_cmd:run")
    return parser


def _version() -> str:
    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    closed = _reopen_closed_std_fds()
    debug = "--debug" in (sys.argv[1:] if argv is None else list(argv))
    saved_stdout = sys.stdout
    sys.stdout = _GuardedStdout(saved_stdout, closed=1 in closed)  # type: ignore[assignment]
    try:
        return _main(argv, debug)
    finally:
        sys.stdout = saved_stdout


def _main(argv: Sequence[str] | None, debug: bool) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            sys.stdout.flush()
            return 0
        debug = getattr(args, "debug", False)
        module_name, _, fn_name = args.handler.partition(":")
        try:
            handler = getattr(importlib.import_module(module_name), fn_name)
        except ModuleNotFoundError as missing:  # an optional dependency of one command (`stepc import`: torch)
            if missing.name in OPTIONAL_PACKAGES:
                raise StepcError(f"stepc {args.command} needs {OPTIONAL_PACKAGES[missing.name]}") from None
            raise
        status = int(handler(args) or 0)
        sys.stdout.flush()  # a full disk (`> /dev/full`) shows here, not after the exit status is set
        return status
    except StepcError as e:
        if debug:
            traceback.print_exc()
        _report(e.render())
        if isinstance(e, StdoutError):
            _discard_stdout()
        return 1
    except KeyboardInterrupt:
        _report("stepc: interrupted")
        return 130
    except BrokenPipeError:  # `stepc compile x.ir | head`: the reader has what it wanted
        _discard_stdout()
        return 0
    except OSError as e:
        if debug:
            traceback.print_exc()
        if e.filename is None:
            return _internal_error(e)
        _report(render(_os_error_message(e), None))
        return 1
    except Exception as e:  # a bug in stepc, not the user's fault: say so plainly
        if debug:
            traceback.print_exc()
        backend = _jax_backend_problem()
        if backend is not None:
            _report(render(backend, None))
            return 1
        return _internal_error(e)


def _internal_error(e: BaseException) -> int:
    _report(render(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", None))
    return 2


def _os_error_message(e: OSError) -> str:
    """A file stepc could not open or write, said as the system says why: `cannot access X:
    File name too long` (an OSError no handler turned into a StepcError of its own)."""
    names = " and ".join(str(n) for n in (e.filename, e.filename2) if n is not None)
    return f"cannot access {names}: {e.strerror or e}"


def _report(text: str) -> None:
    """An error message on stderr, if stderr can take it (closed or full, the status still says it)."""
    try:
        print(text, file=sys.stderr)
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass


def _jax_backend_problem() -> str | None:
    """Why JAX cannot start, when `JAX_PLATFORMS` names a backend this machine lacks (JAX fails
    with a bare AssertionError for `cuda` without a GPU); None when JAX is fine."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if not platforms or "jax" not in sys.modules:
        return None
    try:
        import jax

        jax.devices()
    except Exception as e:
        detail = f": {' '.join(str(e).split())}" if str(e).strip() else ""
        return (
            f"JAX_PLATFORMS={platforms}: JAX cannot start that backend on this machine ({type(e).__name__}{detail}); "
            "unset JAX_PLATFORMS or set it to cpu"
        )
    return None


# ---------------------------------------------------------------------------------------------
# The standard streams: closed (`>&-`), full (`> /dev/full`), gone (a pipe's reader exited)


class StdoutError(StepcError):
    """stdout cannot take the output: closed, full, or an I/O error."""


class _GuardedStdout:
    """`sys.stdout` while a command runs: a write that fails is a `StdoutError` (exit 1 with
    `stepc: error: cannot write to stdout: ...`), not an internal error; a closed stdout is
    said to be closed. A broken pipe stays a `BrokenPipeError` (a reader that stopped)."""

    def __init__(self, stream: TextIO | None, closed: bool):
        self._stream = stream
        self._closed = closed or stream is None

    def write(self, text: str) -> int:
        if self._closed or self._stream is None:
            raise StdoutError("cannot write to stdout: it is closed (give -o FILE, or redirect stdout)")
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except (OSError, ValueError) as e:
            raise _stdout_error(e) from None

    def flush(self) -> None:
        if self._closed or self._stream is None:
            return
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except (OSError, ValueError) as e:
            raise _stdout_error(e) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _stdout_error(e: OSError | ValueError) -> StdoutError:
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return StdoutError(f"cannot write to stdout: {reason}")


def _discard_stdout() -> None:
    """Point fd 1 at /dev/null, so that the interpreter's last flush of what stdout still
    buffers cannot fail again ("Exception ignored ...") after the error has been said."""
    try:
        fd = sys.__stdout__.fileno() if sys.__stdout__ is not None else 1
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _reopen_closed_std_fds() -> set[int]:
    """In a process started with stdin, stdout or stderr closed (Python then sets that stream to
    None): put /dev/null on the closed descriptors, so that no file stepc or XLA opens later takes
    descriptor 1 or 2 and receives output meant for a terminal. Returns the descriptors that were
    closed; stderr becomes /dev/null (its messages are lost, the exit status is not)."""
    if sys.stdin is not None and sys.stdout is not None and sys.stderr is not None:
        return set()
    closed: set[int] = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError as e:
            if e.errno == errno.EBADF:
                closed.add(fd)
    for fd in sorted(closed):
        try:
            opened = os.open(os.devnull, os.O_RDWR)
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)
        except OSError:
            pass
    if sys.stderr is None:
        with contextlib.suppress(OSError):  # descriptor 2, now /dev/null: for the life of the process
            sys.stderr = os.fdopen(2, "w", closefd=False)
    return closed | ({1} if sys.stdout is None else set())


if __name__ == "__main__":
    sys.exit(main())
