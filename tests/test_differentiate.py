"""`differentiate` and `seed-scalar-loss`: the function form after each, symbolic and explicit
zeros, located errors, and the contracts on hand-broken programs."""

from __future__ import annotations

import numpy as np
import pytest

from stepc.check import contract_for
from stepc.check.cleanup import IdentityContract
from stepc.check.differentiate import VJPContract, numpy_forward_mode
from stepc.check.seed_scalar_loss import SeedContract
from stepc.ir.diagnostics import StepcError
from stepc.ir.interpreter import run_function
from stepc.ir.parse import load_text, parse_text, verify
from stepc.ir.program import args, output_names, step_function
from stepc.passes import vjp
from stepc.passes.differentiate import Differentiate
from stepc.passes.seed_scalar_loss import SeedScalarLoss
from stepc.pipeline import Pipeline

PROGRAM = """\
func.func @f(%w: tensor<3x2xf32> {step.param}, %b: tensor<2xf32> {step.param = #step.sgd<weight_decay = 0.0>},
             %unused: tensor<4xf32> {step.param}, %x: tensor<5x3xf32>, %labels: tensor<5xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1, weight_decay = 0.01>} {
  %h = step.matmul %x, %w : (tensor<5x3xf32>, tensor<3x2xf32>) -> tensor<5x2xf32>
  %logits = step.add %h, %b : (tensor<5x2xf32>, tensor<2xf32>) -> tensor<5x2xf32>
  %loss = step.cross_entropy %logits, %labels : (tensor<5x2xf32>, tensor<5xi32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}
"""


def run(text: str, passes: str, check: bool = True):  # type: ignore[no-untyped-def]
    module = load_text(text, "f.ir")
    Pipeline.parse(passes, check=check).run(module)
    return module


def test_function_form_after_differentiate() -> None:
    module = run(PROGRAM, "differentiate")
    fn = step_function(module)
    roles = [(a.name, a.role) for a in args(fn)]
    assert roles[-1] == ("loss_cotangent", "cotangent")
    assert [r for _, r in roles[:-1]] == ["param", "param", "param", "input", "input"]
    assert output_names(fn) == ["loss", "grad.w", "grad.b", "grad.unused"]
    assert fn.function_type.inputs.data[-1] == fn.function_type.outputs.data[0]  # the loss's type
    assert "step.sgd" in fn.attributes
    assert str(args(fn)[1].attrs) == "{step.param = #step.sgd<weight_decay = 0.0>}"


def test_gradients_against_numpy_formula() -> None:
    module = run(PROGRAM, "differentiate,cse,dce,seed-scalar-loss")
    rng = np.random.default_rng(0)
    inputs = {"w": rng.standard_normal((3, 2)), "b": rng.standard_normal(2), "unused": rng.standard_normal(4),
              "x": rng.standard_normal((5, 3)), "labels": np.array([0, 1, 1, 0, 1], np.int32)}  # fmt: skip
    out = run_function(module, inputs)
    logits = inputs["x"] @ inputs["w"] + inputs["b"]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d = (p - np.eye(2)[inputs["labels"]]) / 5
    np.testing.assert_allclose(out["grad.w"], inputs["x"].T @ d, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["grad.b"], d.sum(0), rtol=1e-5, atol=1e-6)
    assert np.all(out["grad.unused"] == 0) and out["grad.unused"].dtype == np.float32


def test_no_cotangent_flows_into_labels_or_inputs() -> None:
    text = run(PROGRAM, "differentiate,cse,dce", check=False)
    from stepc.ir.printing import program_text

    dump = program_text(text)
    assert "x_cotangent" not in dump and "labels_cotangent" not in dump


def test_op_without_a_rule_is_a_located_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from stepc.ir.dialect import CrossEntropyOp

    monkeypatch.delitem(vjp.VJP_RULES, CrossEntropyOp)
    with pytest.raises(StepcError) as e:
        run(PROGRAM, "differentiate", check=False)
    assert "no derivative rule for 'step.cross_entropy'" in e.value.message
    assert e.value.loc is not None and (e.value.loc.line, e.value.loc.col) == (6, 3)


def test_unreached_op_needs_no_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    from stepc.ir.dialect import ExpOp

    monkeypatch.delitem(vjp.VJP_RULES, ExpOp)
    text = PROGRAM.replace("  %loss =", "  %dead = step.exp %h : tensor<5x2xf32>\n  %loss =")
    run(text, "differentiate", check=False)


def test_seed_requires_a_scalar_loss() -> None:
    text = """\
func.func @g(%w: tensor<3xf32> {step.param}) -> tensor<3xf32> attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %y = step.exp %w : tensor<3xf32>
  func.return %y : tensor<3xf32>
}
"""
    module = parse_text(text, "g.ir")
    verify(module)
    Pipeline.parse("differentiate", check=True).run(module)  # a vector output differentiates fine
    with pytest.raises(StepcError) as e:
        Pipeline.parse("seed-scalar-loss", check=False).run(module)
    assert "rank-0 float loss" in e.value.message and e.value.loc is not None and e.value.loc.line == 2


def test_seed_needs_differentiate_first() -> None:
    with pytest.raises(StepcError, match="run differentiate first"):
        run(PROGRAM, "seed-scalar-loss", check=False)


def test_contracts_are_declared_once_per_pass() -> None:
    assert isinstance(contract_for(Differentiate.name), VJPContract)
    assert isinstance(contract_for(SeedScalarLoss.name), SeedContract)
    assert all(isinstance(contract_for(name), IdentityContract) for name in ("cse", "dce", "canonicalize"))


def test_vjp_contract_rejects_a_wrong_gradient_and_names_it() -> None:
    before = load_text(PROGRAM, "f.ir")
    after = before.clone()
    Pipeline.parse("differentiate", check=False).run(after)
    # Break grad.b by scaling the cotangent of the logits on its way into the bias's sum.
    from stepc.ir.dialect import MulOp, SumOp

    fn = step_function(after)
    bias_sum = next(op for op in fn.walk() if isinstance(op, SumOp) and op.results[0].name_hint == "b_cotangent")
    doubled = MulOp(bias_sum.operands[0], bias_sum.operands[0])
    fn.body.blocks.first.insert_op_before(doubled, bias_sum)
    bias_sum.operands = [doubled.result]
    report = VJPContract(numpy_forward_mode).check("differentiate", before, after, trials=2, seed=0)
    assert not report.ok and report.worst == "grad.b"
    assert "contract of pass differentiate" in report.failure_message()
    good = before.clone()
    Pipeline.parse("differentiate", check=False).run(good)
    assert VJPContract().check("differentiate", before, good, trials=2, seed=0).ok  # XLA's jax.jvp


def test_f16_and_bf16_programs_differentiate_and_check() -> None:
    for element in ("f16", "bf16", "f64"):
        run(PROGRAM.replace("f32", element), "differentiate,cse,dce,seed-scalar-loss")


def test_user_x32_default_is_left_alone() -> None:
    import jax

    run(PROGRAM, "differentiate")
    assert not jax.config.jax_enable_x64
