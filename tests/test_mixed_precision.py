"""Mixed precision: each contract compares an output at the tolerance of the least precise type on
its data path, so an f64 parameter whose gradient is computed by f32 ops is checked as f32."""

from __future__ import annotations

import numpy as np

import stepc
from stepc.check.contract import path_precisions
from stepc.ir.parse import load_text
from stepc.pipeline import Pipeline

# %s64 is an f64 parameter scaled into an f32 graph: its gradient, update and momentum are f64
# values computed through f32 ops (the defect: the lowering contract held them to 1e-11).
MIXED = """func.func @mixed(%w: tensor<16x8xf32> {step.param}, %s64: tensor<8xf64> {step.param},
                   %x: tensor<32x16xf32>, %t: tensor<32x8xf32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1, momentum = 0.9>} {
  %s = step.convert %s64 : tensor<8xf64> -> tensor<8xf32>
  %h = step.matmul %x, %w : (tensor<32x16xf32>, tensor<16x8xf32>) -> tensor<32x8xf32>
  %y = step.mul %h, %s : (tensor<32x8xf32>, tensor<8xf32>) -> tensor<32x8xf32>
  %loss = step.mse %y, %t : (tensor<32x8xf32>, tensor<32x8xf32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}
"""


def test_path_precision_follows_the_f32_ops() -> None:
    module = load_text(MIXED, "mixed.ir")
    Pipeline.default(check=False).run(module)
    precisions = {key: dtype.name for key, dtype in path_precisions(module).items()}
    assert precisions == {"w": "float32", "s64": "float32", "momentum.w": "float32", "momentum.s64": "float32",
                          "loss": "float32"}


def test_path_precision_keeps_a_pure_f64_path() -> None:
    """With no f32 op anywhere, every output is checked at f64 tolerance."""
    module = load_text(MIXED.replace("f32", "f64").replace("%s = step.convert %s64 : tensor<8xf64> -> tensor<8xf64>",
                                                           "%s = step.neg %s64 : tensor<8xf64>"), "pure.ir")
    Pipeline.default(check=False).run(module)
    assert {dtype.name for dtype in path_precisions(module).values()} == {"float64"}


def test_mixed_precision_program_compiles_with_every_contract_and_matches_numpy() -> None:
    prog = stepc.compile(MIXED, trials=3)
    rng = np.random.default_rng(0)
    params = {"w": (rng.standard_normal((16, 8)) / 4).astype(np.float32), "s64": rng.standard_normal(8)}
    batch = {"x": rng.standard_normal((32, 16)).astype(np.float32), "t": rng.standard_normal((32, 8)).astype(np.float32)}
    new, state, loss = prog.step(params, prog.init_state(params), batch)
    # Oracle: the same step in float64 NumPy (mse gradient by hand), first SGD step with momentum.
    x, t, w, s = (batch["x"].astype(np.float64), batch["t"].astype(np.float64), params["w"].astype(np.float64),
                  params["s64"])
    h = x @ w
    y = h * s
    dy = 2.0 * (y - t) / y.size
    grad_s = (dy * h).sum(axis=0)
    grad_w = x.T @ (dy * s)
    np.testing.assert_allclose(float(loss), float(np.mean((y - t) ** 2)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(new["s64"]), s - 0.1 * grad_s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(new["w"]), w - 0.1 * grad_w, rtol=1e-5, atol=1e-6)
    assert np.asarray(new["s64"]).dtype == np.float64 and np.asarray(state["momentum.s64"]).dtype == np.float64
