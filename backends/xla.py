"""The XLA text path: compile the printed StableHLO module as it is, and run it.

This is the check that the text `stepc compile` writes is what XLA compiles: it goes through
XLA's own MLIR parser (`compile_and_load` takes the text), not through JAX tracing. Tests run
it against the JAX function of the same module (`backends/jax.py`).

    exe = XlaExecutable.from_module(module)   # a lowered module; or from_text(text, arg_names, output_names)
    outputs = exe({"w": w, "x": x})           # dict in, dict out
    exe.cost_analysis()["flops"]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax._src.interpreters import mlir
from jax.extend.backend import get_backend
from jaxlib import xla_client
from jaxlib.mlir import ir
from xdsl.dialects.builtin import ModuleOp

from stepc.ir.diagnostics import StepcError
from stepc.ir.program import args, output_names, step_function
from stepc.ir.stablehlo import module_text


def compile_text(text: str) -> Any:
    """An XLA LoadedExecutable from MLIR text, on the first device of the default backend."""
    backend = get_backend()
    try:
        return backend.compile_and_load(text, backend.devices()[:1], xla_client.CompileOptions())
    except Exception as e:  # XLA's parser or verifier refused the text: a stepc bug, said plainly
        raise StepcError(f"XLA did not compile the StableHLO text: {str(e).strip().splitlines()[0]}") from e


def parse_with_jax_mlir(text: str) -> None:
    """Parse (and verify) the text with JAX's MLIR bindings and the StableHLO dialect loaded."""
    with mlir.make_ir_context():
        module = ir.Module.parse(text)
        if not module.operation.verify():
            raise StepcError("the StableHLO module does not verify under JAX's MLIR")


@dataclass
class XlaExecutable:
    """A compiled module with the names of its arguments and results."""

    executable: Any
    arg_names: list[str]
    output_names: list[str]
    text: str

    @staticmethod
    def from_text(text: str, arg_names: Sequence[str], output_names: Sequence[str]) -> XlaExecutable:
        return XlaExecutable(compile_text(text), list(arg_names), list(output_names), text)

    @staticmethod
    def from_module(module: ModuleOp) -> XlaExecutable:
        """Print a lowered module and compile the text."""
        fn = step_function(module)
        return XlaExecutable.from_text(module_text(module), [a.name for a in args(fn)], output_names(fn))

    def run(self, *arrays: Any) -> tuple[np.ndarray, ...]:
        device = self.executable.local_devices()[0]
        with jax.enable_x64(True):  # the arrays keep their dtypes (f64 stays f64)
            buffers = [jax.device_put(np.asarray(a), device) for a in arrays]
            return tuple(np.asarray(out) for out in self.executable.execute(buffers))

    def __call__(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        missing = [n for n in self.arg_names if n not in inputs]
        if missing:
            raise StepcError(f"inputs: missing {', '.join(repr(n) for n in missing)}")
        outputs = self.run(*(inputs[n] for n in self.arg_names))
        return dict(zip(self.output_names, outputs))

    def cost_analysis(self) -> dict[str, float]:
        cost = self.executable.cost_analysis()
        return dict(cost[0] if isinstance(cost, (list, tuple)) else cost)
