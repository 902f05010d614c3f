"""Fuzzing stepc's surface: the command line, the `.npz` data files and the Python API.

`tools/fuzz.py` mutates programs; this fuzzer keeps a small program that works and attacks
everything around it, one hostile change per case on top of a case that succeeds, so that each
case is its own minimal reproduction:

- `cli`: every subcommand (compile, check, exec, run, opt) and option with hostile values
  (negative, huge, non-numeric, empty), hostile paths (over 255 bytes, holding a newline, a
  directory, missing, unreadable, `-` for stdin and stdout, read-only output directories, the
  input itself), odd `STEPC_MAX_BYTES`, argument names that collide with NumPy's keywords;
- `npz`: the files of `exec --inputs`, `run --data` and `run --init`: wrong, missing, extra and
  very many keys, wrong dtypes, object arrays (a pickle that would create a file), huge declared
  shapes over small payloads, truncated and corrupt members, NaN and inf, empty arrays, empty
  held-out sets, labels out of range, keys named like `np.savez`'s own arguments;
- `api`: `stepc.compile` and the compiled Program's methods with hostile argument types and dict
  shapes; out-of-range labels under `jax.jit` must give a gradient consistent with the loss.

Each case runs in this process (`stepc.tools.cli.main(argv)` or an API snippet, in its own
directory, under an alarm): each subprocess pays about a second of imports, so only a fixed
share of process-level conditions runs in a child (stdout closed or `/dev/full`, stderr closed,
`/dev/zero` as program or stdin, environment variables, memory), under a watchdog that reads
its resident memory and kills it past twice the limit.

Outcomes: `ok`; `error` (exit 1 with `stepc: error:` or `FILE:LINE:COL: error:`; for the API a
StepcError, or a ValueError/TypeError raised by stepc's own code); `usage` (argparse's exit 2
with its usage line). Everything else is a finding, listed in `FINDINGS`.

    python -m stepc.tools.fuzz_surface --cases 5000 --seed 1 --time-budget 1800
    python -m stepc.tools.fuzz_surface --cases 300 --surface npz --crash-dir surface-crashes/
"""

from __future__ import annotations

import argparse
import contextlib
import dis
import functools
import hashlib
import io
import json
import os
import random
import re
import resource
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

import stepc
from stepc.ir.diagnostics import StepcError
from stepc.ir.limits import parse_byte_count
from stepc.tools import cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SURFACES = ("cli", "npz", "api")
DEFAULT_LIMIT = "300M"  # STEPC_MAX_BYTES during a campaign, unless the environment sets it
MIB = 1024**2

ACCEPTED = ("ok", "error", "usage")
FINDINGS = {
    "internal": "exit 2 with 'internal error', an exception escaping main, or (API) an exception other than "
    "StepcError, ValueError or TypeError",
    "traceback": "a Python traceback on stderr without --debug",
    "bad-status": "an exit status other than 0, 1 and argparse's 2, or exit 1 without an error line",
    "raw-error": "API: a ValueError or TypeError raised inside Python, NumPy or JAX rather than by stepc",
    "hang": "no answer within the per-case timeout",
    "memory": "peak memory above the baseline plus 1.5x STEPC_MAX_BYTES",
    "input-modified": "an input file changed",
    "code-ran": "a pickled payload in a data file ran",
    "accepted-bad": "exit 0 (or a return) where an error was due",
    "refused-valid": "a case that must succeed failed",
    "lost-output": "success, but an output is missing, incomplete or misplaced (a parameter left out, "
    "a file named '-', invalid JSON)",
    "mixed-output": "a failed run changed what --out held",
    "temp-left": "a temporary file left behind",
    "flood": "over 64 KiB of messages",
    "warning": "a Python warning shown to the user",
    "wrong-result": "results that contradict each other",
}
FLOOD_BYTES = 64 * 1024
QUIET_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
NOBODY = 65534
FORK_WARNING = r"os\.fork\(\) was called"  # JAX's, when a child starts: the child execs at once
RUN_FILES = ("summary.json", "params.npz", "loss.png")


# ---------------------------------------------------------------------------------------------
# The programs the cases start from


@dataclass(frozen=True)
class Prog:
    """A small program and what it takes: parameters, batch inputs (with the class count of
    labels) and state keys, so that valid inputs can be made and then broken."""

    name: str
    text: str
    params: tuple[tuple[str, tuple[int, ...]], ...]
    inputs: tuple[tuple[str, tuple[int, ...], str, int | None], ...]  # name, shape, dtype, classes
    state: tuple[str, ...] = ()

    @property
    def batch(self) -> int:
        return self.inputs[0][1][0]

    def renamed(self, old: str, new: str) -> Prog:
        """The same program with the argument `%old` called `%new` (a legal name or not)."""
        text = re.sub(r"%" + re.escape(old) + r"(?![\w$.-])", "%" + new, self.text)
        params = tuple((new if n == old else n, s) for n, s in self.params)
        inputs = tuple((new if n == old else n, s, d, c) for n, s, d, c in self.inputs)
        state = tuple(re.sub(r"\." + re.escape(old) + "$", "." + new, k) for k in self.state)
        return Prog(f"{self.name}[%{old}->%{new}]", text, params, inputs, state)

    def output_keys(self) -> set[str]:
        """The keys of `stepc exec`'s output after the whole pipeline."""
        return {"loss", *(n for n, _ in self.params), *self.state}


LINREG = Prog(
    "linreg",
    (EXAMPLES / "linreg.ir").read_text(encoding="utf-8"),
    (("w", (4, 1)), ("b", (1,))),
    (("x", (32, 4), "float32", None), ("t", (32, 1), "float32", None)),
)
CLASSIFIER = Prog(
    "classifier",
    """\
// A three-class linear classifier with momentum: labels, state, accuracy.
func.func @clf(%w: tensor<4x3xf32> {step.param}, %b: tensor<3xf32> {step.param},
               %x: tensor<8x4xf32>, %labels: tensor<8xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1, momentum = 0.9>} {
  %xw = step.matmul %x, %w : (tensor<8x4xf32>, tensor<4x3xf32>) -> tensor<8x3xf32>
  %logits = step.add %xw, %b : (tensor<8x3xf32>, tensor<3xf32>) -> tensor<8x3xf32>
  %loss = step.cross_entropy %logits, %labels : (tensor<8x3xf32>, tensor<8xi32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}
""",
    (("w", (4, 3)), ("b", (3,))),
    (("x", (8, 4), "float32", None), ("labels", (8,), "int32", 3)),
    ("momentum.w", "momentum.b"),
)
SOFTMAX = Prog(
    "softmax_regression",
    (EXAMPLES / "softmax_regression.ir").read_text(encoding="utf-8"),
    (("w", (5, 3)), ("b", (3,))),
    (("x", (32, 5), "float32", None), ("onehot", (32, 3), "float32", None)),
    ("momentum.w", "momentum.b"),
)
PROGS = (LINREG, CLASSIFIER, SOFTMAX)

# Legal argument names that collide with something: np.savez's and np.load's keywords, xDSL's
# `_N` suffixes, Python keywords (each must work as any other name: "ok"); the derivative's names,
# the held-out data's prefix, optimizer state keys (stepc may reserve them: "any").
COLLIDING_NAMES = (
    ("file", "ok"), ("allow_pickle", "ok"), ("args", "ok"), ("kwds", "ok"), ("fix_imports", "ok"),
    ("arr_0", "ok"), ("mmap_mode", "ok"), ("encoding", "ok"), ("w_1", "ok"), ("b_0", "ok"), ("lambda", "ok"),
    ("None", "ok"), ("__class__", "ok"), ("grad", "ok"), ("momentum", "ok"), ("loss_", "ok"), ("a.npy", "ok"),
    ("loss_cotangent", "any"), ("w_cotangent", "any"), ("x_cotangent", "any"), ("test.t", "any"),
    ("test.x", "any"), ("step", "any"), ("first_step", "any"),
)  # fmt: skip


def valid_arrays(prog: Prog, rng: random.Random, rows: int | None = None, state: bool = False) -> dict[str, np.ndarray]:
    """Parameters and a batch for `exec --inputs` (rows None), or `rows` examples of every batch
    input for `run --data`."""
    gen = np.random.default_rng(rng.randrange(2**32))
    out: dict[str, np.ndarray] = {}
    if rows is None:
        for name, shape in prog.params:
            out[name] = gen.standard_normal(shape).astype(np.float32)
        if state:
            for key in prog.state:
                shape = dict(prog.params)[key.split(".", 1)[1]]
                out[key] = gen.standard_normal(shape).astype(np.float32)
    for name, shape, dtype, classes in prog.inputs:
        full = shape if rows is None else (rows, *shape[1:])
        if classes is not None:
            out[name] = gen.integers(0, classes, size=full).astype(dtype)
        else:
            out[name] = gen.standard_normal(full).astype(dtype)
    return out


# ---------------------------------------------------------------------------------------------
# .npz files, written by hand where NumPy would refuse


class PickleBomb:
    """Unpickling this creates the file PWNED in the current directory: proof that a loader ran
    code smuggled in a data file."""

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, ("PWNED", "w"))


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def npy_raw(header: str, payload: bytes = b"", version: tuple[int, int] = (1, 0)) -> bytes:
    """An .npy member with any header text (a dict literal as NumPy writes it, or not)."""
    encoded = header.encode("latin1")
    size_bytes = 2 if version == (1, 0) else 4
    pad = (-(6 + 2 + size_bytes + len(encoded) + 1)) % 64
    encoded += b" " * pad + b"\n"
    size = len(encoded).to_bytes(size_bytes, "little")
    return b"\x93NUMPY" + bytes(version) + size + encoded + payload


def npy_header(shape: Any, descr: str = "<f4", fortran: bool = False) -> str:
    return f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}"


def npz(members: Mapping[str, bytes], compress: bool = False, raw_names: bool = False) -> bytes:
    """A zip of members named `KEY.npy` as np.savez names them (or exactly as given)."""
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are one of the hostile cases
        with zipfile.ZipFile(buffer, "w", method) as archive:
            for name, data in members.items():
                member = name if raw_names else name + ".npy"
                archive.writestr(_member(member, method), data)
    return buffer.getvalue()


def _member(name: str, method: int = zipfile.ZIP_STORED) -> zipfile.ZipInfo:
    """A zip member with a fixed date: the same seed makes the same bytes."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = method
    return info


def npz_arrays(arrays: Mapping[str, np.ndarray]) -> bytes:
    return npz({k: npy(v) for k, v in arrays.items()})


# ---------------------------------------------------------------------------------------------
# A case


@dataclass(frozen=True)
class Lay:
    """One entry of a case's directory: a file (bytes), a directory, or a symbolic link."""

    path: str
    data: bytes | None = None  # None: a directory
    link: str | None = None  # a symbolic link to this target
    mode: int | None = None  # chmod after writing
    role: str = "input"  # input: must never change; output: an earlier output that may be replaced


@dataclass(frozen=True)
class Case:
    surface: str
    index: int
    recipe: str  # what is hostile about it, in one line
    argv: tuple[str, ...] = ()  # stepc's arguments (cli and npz cases)
    code: str = ""  # the Python snippet (api cases)
    lays: tuple[Lay, ...] = ()
    expect: str = "any"  # any | error | ok
    process: bool = False  # in a child process (process-level conditions)
    env: tuple[tuple[str, str | None], ...] = ()  # None unsets
    stdin: bytes | str | None = None  # bytes, or a device path for a child ("/dev/zero")
    stdout: str = "pipe"  # pipe | closed | /dev/full
    stderr: str = "pipe"  # pipe | closed
    unprivileged: bool = False  # run as nobody (root reads unreadable files)
    checks: tuple[str, ...] = ()  # postconditions, see `postconditions`
    prog: Prog | None = None

    def command(self) -> str:
        """The shell command that reproduces the case, in its directory."""
        env = " ".join(f"{k}={_show(v)}" if v is not None else f"-u {k}" for k, v in self.env)
        parts = (["env " + env] if env else []) + ["stepc"] + [_show(a) for a in self.argv]
        if isinstance(self.stdin, str):
            parts.append(f"< {self.stdin}")
        elif self.stdin is not None:
            parts.append("< STDIN")
        if self.stdout == "closed":
            parts.append(">&-")
        elif self.stdout == "/dev/full":
            parts.append("> /dev/full")
        if self.stderr == "closed":
            parts.append("2>&-")
        return " ".join(parts)

    def reproduction(self) -> str:
        if self.surface == "api":
            files = ", ".join(lay.path for lay in self.lays)
            return f"(in a directory holding {files}) python -c {shlex.quote(API_PRELUDE + self.code)}"
        prefix = "as nobody: " if self.unprivileged else ""
        return prefix + self.command()


