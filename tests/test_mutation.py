"""Mutation testing of the derivative table: every rule, broken on purpose, is caught by the
contract of `differentiate`, and the error names the pass.

Mutations, applied by monkeypatching `stepc.passes.vjp.VJP_RULES` (or the driver):
- `sign`: every operand cotangent the rule returns is negated;
- `swap`: the two operands' cotangents are exchanged (binary rules whose operands have one type;
  not `add`, where the swap is an equivalent mutant: both cotangents are the same value);
- `drop:i`: the cotangent of operand i is dropped (a forgotten contribution);
- `nonzero`: a zero rule (`compare`) passes the cotangent on instead;
- `other-key`, `no-scale`: dropout's rule masks the cotangent with another key, or forgets the
  scale 1 / (1 - rate);
- the driver's accumulation at fan-out, dropped (the first or the latest contribution kept);
- `seed-scalar-loss` seeding 2 instead of 1 (caught by its own contract);
- gradient accumulation (`accumulate-gradients`, the loop op and its lowering): the sums left
  undivided, the loss left summed, one micro-batch dropped (caught by the pass's contract), a
  loop of K - 1 trips, an accumulator overwritten, every trip reading micro-batch 0 (caught by
  the lowering's).

`one_hot` (an integer operand) and `constant` (no operand) have nothing to break. The score,
caught / total, is printed (run with `-s`) and must be total / total.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from xdsl.dialects.builtin import DenseArrayBase, f64
from xdsl.ir import Operation, SSAValue

from stepc.check import CONTRACTS, contract_for
from stepc.check.differentiate import VJPContract, numpy_forward_mode
from stepc.check.seed_scalar_loss import SeedContract
from stepc.ir import dialect as step
from stepc.ir.diagnostics import StepcError
from stepc.ir.parse import load_text
from stepc.passes import vjp
from stepc.passes.accumulate_gradients import mean_over_micro_batches
from stepc.passes.differentiate import CotangentMap, Differentiate
from stepc.passes.seed_scalar_loss import SeedScalarLoss
from stepc.pipeline import Pipeline

T = "tensor<3x3xf64>"
POSITIVE = f"""%a2 = step.square %a : {T}
  %half = step.constant 0.5 : tensor<f64>
  %pos = step.add %a2, %half : ({T}, tensor<f64>) -> {T}"""


@dataclass
class Case:
    op: type[Operation]
    body: str  # defines %r from %a (and %b), all 3x3 f64 unless the result type says otherwise
    mutations: tuple[str, ...]
    result: str = T
    extra_args: str = ""


def binary(name: str, mutations: tuple[str, ...] = ("sign", "swap", "drop:0", "drop:1")) -> str:
    return f"%r = step.{name} %a, %b : ({T}, {T}) -> {T}"


UNARY_SIGN = ("sign",)
# A convolution with everything: stride 2 leaving a row over, padding, dilation, 2 groups; the
# batch of 3 is widened to 24 (and shrunk back) in reduced mode, the rest stays.
CONV_ATTRS = "stride [2, 1] padding [1, 2] dilation [1, 2] groups 2"
CONV_TYPES = {"x": "tensor<3x4x7x6xf64>", "k": "tensor<6x2x2x4xf64>", "dy": "tensor<3x6x4x4xf64>"}
CASES: list[Case] = [
    Case(step.AddOp, binary("add"), ("sign", "drop:0", "drop:1")),
    Case(step.SubOp, binary("sub"), ("sign", "swap", "drop:0", "drop:1")),
    Case(step.MulOp, binary("mul"), ("sign", "swap", "drop:0", "drop:1")),
    Case(step.DivOp, f"{POSITIVE.replace('%a', '%b').replace('%b2', '%b2')}\n  %r = step.div %a, %pos : ({T}, {T}) -> {T}",
         ("sign", "drop:0", "drop:1")),
    Case(step.MaximumOp, binary("maximum"), ("sign", "swap", "drop:0", "drop:1")),
    Case(step.MinimumOp, binary("minimum"), ("sign", "swap", "drop:0", "drop:1")),
    Case(step.CompareOp, f"%m = step.compare gt %a, %b : ({T}, {T}) -> {T}\n  %r = step.mul %m, %a : ({T}, {T}) -> {T}",
         ("nonzero",)),
    Case(step.SelectOp, f"%m = step.compare gt %a, %b : ({T}, {T}) -> {T}\n"
                        f"  %r = step.select %m, %a, %b : ({T}, {T}, {T}) -> {T}", ("sign", "drop:1", "drop:2")),
    *(Case(cls, f"%r = {cls.name} %a : {T}", UNARY_SIGN)
      for cls in (step.ExpOp, step.NegOp, step.TanhOp, step.SigmoidOp, step.ReluOp, step.SquareOp, step.AbsOp)),
    *(Case(cls, f"{POSITIVE}\n  %r = {cls.name} %pos : {T}", UNARY_SIGN) for cls in (step.LogOp, step.SqrtOp, step.RsqrtOp)),
    Case(step.MatmulOp, binary("matmul"), ("sign", "swap", "drop:0", "drop:1")),
    Case(step.TransposeOp, f"%r = step.transpose %a perm [1, 0] : {T} -> {T}", UNARY_SIGN),
    Case(step.ReshapeOp, f"%r = step.reshape %a : {T} -> tensor<9xf64>", UNARY_SIGN, "tensor<9xf64>"),
    Case(step.BroadcastOp, "%r = step.broadcast %c : tensor<3xf64> -> tensor<2x3xf64>", UNARY_SIGN,
         "tensor<2x3xf64>", ", %c: tensor<3xf64> {step.param}"),
    Case(step.SumOp, f"%r = step.sum %a dims [1] : {T} -> tensor<3xf64>", UNARY_SIGN, "tensor<3xf64>"),
    Case(step.MeanOp, f"%r = step.mean %a dims [0] : {T} -> tensor<3xf64>", UNARY_SIGN, "tensor<3xf64>"),
    Case(step.MaxOp, f"%r = step.max %a dims [0] : {T} -> tensor<3xf64>", UNARY_SIGN, "tensor<3xf64>"),
    Case(step.SoftmaxOp, f"%r = step.softmax %a axis 1 : {T}", UNARY_SIGN),
    Case(step.LogSoftmaxOp, f"%r = step.log_softmax %a axis 1 : {T}", UNARY_SIGN),
    Case(step.CrossEntropyOp, f"%r = step.cross_entropy %a, %labels : ({T}, tensor<3xi32>) -> tensor<f64>",
         ("sign", "drop:0"), "tensor<f64>", ", %labels: tensor<3xi32>"),
    Case(step.MseOp, f"%r = step.mse %a, %b : ({T}, {T}) -> tensor<f64>", ("sign", "swap", "drop:0", "drop:1"),
         "tensor<f64>"),
    Case(step.ConvertOp, f"%r = step.convert %c : tensor<3x3xf32> -> {T}", UNARY_SIGN, T,
         ", %c: tensor<3x3xf32> {step.param}"),
    Case(step.LayerNormOp, f"%r = step.layer_norm %a, %g, %beta eps 0.1 : ({T}, tensor<3xf64>, tensor<3xf64>) -> {T}",
         ("sign", "drop:0", "drop:1", "drop:2"), T, ", %g: tensor<3xf64> {step.param}, %beta: tensor<3xf64> {step.param}"),
    *(Case(cls, f"%r = {cls.name} %a{suffix} : {T}", UNARY_SIGN)
      for cls in (step.GeluOp, step.GeluGradOp) for suffix in ("", " approximate tanh")),
    Case(step.EmbeddingOp, "%r = step.embedding %a, %ids : (tensor<3x3xf64>, tensor<4xi32>) -> tensor<4x3xf64>",
         ("sign", "drop:0"), "tensor<4x3xf64>", ", %ids: tensor<4xi32>"),
    Case(step.EmbeddingGradOp, f"%r = step.embedding_grad %c, %ids : (tensor<4x3xf64>, tensor<4xi32>) -> {T}",
         ("sign", "drop:0"), T, ", %c: tensor<4x3xf64> {step.param}, %ids: tensor<4xi32>"),
    *(Case(cls, f"%r = {cls.name} %{lhs}, %{rhs} {CONV_ATTRS} : ({CONV_TYPES[lhs]}, {CONV_TYPES[rhs]}) -> {CONV_TYPES[out]}",
           ("sign", "drop:0", "drop:1"), CONV_TYPES[out], f", %{lhs}: {CONV_TYPES[lhs]} {{step.param}}, %{rhs}: {CONV_TYPES[rhs]} {{step.param}}")
      for cls, lhs, rhs, out in ((step.Conv2dOp, "x", "k", "dy"), (step.Conv2dInputGradOp, "dy", "k", "x"),
                                 (step.Conv2dWeightGradOp, "x", "dy", "k"))),
    Case(step.DropoutOp, f"%r = step.dropout %a, %key rate 0.5 : ({T}, tensor<2xui32>) -> {T}",
         ("sign", "drop:0", "other-key", "no-scale"), T, ", %key: tensor<2xui32>, %other: tensor<2xui32>"),
    # The windows and pieces: their sizes stay under `SMALL` except the channels (3, widened to 24),
    # so that the reduced mode keeps every window, slice and padding as it is.
    Case(step.MaxPool2dOp, "%r = step.max_pool2d %c kernel [2, 3] stride [1, 2] padding [1, 1] : tensor<2x3x4x4xf64> -> "
         "tensor<2x3x5x2xf64>", UNARY_SIGN, "tensor<2x3x5x2xf64>", ", %c: tensor<2x3x4x4xf64> {step.param}"),
    Case(step.AvgPool2dOp, "%r = step.avg_pool2d %c kernel [3, 3] stride [1, 1] padding [1, 1] : tensor<2x3x4x4xf64> -> "
         "tensor<2x3x4x4xf64>", UNARY_SIGN, "tensor<2x3x4x4xf64>", ", %c: tensor<2x3x4x4xf64> {step.param}"),
    Case(step.ConcatOp, "%r = step.concat %c, %d, %e axis 1 : (tensor<3x2xf64>, tensor<3x1xf64>, tensor<3x4xf64>) -> "
         "tensor<3x7xf64>", ("sign", "drop:0", "drop:1", "drop:2"), "tensor<3x7xf64>",
         ", %c: tensor<3x2xf64> {step.param}, %d: tensor<3x1xf64> {step.param}, %e: tensor<3x4xf64> {step.param}"),
    Case(step.SliceOp, "%r = step.slice %c start [1, 1] limit [5, 8] stride [2, 2] : tensor<5x8xf64> -> tensor<2x4xf64>",
         UNARY_SIGN, "tensor<2x4xf64>", ", %c: tensor<5x8xf64> {step.param}"),
    Case(step.PadOp, "%r = step.pad %c low [1, 0] high [0, 2] interior [1, 1] : tensor<2x4xf64> -> tensor<4x9xf64>",
         UNARY_SIGN, "tensor<4x9xf64>", ", %c: tensor<2x4xf64> {step.param}"),
]  # fmt: skip
NOTHING_TO_BREAK = {step.OneHotOp, step.ConstantOp}

# A program where values fan out (read twice or more): the driver must add the contributions.
FAN_OUT = f"""func.func @fan_out(%a: {T} {{step.param}}, %b: {T} {{step.param}}, %weight: {T}) -> tensor<f64>
    attributes {{step.sgd = #step.sgd<lr = 0.1>}} {{
  %e = step.tanh %a : {T}
  %p = step.mul %e, %b : ({T}, {T}) -> {T}
  %q = step.matmul %e, %a : ({T}, {T}) -> {T}
  %s = step.add %p, %q : ({T}, {T}) -> {T}
  %rw = step.mul %s, %weight : ({T}, {T}) -> {T}
  %loss = step.sum %rw : {T} -> tensor<f64>
  func.return %loss : tensor<f64>
}}
"""


def program(case: Case) -> str:
    """The case's op, then `mse` against a random target (a scalar result is the loss itself):
    no other op shares the mutated rule, so two mutations never cancel."""
    scalar = case.result == "tensor<f64>"
    target = "" if scalar else f", %target: {case.result}"
    loss = "" if scalar else f"  %loss = step.mse %r, %target : ({case.result}, {case.result}) -> tensor<f64>\n"
    return (
        f"func.func @mutant(%a: {T} {{step.param}}, %b: {T} {{step.param}}{case.extra_args}{target})"
        " -> tensor<f64>\n    attributes {step.sgd = #step.sgd<lr = 0.1>} {\n"
        f"  {case.body}\n{loss}"
        f"  func.return %{'r' if scalar else 'loss'} : tensor<f64>\n}}\n"
    )


Rule = Callable[[vjp.BackwardBuilder, Operation, SSAValue], vjp.Cotangents]


def mutate(rule: Rule, kind: str) -> Rule:
    def mutated(emit: vjp.BackwardBuilder, op: Operation, cotangent: SSAValue) -> vjp.Cotangents:
        if kind == "nonzero":
            return [emit.unbroadcast(cotangent, operand) for operand in op.operands]
        out = list(rule(emit, op, cotangent))
        if kind == "sign":
            return [None if c is None else emit(step.NegOp(c)) for c in out]
        if kind == "other-key":  # the mask of another key (the function's argument %other)
            assert isinstance(op, step.DropoutOp)
            other = next(a for a in op.key.owner.args if a.name_hint == "other")  # type: ignore[union-attr]
            return [emit(step.DropoutOp(cotangent, other, op.drop_rate)), None]
        if kind == "no-scale":  # the mask without the 1 / (1 - rate)
            assert isinstance(op, step.DropoutOp)
            return [emit(step.MulOp(out[0], emit.scalar(1 - op.drop_rate, cotangent))), None]  # type: ignore[arg-type]
        if kind == "swap":
            out[0], out[1] = out[1], out[0]
            return out
        index = int(kind.split(":")[1])
        out[index] = None
        return out

    return mutated


def widened(text: str) -> str:
    """The same program with every dim of 3 (and the 9 of the reshape) widened to 24 (576):
    over `check.reduced.SMALL`, so the contracts run at reduced shapes."""
    for old, new in (("3x3", "24x24"), ("tensor<3x", "tensor<24x"), ("x3x", "x24x"), ("tensor<3xi32>", "tensor<24xi32>"),
                     ("tensor<3xf", "tensor<24xf"), ("tensor<9xf", "tensor<576xf"), ("2x3xf", "2x24xf")):  # fmt: skip
        text = text.replace(old, new)
    return text


def caught(text: str, name: str, mode: str = "full") -> str | None:
    """The contract's error when the pipeline rejects the program, else None (`mode` "reduced":
    the program widened and its contracts run at reduced shapes)."""
    module = load_text(widened(text) if mode == "reduced" else text, f"{name}.ir")
    try:
        events = Pipeline(["differentiate", "seed-scalar-loss"], check=True, trials=2, check_mode=mode).run(module)
    except StepcError as e:
        return e.message
    for event in events[1:]:  # each contract ran where it was asked to (a reshape's split sizes shrink as products)
        assert event.report is not None and event.report.mode.split(",")[0] == mode, (name, event.report)
    return None


@pytest.fixture
def fast_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    """`differentiate`'s contract, with its `jax.jvp` evaluated by NumPy (no XLA compile per mutant)."""
    monkeypatch.setitem(CONTRACTS, Differentiate.name, VJPContract(forward_mode=numpy_forward_mode))


