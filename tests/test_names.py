"""Value names are kept whole (the spec: they key the inputs and outputs everywhere), a trailing
`_N` included, through parsing, every pass, the dumps and the API; and printed text never gives
two values one name."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

import stepc
from stepc.ir.parse import parse_text
from stepc.ir.printing import program_text
from stepc.pipeline import Pipeline

PROGRAM = """
func.func @step(%w_1: tensor<4x1xf32> {step.param}, %b_0: tensor<1xf32> {step.param}, %w: tensor<4x1xf32> {step.param},
                %x: tensor<8x4xf32>, %y_2: tensor<8x1xf32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1, momentum = 0.9>} {
  %h = step.matmul %x, %w_1 : (tensor<8x4xf32>, tensor<4x1xf32>) -> tensor<8x1xf32>
  %h_1 = step.add %h, %b_0 : (tensor<8x1xf32>, tensor<1xf32>) -> tensor<8x1xf32>
  %g = step.matmul %x, %w : (tensor<8x4xf32>, tensor<4x1xf32>) -> tensor<8x1xf32>
  %h_2 = step.add %h_1, %g : (tensor<8x1xf32>, tensor<8x1xf32>) -> tensor<8x1xf32>
  %loss = step.mse %h_2, %y_2 : (tensor<8x1xf32>, tensor<8x1xf32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}
"""


def test_names_with_a_trailing_number_key_everything() -> None:
    prog = stepc.compile_text(PROGRAM, filename="names.ir")  # contracts on
    assert prog.param_names() == ["w_1", "b_0", "w"]
    assert prog.input_names() == ["x", "y_2"]
    assert prog.state_keys() == ["momentum.w_1", "momentum.b_0", "momentum.w"]
    rng = np.random.default_rng(0)
    params = {"w_1": rng.normal(size=(4, 1)), "b_0": rng.normal(size=(1,)), "w": rng.normal(size=(4, 1))}
    params = {k: v.astype(np.float32) for k, v in params.items()}
    batch = {"x": rng.normal(size=(8, 4)).astype(np.float32), "y_2": rng.normal(size=(8, 1)).astype(np.float32)}
    _, grads = prog.grad(params, batch)

    def loss(p: dict[str, jax.Array]) -> jax.Array:  # the oracle, by hand
        out = batch["x"] @ p["w_1"] + p["b_0"] + batch["x"] @ p["w"]
        return ((out - batch["y_2"]) ** 2).mean()

    expected = jax.grad(loss)(params)
    assert set(grads) == {"w_1", "b_0", "w"}
    for key in grads:
        np.testing.assert_allclose(np.asarray(grads[key]), np.asarray(expected[key]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stage", ["differentiate", "seed-scalar-loss", "fuse-sgd", "lower-to-stablehlo"])
def test_printed_stages_read_back_with_the_same_names(stage: str) -> None:
    """Every dump reads back, and the text names each value once (`%h` twice as a hint and a
    `%h_1` of the user's print as distinct names)."""
    module = parse_text(PROGRAM, "names.ir")
    Pipeline(check=False).until(stage).run(module)  # in place
    text = program_text(module)
    if stage != "lower-to-stablehlo":  # (the lowered text is XLA's to read: tests/test_lowering.py)
        assert program_text(parse_text(text, "dump.mlir")) == text
    for name in ("%w_1", "%b_0", "%w", "%y_2"):
        assert f"{name}:" in text or f"{name} " in text
    defined = re.findall(r"^\s*(%[\w$.-]+) = ", text, re.MULTILINE)
    assert len(defined) > 5
    assert len(defined) == len(set(defined))