def _show(arg: str) -> str:
    if len(arg) > 72:
        arg = f"{arg[:24]}...<{len(arg)} chars>...{arg[-12:]}"
    if arg and re.fullmatch(r"[\w@%+=:,./-]+", arg):
        return arg
    return "$" + repr(arg) if any(c in arg for c in "\n\t\r") else shlex.quote(arg)


# ---------------------------------------------------------------------------------------------
# Hostile paths


@dataclass(frozen=True)
class PathChoice:
    arg: str
    lays: tuple[Lay, ...]
    expect: str  # what this path alone makes of a case that otherwise succeeds
    unprivileged: bool = False
    note: str = ""


def input_path(rng: random.Random, data: bytes, stem: str, suffix: str, *, stdin_ok: bool = False) -> PathChoice:
    """Where an input file lies: a plain name, or one of the hostile places."""
    kinds = ["255-byte name", "name over 255 bytes", "newline in the name", "a directory", "missing",
             "unreadable", "/dev/null", "empty string", "symlink loop", "dangling symlink", "path over 4096 bytes",
             "a file as a directory", "non-UTF-8 name", "quotes and spaces", ".func.func name", "/proc/self/mem",
             "leading dash", "symlink", "trailing slash", "relative ../ path"]  # fmt: skip
    if stdin_ok:
        kinds.append("stdin '-'")
    kind = rng.choice(kinds)
    plain = stem + suffix
    if kind == "255-byte name":
        name = stem[0] * (255 - len(suffix)) + suffix
        return PathChoice(name, (Lay(name, data),), "ok", note=kind)
    if kind == "name over 255 bytes":
        return PathChoice(stem[0] * 300 + suffix, (), "error", note=kind)
    if kind == "newline in the name":
        name = f"{stem}\n{suffix}"
        return PathChoice(name, (Lay(name, data),), "ok", note=kind)
    if kind == "a directory":
        return PathChoice(plain, (Lay(plain),), "error", note=kind)
    if kind == "missing":
        return PathChoice(plain, (), "error", note=kind)
    if kind == "unreadable":
        return PathChoice(plain, (Lay(plain, data, mode=0),), "error", unprivileged=True, note=kind)
    if kind == "/dev/null":
        return PathChoice("/dev/null", (), "error", note=kind)
    if kind == "empty string":
        return PathChoice("", (), "error", note=kind)
    if kind == "symlink loop":
        return PathChoice(plain, (Lay(plain, link=plain),), "error", note=kind)
    if kind == "dangling symlink":
        return PathChoice(plain, (Lay(plain, link="nowhere" + suffix),), "error", note=kind)
    if kind == "path over 4096 bytes":
        return PathChoice(("d" * 200 + "/") * 22 + plain, (), "error", note=kind)
    if kind == "a file as a directory":
        return PathChoice("afile/" + plain, (Lay("afile", b"x"),), "error", note=kind)
    if kind == "non-UTF-8 name":
        name = os.fsdecode(b"\xff\xfe" + plain.encode())
        return PathChoice(name, (Lay(name, data),), "ok", note=kind)
    if kind == "quotes and spaces":
        name = f"a b'\"$(touch X){suffix}"
        return PathChoice(name, (Lay(name, data),), "ok", note=kind)
    if kind == ".func.func name":
        name = f"{stem}.func.func{suffix}"
        return PathChoice(name, (Lay(name, data),), "ok", note=kind)
    if kind == "/proc/self/mem":
        return PathChoice("/proc/self/mem", (), "error", note="/proc/self/mem (an unreadable file, even for root)")
    if kind == "leading dash":
        name = "-" + plain
        return PathChoice(name, (Lay(name, data),), "any", note=kind)
    if kind == "symlink":
        return PathChoice("link" + suffix, (Lay(plain, data), Lay("link" + suffix, link=plain)), "ok", note=kind)
    if kind == "trailing slash":
        return PathChoice(plain + "/", (Lay(plain, data),), "any", note=kind)
    if kind == "relative ../ path":
        return PathChoice(f"sub/../{plain}", (Lay("sub"), Lay(plain, data)), "ok", note=kind)
    return PathChoice("-", (), "ok", note="stdin '-'")


def output_path(rng: random.Random, stem: str, suffix: str, inputs: Sequence[str]) -> PathChoice:
    """Where an output goes: a plain name, or one of the hostile places."""
    kinds = ["255-byte name", "name over 255 bytes", "newline in the name", "a directory", "read-only directory",
             "/dev/full", "/dev/null", "'-'", "empty string", "the input itself", "a symlink to the input",
             "a hard link to the input", "deep new directories", "under a file", "an existing file",
             "non-UTF-8 name", "path over 4096 bytes"]  # fmt: skip
    kind = rng.choice(kinds)
    plain = stem + suffix
    if kind == "255-byte name":
        return PathChoice(stem[0] * (255 - len(suffix)) + suffix, (), "ok", note=kind)
    if kind == "name over 255 bytes":
        return PathChoice(stem[0] * 300 + suffix, (), "error", note=kind)
    if kind == "newline in the name":
        return PathChoice(f"{stem}\n{suffix}", (), "ok", note=kind)
    if kind == "a directory":
        return PathChoice(plain, (Lay(plain),), "error", note=kind)
    if kind == "read-only directory":
        return PathChoice("ro/" + plain, (Lay("ro", mode=0o555),), "error", unprivileged=True, note=kind)
    if kind == "/dev/full":
        return PathChoice("/dev/full", (), "error", note=kind)
    if kind == "/dev/null":
        return PathChoice("/dev/null", (), "ok", note=kind)
    if kind == "'-'":
        return PathChoice("-", (), "any", note="'-' (stdout, never a file named '-')")
    if kind == "empty string":
        return PathChoice("", (), "error", note=kind)
    if kind == "the input itself" and inputs:
        return PathChoice(inputs[0], (), "error", note=kind)
    if kind == "a symlink to the input" and inputs:
        return PathChoice("tolink" + suffix, (Lay("tolink" + suffix, link=inputs[0]),), "error", note=kind)
    if kind == "a hard link to the input" and inputs:
        return PathChoice("hard" + suffix, (Lay("hard" + suffix, link="=" + inputs[0]),), "error", note=kind)
    if kind == "deep new directories":
        return PathChoice("a/b/c/" + plain, (), "ok", note=kind)
    if kind == "under a file":
        return PathChoice("afile/" + plain, (Lay("afile", b"x"),), "error", note=kind)
    if kind == "an existing file":
        return PathChoice(plain, (Lay(plain, b"old output", role="output"),), "ok", note=kind)
    if kind == "non-UTF-8 name":
        return PathChoice(os.fsdecode(b"\xff" + plain.encode()), (), "ok", note=kind)
    if kind == "path over 4096 bytes":
        return PathChoice(("d" * 200 + "/") * 22 + plain, (), "error", note=kind)
    return PathChoice(plain, (), "ok", note="plain")


# ---------------------------------------------------------------------------------------------
# Hostile values of options

INTS = ("0", "-1", "-3", "-9223372036854775809", "18446744073709551616", "1e3", "1.5", "0x10", "", " ", "abc",
        "nan", "inf", "-0", "+2", "\u0663", "1_0", "\x7f", "--", "1 2")  # fmt: skip
HUGE = ("9" * 400, "9223372036854775808", "100000")
EPOCHS = ("0", "-1", "nan", "inf", "-inf", "1e-300", "0.01", "abc", "", "1e309", "0x1p-3", "5e-324")
PASSES = ("differentiate", "seed-scalar-loss", "fuse-sgd", "lower-to-stablehlo", "simplify-stablehlo", "cse", "dce",
          "canonicalize", "cut-at-logits")  # fmt: skip
UNTIL = PASSES + ("", "nope", "DIFFERENTIATE", "differentiate,fuse-sgd", "fuse-sgd\n", "-", "\u00e9", "x" * 300)
PIPELINES = ("", ",", "differentiate", "differentiate,differentiate", "fuse-sgd", "dce{foo=1}", "dce{", "dce{}",
             "cse{a=1,b=2}", "nope", "lower-to-stablehlo,lower-to-stablehlo", "lower-to-stablehlo", "cut-at-logits",
             "simplify-stablehlo", " differentiate ", "differentiate,,dce", "{", "}", "dce}", "a" * 300,
             "differentiate\n", "differentiate,seed-scalar-loss,fuse-sgd,lower-to-stablehlo,simplify-stablehlo",
             "dce{x}", "dce{=}", "dce{a=\"b\"}", "differentiate,seed-scalar-loss,seed-scalar-loss")  # fmt: skip
EMITS = ("step", "stablehlo", "jax-py", "", "STEP", "mlir")
BYTE_LIMITS = ("0", "1", "-1", "abc", "", " ", "1e9", "300M", "1.5G", "1T", "9" * 310, "0x100", "nan", "inf",
               "10Q", "1GiB", "1 G", "\u0663M", "18446744073709551616", "-0")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Generating cases


@dataclass
class Ctx:
    rng: random.Random
    index: int
    surface: str


def _prog(rng: random.Random, weights: Sequence[float] = (0.6, 0.3, 0.1)) -> Prog:
    return rng.choices(PROGS, weights=weights)[0]


BASE_ARGV: dict[str, Callable[[Prog], list[str]]] = {
    "compile": lambda p: ["compile", "prog.ir", "--no-check", "--emit", "step"],
    "check": lambda p: ["check", "prog.ir", "--trials", "1"],
    "exec": lambda p: ["exec", "prog.ir", "--no-check", "--inputs", "in.npz", "-o", "out.npz"],
    "run": lambda p: ["run", "prog.ir", "--no-check", "--quiet", "--data", "data.npz", "--steps", "2"],
    "opt": lambda p: ["opt", "prog.ir", "-p", "differentiate,dce"],
}


def base_case(ctx: Ctx, command: str, prog: Prog) -> Case:
    """A case of `command` on `prog` that succeeds: the program and its data files laid out."""
    lays = [Lay("prog.ir", prog.text.encode())]
    if command == "exec":
        lays.append(Lay("in.npz", npz_arrays(valid_arrays(prog, ctx.rng))))
    if command == "run":
        lays.append(Lay("data.npz", npz_arrays(valid_arrays(prog, ctx.rng, rows=prog.batch * 3))))
    return Case(ctx.surface, ctx.index, f"{command} {prog.name}", tuple(BASE_ARGV[command](prog)), lays=tuple(lays),
                expect="ok", prog=prog, checks=_default_checks(command))  # fmt: skip


def _default_checks(command: str) -> tuple[str, ...]:
    return {"exec": ("exec-output",), "run": ("run-output",)}.get(command, ())


def _set_option(argv: Sequence[str], option: str, value: str | None) -> tuple[str, ...]:
    """argv with `option` set to `value` (added when absent; removed when value is None)."""
    out = list(argv)
    flag = value == ""  # keep a real empty string as a value
    if option in out:
        i = out.index(option)
        if value is None:
            del out[i : i + 2]
        else:
            out[i + 1] = value
    elif value is not None or flag:
        out += [option, value or ""]
    return tuple(out)


def _replace_arg(argv: Sequence[str], old: str, new: str) -> tuple[str, ...]:
    return tuple(new if a == old else a for a in argv)


def _with(case: Case, recipe: str, **changes: Any) -> Case:
    return replace(case, recipe=f"{case.recipe}: {recipe}", **changes)


def _merge_lays(lays: Sequence[Lay], extra: Sequence[Lay], drop: str | None = None) -> tuple[Lay, ...]:
    kept = [lay for lay in lays if lay.path != drop]
    names = {lay.path for lay in extra}
    return tuple([lay for lay in kept if lay.path not in names] + list(extra))


# -- the command line


