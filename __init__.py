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


def from_torch(model: Any, loss_fn: Any, batch: Any, optimizer: Any, **options: Any) -> Any:
    """Import a PyTorch module, its loss and its optimizer as a checked step program
    (`stepc.frontends.torch.from_torch`; needs torch, the `torch` extra)."""
    try:
        from stepc.frontends.torch import from_torch as _from_torch
    except ModuleNotFoundError as error:
        if error.name == "torch":
            raise ModuleNotFoundError("stepc.from_torch needs PyTorch: pip install 'stepc[torch]'", name="torch") from None
        raise

    return _from_torch(model, loss_fn, batch, optimizer, **options)


def from_jax(loss_fn: Any, params: Any, batch: Any, optimizer: str, **options: Any) -> Any:
    """Import a JAX loss `loss_fn(params, batch)` (its jaxpr) and an optimizer attribute's text
    as a checked step program (`stepc.frontends.jax.from_jax`)."""
    from stepc.frontends.jax import from_jax as _from_jax

    return _from_jax(loss_fn, params, batch, optimizer, **options)


__all__ = ["__version__", "compile", "compile_text", "from_jax", "from_torch"]
