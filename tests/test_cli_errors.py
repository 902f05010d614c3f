"""Malformed programs through the real command: `FILE:LINE:COL: error:` at the offending line,
the source line and a caret, exit status 1 and no Python traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

GOOD = """\
func.func @f(%w: tensor<4x3xf32> {step.param}, %b: tensor<3xf32> {step.param},
             %x: tensor<8x4xf32>, %labels: tensor<8xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %xw = step.matmul %x, %w : (tensor<8x4xf32>, tensor<4x3xf32>) -> tensor<8x3xf32>
  %logits = step.add %xw, %b : (tensor<8x3xf32>, tensor<3xf32>) -> tensor<8x3xf32>
  %loss = step.cross_entropy %logits, %labels : (tensor<8x3xf32>, tensor<8xi32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}
"""

SCALAR_TAIL = """\
  func.return %loss : tensor<f32>
}
"""


def edit(old: str, new: str) -> bytes:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1).encode()


def one_param(body: str, head: str = "{step.param}", attrs: str = " attributes {step.sgd = #step.sgd<lr = 0.1>}") -> bytes:
    return (
        f"func.func @g(%w: tensor<4x3xf32> {head}, %k: tensor<4xi32>) -> tensor<f32>\n"
        f"   {attrs} {{\n{body}" + SCALAR_TAIL
    ).encode()


SUM_W = "  %loss = step.sum %w : tensor<4x3xf32> -> tensor<f32>\n"


@dataclass
class Case:
    name: str
    source: bytes
    line: int
    message: str  # a fragment of the message


CASES = [
    Case("syntax error", edit("step.matmul %x, %w", "step.matmul %x %w"), 4, "Expected ','"),
    Case("unknown op", edit("step.add %xw", "step.addd %xw"), 5, "unknown operation 'step.addd'"),
    Case("undefined value", edit("step.add %xw, %b", "step.add %xv, %b"), 5, "use of undefined value %xv"),
    Case(
        "matmul shape mismatch",
        edit("step.matmul %x, %w : (tensor<8x4xf32>", "step.matmul %w, %w : (tensor<4x3xf32>"),
        4,
        "matmul contraction mismatch: lhs 4x3 has k = 3, rhs 4x3 has k = 4",
    ),
    Case(
        "broadcast shape mismatch",
        edit("%b: tensor<3xf32> {step.param}", "%b: tensor<8xf32> {step.param}").replace(
            b"(tensor<8x3xf32>, tensor<3xf32>)", b"(tensor<8x3xf32>, tensor<8xf32>)"
        ),
        5,
        "shapes 8x3 and 8 do not broadcast",
    ),
    Case(
        "bad perm",
        one_param("  %t = step.transpose %w perm [1, 2] : tensor<4x3xf32> -> tensor<3x4xf32>\n"
                  "  %loss = step.sum %t : tensor<3x4xf32> -> tensor<f32>\n"),
        3,
        "perm [1, 2] is not a permutation of the 2 dims of 4x3",
    ),
    Case(
        "reshape count",
        one_param("  %t = step.reshape %w : tensor<4x3xf32> -> tensor<2x7xf32>\n"
                  "  %loss = step.sum %t : tensor<2x7xf32> -> tensor<f32>\n"),
        3,
        "4x3 has 12 elements, 2x7 has 14",
    ),
    Case(
        "reduction dim out of range",
        one_param("  %t = step.mean %w dims [3] : tensor<4x3xf32> -> tensor<4xf32>\n"
                  "  %loss = step.sum %t : tensor<4xf32> -> tensor<f32>\n"),
        3,
        "reduction dim 3 is out of range for rank 2 shape 4x3",
    ),
    Case(
        "non-scalar loss",
        b"func.func @g(%w: tensor<4x3xf32> {step.param})\n    -> tensor<4xf32>\n"
        b"    attributes {step.sgd = #step.sgd<lr = 0.1>} {\n"
        b"  %loss = step.sum %w dims [1] : tensor<4x3xf32> -> tensor<4xf32>\n"
        b"  func.return %loss : tensor<4xf32>\n}\n",
        2,
        "the loss must be a rank-0 float tensor",
    ),
    Case("integer parameter", edit("%labels: tensor<8xi32>)", "%labels: tensor<8xi32> {step.param})"), 2,
         "parameter %labels must be a float tensor"),
    Case("no parameter", one_param(SUM_W, head="{}"), 1, "a step needs at least one parameter"),
    Case("missing step.sgd", one_param(SUM_W, attrs=""), 1, "the function needs an optimizer"),
    Case("missing lr", edit("#step.sgd<lr = 0.1>", "#step.sgd<momentum = 0.9>"), 3, "must give lr"),
    Case("negative lr", edit("#step.sgd<lr = 0.1>", "#step.sgd<lr = -1.0>"), 3, "invalid SGD lr: -1.0"),
    Case(
        "nesterov without momentum",
        edit("#step.sgd<lr = 0.1>", "#step.sgd<lr = 0.1, nesterov = true>"),
        3,
        "Nesterov momentum requires a momentum and zero dampening",
    ),
    Case(
        "labels of the wrong type",
        edit("%labels: tensor<8xi32>", "%labels: tensor<8xf32>").replace(
            b"(tensor<8x3xf32>, tensor<8xi32>)", b"(tensor<8x3xf32>, tensor<8xf32>)"
        ),
        6,
        "step.cross_entropy takes i32 labels, found tensor<8xf32>",
    ),
    Case("truncated file", GOOD.encode()[: GOOD.index("step.add") + 6], 5, "is it truncated?"),
    Case("empty file", b"", 1, "the file holds no program"),
    Case("only comments", b"// nothing here\n\n", 1, "the file holds no program"),
    Case("binary garbage", b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4, 1, "the file holds NUL bytes"),
    Case("not UTF-8", b"func.func @f(\xff\xfe", 1, "not UTF-8"),
    Case(
        "use before definition",
        edit("  %xw = step.matmul %x, %w : (tensor<8x4xf32>, tensor<4x3xf32>) -> tensor<8x3xf32>\n", "").replace(
            b"  func.return", b"  %xw = step.matmul %x, %w : (tensor<8x4xf32>, tensor<4x3xf32>) -> tensor<8x3xf32>\n  func.return"
        ),
        4,
        "%xw is used before its definition on line 6",
    ),
    Case("valid control", GOOD.encode(), 0, ""),  # line 0: no error expected
]

LOCATION = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): error: (?P<message>.*)$")


def stepc(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "stepc.tools.cli", *args], input=stdin, capture_output=True, timeout=120
    )


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, subprocess.CompletedProcess[bytes]]]:
    """Every case through `stepc opt`, the processes run side by side (each is mostly imports)."""
    directory = tmp_path_factory.mktemp("cli_errors")
    paths = {}
    for i, case in enumerate(CASES):
        paths[case.name] = directory / f"case{i}.ir"
        paths[case.name].write_bytes(case.source)
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        futures = {name: pool.submit(stepc, "opt", str(path)) for name, path in paths.items()}
        return {name: (paths[name], future.result()) for name, future in futures.items()}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_error_is_reported_at_the_offending_line(case: Case, results) -> None:  # type: ignore[no-untyped-def]
    path, result = results[case.name]
    stderr = result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in stderr
    if case.line == 0:
        assert result.returncode == 0, stderr
        return
    assert result.returncode == 1, stderr
    assert result.stdout == b""
    lines = stderr.splitlines()
    match = LOCATION.match(lines[0])
    assert match is not None, stderr
    assert match["file"] == str(path)
    assert int(match["line"]) == case.line, stderr
    assert case.message in match["message"], stderr
    # The source line and a caret under the reported column.
    assert len(lines) >= 3, stderr
    source_lines = case.source.decode("utf-8", "replace").replace("\x00", " ").split("\n")
    if case.source and b"\x00" not in case.source and b"\xff" not in case.source:
        assert lines[1] == source_lines[case.line - 1]
    caret = lines[2]
    assert caret.strip().startswith("^")
    if lines[1].isprintable():  # (escaped bytes are printed wider than one column)
        assert len(caret) - len(caret.lstrip()) == int(match["col"]) - 1


def test_stdin_is_named_and_located() -> None:
    source = GOOD.replace("step.add %xw", "step.addd %xw")
    result = stepc("opt", "-", stdin=source.encode())
    assert result.returncode == 1
    assert result.stderr.decode().startswith("<stdin>:5:")


def test_compile_reports_the_same_location() -> None:
    source = GOOD.replace("#step.sgd<lr = 0.1>", "#step.sgd<lr = -1.0>")
    result = stepc("compile", "-", "--emit", "step", stdin=source.encode())
    assert result.returncode == 1
    assert re.match(r"<stdin>:3:\d+: error: invalid SGD lr", result.stderr.decode())


def test_debug_shows_the_traceback() -> None:
    result = stepc("--debug", "opt", "-", stdin=b"")
    assert result.returncode == 1
    assert "Traceback" in result.stderr.decode()