def cli_option_value(ctx: Ctx) -> Case:
    """One option of one subcommand set to a hostile value."""
    rng = ctx.rng
    command = rng.choice(("compile", "check", "exec", "run", "opt"))
    prog = _prog(rng)
    case = base_case(ctx, command, prog)
    table: dict[str, Sequence[str]] = {
        "compile": ("--until", "--emit", "--trials", "--flag"),
        "check": ("--trials", "--seed", "--seed-ok", "--pass"),
        "exec": ("--until", "--steps"),
        "run": ("--steps", "--epochs", "--seed", "--devices", "--data", "--steps+epochs"),
        "opt": ("-p", "--flag"),
    }
    option = rng.choice(table[command])
    argv = case.argv
    if option == "--flag":
        flags = {"compile": ("--print-after-all", "--time-passes", "--debug"), "opt": ("--check", "--verify-only", "--debug")}
        flag = rng.choice(flags[command])
        return _with(case, f"with {flag}", argv=argv + (flag,))
    if option == "--seed-ok":
        seed = str(rng.choice((0, 1, 7, 2**31 - 1, 2**32 - 1, rng.randrange(2**32))))
        trials = str(rng.choice((1, 2, 5)))
        return _with(case, f"--seed {seed} --trials {trials} (a correct compile passes for every seed)",
                     argv=_set_option(_set_option(argv, "--seed", seed), "--trials", trials), expect="ok")  # fmt: skip
    if option == "--pass":
        return cli_check_pass(ctx, case, prog)
    if option == "--steps+epochs":
        return _with(case, "--steps and --epochs both", argv=argv + ("--epochs", "1"), expect="error")
    if option == "--data":
        value = rng.choice(("digits", "", "DIGITS", "nope", "data", "digits.npz", "-"))
        expect = "error"
        return _with(case, f"--data {value!r}", argv=_set_option(argv, "--data", value), expect=expect)
    if option == "--until":
        value = rng.choice(UNTIL)
        expect = "any" if value in PASSES else "error"
        checks = () if command == "exec" else case.checks
        return _with(case, f"--until {value!r}", argv=_set_option(argv, "--until", value), expect=expect, checks=checks)
    if option == "--emit":
        value = rng.choice(EMITS)
        argv = _set_option(argv, "--emit", value)
        return _with(case, f"--emit {value!r}", argv=argv, expect="ok" if value in EMITS[:3] else "any")
    if option == "-p":
        value = rng.choice(PIPELINES)
        return _with(case, f"-p {value!r}", argv=_set_option(argv, "-p", value), expect="any")
    # numeric options
    value = rng.choice(INTS + (HUGE if option in ("--seed", "--devices") else ()))
    if option == "--epochs":
        value = rng.choice(EPOCHS + ("0", "-1", "-3", "1e3", "-9223372036854775809"))
        argv = _set_option(argv, "--steps", None)
    if option == "--trials" and command == "compile":
        argv = tuple(a for a in argv if a != "--no-check")
    expect = "any"
    number = _as_int(value)
    if option in ("--trials", "--steps") and number is not None and number <= 0:
        expect = "error"  # a check that cannot fail, or no step at all, must not print ok
    if option == "--devices" and number is not None and not 1 <= number <= _device_count():
        expect = "error"  # more devices than this process has
    if option == "--epochs":
        as_float = _as_float(value)
        expect = "error" if as_float is None or not (as_float > 0 and as_float < float("inf")) else "ok"
    if option in ("--trials", "--steps") and number is not None and number > 10:
        value, expect = "3", "ok"  # a huge count only makes a long run, not a finding
    return _with(case, f"{option} {value!r}", argv=_set_option(argv, option, value), expect=expect)


@functools.cache
def _device_count() -> int:
    import jax

    return len(jax.devices())


def _as_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def cli_check_pass(ctx: Ctx, case: Case, prog: Prog) -> Case:
    """`stepc check --pass NAME BEFORE AFTER` with hostile names and file pairs."""
    rng = ctx.rng
    name = rng.choice(PASSES + ("nope", "", "cse{a=1}"))
    pair = rng.choice((("prog.ir", "prog.ir"), ("prog.ir",), ("prog.ir", "prog.ir", "prog.ir"),
                       ("prog.ir", "missing.ir"), ("prog.ir", "empty.ir")))  # fmt: skip
    lays = case.lays + (Lay("empty.ir", b""),)
    argv = ("check", "--pass", name, *pair, "--trials", "1")
    return replace(case, recipe=f"check --pass {name!r} {' '.join(pair)}", argv=argv, lays=lays, expect="any")


def cli_path(ctx: Ctx) -> Case:
    """One path argument (program, -o, --inputs, --data, --init, --dump-dir, --out) made hostile."""
    rng = ctx.rng
    command = rng.choice(("compile", "check", "exec", "run", "opt"))
    prog = _prog(rng, (0.8, 0.2, 0.0))
    case = base_case(ctx, command, prog)
    which = rng.choice({
        "compile": ("program", "-o", "--dump-dir"), "check": ("program",), "exec": ("program", "--inputs", "-o"),
        "run": ("program", "--data", "--out", "--init"), "opt": ("program", "-o"),
    }[command])  # fmt: skip
    lays = {lay.path: lay for lay in case.lays}
    if which == "program":
        choice = input_path(rng, prog.text.encode(), "prog", ".ir", stdin_ok=command in ("compile", "opt", "run"))
        argv = _replace_arg(case.argv, "prog.ir", choice.arg)
        stdin = prog.text.encode() if choice.arg == "-" else None
        if choice.arg.startswith("-") and choice.arg != "-":
            argv = _dash_safe(argv, choice.arg)
        return _with(case, f"program path: {choice.note}", argv=argv, lays=_merge_lays(case.lays, choice.lays, "prog.ir"),
                     expect=_combine(case.expect, choice.expect), unprivileged=choice.unprivileged, stdin=stdin)  # fmt: skip
    if which in ("--inputs", "--data", "--init"):
        stem = {"--inputs": "in", "--data": "data", "--init": "init"}[which]
        if which == "--init":
            data = npz_arrays(valid_arrays(prog, rng))
            data = npz_arrays({n: a for n, a in valid_arrays(prog, rng).items() if n in dict(prog.params)})
        else:
            data = lays[stem + ".npz"].data or b""
        choice = input_path(rng, data, stem, ".npz")
        argv = _set_option(case.argv, which, choice.arg)
        expect = _combine(case.expect, choice.expect)
        if which == "--data" and choice.expect == "error" and choice.arg in ("", "-"):
            expect = "error"
        return _with(case, f"{which} path: {choice.note}", argv=argv, lays=_merge_lays(case.lays, choice.lays, stem + ".npz"),
                     expect=expect, unprivileged=choice.unprivileged)  # fmt: skip
    if which == "--out":
        return cli_run_out(ctx, case)
    stem, suffix = {"-o": ("out", ".npz" if command == "exec" else ".mlir"), "--dump-dir": ("dumps", "")}[which]
    choice = output_path(rng, stem, suffix, ["prog.ir"] if command != "exec" else ["in.npz", "prog.ir"])
    if which == "--dump-dir" and choice.note in ("'-'", "an existing file", "/dev/null", "a directory"):
        choice = replace(choice, expect={"'-'": "any", "a directory": "ok"}.get(choice.note, "error"))
    argv = _set_option(case.argv, which, choice.arg)
    checks = case.checks + (("no-dash-file",) if choice.arg == "-" else ())
    if which == "-o" and command == "exec" and choice.arg in ("/dev/null", "-"):
        checks = ("no-dash-file",) if choice.arg == "-" else ()
    return _with(case, f"{which} {choice.note}", argv=argv, lays=_merge_lays(case.lays, choice.lays),
                 expect=_combine(case.expect, choice.expect), unprivileged=choice.unprivileged, checks=checks)  # fmt: skip


def _dash_safe(argv: Sequence[str], path: str) -> tuple[str, ...]:
    """A path starting with '-' after `--`, as a user must write it."""
    rest = [a for a in argv if a != path]
    return (*rest[:1], *rest[1:], "--", path) if rest[0] in ("compile", "opt", "check") else tuple(argv)


def _combine(a: str, b: str) -> str:
    """What a case expects when it is a succeeding base (a) with one change (b)."""
    if "error" in (a, b):
        return "error"
    if "any" in (a, b):
        return "any"
    return "ok"


def cli_run_out(ctx: Ctx, case: Case) -> Case:
    """`stepc run --out DIR`: hostile directories, and an earlier run there."""
    rng = ctx.rng
    kind = rng.choice(("empty string", "'-'", "an existing file", "params.npz is a directory", "read-only directory",
                       "an earlier run", "the data file's directory", "name over 255 bytes", "newline in the name",
                       "non-UTF-8 name", "/dev/null", "deep new directories"))  # fmt: skip
    earlier = tuple(Lay(f"runs/{name}", b"earlier run " + name.encode(), role="output") for name in RUN_FILES)
    table: dict[str, tuple[str, tuple[Lay, ...], str, bool]] = {
        "empty string": ("", (), "error", False),
        "'-'": ("-", (), "any", False),
        "an existing file": ("runs", (Lay("runs", b"a file", role="output"),), "error", False),
        "params.npz is a directory": ("runs", (Lay("runs"), Lay("runs/params.npz")), "error", False),
        "read-only directory": ("runs", (Lay("runs", mode=0o555),), "error", True),
        "an earlier run": ("runs", (Lay("runs"), *earlier), "ok", False),
        "the data file's directory": ("runs", (Lay("runs"), Lay("runs/params.npz", npz_arrays({}), role="input")), "any", False),
        "name over 255 bytes": ("r" * 300, (), "error", False),
        "newline in the name": ("runs\nout", (), "ok", False),
        "non-UTF-8 name": (os.fsdecode(b"runs\xff"), (), "ok", False),
        "/dev/null": ("/dev/null", (), "error", False),
        "deep new directories": ("a/b/c/runs", (), "ok", False),
    }  # fmt: skip
    arg, lays, expect, unprivileged = table[kind]
    argv = _set_option(case.argv, "--out", arg)
    if kind == "the data file's directory":
        argv = _set_option(argv, "--init", "runs/params.npz")
        expect = "error"
    return _with(case, f"--out {kind}", argv=argv, lays=_merge_lays(case.lays, lays), expect=_combine(case.expect, expect),
                 unprivileged=unprivileged, checks=case.checks + ("run-out",))  # fmt: skip


def cli_env(ctx: Ctx) -> Case:
    """STEPC_MAX_BYTES with an odd value (in this process: the limit is read at each use)."""
    rng = ctx.rng
    command = rng.choice(("compile", "exec", "run", "check"))
    case = base_case(ctx, command, _prog(rng, (0.7, 0.3, 0.0)))
    value = rng.choice(BYTE_LIMITS)
    return _with(case, f"STEPC_MAX_BYTES={_show(value)}", env=(("STEPC_MAX_BYTES", value),), expect="any")


def cli_argv(ctx: Ctx) -> Case:
    """Command lines argparse must handle: missing, repeated, unknown and misplaced arguments."""
    rng = ctx.rng
    prog = _prog(rng, (1.0, 0.0, 0.0))
    lays = (Lay("prog.ir", prog.text.encode()), Lay("-weird.ir", prog.text.encode()))
    options = (
        ((), "any"), (("--debug",), "any"), (("nope",), "error"), (("compile",), "error"), (("exec", "prog.ir"), "error"),
        (("check",), "error"), (("opt", "prog.ir", "-p"), "error"), (("--version",), "ok"), (("compile", "--help"), "ok"),
        (("compile", "prog.ir", "--no-check", "--no-check", "--emit", "step"), "ok"), (("compile", "prog.ir", "--emit"), "error"),
        (("compile", "--no-check", "--", "-weird.ir"), "ok"), (("compile", "prog.ir", "--tri", "2"), "ok"),
        (("compile", "prog.ir", "--st\u00e9ps", "2"), "error"), (("run", "prog.ir", "prog.ir"), "error"),
        (("check", "prog.ir", "prog.ir", "--trials", "1"), "ok"), (("compile", "prog.ir", "-o"), "error"),
        (("--debug", "compile", "missing.ir"), "error"), (("compile", "prog.ir", "--debug", "--until", "nope"), "error"),
        (("compile", "prog.ir", "--emit", "step", "--no-check", "--until", "differentiate", "--until", "fuse-sgd"), "ok"),
        (("exec", "prog.ir", "--inputs", "-o", "out.npz"), "error"), (("compile", "prog.ir", "-o", "--no-check"), "any"),
        (("compile", "\x7f"), "error"), (("compile", "prog.ir", "--emit=step", "--no-check"), "ok"),
    )  # fmt: skip
    argv, expect = rng.choice(options)
    return Case(ctx.surface, ctx.index, f"argv {' '.join(map(repr, argv)) or '(none)'}", tuple(argv), lays=lays, expect=expect)


def cli_stdin(ctx: Ctx) -> Case:
    """The program on stdin ('-'): valid, empty, garbage, twice needed (`run -`)."""
    rng = ctx.rng
    prog = _prog(rng, (0.8, 0.2, 0.0))
    command = rng.choice(("compile", "opt", "run", "check", "exec"))
    case = base_case(ctx, command, prog)
    content, what, expect = rng.choice((
        (prog.text.encode(), "the program", "ok"), (b"", "nothing", "error"),
        (b"\xff\xfe\x00garbage", "binary garbage", "error"), (prog.text.encode() * 2, "the program twice", "any"),
        (prog.text.encode().replace(b"\n", b"\r\n"), "CRLF lines", "ok"),
        (b"\xef\xbb\xbf" + prog.text.encode(), "a byte-order mark first", "any"),
    ))  # fmt: skip
    argv = _replace_arg(case.argv, "prog.ir", "-")
    return _with(case, f"program on stdin '-': {what}", argv=argv, stdin=content, expect=_combine(case.expect, expect))


