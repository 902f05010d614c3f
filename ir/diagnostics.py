"""Located errors: `FILE:LINE:COL: error: MESSAGE`, the source line and a caret.

Every error a user can cause is a `StepcError` carrying a `SourceLoc`. The text of each
parsed file is remembered here, so that an error found much later (by a verifier or a pass)
still shows the line it points at.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from weakref import WeakKeyDictionary

from xdsl.dialects.builtin import FileLineColLoc, IntAttr, StringAttr
from xdsl.ir import Attribute, Operation

_SOURCES: dict[str, str] = {}
# Where the parts of an op were written (a function's result types, its `step.sgd` entry),
# for errors about a part rather than the whole op. Kept beside the IR, not in it, so that
# printing a program is unchanged.
_PARTS: WeakKeyDictionary[Operation, dict[str, SourceLoc]] = WeakKeyDictionary()


_LINES: dict[str, list[str]] = {}


def remember_source(name: str, text: str) -> None:
    _SOURCES[name] = text
    _LINES.pop(name, None)


def _lines(name: str) -> list[str]:
    """The lines of a remembered file, split once (locations are looked up per op)."""
    if name not in _LINES:
        text = _SOURCES.get(name)
        _LINES[name] = [] if text is None else text.split("\n")
    return _LINES[name]


@dataclass(frozen=True)
class SourceLoc:
    file: str
    line: int
    col: int
    length: int = 1

    def to_attr(self) -> FileLineColLoc:
        return _loc_attr(self.file, self.line, self.col)

    @staticmethod
    def from_attr(attr: Attribute) -> SourceLoc | None:
        if isinstance(attr, FileLineColLoc):
            return SourceLoc(attr.filename.data, attr.line.data, attr.column.data, _token_length(attr))
        return None

    @staticmethod
    def from_offset(file: str, text: str, offset: int, length: int = 1) -> SourceLoc:
        offset = max(0, min(offset, len(text)))
        line = text.count("\n", 0, offset) + 1
        col = offset - (text.rfind("\n", 0, offset) + 1) + 1
        return SourceLoc(file, line, col, max(1, length))


@lru_cache(maxsize=1 << 16)
def _loc_attr(file: str, line: int, col: int) -> FileLineColLoc:
    return FileLineColLoc(_file_attr(file), IntAttr(line), IntAttr(col))


@lru_cache(maxsize=256)
def _file_attr(file: str) -> StringAttr:
    return StringAttr(file)


def _token_length(attr: FileLineColLoc) -> int:
    """The length of the token at a location, for the caret line (`^~~~`)."""
    lines = _lines(attr.filename.data)
    if not 1 <= attr.line.data <= len(lines):
        return 1
    rest = lines[attr.line.data - 1][attr.column.data - 1 :]
    n = 0
    while n < len(rest) and (rest[n].isalnum() or rest[n] in "%_.$-#"):
        n += 1
    return max(1, n)


def _with_angle_brackets(rest: str, length: int) -> int:
    """`length`, or up to the matching `>` when the marked word opens one (`tensor<8x3xf32>`,
    `#step.sgd<lr = 0.1>`): the caret then spans the whole type or attribute."""
    if length < 1 or rest[length : length + 1] != "<":
        return length
    depth = 0
    for i in range(length, len(rest)):
        depth += {"<": 1, ">": -1}.get(rest[i], 0)
        if depth == 0:
            return i + 1
    return length


@dataclass(frozen=True)
class Note:
    """A note that points at a second place, as MLIR's `FILE:LINE:COL: note:` (the use of a value
    whose definition the error is about, say)."""

    message: str
    loc: SourceLoc | None = None


class StepcError(Exception):
    """An error the user caused, with the place in their file it is about."""

    def __init__(self, message: str, loc: SourceLoc | None = None, notes: tuple[str | Note, ...] = ()):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.notes = notes

    def render(self) -> str:
        return render(self.message, self.loc, self.notes)


def location_of(op: Operation | None) -> SourceLoc | None:
    """The source location of an op, walking up to its parents when it has none."""
    while op is not None:
        loc = SourceLoc.from_attr(op.location)
        if loc is not None:
            return loc
        op = op.parent_op()
    return None


def remember_part(op: Operation, part: str, loc: SourceLoc) -> None:
    _PARTS.setdefault(op, {})[part] = loc


def part_location(op: Operation, part: str) -> SourceLoc | None:
    """Where a part of `op` was written (`"results"`, `"step.sgd"`), else where `op` was."""
    return _PARTS.get(op, {}).get(part) or location_of(op)


def error_at(op: Operation | None, message: str) -> StepcError:
    return StepcError(message, location_of(op))


def render(message: str, loc: SourceLoc | None, notes: tuple[str | Note, ...] = ()) -> str:
    """The error as the user sees it: `FILE:LINE:COL: error: MESSAGE`, the source line and a
    caret; then each note, with its own line and caret when it has a place."""
    out = _located("error", message, loc)
    for note in notes:
        if isinstance(note, Note):
            out += "\n" + _located("note", note.message, note.loc)
        else:
            out += f"\nnote: {_printable(note)}"
    return out


def _located(severity: str, message: str, loc: SourceLoc | None) -> str:
    """One diagnostic: its header, then the source line it points at with a caret under it."""
    message = _printable(message)
    if loc is None:
        return f"stepc: {severity}: {message}"
    out = f"{_printable(loc.file)}:{loc.line}:{loc.col}: {severity}: {message}"
    lines = _lines(loc.file)
    if 1 <= loc.line <= len(lines):
        raw = lines[loc.line - 1].rstrip("\r")
        # The caret under the printed form of the column (escaped bytes are wider).
        prefix = "".join(c if c == "\t" else " " for c in _printable(raw[: loc.col - 1]))
        length = _with_angle_brackets(raw[loc.col - 1 :], loc.length)
        out += f"\n{_printable(raw)}\n{prefix}^" + "~" * max(0, min(length, len(raw) - loc.col + 1) - 1)
    return out


def _printable(text: str) -> str:
    """Control characters (from binary garbage, say) shown escaped, never sent to the terminal."""
    return "".join(c if c.isprintable() or c in "\t\n" else repr(c)[1:-1] for c in text)
