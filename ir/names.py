"""Value names are kept whole.

The spec promises that value names are kept: `%w_1` keys the inputs, outputs and `.npz` members
as `w_1`. xDSL's `SSAValue.name_hint` setter drops a trailing `_N` (it reads `%w_1` as a second
`%w`, the suffix being its printer's way to tell equal hints apart), and every xDSL clone and
rewrite copies names through that setter. So stepc makes the setter keep the name whole
(`keep_whole_names`, applied when `stepc.ir` is imported), and prints with `NamingPrinter`, whose
suffixes never produce a name that some other value holds: `%x`, `%x` and `%x_1` print as `%x`,
`%x_2` and `%x_1`, and the text reads back to the same values.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from io import StringIO
from typing import cast

from xdsl.dialects.builtin import TensorType
from xdsl.ir import Attribute, Operation, SSAValue
from xdsl.printer import Printer

_VALID_NAME = re.compile(r"[A-Za-z_$.-][\w$.-]*")


def _whole_name(cls: type[SSAValue], name: str | None) -> str | None:  # pyright: ignore[reportUnusedParameter]
    if name is None:
        return None
    if _VALID_NAME.fullmatch(name) is None:
        raise ValueError(
            f"Invalid {cls.__name__} name format `{name}`.",
            r"Make sure names contain only characters of [A-Za-z0-9_$.-] and don't start with a number.",
        )
    return name


def keep_whole_names() -> None:
    """SSA values keep their names whole, a trailing `_N` included (blocks are unchanged)."""
    SSAValue.extract_valid_name = classmethod(_whole_name)  # type: ignore[method-assign, assignment]


def _hints(op: Operation) -> Iterator[str]:
    for inner in op.walk():
        for result in inner.results:
            if result.name_hint is not None:
                yield result.name_hint
        for region in inner.regions:
            for block in region.blocks:
                for arg in block.args:
                    if arg.name_hint is not None:
                        yield arg.name_hint


_TYPE_TEXT: dict[Attribute, str] = {}
_TYPE_TEXT_SIZE = 4096


class NamingPrinter(Printer):
    """xDSL's printer whose names are unique in their scope although hints may end in `_N`:
    a value whose hint is already printed gets the first `HINT_K` that no value holds."""

    _taken: list[set[str]]  # per scope, as xDSL's own `_ssa_names`
    _hinted: set[str]

    def print_attribute(self, attribute: Attribute) -> None:
        """A tensor type from a cache of its text: a program repeats a few types thousands of
        times, and printing them is most of the time of printing a program."""
        if isinstance(attribute, TensorType):
            text = _TYPE_TEXT.get(cast(Attribute, attribute))
            if text is None:
                out = StringIO()
                Printer(stream=out).print_attribute(cast(Attribute, attribute))
                text = out.getvalue()
                if len(_TYPE_TEXT) >= _TYPE_TEXT_SIZE:
                    _TYPE_TEXT.clear()
                _TYPE_TEXT[cast(Attribute, attribute)] = text
            self.print_string(text)
            return
        super().print_attribute(attribute)

    def print_op(self, op: Operation) -> None:
        if not hasattr(self, "_hinted"):
            self._taken = [set()]
            self._hinted = set(_hints(op))
        super().print_op(op)

    def enter_scope(self) -> None:
        super().enter_scope()
        self._taken.append(set(self._taken[-1]))

    def exit_scope(self) -> None:
        super().exit_scope()
        self._taken.pop()

    def print_ssa_value(self, value: SSAValue) -> str:
        if value in self._ssa_values or not value.name_hint or not hasattr(self, "_hinted"):
            return super().print_ssa_value(value)
        hint, taken = value.name_hint, self._taken[-1]
        name, index = hint, self.ssa_names.get(hint, 0)
        if name in taken:
            index = max(index, 1)
            while f"{hint}_{index}" in taken or f"{hint}_{index}" in self._hinted:
                index += 1
            name = f"{hint}_{index}"
        self.ssa_names[hint] = index + 1
        taken.add(name)
        self._ssa_values[value] = name
        self.print_string(f"%{name}")
        return name