def cli_colliding_name(ctx: Ctx) -> Case:
    """A legal argument name that collides with NumPy's keywords or stepc's derived names, through
    exec, run --out, compile --emit jax-py and compile --until."""
    rng = ctx.rng
    prog = _prog(rng, (0.6, 0.4, 0.0))
    old = rng.choice([n for n, _ in prog.params] + [n for n, *_ in prog.inputs])
    new, expect = rng.choice(COLLIDING_NAMES)
    names = {n for n, _ in prog.params} | {n for n, *_ in prog.inputs}
    if new in names:
        new, expect = "file", "ok"
    if re.sub(r"_\d+$", "", new) in names - {old}:  # `%w` and `%w_1`: refused as colliding keys
        expect = "any"
    renamed = prog.renamed(old, new)
    command = rng.choice(("exec", "run", "compile-jax", "exec-until", "compile-check"))
    if command == "compile-jax":
        case = base_case(ctx, "compile", renamed)
        case = replace(case, argv=_set_option(case.argv, "--emit", "jax-py") + ("-o", "step.py"))
    elif command == "compile-check":
        case = base_case(ctx, "compile", renamed)
        case = replace(case, argv=tuple(a for a in case.argv if a != "--no-check"))
    elif command == "exec-until":  # the key collision of issue 18 (7): no cotangent given, so an error is fine
        case = base_case(ctx, "exec", renamed)
        until = rng.choice(("differentiate", "seed-scalar-loss"))
        case = replace(case, recipe=f"{case.recipe} --until {until}", argv=case.argv + ("--until", until), checks=())
        expect = "any"
    elif command == "run":
        case = base_case(ctx, "run", renamed)
        case = replace(case, argv=case.argv + ("--out", "runs"), checks=("run-output", "run-out"))
    else:
        case = base_case(ctx, "exec", renamed)
    # a name stepc may reserve can be refused (a located error); any other must work everywhere
    return _with(case, f"argument %{old} named %{new}", expect=expect)


# -- data files


def npz_exec_inputs(ctx: Ctx) -> Case:
    """`stepc exec --inputs`: one hostile change to valid inputs."""
    rng = ctx.rng
    prog = _prog(rng, (0.5, 0.4, 0.1))
    case = base_case(ctx, "exec", prog)
    arrays = valid_arrays(prog, rng, state=bool(prog.state) and rng.random() < 0.4)
    change = rng.choice(tuple(ARRAY_CHANGES) + tuple(FILE_CHANGES))
    data, recipe, expect, extra = _apply_change(rng, change, arrays, prog, what="inputs")
    return _with(case, f"in.npz {recipe}", lays=_merge_lays(case.lays, [Lay("in.npz", data), *extra]),
                 expect=_combine(case.expect, expect), checks=case.checks)  # fmt: skip


def npz_run_data(ctx: Ctx) -> Case:
    """`stepc run --data`: one hostile change to a valid data set (or its held-out part)."""
    rng = ctx.rng
    prog = _prog(rng, (0.4, 0.6, 0.0))
    case = base_case(ctx, "run", prog)
    arrays = valid_arrays(prog, rng, rows=prog.batch * 3)
    if rng.random() < 0.3:
        arrays |= {f"test.{k}": v for k, v in valid_arrays(prog, rng, rows=prog.batch).items()}
    changes = tuple(ARRAY_CHANGES) + tuple(FILE_CHANGES) + tuple(DATA_CHANGES)
    change = rng.choice(changes)
    data, recipe, expect, extra = _apply_change(rng, change, arrays, prog, what="data")
    argv = case.argv
    checks = case.checks  # (a pickle's payload is checked for every case: `postconditions`)
    lays = _merge_lays(case.lays, [Lay("data.npz", data), *extra])
    if rng.random() < 0.35:  # an earlier run in --out: a failing run must leave it whole
        argv = argv + ("--out", "runs")
        lays = _merge_lays(lays, [Lay(f"runs/{n}", b"earlier run " + n.encode(), role="output") for n in RUN_FILES])
        checks += ("run-out",)
        recipe += ", --out holding an earlier run"
    return _with(case, f"data.npz {recipe}", argv=argv, lays=lays, expect=_combine(case.expect, expect), checks=checks)


def npz_run_init(ctx: Ctx) -> Case:
    """`stepc run --init`: one hostile change to valid initial parameters."""
    rng = ctx.rng
    prog = _prog(rng, (0.6, 0.4, 0.0))
    case = base_case(ctx, "run", prog)
    params = {n: a for n, a in valid_arrays(prog, rng).items() if n in dict(prog.params)}
    change = rng.choice(tuple(ARRAY_CHANGES) + tuple(FILE_CHANGES) + ("overflow",))
    if change == "overflow":
        key = rng.choice(sorted(params))
        params[key] = np.full(params[key].shape, 1e300, np.float64)
        data, recipe, expect, extra = npz_arrays(params), f"'{key}' float64 1e300 (inf as float32)", "error", []
    else:
        data, recipe, expect, extra = _apply_change(rng, change, params, prog, what="init")
    argv = case.argv + ("--init", "init.npz")
    return _with(case, f"--init init.npz {recipe}", argv=argv, lays=_merge_lays(case.lays, [Lay("init.npz", data), *extra]),
                 expect=_combine(case.expect, expect), checks=case.checks)  # fmt: skip


ARRAY_CHANGES = ("drop-key", "extra-key", "dtype", "object", "shape", "huge-header", "odd-header", "truncated-member",
                 "nan", "empty-array", "labels", "member-name", "compressed", "fortran", "big-endian", "many-keys")  # fmt: skip
FILE_CHANGES = ("not-a-zip", "truncated-zip", "corrupt-crc", "no-members", "npy-not-npz", "duplicate-member")
DATA_CHANGES = ("empty-test", "few-rows", "exact-batch", "partial-test", "test-rows-differ", "no-rows", "int64-labels")
DTYPES = ("float64", "float16", "int32", "int64", "uint8", "bool", "complex64", "<U3", "S3", "datetime64[s]",
          "bfloat16", "[('a', '<f4')]", "float128", "timedelta64[ns]")  # fmt: skip


def _numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    if name.startswith("["):
        return np.dtype([("a", "<f4")])
    if name == "float128":
        return np.dtype(np.longdouble)
    return np.dtype(name)


def _apply_change(
    rng: random.Random, change: str, arrays: dict[str, np.ndarray], prog: Prog, what: str
) -> tuple[bytes, str, str, list[Lay]]:
    """(file bytes, recipe, expected outcome, extra lays) for one hostile change of `arrays`."""
    keys = sorted(arrays)
    key = rng.choice(keys)
    labels = [k for k in keys if arrays[k].dtype == np.int32]
    members = {k: npy(v) for k, v in arrays.items()}
    extra: list[Lay] = []
    if change == "drop-key":
        del members[key]
        expect = "any" if what == "data" and key.startswith("test.") else "error"
        return npz(members), f"without '{key}'", expect, extra
    if change == "extra-key":
        name = rng.choice(("extra", "file", "allow_pickle", "args", "kwds", "arr_0", "", "x.npy", "ü", "\n", "loss",
                           "grad.w", "W", "test.x", "test.", "momentum.w", "first_step", " w", "w ", "test.test.x"))  # fmt: skip
        if name in arrays or (what == "data" and name.startswith("test.") and name[5:] in dict.fromkeys(n for n, *_ in prog.inputs)):
            name = name + "_extra"
        members[name] = npy(np.zeros(3, np.float32))
        return npz(members), f"an extra key {name!r}", "error", extra
    if change == "many-keys":
        n = rng.choice((2000, 20000))
        for i in range(n):
            members[f"k{i}"] = npy(np.zeros(1, np.float32))
        return npz(members), f"{n} unknown keys", "error", extra
    if change == "dtype":
        dtype = rng.choice(DTYPES)
        try:
            value = arrays[key].astype(_numpy_dtype(dtype))
        except (TypeError, ValueError):
            value = np.zeros(arrays[key].shape, _numpy_dtype(dtype))
        members[key] = npy(value)
        return npz(members), f"'{key}' of dtype {dtype}", "any", extra
    if change == "object":
        members[key] = npy(np.array([PickleBomb()] * max(1, arrays[key].size), dtype=object).reshape(arrays[key].shape))
        return npz(members), f"'{key}' an object array (a pickle that creates PWNED)", "error", extra
    if change == "shape":
        a = arrays[key]
        options = [a.reshape(-1), a[None], np.zeros((), a.dtype), np.zeros((*a.shape, 1), a.dtype), a.T,
                   np.zeros((0, *a.shape[1:]), a.dtype), np.zeros((a.shape[0] + 1, *a.shape[1:]), a.dtype)]  # fmt: skip
        value = rng.choice(options)
        expect = "any" if value.shape == a.shape or what == "data" else "error"
        members[key] = npy(value)
        return npz(members), f"'{key}' of shape {value.shape} (expected {a.shape})", expect, extra
    if change == "huge-header":
        shape = rng.choice(((2**30,), (2**62,), (2**31, 2**31), (int("9" * 4000),), (2**64,), (10**6, 10**6),
                            (prog.batch * 3, 2**40)))  # fmt: skip
        members[key] = npy_raw(npy_header(shape, rng.choice(("<f4", "<f8", "<i4"))), b"\0" * 16)
        shown = tuple(d if len(str(d)) < 30 else f"<{len(str(d))} digits>" for d in shape)
        return npz(members), f"'{key}' declaring shape {shown} over 16 bytes", "error", extra
    if change == "odd-header":
        header, note = rng.choice((
            (npy_header("(-1,)"), "shape (-1,)"), (npy_header("5"), "shape 5 (not a tuple)"),
            (npy_header("()", "<garbage"), "descr '<garbage'"), ("{'descr': '<f4'}", "keys missing"),
            ("__import__('os').system('touch PWNED')", "Python code as header"), (npy_header("(3,)", "O"), "descr 'O'"),
            (npy_header("(1.5,)"), "shape (1.5,)"), ("{" * 500, "500 braces"), (npy_header("(3,)", "|V0"), "descr V0"),
            (npy_header("(3,)") + "x" * 70000, "a 70 KB header"), (npy_header("(True,)"), "shape (True,)"),
        ))  # fmt: skip
        version = (2, 0) if len(header) > 60000 else rng.choice(((1, 0), (2, 0), (3, 0)))
        members[key] = npy_raw(header, b"\0" * 64, version)
        return npz(members), f"'{key}' with an odd .npy header: {note}, version {version}", "error", extra
    if change == "truncated-member":
        data = members[key]
        members[key] = data[: rng.randrange(len(data))]
        return npz(members), f"'{key}' truncated", "error", extra
    if change == "nan":
        floats = [k for k in keys if arrays[k].dtype.kind == "f"]
        key = rng.choice(floats)
        value = arrays[key].copy()
        value.flat[rng.randrange(value.size)] = rng.choice((np.nan, np.inf, -np.inf))
        members[key] = npy(value)
        is_batch = key.removeprefix("test.") in [n for n, *_ in prog.inputs]
        # the documented promise: NaN data is refused (parameters and state may be anything)
        return npz(members), f"'{key}' holding NaN or inf", "error" if is_batch else "any", extra
    if change == "empty-array":
        members[key] = npy(np.zeros((0,), arrays[key].dtype))
        return npz(members), f"'{key}' empty", "error" if what != "data" else "any", extra
    if change == "labels":
        if not labels:
            return npz(members), "(no labels: unchanged)", "ok", extra
        key = rng.choice(labels)
        value = arrays[key].astype(np.int64)
        bad = rng.choice((-1, 3, 99, 2**31 - 1, -(2**31), 2**40))
        value.flat[rng.randrange(value.size)] = bad
        dtype = np.int64 if bad == 2**40 else np.int32
        members[key] = npy(value.astype(dtype))
        return npz(members), f"'{key}' holding label {bad}", "error", extra
    if change == "member-name":
        name = rng.choice(("../" + key, "/" + key, "d/" + key, key + ".npy.npy", "", key.upper(), key + "\0x", key,
                           key + ".NPY", "d/"))  # fmt: skip
        data = members.pop(key)
        named = {k + ".npy": v for k, v in members.items()} | {name: data}
        return npz(named, raw_names=True), f"'{key}' stored as member {name!r}", "any", extra
    if change == "compressed":
        return npz(members, compress=True), "written by savez_compressed", "ok", extra
    if change == "fortran":
        a = arrays[key]
        members[key] = npy(np.asfortranarray(a))
        return npz(members), f"'{key}' in Fortran order", "ok", extra
    if change == "big-endian":
        members[key] = npy(arrays[key].astype(arrays[key].dtype.newbyteorder(">")))
        return npz(members), f"'{key}' big-endian", "any", extra
    if change == "not-a-zip":
        data, note = rng.choice(((b"", "empty"), (b"PK\x03\x04" + b"\0" * 30, "a zip's first bytes"),
                                 (bytes(rng.getrandbits(8) for _ in range(200)), "random bytes"),
                                 (b"\x1f\x8b" + b"\0" * 20, "gzip magic")))  # fmt: skip
        return data, f"is not a zip ({note})", "error", extra
    if change == "truncated-zip":
        data = npz(members)
        return data[: rng.randrange(1, len(data))], "cut short", "error", extra
    if change == "corrupt-crc":
        data = bytearray(npz(members))
        at = len(data) // 3
        data[at] ^= 0xFF
        return bytes(data), f"one byte flipped at {at}", "any", extra
    if change == "no-members":
        return npz({}), "an empty archive", "error", extra
    if change == "npy-not-npz":
        return members[key], f"a bare .npy of '{key}'", "error", extra
    if change == "duplicate-member":
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with zipfile.ZipFile(buffer, "w") as archive:
                for k, v in members.items():
                    archive.writestr(_member(k + ".npy"), v)
                archive.writestr(_member(key + ".npy"), npy(np.zeros(7, np.float32)))
        return buffer.getvalue(), f"'{key}' twice (second of the wrong shape)", "any", extra
    # data sets of `stepc run`
    inputs = [n for n, *_ in prog.inputs]
    train = {k: v for k, v in arrays.items() if not k.startswith("test.")}
    if change == "empty-test":
        test = {f"test.{k}": v[:0] for k, v in train.items()}
        return npz_arrays(train | test), "an empty held-out set (0 rows)", "any", extra
    if change == "few-rows":
        return npz_arrays({k: v[: prog.batch - 1] for k, v in train.items()}), f"{prog.batch - 1} rows", "error", extra
    if change == "exact-batch":
        return npz_arrays({k: v[: prog.batch] for k, v in train.items()}), f"exactly {prog.batch} rows", "ok", extra
    if change == "partial-test":
        return npz_arrays(train | {f"test.{inputs[0]}": train[inputs[0]]}), "held-out data for one input only", "error", extra
    if change == "test-rows-differ":
        test = {f"test.{k}": v[: 5 + i] for i, (k, v) in enumerate(train.items())}
        return npz_arrays(train | test), "held-out inputs of different lengths", "error", extra
    if change == "no-rows":
        return npz_arrays({k: v[:0] for k, v in train.items()}), "0 rows", "error", extra
    # int64-labels
    if labels:
        k = rng.choice([k for k in labels if not k.startswith("test.")] or labels)
        members[k] = npy(arrays[k].astype(rng.choice((np.int64, np.uint8, np.uint64, np.int16))))
        return npz(members), f"'{k}' labels in another integer type", "ok", extra
    return npz(members), "(unchanged)", "ok", extra


