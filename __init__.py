"""stepc: a compiler for machine-learning training steps.

    import stepc
    prog = stepc.compile("examples/mlp_digits.ir")
    params, state, loss = prog.step(params, state, batch)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from stepc.api import Program


def compile(source: str, **options: Any) -> Program:
    """Compile a step program (a path, or IR text) through the default pipeline."""
    from stepc.api import compile as _compile

    return _compile(source, **options)


__all__ = ["__version__", "compile"]
