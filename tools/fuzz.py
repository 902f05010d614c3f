"""Fuzzing stepc: mutated examples and random bytes must compile or fail with a located error.

Every input either compiles (exit 0) or is refused with `FILE:LINE:COL: error:` as the first
line of stderr and exit status 1. A traceback, an `internal error`, an unlocated error, another
exit status or a run over the time bound is a finding; the campaign writes each finding's input
to the crash directory so that `stepc opt CRASH.ir -p ...` reproduces it.

    python -m stepc.tools.fuzz --inputs 20000 --seed 1 --budget 3600 --crash-dir fuzz-crashes/

The mutations are a table (`MUTATIONS`): characters and tokens dropped, duplicated, swapped and
inserted; numbers changed to edge values; lines moved, dropped and duplicated; op names and
element types exchanged; two programs spliced; random bytes, alone or inside a program.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stepc.passes import DEFAULT_PIPELINE
from stepc.tools.cli import main as stepc_main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# ---------------------------------------------------------------------------------------------
# Mutations

TOKEN = re.compile(
    r"\s+|//[^\n]*|\"(?:[^\"\\\n]|\\.)*\"|[%@#^!][\w$.-]+|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|[A-Za-z_][\w$.]*|->|."
)
NUMBER = re.compile(r"(?<![\w.%@#])-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
EDGE_NUMBERS = (
    "0", "1", "-1", "2", "3", "7", "-0.0", "0.0", "1.0e308", "1e-320", "-5", "2147483648",
    "4294967296", "9223372036854775807", "9223372036854775808", "18446744073709551616",
    "99999999999999999999999999", "100000", "65536", "0x7FF8000000000000", "0x7FF0000000000000",
    "1.5", "nan", "inf", "1e400", "00", "0x", "1.", ".5",
)  # fmt: skip
OP_NAMES = (
    "step.add", "step.sub", "step.mul", "step.div", "step.maximum", "step.minimum", "step.exp",
    "step.neg", "step.log", "step.tanh", "step.sigmoid", "step.relu", "step.sqrt", "step.rsqrt",
    "step.square", "step.abs", "step.matmul", "step.transpose", "step.reshape", "step.broadcast",
    "step.sum", "step.mean", "step.max", "step.softmax", "step.log_softmax", "step.cross_entropy",
    "step.mse", "step.constant", "step.convert", "step.compare", "step.one_hot", "step.select", "func.return",
    "step.layer_norm", "step.gelu", "step.gelu_grad", "step.embedding", "step.embedding_grad",
    "step.conv2d", "step.conv2d_input_grad", "step.conv2d_weight_grad", "step.dropout",
    "func.func", "func.call", "builtin.module", "step.nope", "arith.constant",
    "step.max_pool2d", "step.avg_pool2d", "step.concat", "step.slice", "step.pad",
)  # fmt: skip
TYPES = ("f32", "f16", "bf16", "f64", "i32", "ui32", "i64", "i1", "index", "tensor<f32>", "tensor<?xf32>",
         "tensor<0xf32>", "memref<4xf32>", "none", "tuple<f32>", "vector<4xf32>", "complex<f32>")  # fmt: skip
SNIPPETS = (
    "<", ">", "(", ")", "[", "]", "{", "}", "%", "@", "#", ":", ",", "=", "->", "x", '"', "\\",
    "^bb0:", "dense<", "dims [", "perm [", "axis ", "rate ", "tensor<2xui32>", "{step.param}", "#step.sgd<lr = 0.1>",
    "#step.sgd<>", "{step.param = 3}", "{step.state = \"momentum.w\"}", "{step.cotangent}",
    "loc(\"x\":1:2)", "%\"q\"", "@\"\\22\"", "\u00e9", "\u202e", "\t", "\r", "\x0b", "// ",
    "attributes {step.sgd = #step.sgd<lr = -1.0>}", "[" * 40, "<" * 40, "tensor<" * 30,
    "{a = " * 30, "dense<" + "[" * 60, "(" * 40,
    "kernel [", "stride [", "padding [", "start [", "limit [", "low [", "high [", "interior [",
)  # fmt: skip


def _tokens(text: str) -> list[str]:
    return TOKEN.findall(text)


def _pick(rng: random.Random, n: int) -> int:
    return rng.randrange(n) if n > 0 else 0


def drop_chars(rng: random.Random, text: str) -> str:
    i = _pick(rng, len(text))
    return text[:i] + text[i + rng.randint(1, 3) :]


def duplicate_chars(rng: random.Random, text: str) -> str:
    i = _pick(rng, len(text))
    j = min(len(text), i + rng.randint(1, 8))
    return text[:j] + text[i:j] + text[j:]


def swap_chars(rng: random.Random, text: str) -> str:
    if len(text) < 2:
        return text[::-1]
    i, j = sorted(rng.sample(range(len(text)), 2))
    if rng.random() < 0.5:
        j = min(len(text) - 1, i + 1)
    chars = list(text)
    chars[i], chars[j] = chars[j], chars[i]
    return "".join(chars)


def insert_snippet(rng: random.Random, text: str) -> str:
    i = _pick(rng, len(text) + 1)
    return text[:i] + rng.choice(SNIPPETS) + text[i:]


def drop_token(rng: random.Random, text: str) -> str:
    tokens = _tokens(text)
    i = _pick(rng, len(tokens))
    return "".join(tokens[:i] + tokens[i + 1 :])


def duplicate_token(rng: random.Random, text: str) -> str:
    tokens = _tokens(text)
    i = _pick(rng, len(tokens))
    return "".join(tokens[: i + 1] + tokens[i:])


def swap_tokens(rng: random.Random, text: str) -> str:
    tokens = [t for t in _tokens(text)]
    words = [k for k, t in enumerate(tokens) if not t.isspace()]
    if len(words) < 2:
        return text
    i, j = rng.sample(words, 2)
    if rng.random() < 0.5:  # neighbours
        k = words.index(i)
        j = words[min(len(words) - 1, k + 1)]
    tokens[i], tokens[j] = tokens[j], tokens[i]
    return "".join(tokens)


def change_number(rng: random.Random, text: str) -> str:
    matches = list(NUMBER.finditer(text))
    if not matches:
        return insert_snippet(rng, text)
    m = rng.choice(matches)
    if rng.random() < 0.6:
        new = rng.choice(EDGE_NUMBERS)
    else:
        new = str(int(m.group()) + rng.choice((-1, 1, 2)) if "." not in m.group() and "e" not in m.group().lower()
                  else rng.uniform(-10, 10))
    return text[: m.start()] + new + text[m.end() :]


def change_shape(rng: random.Random, text: str) -> str:
    """Exchange one dim of a tensor type (`4x1` -> `4x64`), or add/drop one."""
    matches = list(re.finditer(r"tensor<([0-9x]*)", text))
    if not matches:
        return change_number(rng, text)
    m = rng.choice(matches)
    dims = [d for d in m.group(1).split("x") if d]
    choice = rng.random()
    if dims and choice < 0.5:
        dims[_pick(rng, len(dims))] = rng.choice(("1", "2", "3", "4", "10", "32", "64", "128", "0", "100000"))
    elif dims and choice < 0.75:
        dims.pop(_pick(rng, len(dims)))
    else:
        dims.insert(_pick(rng, len(dims) + 1), rng.choice(("1", "2", "4")))
    new = "tensor<" + "".join(d + "x" for d in dims)
    return text[: m.start()] + new + text[m.end() :]


def exchange_word(rng: random.Random, text: str) -> str:
    """An op name for another op name, or an element type for another type."""
    ops = [m for m in re.finditer(r"\b(?:step|func)\.\w+", text)]
    types = [m for m in re.finditer(r"\b(?:f16|bf16|f32|f64|i32)\b", text)]
    pool = ops if (rng.random() < 0.5 and ops) or not types else types
    if not pool:
        return drop_token(rng, text)
    m = rng.choice(pool)
    new = rng.choice(OP_NAMES if pool is ops else TYPES)
    return text[: m.start()] + new + text[m.end() :]


def move_line(rng: random.Random, text: str) -> str:
    lines = text.split("\n")
    if len(lines) < 2:
        return text
    line = lines.pop(_pick(rng, len(lines)))
    lines.insert(_pick(rng, len(lines) + 1), line)
    return "\n".join(lines)


def drop_line(rng: random.Random, text: str) -> str:
    lines = text.split("\n")
    lines.pop(_pick(rng, len(lines)))
    return "\n".join(lines)


def duplicate_line(rng: random.Random, text: str) -> str:
    lines = text.split("\n")
    i = _pick(rng, len(lines))
    lines.insert(i, lines[i] if lines else "")
    return "\n".join(lines)


def truncate(rng: random.Random, text: str) -> str:
    return text[: _pick(rng, len(text) + 1)]


# Each mutation takes the rng and a program's text and returns new text.
MUTATIONS: tuple[tuple[str, Callable[[random.Random, str], str]], ...] = (
    ("drop-chars", drop_chars),
    ("duplicate-chars", duplicate_chars),
    ("swap-chars", swap_chars),
    ("insert-snippet", insert_snippet),
    ("drop-token", drop_token),
    ("duplicate-token", duplicate_token),
    ("swap-tokens", swap_tokens),
    ("change-number", change_number),
    ("change-shape", change_shape),
    ("exchange-word", exchange_word),
    ("move-line", move_line),
    ("drop-line", drop_line),
    ("duplicate-line", duplicate_line),
    ("truncate", truncate),
)


def load_corpus(paths: Sequence[Path] | None = None) -> list[tuple[str, str]]:
    """The seed programs: (name, text) of every `examples/*.ir` (or the given files)."""
    files = sorted(paths) if paths else sorted(EXAMPLES.glob("*.ir"))
    return [(p.name, p.read_text(encoding="utf-8")) for p in files]


@dataclass(frozen=True)
class FuzzInput:
    index: int
    recipe: str  # how it was made, e.g. "linreg.ir: swap-tokens, change-number"
    data: bytes


def generate(corpus: Sequence[tuple[str, str]], seed: int, count: int, random_share: float = 0.1):
    """`count` inputs, deterministic in `seed`: mostly 1-3 stacked mutations of a corpus
    program, sometimes two programs spliced, sometimes random bytes."""
    rng = random.Random(seed)
    for index in range(count):
        roll = rng.random()
        if roll < random_share / 2:
            n = rng.choice((0, 1, 2, 8, 64, 512))
            yield FuzzInput(index, f"random bytes ({n})", bytes(rng.getrandbits(8) for _ in range(n)))
            continue
        name, text = rng.choice(corpus)
        if roll < random_share:
            i = _pick(rng, len(text) + 1)
            junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 16)))
            yield FuzzInput(index, f"{name}: random bytes inside", text[:i].encode() + junk + text[i:].encode())
            continue
        steps: list[str] = []
        if roll < random_share + 0.05 and len(corpus) > 1:
            other_name, other = rng.choice(corpus)
            cut_a, cut_b = _pick(rng, len(text)), _pick(rng, len(other))
            text = text[:cut_a] + other[cut_b:]
            steps.append(f"splice {other_name}")
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
            mutation_name, mutation = rng.choice(MUTATIONS)
            text = mutation(rng, text)
            steps.append(mutation_name)
        yield FuzzInput(index, f"{name}: " + ", ".join(steps), text.encode("utf-8", "surrogatepass"))


# ---------------------------------------------------------------------------------------------
# Running one input and judging the outcome

ACCEPTED = ("compiled", "error")


@dataclass
class Outcome:
    kind: str  # compiled | error | traceback | internal | unlocated | bad-status | hang
    status: int | None
    first_line: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.kind in ACCEPTED


def judge(path: str, status: int | None, stderr: str, seconds: float) -> Outcome:
    """Exit 0 without a traceback, or exit 1 with `PATH:LINE:COL: error:` first."""
    first = stderr.split("\n", 1)[0]
    if "Traceback (most recent call last)" in stderr:
        return Outcome("traceback", status, first, seconds)
    if "internal error" in stderr:
        return Outcome("internal", status, first, seconds)
    if status == 0:
        return Outcome("compiled", status, first, seconds)
    if status != 1:
        return Outcome("bad-status", status, first, seconds)
    if re.match(re.escape(path) + r":\d+:\d+: error: \S", first):
        return Outcome("error", status, first, seconds)
    return Outcome("unlocated", status, first, seconds)


class _Timeout(BaseException):
    """Raised by the alarm; a BaseException so that stepc's own handlers do not swallow it."""