# -- the Python API

API_PRELUDE = (
    "import stepc, numpy as np, jax, jax.numpy as jnp\nfrom pathlib import Path\n"
    "program = lambda name, **kw: stepc.compile(name + '.ir', check=False, **kw)\n"
)
F32 = "np.float32"


def _arrays_src(prog: Prog, which: str, overrides: Mapping[str, str] | None = None) -> str:
    """A dict literal of valid arrays (params or batch) with some values replaced by source text."""
    items: list[str] = []
    overrides = dict(overrides or {})
    if which == "params":
        for name, shape in prog.params:
            items.append(f"{name!r}: {overrides.pop(name, f'np.full({shape}, 0.1, {F32})')}")
    else:
        for name, shape, dtype, classes in prog.inputs:
            default = f"np.arange({int(np.prod(shape))}).reshape({shape}) % {classes}" if classes else f"np.ones({shape})"
            default = f"({default}).astype(np.{dtype})"
            items.append(f"{name!r}: {overrides.pop(name, default)}")
    items += [f"{k}: {v}" for k, v in overrides.items()]  # extra keys, given as source
    return "{" + ", ".join(items) + "}"


def api_compile(ctx: Ctx) -> Case:
    """`stepc.compile` (and `compile_text`, where it exists) with hostile sources and options."""
    rng = ctx.rng
    prog = _prog(rng, (0.8, 0.2, 0.0))
    lays = (Lay(f"{prog.name}.ir", prog.text.encode()), Lay("adir"), Lay("has\nnewline.ir", prog.text.encode()),
            Lay("m.func.func.ir", prog.text.encode()))  # fmt: skip
    text = repr(prog.text)
    good = f"'{prog.name}.ir'"
    sources = (
        (f"{text}.encode()", "error", "bytes"), ("42", "error", "an int"), ("None", "error", "None"),
        ("1.5", "error", "a float"), ("[]", "error", "a list"), ("'adir'", "error", "a directory"),
        ("'missing.ir'", "error", "a missing file"), ("''", "error", "an empty string"), ("'   '", "error", "spaces"),
        ("'has\\nnewline.ir'", "ok", "a path holding a newline"), ("'m.func.func.ir'", "ok", "a .func.func.ir path"),
        (f"Path({good})", "ok", "a Path"), (good, "ok", "a path"), (text, "any", "the text"),
        ("'x' * 300 + '.ir'", "error", "a 300-byte path"), (f"bytearray({text}.encode())", "error", "a bytearray"),
        (f"open({good})", "error", "an open file"), ("'func.func @f'", "error", "a broken program"),
        (f"{text}.replace('\\n', ' ')", "any", "the text on one line"), ("'\\x00'", "error", "a NUL"),
        (f"memoryview({text}.encode())", "error", "a memoryview"), ("object()", "error", "an object"),
    )  # fmt: skip
    options = (
        ("", "any"), ("trials=0", "error"), ("trials=-3", "error"), ("trials=1.5", "error"), ("trials='3'", "error"),
        ("trials=None", "error"), ("trials=True", "any"), ("seed=-5", "any"), ("seed=2**64", "any"), ("seed=1.5", "any"),
        ("seed='0'", "any"), ("seed=None", "any"), ("until='nope'", "error"), ("until=''", "any"), ("until=3", "error"),
        ("until='lower-to-stablehlo'", "any"), ("until='cut-at-logits'", "any"), ("passes='differentiate'", "any"),
        ("passes=[]", "any"), ("passes=[1]", "error"), ("passes=['nope']", "error"), ("passes=None", "any"),
        ("passes=['dce{foo=1}']", "any"), ("check='yes'", "any"), ("check=None", "any"), ("bogus=1", "error"),
        ("until='differentiate', passes=['dce']", "any"),
    )  # fmt: skip
    source, source_expect, source_note = rng.choice(sources)
    option, option_expect = rng.choice(options)
    expect = _combine(source_expect, option_expect)
    if "check=False" not in option and "check=" not in option:
        option = (option + ", " if option else "") + "check=False" if rng.random() < 0.7 else option
    if "trials=" in option and "check=False" in option:
        option = option.replace(", check=False", "")
    call = rng.choice(("stepc.compile", "stepc.compile_text"))
    if call == "stepc.compile_text":
        source_expect = "ok" if source == text or "replace" in source else "error"
        expect = _combine(source_expect, option_expect)
    code = f"prog = {call}({source}{', ' + option if option else ''})\n"
    return Case(ctx.surface, ctx.index, f"{call}({source_note}{', ' + option if option else ''})", code=code,
                lays=lays, expect=expect)  # fmt: skip


HOSTILE_VALUES = (
    ("None", "error"), ("'abc'", "error"), ("b'abc'", "error"), ("3", "error"), ("[[1, 2], [3]]", "error"),
    ("np.zeros((2, 2), np.float32)", "error"), ("np.broadcast_to(np.float32(0), (10**6, 10**6))", "error"),
    ("np.array([None])", "error"), ("object()", "error"), ("{'a': 1}", "error"), ("np.float32(1)", "error"),
    ("jnp.zeros((3, 3))", "error"), ("np.zeros((0,), np.float32)", "error"), ("np.array('x')", "error"),
    ("[[0.1]] * 1000", "error"),
)  # fmt: skip
HOSTILE_KEYS = ("1", "None", "b'w'", "('w',)", "1.5", "'W'", "''", "'w '", "'grad.w'", "'momentum.w'", "frozenset()")


def api_call(ctx: Ctx) -> Case:
    """A compiled Program's methods with hostile dicts: not dicts, missing and extra keys of
    mixed types, wrong shapes and dtypes, lists, None, out-of-range labels."""
    rng = ctx.rng
    prog = _prog(rng, (0.5, 0.5, 0.0))
    lays = (Lay(f"{prog.name}.ir", prog.text.encode()),)
    method = rng.choice(("forward", "grad", "step", "init_state"))
    params_over: dict[str, str] = {}
    batch_over: dict[str, str] = {}
    state_src = "prog.init_state(params)"
    change = rng.choice(("not-a-dict", "missing", "extra", "value", "dtype", "labels", "state", "roles", "valid",
                         "valid"))  # fmt: skip
    target = rng.choice(("params", "batch")) if method != "init_state" else "params"
    names = [n for n, _ in prog.params] if target == "params" else [n for n, *_ in prog.inputs]
    over = params_over if target == "params" else batch_over
    expect = "error"
    params_src = batch_src = None
    recipe = ""
    if change == "not-a-dict":
        value = rng.choice(("None", "[]", "'w'", "[('w', 1)]", "42", "np.zeros(3)"))
        recipe = f"{target} = {value}"
        if target == "params":
            params_src = value
        else:
            batch_src = value
    elif change == "missing":
        drop = rng.choice(names)
        over[drop] = "DROP"
        recipe = f"{target} without {drop!r}"
    elif change == "extra":
        extra_keys = rng.sample(HOSTILE_KEYS, rng.randint(1, 3))
        for k in extra_keys:
            over[k] = "np.zeros(1)"
        recipe = f"{target} with extra keys {', '.join(extra_keys)}"
    elif change == "value":
        name = rng.choice(names)
        value, expect = rng.choice(HOSTILE_VALUES)
        over[name] = value
        recipe = f"{target}[{name!r}] = {value}"
    elif change == "dtype":
        name = rng.choice(names)
        dtype = rng.choice(("np.float64", "np.float16", "np.int32", "np.int64", "bool", "np.complex64", "np.uint8"))
        shape = dict(prog.params).get(name) or next(s for n, s, *_ in prog.inputs if n == name)
        over[name] = f"np.zeros({shape}, {dtype})"
        recipe = f"{target}[{name!r}] of dtype {dtype}"
        expect = "any"
    elif change == "labels" and prog.inputs[-1][3] is not None and method != "init_state":
        name, shape, _, classes = prog.inputs[-1]
        bad = rng.choice((-1, classes, 99, 2**31 - 1, -(2**31)))
        batch_over[name] = f"np.array([{bad}] + [0] * {shape[0] - 1}, np.int32)"
        if rng.random() < 0.5 and method in ("forward", "grad"):
            # under jax.jit nothing can be checked: the loss and the gradient must then agree
            code = (f"prog = program({prog.name!r})\nparams = {_arrays_src(prog, 'params')}\n"
                    f"batch = {_arrays_src(prog, 'batch', batch_over)}\n"
                    "loss, grads = jax.jit(prog.grad)(params, batch)\n"
                    "ref = jax.grad(lambda p: jax.jit(prog.forward)(p, batch))(params)\n"
                    "require(np.allclose(loss, jax.jit(prog.forward)(params, batch), equal_nan=True), "
                    "'grad and forward losses differ')\n"
                    "require(not np.isfinite(loss) or all(np.allclose(grads[k], ref[k], atol=1e-5) for k in ref), "
                    "'grad differs from jax.grad(forward)')\n")  # fmt: skip
            return Case(ctx.surface, ctx.index, f"{prog.name}: jax.jit(grad) vs jax.grad(forward) with label {bad}",
                        code=code, lays=lays, expect="ok")  # fmt: skip
        recipe = f"eager {method} with label {bad} ({classes} classes)"
        target = "batch"
    elif change == "valid":  # a control: the same call with nothing hostile must work
        expect = "ok"
    elif change == "state" and method == "step":
        value = rng.choice(("{}", "None", "{'momentum.w': 1}", "dict(prog.init_state(params), extra=np.zeros(1))"))
        state_src = value
        recipe = f"state = {value}"
        expect = "error" if prog.state or value not in ("{}",) else "any"
    else:
        roles = ("prog.module('bogus')", "prog.function('step.x')", "program(NAME, until='differentiate').step(params, {}, batch)",
                 "program(NAME, until='seed-scalar-loss').init_state(params)",
                 "prog.module(None)", "prog.function(3)")  # fmt: skip
        call = rng.choice(roles).replace("NAME", repr(prog.name))
        code = (f"prog = program({prog.name!r})\nparams = {_arrays_src(prog, 'params')}\n"
                f"batch = {_arrays_src(prog, 'batch')}\n{call}\n")
        return Case(ctx.surface, ctx.index, f"{prog.name}: {call}", code=code, lays=lays, expect="error")
    drop = [k for k, v in params_over.items() if v == "DROP"] + [k for k, v in batch_over.items() if v == "DROP"]
    params_text = params_src or _arrays_src(prog, "params", {k: v for k, v in params_over.items() if v != "DROP"})
    batch_text = batch_src or _arrays_src(prog, "batch", {k: v for k, v in batch_over.items() if v != "DROP"})
    lines = [f"prog = program({prog.name!r})", f"params = {params_text}", f"batch = {batch_text}"]
    lines += [f"del {'params' if k in dict(prog.params) else 'batch'}[{k!r}]" for k in drop]
    if method == "init_state":
        lines.append("prog.init_state(params)")
    elif method == "step":
        good_state = "prog.init_state({k: np.full(s, 0.1, np.float32) for k, s in " + repr(prog.params) + "})"
        lines.append(f"state = {state_src.replace('prog.init_state(params)', good_state)}")
        lines.append("prog.step(params, state, batch)")
    else:
        lines.append(f"prog.{method}(params, batch)")
    return Case(ctx.surface, ctx.index, f"{prog.name}.{method}: {recipe or 'valid'}", code="\n".join(lines) + "\n",
                lays=lays, expect=expect)  # fmt: skip


