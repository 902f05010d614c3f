"""stepc: a compiler for machine-learning training steps.

    import stepc
    prog = stepc.compile("examples/mlp_digits.ir")      # a path; stepc.compile_text(text) for a string
    params, state, loss = prog.step(params, state, batch)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from stepc.api import Program


def compile(path: str | os.PathLike[str], **options: Any) -> Program:
    """Compile the step program in the file at `path` through the default pipeline
    (`stepc.api.compile`); for a program held in a string, `compile_text`."""
    from stepc.api import compile as _compile

    return _compile(path, **options)


def compile_text(text: str, **options: Any) -> Program:
    """Compile a step program given as text (`stepc.api.compile_text`; `filename=` names it in errors)."""
    from stepc.api import compile_text as _compile_text

    return _compile_text(text, **options)


def __getattr__(name: str) -> Any:
    """The importers, loaded when first asked for (torch is needed only by `from_torch`):
    `stepc.from_torch(model, loss_fn, batch, optimizer)` (`stepc.frontends.torch`) and
    `stepc.from_jax(loss_fn, params, batch, optimizer_attribute_text)` (`stepc.frontends.jax`)."""
    if name == "from_torch":
        try:
            from stepc.frontends.torch import from_torch
        except ModuleNotFoundError as error:
            if error.name == "torch":
                raise ModuleNotFoundError("stepc.from_torch needs PyTorch: pip install 'stepc[torch]'", name="torch") from None
            raise
        return from_torch
    if name == "from_jax":
        from stepc.frontends.jax import from_jax

        return from_jax
    raise AttributeError(f"module 'stepc' has no attribute {name!r}")


__all__ = ["__version__", "compile", "compile_text", "from_jax", "from_torch"]
