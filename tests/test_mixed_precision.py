"""Mixed precision: an output's rounding-error bound carries the roundings of every op on its
data path, so an f64 parameter whose gradient is computed by f32 ops is bounded at f32's scale
(the redesign's defect 1: the lowering contract held such outputs to f64 tolerance)."""

from __future__ import annotations

import numpy as np

import stepc
from stepc.check.contract import bounded_program, random_inputs
from stepc.ir.parse import load_text
from stepc.ir.program import step_function
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


def relative_bounds(text: str) -> dict[str, float]:
    """Each output's median bound relative to its value, after the whole pipeline."""
    module = load_text(text, "mixed.ir")
    Pipeline.default(check=False, lower=False).run(module)
    inputs = random_inputs(step_function(module), np.random.default_rng(0))
    out: dict[str, float] = {}
    for key, bounded in bounded_program(module, inputs).items():
        scale = np.abs(bounded.value) + 1e-30
        out[key] = float(np.median(bounded.bound() / scale))
    return out


def test_an_f64_output_computed_through_f32_ops_is_bounded_at_f32_scale() -> None:
    bounds = relative_bounds(MIXED)
    for key in ("s64", "momentum.s64", "w", "loss"):
        assert bounds[key] > 1e-8, (key, bounds[key])  # f32 roundings (u = 6e-8) on the path


def test_a_pure_f64_path_is_bounded_at_f64_scale() -> None:
    """With no f32 op anywhere, every output's bound is at float64's scale."""
    pure = MIXED.replace("f32", "f64").replace("%s = step.convert %s64 : tensor<8xf64> -> tensor<8xf64>",
                                               "%s = step.neg %s64 : tensor<8xf64>")  # fmt: skip
    for key, bound in relative_bounds(pure).items():
        assert bound < 1e-12, (key, bound)


def test_mixed_precision_program_compiles_with_every_contract_and_matches_numpy() -> None:
    prog = stepc.compile_text(MIXED, trials=3)
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