def run_in_process(path: str, argv: Sequence[str], timeout: float) -> Outcome:
    """`stepc.tools.cli.main(argv)` in this process, stdout and stderr captured, under an alarm."""
    stderr, stdout = io.StringIO(), io.StringIO()

    def on_alarm(signum, frame):  # type: ignore[no-untyped-def]
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    start = time.perf_counter()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            try:
                status: int | None = stepc_main(list(argv))
            except SystemExit as e:  # argparse
                status = e.code if isinstance(e.code, int) else 1
            except _Timeout:
                raise
            except BaseException:
                import traceback

                traceback.print_exc(file=stderr)
                status = None
    except _Timeout:
        signal.setitimer(signal.ITIMER_REAL, 0)
        return Outcome("hang", None, f"no answer within {timeout:g} s", time.perf_counter() - start)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return judge(path, status, stderr.getvalue(), time.perf_counter() - start)


def run_subprocess(
    path: str, argv: Sequence[str], timeout: float, stepc: Sequence[str] | None = None, env: dict[str, str] | None = None
) -> Outcome:
    """The real `stepc` command in a child process: its exit status and stderr, end to end."""
    command = list(stepc or [sys.executable, "-m", "stepc.tools.cli"]) + list(argv)
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env)
    except subprocess.TimeoutExpired:
        return Outcome("hang", None, f"no answer within {timeout:g} s", time.perf_counter() - start)
    stderr = done.stderr.decode("utf-8", "replace")
    return judge(path, done.returncode, stderr, time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# Which pipeline to fuzz


def working_pipeline(corpus_files: Sequence[Path], candidates: Sequence[str] | None = None) -> list[str]:
    """The passes of the default pipeline (in order) that compile every seed program cleanly.

    Passes still being built are left out rather than reported as findings on every input.
    """
    chosen: list[str] = []
    for name in candidates or DEFAULT_PIPELINE:
        trial = chosen + [name]
        if all(run_in_process(str(f), opt_argv(str(f), trial), 60.0).kind == "compiled" for f in corpus_files):
            chosen = trial
    return chosen


def opt_argv(path: str, passes: Sequence[str]) -> list[str]:
    return ["opt", path, "-p", ",".join(passes)]


# ---------------------------------------------------------------------------------------------
# A campaign


@dataclass
class Summary:
    tried: int = 0
    kinds: Counter = field(default_factory=Counter)
    findings: list[tuple[FuzzInput, Outcome, str]] = field(default_factory=list)
    slowest: float = 0.0
    seconds: float = 0.0
    pipeline: list[str] = field(default_factory=list)

    @property
    def tracebacks(self) -> int:
        return self.kinds["traceback"] + self.kinds["internal"]

    @property
    def hangs(self) -> int:
        return self.kinds["hang"]

    def table(self) -> str:
        lines = [
            f"inputs tried: {self.tried} in {self.seconds:.1f} s (slowest {self.slowest * 1000:.0f} ms)",
            f"pipeline: opt -p {','.join(self.pipeline) or '(parse and verify only)'}",
        ]
        for kind in ("compiled", "error", "traceback", "internal", "unlocated", "bad-status", "hang"):
            lines.append(f"  {kind:<11} {self.kinds[kind]}")
        for fuzz_input, outcome, saved in self.findings[:20]:
            lines.append(f"FINDING #{fuzz_input.index} [{outcome.kind}] {fuzz_input.recipe}: {outcome.first_line[:200]}")
            if saved:
                lines.append(f"  saved as {saved}")
        return "\n".join(lines)


def campaign(
    *,
    count: int,
    seed: int,
    budget: float | None = None,
    timeout: float = 10.0,
    passes: Sequence[str] | None = None,
    crash_dir: Path | None = None,
    corpus_files: Sequence[Path] | None = None,
    workdir: Path | None = None,
    progress: Callable[[Summary], None] | None = None,
) -> Summary:
    """Run `count` inputs (or until `budget` seconds pass) through `stepc opt FILE -p PASSES`."""
    files = list(corpus_files) if corpus_files else sorted(EXAMPLES.glob("*.ir"))
    corpus = load_corpus(files)
    summary = Summary(pipeline=list(passes) if passes is not None else working_pipeline(files))
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        directory = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="stepc-fuzz-")))
        path = directory / "input.ir"
        for fuzz_input in generate(corpus, seed, count):
            if budget is not None and time.perf_counter() - start > budget:
                break
            path.write_bytes(fuzz_input.data)
            outcome = run_in_process(str(path), opt_argv(str(path), summary.pipeline), timeout)
            summary.tried += 1
            summary.kinds[outcome.kind] += 1
            summary.slowest = max(summary.slowest, outcome.seconds)
            if not outcome.ok:
                saved = ""
                if crash_dir is not None:
                    crash_dir.mkdir(parents=True, exist_ok=True)
                    target = crash_dir / f"seed{seed}-{fuzz_input.index:06d}-{outcome.kind}.ir"
                    target.write_bytes(fuzz_input.data)
                    saved = str(target)
                summary.findings.append((fuzz_input, outcome, saved))
            if progress is not None and summary.tried % 500 == 0:
                progress(summary)
    summary.seconds = time.perf_counter() - start
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stepc.tools.fuzz",
        description="Fuzz stepc's parser, verifier and passes with mutated examples and random bytes. "
        "Every input must compile or fail with FILE:LINE:COL: error: and exit status 1; "
        "anything else (traceback, internal error, unlocated error, hang) is a finding, "
        "saved to --crash-dir. Exit status: 0 without findings, 1 with.",
    )
    parser.add_argument("--inputs", "-n", type=int, default=10000, help="how many inputs (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mutations (default 0)")
    parser.add_argument("--budget", type=float, help="stop after this many seconds")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds one input may take (default 10)")
    parser.add_argument("--passes", help="comma-separated passes for `stepc opt -p` (default: the working "
                        "part of the default pipeline); '' for parse and verify only")
    parser.add_argument("--crash-dir", type=Path, default=Path("fuzz-crashes"),
                        help="where findings are written (default fuzz-crashes/)")
    parser.add_argument("--corpus", type=Path, nargs="*", help="seed programs (default examples/*.ir)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    passes = None if args.passes is None else [p for p in args.passes.split(",") if p.strip()]
    os.environ.setdefault("STEPC_MAX_BYTES", "1G")  # mutated shapes must not make the fuzzer swap

    def progress(summary: Summary) -> None:
        if not args.quiet:
            print(f"... {summary.tried} inputs, {len(summary.findings)} findings", file=sys.stderr, flush=True)

    summary = campaign(
        count=args.inputs, seed=args.seed, budget=args.budget, timeout=args.timeout, passes=passes,
        crash_dir=args.crash_dir, corpus_files=args.corpus, progress=progress,
    )  # fmt: skip
    print(summary.table())
    return 1 if summary.findings else 0


if __name__ == "__main__":
    sys.exit(main())
