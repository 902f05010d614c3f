"""Printing programs as text: the step dialect as users write it."""

from __future__ import annotations

from io import StringIO

from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation

from stepc.ir.names import NamingPrinter


def op_text(op: Operation) -> str:
    out = StringIO()
    NamingPrinter(stream=out).print_op(op)
    return out.getvalue()


def program_text(module: ModuleOp) -> str:
    """The module's ops at top level (no `builtin.module` wrapper), as a user's file is written."""
    if module.attributes or module.sym_name is not None:
        return op_text(module) + "\n"
    return "\n".join(op_text(op) for op in module.ops) + "\n"