# -- process-level conditions (a fixed share, in child processes)


def npz_of_zeros(members: Mapping[str, tuple[str, int]]) -> bytes:
    """An archive of .npy members, each a header and `n` zero bytes, deflated as written: a
    small file declaring big arrays, never all in this process's memory."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, (header, n) in members.items():
            with archive.open(_member(name + ".npy", zipfile.ZIP_DEFLATED), "w", force_zip64=True) as f:
                f.write(npy_raw(header))
                block = bytes(MIB)
                for _ in range(n // MIB):
                    f.write(block)
                f.write(bytes(n % MIB))
    return buffer.getvalue()


@functools.cache
def _big_data() -> bytes:
    rows = 7 * MIB  # x (N, 4) and t (N, 1) in float64: 280 MiB declared, under a 300 MiB limit
    return npz_of_zeros({"x": (npy_header((rows, 4), "<f8"), rows * 32), "t": (npy_header((rows, 1), "<f8"), rows * 8)})


def process_cases(ctx: Ctx) -> list[Case]:
    """The conditions a process alone can show: closed or full standard streams, devices and
    stdin without end, environment variables read at start-up, memory. Cycled through, in this
    order (a CI budget runs the first ones)."""
    p = LINREG
    prog = (Lay("prog.ir", p.text.encode()),)
    big = p.text.replace("32x", f"{7 * MIB}x")  # linreg's estimate: 28 bytes a row, about 200 MiB of 300 MiB
    huge = p.text.replace("4x1xf32", "100000x1xf32").replace("32x4", "100000x100000").replace("32x", "100000x")
    data = (Lay("data.npz", npz_arrays(valid_arrays(p, ctx.rng, rows=96))),)
    step = ("--no-check", "--emit", "step")
    train = ("--no-check", "--quiet", "--data", "data.npz", "--steps", "2")
    return [
        Case("cli", 0, "stdout closed", ("compile", "prog.ir", *step), lays=prog, process=True, stdout="closed",
             expect="error"),
        Case("cli", 0, "stdout is /dev/full", ("compile", "prog.ir", *step), lays=prog, process=True,
             stdout="/dev/full", expect="error"),
        Case("cli", 0, "the program is /dev/zero", ("compile", "/dev/zero", "--no-check"), process=True, expect="error"),
        Case("npz", 0, "memory: the contracts of a program estimated at 200 MiB under a 300 MiB limit",
             ("compile", "big.ir", "--emit", "step", "--until", "differentiate"), lays=(Lay("big.ir", big.encode()),),
             process=True, expect="any"),
        Case("npz", 0, "memory: run --data declaring 280 MiB of float64 (a small file of zeros) under a 300 MiB limit",
             ("run", "prog.ir", "--no-check", "--quiet", "--data", "big.npz", "--steps", "1"),
             lays=prog + (Lay("big.npz", _big_data()),), process=True, expect="any"),
        Case("cli", 0, "stdin is /dev/zero", ("opt", "-", "-p", "dce"), process=True, stdin="/dev/zero", expect="error"),
        Case("cli", 0, "STEPC_MAX_BYTES of 310 digits", ("compile", "prog.ir", *step), lays=prog, process=True,
             env=(("STEPC_MAX_BYTES", "9" * 310),), expect="any"),
        Case("cli", 0, "run --devices 100000 in a fresh process", ("run", "prog.ir", *train, "--devices", "100000"),
             lays=prog + data, process=True, expect="error"),
        Case("cli", 0, "check --pass dce on a program of 37 GiB (over the limit)",
             ("check", "--pass", "dce", "huge.ir", "huge.ir", "--trials", "1"), lays=(Lay("huge.ir", huge.encode()),),
             process=True, expect="error"),
        Case("cli", 0, "JAX_PLATFORMS=cuda on a machine without one", ("compile", "prog.ir", "--no-check"), lays=prog,
             process=True, env=(("JAX_PLATFORMS", "cuda"),), expect="any"),
        Case("cli", 0, "stderr closed, the program missing", ("compile", "missing.ir"), process=True, stderr="closed",
             expect="error"),
        Case("cli", 0, "run --devices 3 --out in a fresh process (batch 32 does not split)",
             ("run", "prog.ir", *train, "--devices", "3", "--out", "runs"), lays=prog + data, process=True,
             expect="error", checks=("run-out",)),
        Case("cli", 0, "opt --verify-only --check -p differentiate on a program of 37 GiB",
             ("opt", "huge.ir", "--verify-only", "--check", "-p", "differentiate"), lays=(Lay("huge.ir", huge.encode()),),
             process=True, expect="error"),
        Case("cli", 0, "stdout closed, --version", ("--version",), process=True, stdout="closed", expect="any"),
    ]  # fmt: skip


GENERATORS: dict[str, tuple[tuple[Callable[[Ctx], Case], float], ...]] = {
    "cli": ((cli_option_value, 4), (cli_path, 4), (cli_env, 1), (cli_argv, 1.5), (cli_stdin, 1), (cli_colliding_name, 1.5)),
    "npz": ((npz_exec_inputs, 4), (npz_run_data, 4), (npz_run_init, 1.5)),
    "api": ((api_compile, 1), (api_call, 2)),
}
SURFACE_WEIGHTS = {"cli": 0.42, "npz": 0.3, "api": 0.28}


def generate(seed: int, count: int, surfaces: Sequence[str] = SURFACES, process_every: int = 40) -> Iterator[Case]:
    """`count` cases, deterministic in `seed`: every `process_every`-th case a process-level one
    (cycled through `process_cases`, when the cli or npz surface is chosen), the rest in-process."""
    rng = random.Random(seed)
    chosen = [s for s in SURFACES if s in surfaces]
    weights = [SURFACE_WEIGHTS[s] for s in chosen]
    process_list: list[Case] = []
    next_process = 0
    for index in range(count):
        case_rng = random.Random(rng.getrandbits(64))
        if process_every and index % process_every == process_every // 2 and ({"cli", "npz"} & set(chosen)):
            if not process_list:
                process_list = [c for c in process_cases(Ctx(random.Random(seed), 0, "cli")) if c.surface in chosen]
            if process_list:
                case = process_list[next_process % len(process_list)]
                next_process += 1
                yield replace(case, index=index)
                continue
        surface = rng.choices(chosen, weights=weights)[0]
        generators = GENERATORS[surface]
        make = case_rng.choices([g for g, _ in generators], weights=[w for _, w in generators])[0]
        yield make(Ctx(case_rng, index, surface))


# ---------------------------------------------------------------------------------------------
# Running a case


@dataclass
class Raw:
    """What a case did: exit status (None: an exception escaped, or killed), output, time, memory."""

    status: int | None
    stdout: bytes
    stderr: str
    seconds: float
    peak_bytes: int | None = None  # peak resident memory the case added (in-process: when known)
    timed_out: bool = False
    killed_for_memory: bool = False
    escaped: str = ""  # an exception that escaped main, or the API snippet's exception
    exception: BaseException | None = None
    warnings: list[str] = field(default_factory=list)


class _Timeout(BaseException):
    """Raised by the alarm; a BaseException so that stepc's own handlers do not swallow it."""


class Mismatch(Exception):
    """An API case's `require` failed: results that contradict each other."""


def require(condition: Any, message: str) -> None:
    if not condition:
        raise Mismatch(message)


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


_PRIVILEGE = threading.Lock()


@contextlib.contextmanager
def _in_case(directory: Path, env: Sequence[tuple[str, str | None]], stdin: bytes | None, unprivileged: bool) -> Iterator[None]:
    """This process as the case needs it: in its directory, with its environment and stdin, as
    nobody when it must not read unreadable files (root reads everything)."""
    cwd, saved_env, saved_stdin = os.getcwd(), dict(os.environ), sys.stdin
    dropped = False
    os.chdir(directory)
    try:
        for key, value in env:
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin or b""), encoding="utf-8")
        if unprivileged and os.geteuid() == 0:
            _PRIVILEGE.acquire()  # no child starts as nobody meanwhile
            os.setegid(NOBODY)
            os.seteuid(NOBODY)
            dropped = True
        yield
    finally:
        if dropped:
            os.seteuid(0)
            os.setegid(0)
            _PRIVILEGE.release()
        sys.stdin = saved_stdin
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(cwd)


def _rss_now() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


_CHILD_ENV: dict[str, str] = {}  # the environment children start from (`run_campaign` sets it)


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_in_process(case: Case, directory: Path, timeout: float) -> Raw:
    """The case in this process: `stepc.tools.cli.main(argv)`, or the API snippet."""

    out_buffer = io.BytesIO()
    stdout = io.TextIOWrapper(out_buffer, encoding="utf-8", errors="surrogateescape", write_through=True)
    stderr = io.StringIO()
    stdin = case.stdin if isinstance(case.stdin, bytes) else None
    rss_before, max_before = _rss_now(), _maxrss()
    start = time.perf_counter()
    status: int | None = None
    escaped, exception, timed_out = "", None, False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", FORK_WARNING, RuntimeWarning)  # a child starting on the other thread
        try:
            with (
                _in_case(directory, case.env, stdin, case.unprivileged),
                _alarm(timeout),
                contextlib.redirect_stdout(stdout),
                contextlib.redirect_stderr(stderr),
            ):
                try:
                    if case.surface == "api":
                        _run_snippet(case.code)
                        status = 0
                    else:
                        status = cli.main(list(case.argv))  # (looked up at each call: tests replace it)
                except SystemExit as e:
                    status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                    if isinstance(e.code, str):
                        print(e.code, file=sys.stderr)
                except _Timeout:
                    raise
                except BaseException as e:
                    exception = e
                    escaped = f"{type(e).__name__}: {e}"
        except _Timeout:
            timed_out = True
    seconds = time.perf_counter() - start
    max_after = _maxrss()
    peak = max_after - rss_before if max_after > max_before else None
    shown = [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, QUIET_WARNINGS)]
    stdout.flush()
    return Raw(status, out_buffer.getvalue(), stderr.getvalue(), seconds, peak, timed_out, False, escaped, exception,
               shown)  # fmt: skip


_PROGRAMS: dict[tuple[str, str], Any] = {}


def _run_snippet(code: str) -> None:
    import jax
    import jax.numpy as jnp


    def program(name: str, **options: Any) -> Any:
        key = (name, repr(sorted(options.items())))
        if key not in _PROGRAMS:
            _PROGRAMS[key] = stepc.compile(str(Path(name + ".ir").resolve()), check=False, **options)
        return _PROGRAMS[key]

    namespace: dict[str, Any] = {"stepc": stepc, "np": np, "jax": jax, "jnp": jnp, "Path": Path, "program": program,
                                 "require": require, "__name__": "__case__"}  # fmt: skip
    exec(compile(code, "<case>", "exec"), namespace)  # the fuzzer's own generated snippet


# The child runs stepc's command under a wrapper that writes its peak resident memory (VmHWM,
# counted from its own exec: a forked child's rusage would count this big parent's pages) to
# the file named by STEPC_FUZZ_PEAK when it exits.
CHILD = """\
import atexit, os, runpy, sys
def _peak():
    try:
        with open('/proc/self/status') as f:
            kib = next(line for line in f if line.startswith('VmHWM:')).split()[1]
        with open(os.environ['STEPC_FUZZ_PEAK'], 'w') as out:
            out.write(kib)
    except Exception:
        pass
atexit.register(_peak)
runpy.run_module('stepc.tools.cli', run_name='__main__', alter_sys=True)
"""


