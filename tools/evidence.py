"""The evidence an artifact carries: the header of `stepc compile --emit stablehlo|jax-py`.

    // stepc artifact: what it was compiled from and the contracts it passed (re-check it: stepc check --artifact FILE STEP.ir)
    // source: "examples/linreg.ir"
    // source-sha256: 5c1f...
    // versions: stepc 0.1.0, jax 0.10.2, jaxlib 0.10.2, xdsl 0.74.0
    // compile: --emit stablehlo --trials 3 --check-mode auto
    // pipeline: differentiate, cse, dce, seed-scalar-loss, canonicalize, fuse-sgd, cse, dce, lower-to-stablehlo, simplify-stablehlo
    // contract: differentiate; vjp pairing; trials 3; worst error 0.0207 of the bound (abs 2.38e-07); tolerance: rounding-error bound (f32); ok; full
    // ...
    // end of stepc artifact header

Comment lines (`//` in MLIR, `#` in Python): the artifact still compiles, and imports, as it is.
Each contract's row gives its trials, its worst error (the largest `error / bound` over every
element and trial, and the largest absolute error) and its tolerance (each element's own
rounding-error bound, for the precisions named: the contract holds when `error / bound <= 1`).
`stepc check --artifact` reads the header back (`parse`), compiles the source again with the
same options and compares (`tools/check_cmd.py`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import jax

from stepc import __version__
from stepc.check import ContractReport
from stepc.ir.diagnostics import StepcError

FIRST = "stepc artifact: what it was compiled from and the contracts it passed (re-check it: stepc check --artifact FILE STEP.ir)"
LAST = "end of stepc artifact header"
PREFIXES = {"stablehlo": "// ", "jax-py": "# "}


def versions() -> str:
    """`stepc 0.1.0, jax 0.10.2, jaxlib 0.10.2, xdsl 0.74.0`: what made an artifact."""
    found = {"stepc": __version__, "jax": jax.__version__}
    for package in ("jaxlib", "xdsl"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "unknown"
    return ", ".join(f"{k} {v}" for k, v in found.items())


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Evidence:
    """What an artifact was compiled from, how, and the contracts' rows."""

    source: str
    source_sha256: str
    versions: str
    options: str  # `--emit stablehlo --trials 3 --check-mode auto` (and `--until PASS`, `--no-check`)
    pipeline: list[str]
    contracts: list[str] = field(default_factory=list)  # one row per contract run (`contract_row`)

    def lines(self) -> list[str]:
        return [
            FIRST,
            f"source: {json.dumps(self.source, ensure_ascii=True)}",
            f"source-sha256: {self.source_sha256}",
            f"versions: {self.versions}",
            f"compile: {self.options}",
            f"pipeline: {', '.join(self.pipeline)}",
            *([f"contract: {row}" for row in self.contracts] or ["contract: none run (--no-check)"]),
            LAST,
        ]

    def header(self, emit: str) -> str:
        prefix = PREFIXES[emit]
        return "".join(f"{prefix}{line}\n" for line in self.lines())


def compile_options(emit: str, until: str | None, trials: int, check_mode: str, checked: bool) -> str:
    parts = [f"--emit {emit}", *([f"--until {until}"] if until else []), f"--trials {trials}", f"--check-mode {check_mode}"]
    return " ".join(parts + ([] if checked else ["--no-check"]))


def contract_row(report: ContractReport) -> str:
    """One contract as a header row: pass; contract; trials; worst error; tolerance; verdict; where."""
    ratio = "inf" if math.isinf(report.ratio) else f"{report.ratio:.3g}"
    return (f"{report.pass_name}; {report.contract}; trials {report.trials}; worst error {ratio} of the bound "
            f"(abs {report.max_abs:.3g}); tolerance: rounding-error bound ({report.model}); "
            f"{'ok' if report.ok else 'FAILED'}; {report.mode}")  # fmt: skip


def split(text: str, where: str) -> tuple[Evidence, str, str]:
    """An artifact's text as (its evidence, the comment prefix, the text after the header); a
    StepcError naming `where` when it has no header stepc wrote."""
    lines = text.split("\n")
    prefix = next((p for p in PREFIXES.values() if lines and lines[0] == p + FIRST), None)
    if prefix is None:
        raise StepcError(f"{where} has no stepc artifact header (its first line is not '// {FIRST}'): "
                         "compile it with stepc compile --emit stablehlo or --emit jax-py")  # fmt: skip
    fields: dict[str, list[str]] = {}
    for index, line in enumerate(lines[1:], start=1):
        if not line.startswith(prefix):
            break
        content = line[len(prefix):]
        if content == LAST:
            return _evidence(fields, where), prefix, "\n".join(lines[index + 1 :])
        key, _, value = content.partition(": ")
        fields.setdefault(key, []).append(value)
    raise StepcError(f"{where}: its stepc header is cut short (no '{LAST}' line)")


def _evidence(fields: dict[str, list[str]], where: str) -> Evidence:
    def one(key: str) -> str:
        values = fields.get(key)
        if not values or len(values) != 1:
            raise StepcError(f"{where}: its stepc header has {'no' if not values else 'more than one'} '{key}:' line")
        return values[0]

    try:
        source = json.loads(one("source"))
    except json.JSONDecodeError:
        raise StepcError(f"{where}: its stepc header's 'source:' is not a quoted name") from None
    rows = [r for r in fields.get("contract", []) if r != "none run (--no-check)"]
    return Evidence(str(source), one("source-sha256"), one("versions"), one("compile"),
                    one("pipeline").split(", "), rows)  # fmt: skip


def differences(recorded: Evidence, now: Evidence) -> list[str]:
    """What differs between an artifact's evidence and that of compiling its source again (the
    contracts' numbers aside: their verdicts are checked on their own)."""
    out: list[str] = []
    if recorded.source_sha256 != now.source_sha256:
        out.append(f"the source differs: the artifact was compiled from {recorded.source} with sha256 "
                   f"{recorded.source_sha256}, {now.source} has sha256 {now.source_sha256}")  # fmt: skip
    if recorded.versions != now.versions:
        out.append(f"the versions differ: the artifact was made by {recorded.versions}; this is {now.versions}")
    if recorded.pipeline != now.pipeline:
        out.append(f"the pipeline differs: the artifact ran {', '.join(recorded.pipeline)}; compiling now runs "
                   f"{', '.join(now.pipeline)}")  # fmt: skip
    return out


def first_difference(artifact: Sequence[str], compiled: Sequence[str]) -> tuple[int, str, str] | None:
    """The first line (counted from 1) where two texts differ, with each side's line."""
    for index in range(max(len(artifact), len(compiled))):
        a = artifact[index] if index < len(artifact) else "<end of file>"
        b = compiled[index] if index < len(compiled) else "<end of file>"
        if a != b:
            return index + 1, a, b
    return None