def test_every_rule_has_a_case() -> None:
    assert {c.op for c in CASES} | NOTHING_TO_BREAK == set(vjp.VJP_RULES)


MODES = ["full", "reduced"]


@pytest.mark.parametrize("mode", MODES)
def test_unmutated_cases_pass(fast_contract: None, mode: str) -> None:
    for case in CASES:
        assert caught(program(case), case.op.name, mode) is None, case.op.name
    assert caught(FAN_OUT, "fan_out", mode) is None


@pytest.mark.parametrize("mode", MODES)
def test_mutation_score(fast_contract: None, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """Every mutant caught, at full shapes and at reduced ones (no mutant lost to the reduction)."""
    results: list[tuple[str, str | None]] = []
    for case in CASES:
        for kind in case.mutations:
            with monkeypatch.context() as m:
                m.setitem(vjp.VJP_RULES, case.op, mutate(vjp.VJP_RULES[case.op], kind))
                results.append((f"{case.op.name} {kind}", caught(program(case), case.op.name, mode)))

    def keep_first(self: CotangentMap, emit: vjp.BackwardBuilder, value: SSAValue, cotangent: SSAValue) -> None:
        self.values.setdefault(value, cotangent)

    def keep_latest(self: CotangentMap, emit: vjp.BackwardBuilder, value: SSAValue, cotangent: SSAValue) -> None:
        self.values[value] = cotangent

    for name, accumulate in (("keep first", keep_first), ("keep latest", keep_latest)):
        with monkeypatch.context() as m:
            m.setattr(CotangentMap, "accumulate", accumulate)
            results.append((f"driver accumulation dropped ({name})", caught(FAN_OUT, "fan_out", mode)))

    from stepc.passes import seed_scalar_loss

    with monkeypatch.context() as m:
        original = seed_scalar_loss.seed_function

        def seed_two(fn):  # type: ignore[no-untyped-def]
            original(fn)
            for op in fn.walk():
                if isinstance(op, step.ConstantOp) and op.result.name_hint == "loss_cotangent":
                    op.properties["value"] = DenseArrayBase.from_list(f64, [2.0])

        m.setattr(seed_scalar_loss, "seed_function", seed_two)
        results.append(("seed-scalar-loss seeds 2", caught(FAN_OUT, "fan_out", mode)))

    missed = [name for name, message in results if message is None]
    print(f"\nmutation score ({mode} shapes): {len(results) - len(missed)}/{len(results)} caught")
    for name, message in results:
        print(f"  {'caught' if message else 'MISSED'}: {name}: {message}")
    assert not missed, f"mutants the contracts did not catch: {missed}"
    for name, message in results:
        assert message is not None
        expected_pass = "seed-scalar-loss" if name.startswith("seed") else "differentiate"
        assert f"contract of pass {expected_pass}" in message, (name, message)


def test_default_contract_catches_a_mutant_through_xla(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pass's own contract (XLA-compiled `jax.jvp`), as `stepc compile` runs it."""
    case = next(c for c in CASES if c.op is step.MatmulOp)
    monkeypatch.setitem(vjp.VJP_RULES, step.MatmulOp, mutate(vjp.VJP_RULES[step.MatmulOp], "swap"))
    message = caught(program(case), "matmul")
    assert message is not None and "contract of pass differentiate" in message and "grad." in message


def test_seed_contract_is_registered_for_the_pass() -> None:
    assert isinstance(contract_for(SeedScalarLoss.name), SeedContract)


# ---------------------------------------------------------------------------------------------
# accumulate-gradients: mutants of the pass, of the loop op and of its lowering, each caught by
# the contract of the layer it breaks (the pass's own contract compares with the pre-pass
# program run on each micro-batch, independently of the loop; the lowering's with the loop
# run by the reference interpreter).

ACCUMULATED = """func.func @mlp(%w1: tensor<3x5xf64> {step.param}, %b1: tensor<5xf64> {step.param},
               %w2: tensor<5x3xf64> {step.param}, %x: tensor<4x3xf64>, %labels: tensor<4xi32>) -> tensor<f64>
    attributes {step.sgd = #step.sgd<lr = 0.1, momentum = 0.9>, step.accumulate = 3 : i64} {
  %a1 = step.matmul %x, %w1 : (tensor<4x3xf64>, tensor<3x5xf64>) -> tensor<4x5xf64>
  %z1 = step.add %a1, %b1 : (tensor<4x5xf64>, tensor<5xf64>) -> tensor<4x5xf64>
  %h = step.tanh %z1 : tensor<4x5xf64>
  %logits = step.matmul %h, %w2 : (tensor<4x5xf64>, tensor<5x3xf64>) -> tensor<4x3xf64>
  %loss = step.cross_entropy %logits, %labels : (tensor<4x3xf64>, tensor<4xi32>) -> tensor<f64>
  func.return %loss : tensor<f64>
}
"""


def caught_in_pipeline(text: str, name: str, mode: str) -> str | None:
    """The contract's error when the default pipeline (with every contract) rejects the program,
    else None; every contract ran where it was asked to."""
    module = load_text(widened(text) if mode == "reduced" else text, f"{name}.ir")
    try:
        events = Pipeline.default(check=True, trials=2, check_mode=mode).run(module)
    except StepcError as e:
        return e.message
    for event in events[1:]:
        assert event.report is not None and event.report.mode.split(" ")[0].rstrip(",") == mode, (name, event.report)
    return None


def _mean_of_sums_only(builder, sums, count):  # type: ignore[no-untyped-def]
    return list(sums)


def _loss_left_summed(builder, sums, count):  # type: ignore[no-untyped-def]
    return [sums[0], *mean_over_micro_batches(builder, list(sums[1:]), count)]


def _mutated_lowering(kind: str):  # type: ignore[no-untyped-def]
    """The lowering rule of `step.accumulate`, its `stablehlo.while` broken after it is built."""
    from stepc.ir import stablehlo as shlo
    from stepc.passes import lower_to_stablehlo as lowering

    original = lowering.LOWERINGS[step.AccumulateOp]

    def rule(b, op):  # type: ignore[no-untyped-def]
        results = original(b, op)
        loop = results[0].owner
        assert isinstance(loop, shlo.WhileOp)
        cond, body = loop.cond.block, loop.body.block
        ret = body.last_op
        assert isinstance(ret, shlo.ReturnOp)
        if kind == "K - 1 trips":
            bound = next(o for o in cond.ops if isinstance(o, shlo.ConstantOp))
            bound.properties["value"] = lowering.dense_constant((op.count - 1,), bound.output.type.get_element_type(), ())
        elif kind == "accumulator overwritten":
            adds = [v.owner for v in list(ret.operands)[1 : 1 + len(op.sums)]]
            ret.operands = [ret.operands[0], *(a.operands[1] for a in adds), *list(ret.operands)[1 + len(op.sums) :]]
        elif kind == "micro-batch 0 every trip":  # each slice starts at the zero index (every operand has rank >= 2)
            for inner in body.ops:
                if isinstance(inner, shlo.DynamicSliceOp):
                    inner.operands = [inner.operands[0], *[inner.operands[2]] * (len(inner.operands) - 1)]
        return results

    return rule


def test_accumulation_mutants_unmutated_passes(fast_contract: None) -> None:
    for mode in MODES:
        assert caught_in_pipeline(ACCUMULATED, "accumulated", mode) is None


@pytest.mark.parametrize("mode", MODES)
def test_accumulation_mutation_score(fast_contract: None, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """Every mutant of gradient accumulation caught, by the contract of the pass it breaks."""
    from stepc.passes import accumulate_gradients
    from stepc.passes import lower_to_stablehlo as lowering

    results: list[tuple[str, str, str | None]] = []
    for name, mean in (("sum instead of mean", _mean_of_sums_only), ("loss not averaged", _loss_left_summed)):
        with monkeypatch.context() as m:
            m.setattr(accumulate_gradients, "mean_over_micro_batches", mean)
            results.append((name, "accumulate-gradients", caught_in_pipeline(ACCUMULATED, "accumulated", mode)))
    with monkeypatch.context() as m:  # the interpreter, the bounds and the lowering all loop K - 1 times
        real = step.AccumulateOp.count
        m.setattr(step.AccumulateOp, "count", property(lambda op: real.fget(op) - 1))  # type: ignore[union-attr]
        results.append(("one micro-batch dropped", "accumulate-gradients", caught_in_pipeline(ACCUMULATED, "accumulated", mode)))
    for kind in ("K - 1 trips", "accumulator overwritten", "micro-batch 0 every trip"):
        with monkeypatch.context() as m:
            m.setitem(lowering.LOWERINGS, step.AccumulateOp, _mutated_lowering(kind))
            results.append((f"lowering: {kind}", "lower-to-stablehlo", caught_in_pipeline(ACCUMULATED, "accumulated", mode)))
    missed = [name for name, _, message in results if message is None]
    print(f"\naccumulation mutation score ({mode} shapes): {len(results) - len(missed)}/{len(results)} caught")
    for name, _, message in results:
        print(f"  {'caught' if message else 'MISSED'}: {name}: {message}")
    assert not missed, f"mutants the contracts did not catch: {missed}"
    for name, expected_pass, message in results:
        assert message is not None and f"contract of pass {expected_pass}" in message, (name, message)


# Optimizers (issue 14): mutants of fuse-adam and clip-grad-norm, each caught by the contract of
# the pass it breaks (an independent NumPy model of torch's equations).

ADAM_CLIPPED = """func.func @mlp(%w1: tensor<3x5xf64> {step.param}, %b1: tensor<5xf64> {step.param = #step.adamw<weight_decay = 0.0>},
               %w2: tensor<5x3xf64> {step.param}, %x: tensor<4x3xf64>, %labels: tensor<4xi32>) -> tensor<f64>
    attributes {step.adamw = #step.adamw<lr = 0.01, amsgrad = true>, step.clip_grad_norm = 0.5 : f64} {
  %a1 = step.matmul %x, %w1 : (tensor<4x3xf64>, tensor<3x5xf64>) -> tensor<4x5xf64>
  %z1 = step.add %a1, %b1 : (tensor<4x5xf64>, tensor<5xf64>) -> tensor<4x5xf64>
  %h = step.tanh %z1 : tensor<4x5xf64>
  %logits = step.matmul %h, %w2 : (tensor<4x5xf64>, tensor<5x3xf64>) -> tensor<4x3xf64>
  %loss = step.cross_entropy %logits, %labels : (tensor<4x3xf64>, tensor<4xi32>) -> tensor<f64>
  func.return %loss : tensor<f64>
}
"""


def test_optimizer_mutants_unmutated_passes(fast_contract: None) -> None:
    assert caught_in_pipeline(ADAM_CLIPPED, "adam", "full") is None


def test_optimizer_mutation_score(fast_contract: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken bias correction, a dropped amsgrad max and clipping moved after the update."""
    from stepc.passes import clip_grad_norm, fuse_adam

    real_power = fuse_adam._BiasCorrections._one_minus_power  # pyright: ignore[reportPrivateUsage]

    def no_correction(self, hyper, beta, element):  # type: ignore[no-untyped-def]
        return self.emitter.constant(1.0, real_power(self, hyper, beta, element))

    def step_before_increment(self, hyper, beta, element):  # type: ignore[no-untyped-def]
        # `beta ** (step - 1)`: the correction of the previous step (the counter read before `+= 1`)
        saved = self.new_step
        self.new_step = self.emitter.sub(saved, self.emitter.constant(1.0, saved))
        self.steps.clear()
        try:
            return real_power(self, hyper, beta, element)
        finally:
            self.new_step = saved
            self.steps.clear()

    def clip_after_update(e, grads, max_norm):  # type: ignore[no-untyped-def]
        # The clip coefficient is computed but the gradients reach the update unscaled (clipping
        # the update instead of the gradient leaves the gradients this pass returns unclipped).
        real_clip(e, grads, max_norm)
        return list(grads)

    real_clip = clip_grad_norm.clip_gradients
    mutants = [
        ("bias correction dropped", "fuse-adam", lambda m: m.setattr(fuse_adam._BiasCorrections, "_one_minus_power", no_correction)),
        ("bias correction of the previous step", "fuse-adam",
         lambda m: m.setattr(fuse_adam._BiasCorrections, "_one_minus_power", step_before_increment)),
        ("amsgrad max dropped", "fuse-adam", lambda m: m.setattr(fuse_adam, "MaximumOp", lambda a, b: step.MaximumOp(b, b))),
        ("clipping after the update", "clip-grad-norm", lambda m: m.setattr(clip_grad_norm, "clip_gradients", clip_after_update)),
    ]  # fmt: skip
    results: list[tuple[str, str, str | None]] = []
    for name, expected_pass, patch in mutants:
        with monkeypatch.context() as m:
            patch(m)
            results.append((name, expected_pass, caught_in_pipeline(ADAM_CLIPPED, "adam", "full")))
    missed = [name for name, _, message in results if message is None]
    print(f"\noptimizer mutation score: {len(results) - len(missed)}/{len(results)} caught")
    for name, _, message in results:
        print(f"  {'caught' if message else 'MISSED'}: {name}: {message}")
    assert not missed, f"mutants the contracts did not catch: {missed}"
    for name, expected_pass, message in results:
        assert message is not None and f"contract of pass {expected_pass}" in message, (name, message)


# Run-time optimizer fields (`{step.hyper}`): the same programs with their fields as inputs.
ADAM_HYPER = ADAM_CLIPPED.replace(
    "%labels: tensor<4xi32>)",
    '%labels: tensor<4xi32>, %lr: tensor<f64> {step.hyper = "lr"}, %beta1: tensor<f64> {step.hyper = "beta1"}, '
    '%beta2: tensor<f64> {step.hyper = "beta2"}, %wd: tensor<f32> {step.hyper = "weight_decay"})',
).replace("#step.adamw<weight_decay = 0.0>", "#step.adamw<eps = 1.0e-6>")
SGD_HYPER = ADAM_HYPER.replace("#step.adamw<eps = 1.0e-6>", "#step.sgd<nesterov = false>").replace(
    "step.adamw = #step.adamw<lr = 0.01, amsgrad = true>", "step.sgd = #step.sgd<momentum = 0.9>"
).replace('"beta1"', '"momentum"').replace('"beta2"', '"dampening"')


def test_run_time_field_mutants_unmutated_pass(fast_contract: None) -> None:
    assert caught_in_pipeline(ADAM_HYPER, "adam-hyper", "full") is None
    assert caught_in_pipeline(SGD_HYPER, "sgd-hyper", "full") is None


@pytest.mark.parametrize("program, expected_pass", [(ADAM_HYPER, "fuse-adam"), (SGD_HYPER, "fuse-sgd")])
def test_run_time_field_mutation_score(fast_contract: None, program: str, expected_pass: str) -> None:
    """A run-time field read as the attribute's constant, `1 - FIELD` read as `FIELD`, and a
    run-time weight decay dropped: each caught by the optimizer's contract."""
    from stepc.passes import fuse_sgd

    real_value = fuse_sgd.RunTimeFields.value

    def constant_lr(self, name, element):  # type: ignore[no-untyped-def]
        value = real_value(self, name, element)
        return self.emitter.constant(0.01, value) if name == "lr" else value

    def no_complement(self, name, element):  # type: ignore[no-untyped-def]
        return real_value(self, name, element)

    def no_decay(self, name, element):  # type: ignore[no-untyped-def]
        value = real_value(self, name, element)
        return self.emitter.constant(0.0, value) if name == "weight_decay" else value

    mutants = [("run-time lr read as the constant 0.01", "value", constant_lr),
               ("1 - FIELD read as FIELD", "one_minus", no_complement),
               ("run-time weight decay dropped", "value", no_decay)]  # fmt: skip
    missed = []
    for name, method, mutant in mutants:
        with pytest.MonkeyPatch.context() as m:
            m.setattr(fuse_sgd.RunTimeFields, method, mutant)
            message = caught_in_pipeline(program, "hyper", "full")
        if message is None:
            missed.append(name)
        else:
            assert f"contract of pass {expected_pass}" in message, (name, message)
    assert not missed, f"mutants the contracts did not catch: {missed}"