def run_process(case: Case, directory: Path, timeout: float, kill_bytes: int) -> Raw:
    """The real `stepc` in a child process, its resident memory watched (killed past
    `kill_bytes`) and its peak reported by the child itself at exit (`CHILD`)."""
    peak_file = directory.parent / f"{directory.name}.peak"
    with _PRIVILEGE:  # (an in-process case on the other thread may run as nobody meanwhile)
        peak_file.unlink(missing_ok=True)
    env = dict(_CHILD_ENV or os.environ)
    env.setdefault("STEPC_MAX_BYTES", DEFAULT_LIMIT)
    env["STEPC_FUZZ_PEAK"] = str(peak_file)
    for key, value in case.env:
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    command = [sys.executable, "-c", CHILD, *case.argv]
    closing = " ".join(redirect for redirect, how in ((">&-", case.stdout), ("2>&-", case.stderr)) if how == "closed")
    if closing:  # a stream closed before the interpreter starts, as `stepc ... >&-` in a shell
        command = ["/bin/sh", "-c", f'exec "$@" {closing}', "sh", *command]
    start = time.perf_counter()
    with _PRIVILEGE:
        stdin_file = open(case.stdin, "rb") if isinstance(case.stdin, str) else None  # noqa: SIM115 - closed below
        stdout_file = open("/dev/full", "wb") if case.stdout == "/dev/full" else None  # noqa: SIM115
        proc = subprocess.Popen(
            command, cwd=directory, env=env,
            stdin=stdin_file or (subprocess.PIPE if isinstance(case.stdin, bytes) else subprocess.DEVNULL),
            stdout=stdout_file or (subprocess.PIPE if case.stdout == "pipe" else subprocess.DEVNULL),
            stderr=subprocess.PIPE if case.stderr == "pipe" else subprocess.DEVNULL,
        )  # fmt: skip
    chunks: dict[str, list[bytes]] = {"out": [], "err": []}

    def drain(stream: Any, into: list[bytes]) -> None:
        while block := stream.read(65536):
            if sum(map(len, into)) < 4 * MIB:
                into.append(block)

    threads = [threading.Thread(target=drain, args=(s, chunks[k]), daemon=True)
               for k, s in (("out", proc.stdout), ("err", proc.stderr)) if s is not None]  # fmt: skip
    if isinstance(case.stdin, bytes) and proc.stdin is not None:
        threads.append(threading.Thread(target=_feed, args=(proc.stdin, case.stdin), daemon=True))
    for t in threads:
        t.start()
    timed_out = killed = False
    peak_seen = 0
    status_word = 0
    while True:
        pid, status_word, _ = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        rss = _child_rss(proc.pid)
        peak_seen = max(peak_seen, rss)
        if rss > kill_bytes:
            killed = True
            proc.kill()
        elif time.perf_counter() - start > timeout:
            timed_out = True
            proc.kill()
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status_word)
    for t in threads:
        t.join(timeout=5)
    for f in (stdin_file, stdout_file):
        if f is not None:
            f.close()
    with _PRIVILEGE:
        with contextlib.suppress(OSError, ValueError):
            peak_seen = max(peak_seen, int(peak_file.read_text()) * 1024)
        peak_file.unlink(missing_ok=True)
    status = None if timed_out or killed else proc.returncode
    return Raw(status, b"".join(chunks["out"]), b"".join(chunks["err"]).decode("utf-8", "replace"),
               time.perf_counter() - start, peak_seen, timed_out, killed)  # fmt: skip


def _feed(stream: Any, data: bytes) -> None:
    with contextlib.suppress(OSError):
        stream.write(data)
        stream.close()


def _child_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


# ---------------------------------------------------------------------------------------------
# Laying out a case and judging it


def lay_out(case: Case, directory: Path) -> None:
    """Create the case's files in `directory` (which must exist and be empty)."""
    for lay in case.lays:
        path = directory / lay.path
        path.parent.mkdir(parents=True, exist_ok=True)
        if lay.link is not None:
            if lay.link.startswith("="):  # a hard link
                os.link(directory / lay.link[1:], path)
            else:
                os.symlink(lay.link, path)
        elif lay.data is None:
            path.mkdir(exist_ok=True)
        else:
            path.write_bytes(lay.data)
    for lay in case.lays:
        if lay.mode is not None:
            os.chmod(directory / lay.path, lay.mode)
    if case.unprivileged:
        os.chmod(directory, 0o777)


def snapshot(directory: Path) -> dict[str, str]:
    """The content hash of every regular file under `directory` (links not followed)."""
    out: dict[str, str] = {}
    for root, dirs, files in os.walk(directory):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, directory)
            try:
                if os.path.islink(path) or not stat.S_ISREG(os.lstat(path).st_mode):
                    out[rel] = "link:" + os.readlink(path) if os.path.islink(path) else "special"
                    continue
                with open(path, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
            except OSError:
                out[rel] = "unreadable"
    return out


@dataclass
class Outcome:
    kind: str
    detail: str  # the first line of stderr, the exception, or what the postcondition found
    seconds: float
    peak_bytes: int | None = None

    @property
    def ok(self) -> bool:
        return self.kind in ACCEPTED


ERROR_LINE = re.compile(r"^(?:stepc(?: [\w-]+)?|.+:\d+:\d+): error: \S", re.MULTILINE)


def judge_cli(case: Case, raw: Raw) -> Outcome:
    """The outcome of a command-line case from its exit status and messages alone."""
    first = next((line for line in raw.stderr.splitlines() if line.strip()), raw.escaped or "")[:300]

    def out(kind: str, detail: str = first) -> Outcome:
        return Outcome(kind, detail, raw.seconds, raw.peak_bytes)

    if raw.timed_out:
        return out("hang", f"no answer within {raw.seconds:.1f} s")
    if raw.killed_for_memory:
        return out("memory", f"killed at {human(raw.peak_bytes)} resident")
    if raw.escaped:
        return out("internal", f"escaped main: {raw.escaped}"[:300])
    debug = "--debug" in case.argv
    if "internal error" in raw.stderr:
        return out("internal", next((line for line in raw.stderr.splitlines() if "internal error" in line), first))
    if "Traceback (most recent call last)" in raw.stderr and not debug:
        return out("traceback", _last_line(raw.stderr))
    if len(raw.stderr) > FLOOD_BYTES:
        return out("flood", f"{len(raw.stderr)} characters on stderr; {first[:100]}")
    if raw.warnings:
        return out("warning", raw.warnings[0][:300])
    if raw.status == 0:
        if case.expect == "error":
            return out("accepted-bad", f"exit 0 where an error was due; stdout {raw.stdout[:80]!r}")
        return out("ok")
    if case.stderr == "closed":  # nothing to read: the status alone
        return out("error" if raw.status == 1 else "bad-status", f"exit {raw.status} with stderr closed")
    if raw.status == 1 and ERROR_LINE.search(raw.stderr):
        return out("refused-valid" if case.expect == "ok" else "error")
    if raw.status == 2 and re.search(r"^usage: ", raw.stderr, re.MULTILINE) and ": error: " in raw.stderr:
        return out("refused-valid" if case.expect == "ok" else "usage")
    return out("bad-status", f"exit {raw.status}: {first}")


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def judge_api(case: Case, raw: Raw) -> Outcome:
    """StepcError, or a ValueError/TypeError raised by stepc's own `raise`, is a user error; one
    raised inside Python, NumPy or JAX is `raw-error`; any other exception is `internal`."""

    def out(kind: str, detail: str) -> Outcome:
        return Outcome(kind, detail[:300], raw.seconds, raw.peak_bytes)

    if raw.timed_out:
        return out("hang", f"no answer within {raw.seconds:.1f} s")
    if raw.warnings:
        return out("warning", raw.warnings[0])
    e = raw.exception
    if e is None:
        if case.expect == "error":
            return out("accepted-bad", "returned where an error was due")
        return out("ok", "")

    detail = raw.escaped
    if isinstance(e, Mismatch):
        return out("wrong-result", detail)
    if isinstance(e, StepcError):
        return out("refused-valid" if case.expect == "ok" else "error", detail)
    if isinstance(e, (ValueError, TypeError)):
        where = raised_by(e)
        if where in ("stepc", "caller") and len(str(e).split()) >= 3:
            return out("refused-valid" if case.expect == "ok" else "error", detail)
        if where in ("stepc", "caller"):
            return out("raw-error", f"{detail} (an unclear message)")
        return out("raw-error", f"{detail} (raised in {where})")
    return out("internal", detail)


PYTHON_CALL_ERROR = re.compile(r"got an unexpected keyword argument|missing \d+ required|takes \d+ positional|"
                               r"positional arguments? but")


def raised_by(e: BaseException) -> str:
    """Who raised `e`: `stepc` (a `raise` statement in stepc's own code, read from the bytecode,
    not the file, which may have changed since it was imported), `caller` (Python refused the
    call itself: an unknown keyword), or the place where it happened."""
    tb = e.__traceback__
    if tb is None:
        return "caller"
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    if code.co_filename == "<case>" or (isinstance(e, TypeError) and PYTHON_CALL_ERROR.search(str(e))):
        return "caller"
    path = Path(code.co_filename)
    raw = code.co_code
    opcode = dis.opname[raw[tb.tb_lasti]] if 0 <= tb.tb_lasti < len(raw) else ""
    inside = ROOT in path.parents and ".venv" not in path.parts and path.name != "fuzz_surface.py"
    where = f"{path.relative_to(ROOT) if inside else path.name}:{tb.tb_lineno} in {code.co_name}"
    if inside and opcode == "RAISE_VARARGS":
        return "stepc"
    return ("stepc's " if inside else "") + where


def postconditions(case: Case, raw: Raw, outcome: Outcome, before: dict[str, str], after: dict[str, str],
                   directory: Path) -> Outcome | None:  # fmt: skip
    """A finding the exit status alone does not show: a changed input, a leftover temporary,
    an output that lost a parameter, a pickle that ran, a failed run that changed --out."""

    def found(kind: str, detail: str) -> Outcome:
        return Outcome(kind, detail[:300], outcome.seconds, outcome.peak_bytes)

    roles = {lay.path: lay.role for lay in case.lays}
    for path, digest in before.items():
        if roles.get(path, "input") == "input" and after.get(path) != digest:
            return found("input-modified", f"{path!r} changed ({'removed' if path not in after else 'rewritten'})")
    if "PWNED" in after and "PWNED" not in before:
        return found("code-ran", "a pickled payload created PWNED")
    temps = [p for p in after if p not in before and re.search(r"(^|/)\.[^/]*\.tmp$", p)]
    if temps:
        return found("temp-left", f"left {temps[0]!r}")
    if "no-dash-file" in case.checks and "-" in after and "-" not in before:
        return found("lost-output", "wrote a file named '-' instead of stdout")
    if raw.status == 0 and outcome.kind == "ok":
        if "exec-output" in case.checks and case.prog is not None and "--until" not in case.argv:
            problem = _check_npz(directory, _option(case.argv, "-o"), case.prog.output_keys())
            if problem:
                return found("lost-output", problem)
        if "run-output" in case.checks and case.prog is not None and _option(case.argv, "--out"):
            problem = _check_run(directory, _option(case.argv, "--out") or "", case.prog)
            if problem:
                return found("lost-output", problem)
    if "run-out" in case.checks and raw.status not in (0, None) and "training stopped" not in raw.stderr:
        out = _option(case.argv, "--out") or ""
        changed = sorted(p for p in set(before) | set(after) if _under(p, out) and before.get(p) != after.get(p))
        if changed:
            return found("mixed-output", f"a failed run changed {', '.join(changed)} in --out")
    return None


def _under(path: str, directory: str) -> bool:
    return bool(directory) and (path == directory or path.startswith(directory.rstrip("/") + "/"))


def _option(argv: Sequence[str], option: str) -> str | None:
    if option in argv:
        i = list(argv).index(option)
        return argv[i + 1] if i + 1 < len(argv) else None
    return None


def _check_npz(directory: Path, name: str | None, keys: set[str]) -> str:
    if not name or name in ("-", "/dev/null"):
        return ""
    path = directory / name
    try:
        with np.load(path, allow_pickle=False) as archive:
            found = set(archive.files)
    except Exception as e:
        return f"{name!r} cannot be read back: {type(e).__name__}: {e}"
    if found != keys:
        return f"{name!r} holds {sorted(found)}, expected {sorted(keys)}"
    return ""


def _check_run(directory: Path, out: str, prog: Prog) -> str:
    where = directory / out
    missing = [n for n in RUN_FILES if not (where / n).is_file()]
    if missing:
        return f"--out {out!r} lacks {', '.join(missing)} after a successful run"
    problem = _check_npz(where, "params.npz", {n for n, _ in prog.params})
    if problem:
        return "--out " + problem
    try:
        summary = json.loads((where / "summary.json").read_text(), parse_constant=_no_constant)
    except (ValueError, OSError) as e:
        return f"--out {out!r}: summary.json is not strict JSON: {e}"
    if not isinstance(summary, dict) or "steps" not in summary or "final_loss" not in summary:
        return f"--out {out!r}: summary.json lacks steps or final_loss"
    return ""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} in JSON")


def human(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / MIB:.0f} MiB"


# ---------------------------------------------------------------------------------------------
# A campaign


