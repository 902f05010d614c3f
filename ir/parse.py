"""Reading a step program: parse with source locations, then verify with located errors."""

from __future__ import annotations

from pathlib import Path

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import Builtin, ModuleOp
from xdsl.ir import Operation
from xdsl.parser import Parser
from xdsl.utils.exceptions import ParseError, VerifyException
from xdsl.utils.lexer import Span

from stepc.ir.dialect import Step
from stepc.ir.diagnostics import SourceLoc, StepcError, location_of, remember_source
from stepc.ir.program import step_function, verify_step_function

# Programs beyond this size are refused before parsing (a configurable guard against hostile input).
MAX_SOURCE_BYTES = 64 * 1024 * 1024


def make_context() -> Context:
    ctx = Context()
    ctx.load_dialect(Builtin)
    ctx.load_dialect(func.Func)
    ctx.load_dialect(Step)
    return ctx


class LocatedParser(Parser):
    """xDSL's parser, keeping every op's and every block argument's `file:line:col`."""

    def __init__(self, ctx: Context, text: str, name: str):
        super().__init__(ctx, text, name)
        self._file = name
        self._text = text
        self._arg_spans: list[Span] = []

    def _loc(self, span: Span) -> SourceLoc:
        return SourceLoc.from_offset(self._file, self._text, span.start, span.end - span.start)

    def parse_operation(self) -> Operation:
        start = self._current_token.span
        first_arg = len(self._arg_spans)
        op = super().parse_operation()
        if SourceLoc.from_attr(op.location) is None:
            op.location = self._loc(start).to_attr()
        if isinstance(op, func.FuncOp) and op.body.blocks:
            spans = self._arg_spans[first_arg:]
            for arg, span in zip(op.body.blocks.first.args, spans):
                arg.location = self._loc(span).to_attr()
        return op

    def parse_optional_argument(self, expect_type: bool = True):  # type: ignore[override]
        token = self._current_token
        arg = super().parse_optional_argument(expect_type)
        if arg is not None:
            self._arg_spans.append(token.span)
        return arg


def parse_text(text: str, name: str = "<stdin>") -> ModuleOp:
    """Parse a program; a syntax error becomes a located `StepcError`."""
    remember_source(name, text)
    if not text.strip() or all(line.strip().startswith("//") or not line.strip() for line in text.splitlines()):
        raise StepcError("the file holds no program (expected a func.func)", SourceLoc(name, 1, 1))
    parser = LocatedParser(make_context(), text, name)
    try:
        return parser.parse_module()
    except ParseError as e:
        loc = SourceLoc.from_offset(name, text, e.span.start, e.span.end - e.span.start)
        raise StepcError(_clean_parse_message(e.msg), loc) from None


def _clean_parse_message(msg: str) -> str:
    msg = msg.strip()
    if msg.startswith("Operation ") and msg.endswith(" is not registered"):
        name = msg[len("Operation ") : -len(" is not registered")]
        return f"unknown operation '{name}'"
    if msg.startswith("values used but not defined"):
        return "use of undefined value" + msg[len("values used but not defined") :]
    return msg


def verify(module: ModuleOp) -> None:
    """Verify every op, innermost first, reporting the first failure at its op."""
    for op in _postorder(module):
        try:
            op.verify(verify_nested_ops=False)
        except VerifyException as e:
            raise StepcError(_clean_verify_message(op, str(e)), location_of(op)) from None


def _postorder(op: Operation):
    for region in op.regions:
        for block in region.blocks:
            for inner in block.ops:
                yield from _postorder(inner)
    yield op


def _clean_verify_message(op: Operation, msg: str) -> str:
    msg = msg.strip().splitlines()[0] if msg.strip() else f"{op.name} is invalid"
    if not msg.startswith(op.name) and not msg.startswith("step."):
        msg = f"{op.name}: {msg}"
    return msg


def load_text(text: str, name: str) -> ModuleOp:
    """Parse and verify a program as a user wrote it (all the function-level rules too)."""
    module = parse_text(text, name)
    verify(module)
    verify_step_function(step_function(module))
    return module


def read_source(path: str | Path) -> tuple[str, str]:
    """The text and display name of a program file (`-` is stdin); bad bytes are located errors."""
    import sys

    name = str(path)
    if name == "-":
        data = sys.stdin.buffer.read()
        name = "<stdin>"
    else:
        p = Path(path)
        if not p.exists():
            raise StepcError(f"no such file: {name}")
        if p.is_dir():
            raise StepcError(f"{name} is a directory, expected a .ir file")
        if p.stat().st_size > MAX_SOURCE_BYTES:
            raise StepcError(f"{name} is {p.stat().st_size} bytes, over the {MAX_SOURCE_BYTES}-byte limit for a program")
        data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        prefix = data[: e.start].decode("utf-8", "replace")
        remember_source(name, data.decode("utf-8", "replace"))
        raise StepcError(
            f"the file is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})",
            SourceLoc.from_offset(name, prefix, len(prefix)),
        ) from None
    if "\x00" in text:
        remember_source(name, text.replace("\x00", " "))
        raise StepcError(
            "the file holds NUL bytes: it is binary, not a program",
            SourceLoc.from_offset(name, text, text.index("\x00")),
        )
    return text, name


def load(path: str | Path) -> ModuleOp:
    text, name = read_source(path)
    return load_text(text, name)
