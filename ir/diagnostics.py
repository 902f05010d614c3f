"""Located errors: `FILE:LINE:COL: error: MESSAGE`, the source line and a caret.

Every error a user can cause is a `StepcError` carrying a `SourceLoc`. The text of each
parsed file is remembered here, so that an error found much later (by a verifier or a pass)
still shows the line it points at.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.dialects.builtin import FileLineColLoc, IntAttr, StringAttr
from xdsl.ir import Attribute, Operation

_SOURCES: dict[str, str] = {}


def remember_source(name: str, text: str) -> None:
    _SOURCES[name] = text


@dataclass(frozen=True)
class SourceLoc:
    file: str
    line: int
    col: int
    length: int = 1

    def to_attr(self) -> FileLineColLoc:
        return FileLineColLoc(StringAttr(self.file), IntAttr(self.line), IntAttr(self.col))

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


def _token_length(attr: FileLineColLoc) -> int:
    """The length of the token at a location, for the caret line (`^~~~`)."""
    text = _SOURCES.get(attr.filename.data)
    if text is None:
        return 1
    lines = text.split("\n")
    if not 1 <= attr.line.data <= len(lines):
        return 1
    rest = lines[attr.line.data - 1][attr.column.data - 1 :]
    n = 0
    while n < len(rest) and (rest[n].isalnum() or rest[n] in "%_.$-#"):
        n += 1
    return max(1, n)


class StepcError(Exception):
    """An error the user caused, with the place in their file it is about."""

    def __init__(self, message: str, loc: SourceLoc | None = None, notes: tuple[str, ...] = ()):
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


def error_at(op: Operation | None, message: str) -> StepcError:
    return StepcError(message, location_of(op))


def render(message: str, loc: SourceLoc | None, notes: tuple[str, ...] = ()) -> str:
    message = _printable(message)
    if loc is None:
        out = f"stepc: error: {message}"
    else:
        out = f"{_printable(loc.file)}:{loc.line}:{loc.col}: error: {message}"
        text = _SOURCES.get(loc.file)
        if text is not None:
            lines = text.split("\n")
            if 1 <= loc.line <= len(lines):
                line = _printable(lines[loc.line - 1].rstrip("\r"))
                prefix = "".join(c if c == "\t" else " " for c in line[: loc.col - 1])
                out += f"\n{line}\n{prefix}^" + "~" * max(0, min(loc.length, len(line) - loc.col + 1) - 1)
    for note in notes:
        out += f"\nnote: {_printable(note)}"
    return out


def _printable(text: str) -> str:
    """Control characters (from binary garbage, say) shown escaped, never sent to the terminal."""
    return "".join(c if c.isprintable() or c in "\t\n" else repr(c)[1:-1] for c in text)