@dataclass
class Finding:
    case: Case
    outcome: Outcome
    saved: str = ""


@dataclass
class Summary:
    limit_bytes: int
    baseline_bytes: int = 0
    tried: Counter[str] = field(default_factory=Counter)
    kinds: dict[str, Counter[str]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0
    slowest: tuple[float, str] = (0.0, "")
    process_cases: int = 0
    peak_process_bytes: int = 0  # the largest peak of a child process (baseline included)
    peak_in_process_bytes: int = 0  # the largest known peak a case added in this process

    @property
    def total(self) -> int:
        return sum(self.tried.values())

    def groups(self) -> dict[tuple[str, str, str], list[Finding]]:
        """Findings grouped by surface, kind and a normalized first line."""
        out: dict[tuple[str, str, str], list[Finding]] = {}
        for f in self.findings:
            key = (f.case.surface, f.outcome.kind, _normalize(f.outcome.detail))
            out.setdefault(key, []).append(f)
        return out

    def table(self, limit: int = 60) -> str:
        lines = [f"cases tried: {self.total} in {self.seconds:.1f} s "
                 f"({1000 * self.seconds / max(1, self.total):.0f} ms per case; slowest {self.slowest[0]:.1f} s: "
                 f"{self.slowest[1][:80]}), {self.process_cases} in child processes"]  # fmt: skip
        kinds = list(ACCEPTED) + list(FINDINGS)
        for surface in SURFACES:
            if not self.tried[surface]:
                continue
            counts = self.kinds.get(surface, Counter())
            shown = ", ".join(f"{k} {counts[k]}" for k in kinds if counts[k])
            lines.append(f"  {surface:<4} {self.tried[surface]:>6} cases: {shown}")
        lines.append(
            f"memory: STEPC_MAX_BYTES {human(self.limit_bytes)}; largest child peak {human(self.peak_process_bytes)} "
            f"(baseline {human(self.baseline_bytes)}, finding above baseline + {human(int(1.5 * self.limit_bytes))}); "
            f"largest in-process peak a case added {human(self.peak_in_process_bytes)}"
        )
        groups = self.groups()
        lines.append(f"findings: {len(self.findings)} in {len(groups)} groups")
        for (surface, kind, _), members in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0]))[:limit]:
            f = min(members, key=lambda m: len(m.case.recipe))
            lines.append(f"FINDING [{surface} {kind}] x{len(members)} #{f.case.index}: {f.case.recipe}")
            lines.append(f"    -> {f.outcome.detail[:240]}")
            lines.append(f"    reproduce: {f.case.reproduction()[:400]}")
            if f.saved:
                lines.append(f"    files: {f.saved}")
        return "\n".join(lines)


def _normalize(detail: str) -> str:
    text = re.sub(r"\d+(\.\d+)?", "N", detail)
    text = re.sub(r"'[^']*'", "'_'", text)
    text = re.sub(r"\S+\.(ir|npz|mlir|py|json|png)\b", "FILE", text)
    return text[:90]


def baseline_memory() -> int:
    """The peak resident memory of a child `stepc compile` of linreg: what imports cost."""
    with tempfile.TemporaryDirectory(prefix="stepc-surface-base-") as d:
        case = Case("cli", -1, "baseline", ("compile", "prog.ir", "--no-check"), lays=(Lay("prog.ir", LINREG.text.encode()),))
        lay_out(case, Path(d))
        raw = run_process(case, Path(d), 120.0, 8 * 1024**3)
    return raw.peak_bytes or 0


def judge(case: Case, raw: Raw, directory: Path, before: dict[str, str], *, limit_bytes: int,
          baseline_bytes: int) -> Outcome:  # fmt: skip
    """The outcome of a case that ran: its status and messages, memory, then postconditions."""
    outcome = judge_api(case, raw) if case.surface == "api" else judge_cli(case, raw)
    if outcome.kind not in ("hang", "memory") and raw.peak_bytes is not None:
        extra = raw.peak_bytes - (baseline_bytes if case.process else 0)
        if extra > 1.5 * limit_bytes:
            outcome = Outcome("memory", f"peak {human(raw.peak_bytes)} ({outcome.kind}: {outcome.detail})"[:300],
                              outcome.seconds, raw.peak_bytes)  # fmt: skip
    if outcome.kind not in ("hang", "memory"):
        found = postconditions(case, raw, outcome, before, snapshot(directory), directory)
        if found is not None and (outcome.ok or found.kind in ("input-modified", "code-ran")):
            outcome = found
        elif found is not None:  # a finding already: keep it, say what else went wrong
            outcome.detail = f"{outcome.detail[:200]} [and {found.kind}: {found.detail[:90]}]"
    return outcome


def run_case(case: Case, directory: Path, *, timeout: float = 20.0, process_timeout: float = 30.0,
             limit_bytes: int = 300 * MIB, baseline_bytes: int = 0) -> tuple[Outcome, Raw]:  # fmt: skip
    """Lay the case out in `directory` (which must exist, empty), run it, judge it."""
    lay_out(case, directory)
    before = snapshot(directory)
    if case.process:
        raw = run_process(case, directory, process_timeout, kill_bytes=baseline_bytes + 2 * limit_bytes)
    else:
        raw = run_in_process(case, directory, timeout)
    return judge(case, raw, directory, before, limit_bytes=limit_bytes, baseline_bytes=baseline_bytes), raw


def campaign(
    *,
    count: int,
    seed: int,
    surfaces: Sequence[str] = SURFACES,
    budget: float | None = None,
    timeout: float = 20.0,
    process_timeout: float = 30.0,
    process_every: int = 40,
    crash_dir: Path | None = None,
    workdir: Path | None = None,
    progress: Callable[[Summary], None] | None = None,
    cases: Sequence[Case] | None = None,
) -> Summary:
    """Run `count` generated cases (or the given ones) until `budget` seconds pass.

    In-process cases run one after the other in this thread; child-process cases run on a
    second thread meanwhile (a child mostly waits for its imports, on the other core)."""

    os.environ.setdefault("STEPC_MAX_BYTES", DEFAULT_LIMIT)
    limit = parse_byte_count(os.environ["STEPC_MAX_BYTES"])
    # Children start from the environment as it is now: an in-process case on this thread sets
    # its own variables (a huge STEPC_MAX_BYTES, say) while a child starts on the other thread.
    _CHILD_ENV.clear()
    _CHILD_ENV.update(os.environ)
    warnings.filterwarnings("ignore", FORK_WARNING, RuntimeWarning)
    summary = Summary(limit)
    planned: Sequence[Case] | Iterator[Case] = cases if cases is not None else generate(seed, count, surfaces, process_every)
    _warm_up()
    start = time.perf_counter()
    pending: list[tuple[Case, Path, dict[str, str], Future[Raw]]] = []

    def record(case: Case, directory: Path, outcome: Outcome, raw: Raw | None) -> None:
        summary.tried[case.surface] += 1
        summary.kinds.setdefault(case.surface, Counter())[outcome.kind] += 1
        if outcome.seconds > summary.slowest[0]:
            summary.slowest = (outcome.seconds, case.recipe)
        if case.process:
            summary.process_cases += 1
        if raw is not None and raw.peak_bytes is not None:
            if case.process:
                summary.peak_process_bytes = max(summary.peak_process_bytes, raw.peak_bytes)
            else:
                summary.peak_in_process_bytes = max(summary.peak_in_process_bytes, raw.peak_bytes)
        if not outcome.ok:
            saved = ""
            if crash_dir is not None:
                target = crash_dir / f"seed{seed}-{case.index:06d}-{outcome.kind}"
                _remove(target)
                _copy_case(directory, target)
                (target / "REPRODUCE.txt").write_text(
                    f"{case.recipe}\n{outcome.kind}: {outcome.detail}\n\n{case.reproduction()}\n", encoding="utf-8",
                    errors="surrogateescape",
                )  # fmt: skip
                saved = str(target)
            summary.findings.append(Finding(case, outcome, saved))
        _remove(directory)
        if progress is not None and summary.total % 100 == 0:
            progress(summary)

    def finish_children(wait: bool) -> None:
        for item in list(pending):
            case, directory, before, future = item
            if not wait and not future.done():
                continue
            pending.remove(item)
            try:
                raw = future.result()
                outcome = judge(case, raw, directory, before, limit_bytes=limit, baseline_bytes=summary.baseline_bytes)
            except Exception as e:  # the harness failed, not stepc: say so, go on
                raw, outcome = None, Outcome("internal", f"fuzzer: {type(e).__name__}: {e}", 0.0)
            record(case, directory, outcome, raw)

    def child(case: Case, directory: Path) -> Raw:
        if not summary.baseline_bytes:
            summary.baseline_bytes = baseline_memory()
        return run_process(case, directory, process_timeout, kill_bytes=summary.baseline_bytes + 2 * limit)

    with contextlib.ExitStack() as stack:
        root = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="stepc-surface-")))
        root.mkdir(parents=True, exist_ok=True)
        # a case run as nobody lies where nobody can reach it (a pytest tmp_path's parents are 0700)
        open_root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="stepc-surface-nobody-")))
        os.chmod(open_root, 0o755)
        children = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="stepc-surface-child"))
        for case in planned:
            if budget is not None and time.perf_counter() - start > budget:
                break
            directory = (open_root if case.unprivileged else root) / f"case-{case.index:06d}"
            _remove(directory)
            directory.mkdir(parents=True)
            try:
                lay_out(case, directory)
                before = snapshot(directory)
                if case.process:
                    pending.append((case, directory, before, children.submit(child, case, directory)))
                    continue
                raw = run_in_process(case, directory, timeout)
                outcome = judge(case, raw, directory, before, limit_bytes=limit, baseline_bytes=0)
            except Exception as e:  # the harness failed, not stepc: say so, go on
                raw, outcome = None, Outcome("internal", f"fuzzer: {type(e).__name__}: {e}", 0.0)
            record(case, directory, outcome, raw)
            finish_children(wait=False)
        finish_children(wait=True)
    summary.seconds = time.perf_counter() - start
    return summary


def _warm_up() -> None:
    """Start JAX's backends before any case, so that no case's XLA_FLAGS (`run --devices`)
    reaches this process's backends, and the first case is not charged with the start."""
    import jax

    jax.devices()


def _remove(path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        return
    for root, dirs, _ in os.walk(path):
        for d in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, d), 0o755)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o755)
    shutil.rmtree(path, ignore_errors=True)


def _copy_case(source: Path, target: Path) -> None:
    try:
        shutil.copytree(source, target, symlinks=True, ignore_dangling_symlinks=True)
    except (OSError, shutil.Error):
        target.mkdir(parents=True, exist_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stepc.tools.fuzz_surface",
        description="Fuzz stepc's command line, .npz data files and Python API with hostile cases. Each case must "
        "succeed or fail with a clear user error (exit 1 with 'stepc: error:' or FILE:LINE:COL: error:; for the API a "
        "StepcError, or a ValueError/TypeError stepc raises itself). Internal errors, tracebacks, hangs, memory over "
        "1.5x STEPC_MAX_BYTES, changed inputs, lost outputs and success where an error was due are findings. "
        "Exit status: 0 without findings, 1 with.",
    )
    parser.add_argument("--cases", "-n", type=int, default=2000, help="how many cases (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generator (default 0)")
    parser.add_argument("--time-budget", type=float, help="stop after this many seconds")
    parser.add_argument("--surface", default=",".join(SURFACES), help="comma-separated: cli,npz,api (default all)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds an in-process case may take (default 20)")
    parser.add_argument("--process-timeout", type=float, default=30.0, help="seconds a child case may take (default 30)")
    parser.add_argument("--process-every", type=int, default=40,
                        help="every Nth case is a process-level one in a child (default 40; 0: none)")
    parser.add_argument("--crash-dir", type=Path, help="copy each finding's directory here, with REPRODUCE.txt")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    surfaces = [s.strip() for s in args.surface.split(",") if s.strip()]
    unknown = [s for s in surfaces if s not in SURFACES]
    if unknown or not surfaces:
        parser.error(f"--surface: unknown {', '.join(unknown) or '(none)'}; the surfaces are {', '.join(SURFACES)}")
    if args.cases < 0:
        parser.error("--cases must not be negative")

    def progress(summary: Summary) -> None:
        if not args.quiet:
            print(f"... {summary.total} cases, {len(summary.findings)} findings, {time.perf_counter() - started:.0f} s",
                  file=sys.stderr, flush=True)  # fmt: skip

    started = time.perf_counter()
    summary = campaign(
        count=args.cases, seed=args.seed, surfaces=surfaces, budget=args.time_budget, timeout=args.timeout,
        process_timeout=args.process_timeout, process_every=args.process_every, crash_dir=args.crash_dir,
        progress=progress,
    )  # fmt: skip
    print(summary.table())
    return 1 if summary.findings else 0


if __name__ == "__main__":
    sys.exit(main())
