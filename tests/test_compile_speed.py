"""Compile-time shortcuts keep every check and every result (issue 6).

The verifier checks each op signature once (`stepc.ir.parse.verify`), the cleanups take a
direct route on straight-line functions (`passes/cleanup.py`), the lowering shares its
constants: each is checked against the general path it replaces (xDSL's own drivers, the
xDSL verifier, NumPy's sign bits), never against its own earlier output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from xdsl.dialects.builtin import ModuleOp, TensorType, f32
from xdsl.ir import Operation
from xdsl.transforms.canonicalize import CanonicalizePass
from xdsl.transforms.common_subexpression_elimination import CommonSubexpressionElimination
from xdsl.transforms.dead_code_elimination import DeadCodeElimination
from xdsl.utils.exceptions import VerifyException

from stepc.ir import dialect as step
from stepc.ir.diagnostics import StepcError
from stepc.ir.dialect import f64_array, make_tensor, tensor_type
from stepc.ir.parse import load, load_text, make_context, parse_text, verify
from stepc.ir.program import step_function
from stepc.passes.cleanup import CSE, DCE, Canonicalize
from stepc.passes.lower_to_stablehlo import dense_constant
from stepc.pipeline import Pipeline

ROOT = Path(__file__).parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.ir"))

# Duplicates (with attributes written in another order), dead code, a dead chain, a value the
# duplicates read: what CSE, DCE and canonicalization are for.
REDUNDANT = """
func.func @f(%w: tensor<4x3xf32> {step.param}, %x: tensor<2x4xf32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %a = step.matmul %x, %w : (tensor<2x4xf32>, tensor<4x3xf32>) -> tensor<2x3xf32>
  %b = step.matmul %x, %w : (tensor<2x4xf32>, tensor<4x3xf32>) -> tensor<2x3xf32>
  %t1 = step.tanh %a {note = "x", other = 1 : i64} : tensor<2x3xf32>
  %t2 = step.tanh %b {other = 1 : i64, note = "x"} : tensor<2x3xf32>
  %t3 = step.tanh %b {note = "y"} : tensor<2x3xf32>
  %dead = step.exp %t3 : tensor<2x3xf32>
  %dead2 = step.neg %dead : tensor<2x3xf32>
  %s = step.add %t1, %t2 : (tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x3xf32>
  %c1 = step.constant 0.5 : tensor<f32>
  %c2 = step.constant 0.5 : tensor<f32>
  %c3 = step.constant -0.0 : tensor<f32>
  %c4 = step.constant 0.0 : tensor<f32>
  %m = step.mul %s, %c1 : (tensor<2x3xf32>, tensor<f32>) -> tensor<2x3xf32>
  %n = step.mul %m, %c2 : (tensor<2x3xf32>, tensor<f32>) -> tensor<2x3xf32>
  %p = step.add %n, %c3 : (tensor<2x3xf32>, tensor<f32>) -> tensor<2x3xf32>
  %q = step.add %p, %c4 : (tensor<2x3xf32>, tensor<f32>) -> tensor<2x3xf32>
  %loss = step.mean %q : tensor<2x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}
"""

XDSL_DRIVER = {"cse": CommonSubexpressionElimination, "dce": DeadCodeElimination, "canonicalize": CanonicalizePass}
OURS = {"cse": CSE, "dce": DCE, "canonicalize": Canonicalize}


def programs() -> list[tuple[str, str]]:
    return [(p.name, p.read_text()) for p in EXAMPLES] + [("redundant", REDUNDANT)]


def stages(text: str, name: str) -> list[ModuleOp]:
    """The program at every point of the default pipeline before lowering."""
    module = load_text(text, name)
    out = [module.clone()]
    for pass_name in Pipeline.default(lower=False).names:
        Pipeline(names=[pass_name], check=False).run(module)
        out.append(module.clone())
    return out


@pytest.mark.parametrize("cleanup", sorted(OURS))
@pytest.mark.parametrize(("name", "text"), programs(), ids=[n for n, _ in programs()])
def test_cleanups_do_what_xdsl_drivers_do(cleanup: str, name: str, text: str) -> None:
    for module in stages(text, name):
        ours, theirs = module.clone(), module.clone()
        OURS[cleanup]().apply(make_context(), ours)
        XDSL_DRIVER[cleanup]().apply(make_context(), theirs)
        assert str(ours) == str(theirs)
        verify(ours)


def test_the_redundant_program_is_cleaned() -> None:
    """The oracle comparison above is not vacuous: the passes change this program."""
    module = load_text(REDUNDANT, "redundant.ir")
    before = sum(1 for _ in module.walk())
    CSE().apply(make_context(), module)
    after_cse = sum(1 for _ in module.walk())
    DCE().apply(make_context(), module)
    after_dce = sum(1 for _ in module.walk())
    assert before - after_cse == 4  # b, t2 (attributes in another order), c2 merged; the unread neg erased
    assert after_cse - after_dce == 2  # t3 and exp, dead once neg is gone (c3 = -0.0 and c4 = 0.0 stay apart)


def test_regions_take_xdsl_path() -> None:
    """A lowered module (reduce bodies) is not straight-line: the xDSL driver runs, same result."""
    module = load(EXAMPLES[0])
    Pipeline.default(check=False).run(module)
    ours, theirs = module.clone(), module.clone()
    CSE().apply(make_context(), ours)
    CommonSubexpressionElimination().apply(make_context(), theirs)
    assert str(ours) == str(theirs)


# ---------------------------------------------------------------------------------------------
# The verifier checks a signature once, and still rejects every invalid op


def first(module: ModuleOp, cls: type[Operation]) -> Operation:
    return next(op for op in module.walk() if isinstance(op, cls))


def test_a_changed_result_type_is_still_rejected() -> None:
    module = load_text(REDUNDANT, "bad-type.ir")
    verify(module)  # every signature of the program is now known good
    tanh = first(module, step.TanhOp)
    tanh.results[0]._type = make_tensor((3, 2), f32)  # type: ignore[attr-defined]  # behind the verifier's back
    with pytest.raises(VerifyException):
        tanh.verify()  # the oracle: xDSL's verifier of the op alone
    with pytest.raises(StepcError) as caught:
        verify(module)
    assert "step.tanh" in caught.value.message and caught.value.loc is not None
    assert caught.value.loc.line == 6


def test_a_non_terminator_at_the_end_is_still_rejected() -> None:
    module = load_text(REDUNDANT, "bad-end.ir")
    verify(module)
    fn = step_function(module)
    fn.body.block.last_op.detach()  # type: ignore[union-attr]  # the mean now ends the block
    with pytest.raises(StepcError, match=r"must end with func.return"):
        verify(module)


def test_an_erased_operand_is_still_rejected() -> None:
    module = load_text(REDUNDANT, "erased.ir")
    verify(module)
    exp = first(module, step.ExpOp)
    exp.parent_block().erase_op(exp, safe_erase=False)  # type: ignore[union-attr]  # the neg reads an erased value
    neg = first(module, step.NegOp)
    with pytest.raises(ValueError, match="Erased SSA value") as expected:
        neg.verify()  # the oracle: xDSL's verifier (a pass's bug, not the user's: no location)
    with pytest.raises(ValueError, match=str(expected.value)):
        verify(module)


def test_each_signature_is_verified_once(monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_text(REDUNDANT, "counted.ir")
    verify(module)
    calls: list[str] = []
    original = Operation.verify

    def counting(self: Operation, verify_nested_ops: bool = True) -> None:
        calls.append(self.name)
        original(self, verify_nested_ops)

    monkeypatch.setattr(Operation, "verify", counting)
    verify(module)
    # Only what a signature does not decide: the module, the function and its terminator.
    assert sorted(calls) == ["builtin.module", "func.func", "func.return"]


def test_a_bad_type_is_rejected_every_time() -> None:
    dynamic = TensorType(f32, [-1, 3])
    for _ in range(2):
        with pytest.raises(VerifyException, match="static"):
            tensor_type(dynamic)


def test_forward_use_is_reported_after_op_errors() -> None:
    """As before the verifier walked once: every op's own error first, then the first use of
    a value before its definition."""
    forward = REDUNDANT.replace("%s = step.add %t1, %t2", "%s = step.add %t1, %q")
    with pytest.raises(StepcError, match="%q is used before its definition on line 19") as caught:
        verify(parse_text(forward, "forward.ir"))
    assert caught.value.loc is not None and caught.value.loc.line == 11
    assert caught.value.loc.col == forward.splitlines()[10].index("%q") + 1  # the caret is on the use
    bad_add = "  %bad = step.add %x, %t1 : (tensor<2x4xf32>, tensor<2x3xf32>) -> tensor<2x4xf32>\n  %loss ="
    both = forward.replace("  %loss =", bad_add)
    with pytest.raises(StepcError, match=r"step.add") as caught:
        verify(parse_text(both, "both.ir"))
    assert caught.value.loc is not None and caught.value.loc.line == 20


# ---------------------------------------------------------------------------------------------
# Shared constants keep their exact bits


@pytest.mark.parametrize("value", [0.0, -0.0, 1e308, -1e-45, float("inf"), float("nan")])
def test_lowered_constants_are_exact(value: float) -> None:
    attr = dense_constant((value.hex(),), f32, ())
    with np.errstate(over="ignore"):
        expected = np.float64(value).astype(np.float32)  # the oracle: NumPy's rounding to f32
    (found,) = attr.get_values()
    assert np.isnan(found) if np.isnan(expected) else (found == expected and np.signbit(found) == np.signbit(expected))


def test_constant_arrays_keep_signs_apart() -> None:
    zero, negative_zero = f64_array([0.0]), f64_array([-0.0])
    assert zero is not negative_zero
    assert not np.signbit(zero.get_values()[0]) and np.signbit(negative_zero.get_values()[0])


def test_lowered_examples_verify() -> None:
    for path in EXAMPLES:
        module = load(path)
        Pipeline.default(check=False).run(module)
        verify(module)
