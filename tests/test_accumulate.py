"""Gradient accumulation (`step.accumulate = K : i64`, the pass `accumulate-gradients`).

Oracles: PyTorch's accumulation loop (`(loss / K).backward()` on each micro-batch, then
`torch.optim.SGD.step()`), the same program without accumulation on one batch of all K
micro-batches (a mean of equal-sized means is the mean), `jax.jvp` under XLA for the NumPy
evaluator of jaxprs, and the rounding-error bounds of the reference interpreter.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np
import pytest
import torch

import stepc
from stepc.backends.jax import jax_function
from stepc.backends.jaxpr_numpy import evaluate
from stepc.backends.xla import XlaExecutable
from stepc.check import CONTRACTS
from stepc.check.accumulate_gradients import AccumulationContract
from stepc.check.contract import Comparison
from stepc.ir import dialect as step
from stepc.ir import stablehlo as shlo
from stepc.ir.diagnostics import StepcError
from stepc.ir.error_bounds import REGION_RULES, Bounded, Precision, _sum, evaluate_with_bounds
from stepc.ir.interpreter import run_function
from stepc.ir.parse import load, load_text, parse_module, parse_text, verify
from stepc.ir.program import step_function
from stepc.ir.stablehlo import module_text
from stepc.passes import ACCUMULATE_GRADIENTS
from stepc.passes.lower_to_stablehlo import lowered_clone
from stepc.pipeline import Pipeline
from stepc.tools import data as train_data
from stepc.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent
MLP_DIGITS = ROOT / "examples" / "mlp_digits.ir"
STEPS = 4
B, D, H, C = 6, 5, 7, 3  # micro-batch rows, features, hidden units, classes
LR, MOMENTUM, DECAY = 0.1, 0.9, 1e-2
TOLERANCE = {"f64": 1e-12, "f32": 1e-5}
NUMPY = {"f64": np.float64, "f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16}
TORCH = {"f64": torch.float64, "f32": torch.float32}


def mlp(element: str, count: int | None, rows: int = B) -> str:
    """A two-layer relu classifier with cross-entropy, SGD with momentum and weight decay, the
    biases in a group of their own without decay; `step.accumulate = count` when given."""

    def t(*shape: int) -> str:
        return "tensor<" + "".join(f"{d}x" for d in shape) + element + ">"

    accumulate = "" if count is None else f", step.accumulate = {count} : i64"
    return f"""func.func @mlp(%w1: {t(D, H)} {{step.param}}, %b1: {t(H)} {{step.param = #step.sgd<weight_decay = 0.0>}},
               %w2: {t(H, C)} {{step.param}}, %b2: {t(C)} {{step.param = #step.sgd<weight_decay = 0.0>}},
               %x: {t(rows, D)}, %labels: tensor<{rows}xi32>) -> {t()}
    attributes {{step.sgd = #step.sgd<lr = {LR}, momentum = {MOMENTUM}, weight_decay = {DECAY}>{accumulate}}} {{
  %a1 = step.matmul %x, %w1 : ({t(rows, D)}, {t(D, H)}) -> {t(rows, H)}
  %z1 = step.add %a1, %b1 : ({t(rows, H)}, {t(H)}) -> {t(rows, H)}
  %h = step.relu %z1 : {t(rows, H)}
  %a2 = step.matmul %h, %w2 : ({t(rows, H)}, {t(H, C)}) -> {t(rows, C)}
  %logits = step.add %a2, %b2 : ({t(rows, C)}, {t(C)}) -> {t(rows, C)}
  %loss = step.cross_entropy %logits, %labels : ({t(rows, C)}, tensor<{rows}xi32>) -> {t()}
  func.return %loss : {t()}
}}
"""


def init_params(element: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {"w1": (D, H), "b1": (H,), "w2": (H, C), "b2": (C,)}
    return {k: (0.5 * rng.standard_normal(s)).astype(NUMPY[element]) for k, s in shapes.items()}


def stacked_batch(element: str, count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "x": rng.standard_normal((count, B, D)).astype(NUMPY[element]),
        "labels": rng.integers(0, C, (count, B)).astype(np.int32),
    }


def relative_error(ours: Any, ref: np.ndarray) -> float:
    ref64 = np.asarray(ref, np.float64)
    return float(np.max(np.abs(np.asarray(ours, np.float64) - ref64)) / max(np.max(np.abs(ref64)), 1e-300))


# ---------------------------------------------------------------------------------------------
# Against PyTorch's accumulation loop


@pytest.mark.parametrize("element", ["f64", "f32"])
@pytest.mark.parametrize("count", [1, 2, 4])
def test_steps_equal_torch_accumulation_loop(element: str, count: int) -> None:
    """K micro-batches per step, 4 steps: `(loss / K).backward()` on each, then SGD's step
    (momentum, weight decay, a parameter group): parameters, momentum buffers and the mean loss
    after every step, f64 within 1e-12 and f32 within 1e-5 (relative to each tensor's scale)."""
    with jax.enable_x64(element == "f64"):
        prog = stepc.compile_text(mlp(element, count), filename=f"mlp_{element}_k{count}.ir", trials=1)
        params = init_params(element)
        state = prog.init_state(params)
        tp = {k: torch.tensor(np.asarray(v, np.float64), dtype=TORCH[element], requires_grad=True) for k, v in params.items()}
        opt = torch.optim.SGD(
            [{"params": [tp["w1"], tp["w2"]]}, {"params": [tp["b1"], tp["b2"]], "weight_decay": 0.0}],
            lr=LR, momentum=MOMENTUM, weight_decay=DECAY, foreach=False,
        )  # fmt: skip
        rng = np.random.default_rng(1)
        worst = 0.0
        for _ in range(STEPS):
            batch = stacked_batch(element, count, rng)
            params, state, loss = prog.step(params, state, batch)
            opt.zero_grad()
            total = torch.zeros((), dtype=TORCH[element])
            for k in range(count):
                x = torch.tensor(batch["x"][k])
                logits = torch.relu(x @ tp["w1"] + tp["b1"]) @ tp["w2"] + tp["b2"]
                micro_loss = torch.nn.functional.cross_entropy(logits, torch.tensor(batch["labels"][k]).long())
                (micro_loss / count).backward()
                total = total + micro_loss.detach() / count
            opt.step()
            errors = [relative_error(params[k], tp[k].detach().numpy()) for k in tp]
            errors += [relative_error(state[f"momentum.{k}"], opt.state[tp[k]]["momentum_buffer"].numpy()) for k in tp]
            errors.append(relative_error(loss, total.numpy()))
            worst = max(worst, *errors)
        print(f"\nK={count} {element}: worst relative error against torch over {STEPS} steps: {worst:.3g}")
        assert worst <= TOLERANCE[element]


def test_accumulated_gradient_is_the_gradient_of_the_whole_batch() -> None:
    """Equal micro-batches of a mean loss: the mean of their gradients is the gradient of the
    one batch of all K x B rows (the program without accumulation), f64."""
    count = 4
    with jax.enable_x64(True):
        accumulated = stepc.compile_text(mlp("f64", count), filename="k4.ir", trials=1)
        whole = stepc.compile_text(mlp("f64", None, rows=count * B), filename="whole.ir", trials=1)
        params = init_params("f64")
        batch = stacked_batch("f64", count, np.random.default_rng(2))
        loss, grads = accumulated.grad(params, batch)
        flat = {"x": batch["x"].reshape(count * B, D), "labels": batch["labels"].reshape(-1)}
        whole_loss, whole_grads = whole.grad(params, flat)
        assert relative_error(loss, whole_loss) <= 1e-13
        for k in grads:
            assert relative_error(grads[k], whole_grads[k]) <= 1e-12, k


# ---------------------------------------------------------------------------------------------
# The pipeline around the pass


def test_pass_runs_only_when_asked_and_its_contract_is_in_the_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    source = tmp_path / "k4.ir"
    source.write_text(mlp("f32", 4))
    assert main(["check", str(source), "--trials", "2"]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:-1]]
    assert rows[rows.index("canonicalize") + 1] == ACCUMULATE_GRADIENTS
    assert rows[rows.index(ACCUMULATE_GRADIENTS) + 1] == "fuse-sgd"
    plain = tmp_path / "plain.ir"
    plain.write_text(mlp("f32", None))
    assert main(["check", str(plain), "--trials", "1"]) == 0
    assert ACCUMULATE_GRADIENTS not in capsys.readouterr().out
    assert isinstance(CONTRACTS[ACCUMULATE_GRADIENTS], AccumulationContract)


def test_dumps_number_the_pass_and_read_back(tmp_path: Path) -> None:
    source = tmp_path / "k2.ir"
    source.write_text(mlp("f32", 2))
    dumps = tmp_path / "dumps"
    assert main(["compile", str(source), "--dump-dir", str(dumps), "-o", str(tmp_path / "out.mlir"), "--no-check"]) == 0
    names = sorted(p.name for p in dumps.iterdir())
    assert names[5:8] == ["05-canonicalize.mlir", "06-accumulate-gradients.mlir", "07-fuse-sgd.mlir"]
    for dump in dumps.iterdir():
        text = dump.read_text()
        module = parse_module(text, str(dump)) if "stablehlo" in text else parse_text(text, str(dump))
        verify(module)
    assert "step.accumulate (%x.micro = %x, %labels.micro = %labels)" in (dumps / "06-accumulate-gradients.mlir").read_text()


def test_until_the_pass_gives_the_accumulated_gradient_program() -> None:
    with jax.enable_x64(True):
        prog = stepc.compile_text(mlp("f64", 3), filename="k3.ir", until=ACCUMULATE_GRADIENTS, trials=1)
        assert prog.passes[-3:] == ["accumulate-gradients", "lower-to-stablehlo", "simplify-stablehlo"]
        params = init_params("f64")
        batch = stacked_batch("f64", 3, np.random.default_rng(0))
        loss, grads = prog.grad(params, batch)
        plain = stepc.compile_text(mlp("f64", None), filename="plain.ir", until="seed-scalar-loss", trials=1)
        micro = [plain.grad(params, {k: v[i] for k, v in batch.items()}) for i in range(3)]
        assert relative_error(loss, np.mean([float(m[0]) for m in micro])) <= 1e-14
        for key in grads:
            assert relative_error(grads[key], np.mean([m[1][key] for m in micro], axis=0)) <= 1e-14
        # a program without the attribute: the pass named explicitly is a no-op
        none = stepc.compile_text(mlp("f64", None), filename="plain.ir", until=ACCUMULATE_GRADIENTS, trials=1)
        assert none.function("grad").specs[-2].shape == (B, D)


def test_pass_needs_the_seeded_program() -> None:
    module = load_text(mlp("f32", 2), "k2.ir")
    with pytest.raises(StepcError) as info:
        Pipeline([ACCUMULATE_GRADIENTS], check=False).run(module)
    assert "accumulate-gradients needs the program after differentiate and seed-scalar-loss" in info.value.message
    assert "found (loss)" in info.value.message
    line = next(i for i, text in enumerate(mlp("f32", 2).splitlines(), start=1) if "step.accumulate" in text)
    col = mlp("f32", 2).splitlines()[line - 1].index("step.accumulate") + 1
    assert info.value.loc is not None and (info.value.loc.line, info.value.loc.col) == (line, col)


def test_stacked_inputs_over_the_memory_limit_are_a_located_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPC_MAX_BYTES", "1M")
    text = mlp("f32", 100_000)
    with pytest.raises(StepcError) as info:
        load_text(text, "big.ir")
    assert "step.accumulate = 100000: the batch inputs of 100000 micro-batches need about" in info.value.message
    assert "over the memory limit of 1.0 MiB" in info.value.message
    assert info.value.loc is not None and info.value.loc.line == 4


def test_reduced_shapes_and_many_micro_batches() -> None:
    """K over `check.reduced.SMALL` (the stacked axis is then shrunk with the others: the loop
    count follows the operands' leading axis) and wide layers: every contract holds in reduced
    mode, and each pass reports the mode it ran in."""
    text = mlp("f32", 20).replace(f"tensor<{D}x", "tensor<40x").replace(f"x{D}xf32>", "x40xf32>")
    text = text.replace(f"tensor<{B}x", "tensor<24x").replace(f"tensor<{B}xi32>", "tensor<24xi32>")
    module = load_text(text, "wide.ir")
    events = Pipeline.default(check=True, trials=2, check_mode="reduced").run(module)
    modes = {e.name: e.report.mode for e in events[1:] if e.report is not None}
    assert all(r.report is None or r.report.ok for r in events[1:])
    assert modes["fuse-sgd"].startswith("reduced") and modes["lower-to-stablehlo"].startswith("reduced")


# ---------------------------------------------------------------------------------------------
# The API, `stepc exec`, the emitted module, `stepc run`


@pytest.fixture(scope="module")
def k3_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("k3") / "mlp_k3.ir"
    path.write_text(mlp("f32", 3))
    return path


def test_exec_with_stacked_inputs_equals_the_api(k3_program: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prog = stepc.compile(k3_program, trials=1)
    params = init_params("f32")
    batch = stacked_batch("f32", 3, np.random.default_rng(5))
    np.savez(tmp_path / "in.npz", **params, **batch)
    out = tmp_path / "out.npz"
    assert main(["exec", str(k3_program), "--inputs", str(tmp_path / "in.npz"), "-o", str(out), "--steps", "2"]) == 0
    p, s, _ = prog.step(params, prog.init_state(params), batch)
    p, s, loss = prog.step(p, s, batch)
    with np.load(out) as got:
        assert float(got["loss"]) == pytest.approx(float(loss), rel=1e-6)
        for k in params:
            np.testing.assert_allclose(got[k], np.asarray(p[k]), rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(got[f"momentum.{k}"], np.asarray(s[f"momentum.{k}"]), rtol=1e-6, atol=1e-7)
    # one micro-batch where the step takes three: the shape error says what it expects
    np.savez(tmp_path / "bad.npz", **params, **{k: v[0] for k, v in batch.items()})
    assert main(["exec", str(k3_program), "--inputs", str(tmp_path / "bad.npz"), "-o", str(out), "--no-check"]) == 1
    assert "expected (3, 6, 5)" in capsys.readouterr().err


def test_api_refuses_an_unstacked_batch(k3_program: Path) -> None:
    prog = stepc.compile(k3_program, check=False)
    params = init_params("f32")
    batch = stacked_batch("f32", 3, np.random.default_rng(0))
    with pytest.raises(StepcError, match=r"'x' has shape \(6, 5\), expected \(3, 6, 5\)"):
        prog.step(params, prog.init_state(params), {k: v[0] for k, v in batch.items()})
    with pytest.raises(StepcError, match=r"label 'labels'\[1, 2\] is 7, outside the 3 classes"):
        bad = {**batch, "labels": batch["labels"].copy()}
        bad["labels"][1, 2] = 7
        prog.grad(params, bad)


def test_emitted_module_runs_the_loop(k3_program: Path, tmp_path: Path) -> None:
    out = tmp_path / "mlp_k3.py"
    assert main(["compile", str(k3_program), "--emit", "jax-py", "-o", str(out), "--no-check"]) == 0
    text = out.read_text()
    assert "while_loop(f" in text and "lax.dynamic_slice(" in text
    spec = importlib.util.spec_from_file_location("mlp_k3", out)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    prog = stepc.compile(k3_program, check=False)
    params = init_params("f32")
    batch = stacked_batch("f32", 3, np.random.default_rng(7))
    p1, s1, l1 = prog.step(params, prog.init_state(params), batch)
    p2, s2, l2 = module.step(params, module.init_state(params), batch)
    # (the module's functions run jitted, the API's here eagerly: XLA may fuse differently)
    assert float(l1) == pytest.approx(float(l2), rel=1e-6)
    for k in params:
        np.testing.assert_allclose(np.asarray(p1[k]), np.asarray(p2[k]), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(np.asarray(s1[f"momentum.{k}"]), np.asarray(s2[f"momentum.{k}"]), rtol=1e-6, atol=1e-7)
    loss, grads = module.grad(params, batch)  # the grad beside the step is the accumulated one too
    ref_loss, ref_grads = prog.grad(params, batch)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-6)
    for k in grads:
        np.testing.assert_allclose(np.asarray(grads[k]), np.asarray(ref_grads[k]), rtol=1e-6, atol=1e-7)


def test_stacked_stream_groups_consecutive_micro_batches() -> None:
    rows = {"x": np.arange(40, dtype=np.float32).reshape(20, 2), "labels": np.arange(20, dtype=np.int32)}
    plain = train_data.batches(rows, 3, seed=4)
    grouped = train_data.stacked(train_data.batches(rows, 3, seed=4), 2)
    for _ in range(5):
        batch = next(grouped)
        assert batch["x"].shape == (2, 3, 2) and batch["labels"].shape == (2, 3)
        for k in range(2):
            micro = next(plain)
            np.testing.assert_array_equal(batch["x"][k], micro["x"])
            np.testing.assert_array_equal(batch["labels"][k], micro["labels"])


def test_run_trains_with_accumulation_as_torch_does(tmp_path: Path) -> None:
    """`stepc run` on the digits, K = 2: each step the next two micro-batches of the stream a run
    without accumulation reads, the update PyTorch's accumulation loop makes (f64 oracle)."""
    source = tmp_path / "digits_k2.ir"
    source.write_text(MLP_DIGITS.read_text().replace("weight_decay = 5.0e-4>}", "weight_decay = 5.0e-4>, step.accumulate = 2 : i64}"))
    out = tmp_path / "run"
    assert main(["run", str(source), "--steps", "6", "--seed", "3", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accumulate"] == 2 and summary["batch_size"] == 64 and summary["examples_per_step"] == 128
    assert summary["epochs"] == pytest.approx(6 * 128 / summary["train_examples"], abs=1e-4)
    module = load(MLP_DIGITS)
    spec = train_data.signature(module)
    data = train_data.load_data(None, spec)
    init = train_data.default_init(module, seed=3)
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in init.items()}
    opt = torch.optim.SGD(
        [{"params": [p["w1"], p["w2"]]}, {"params": [p["b1"], p["b2"]], "weight_decay": 0.0}],
        lr=0.1, momentum=0.9, weight_decay=5e-4,
    )  # fmt: skip
    stream = train_data.batches(data.train, spec.batch_size, seed=3)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        total = 0.0
        for _ in range(2):
            micro = next(stream)
            x = torch.tensor(micro["x"], dtype=torch.float64)
            logits = torch.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
            loss = torch.nn.functional.cross_entropy(logits, torch.tensor(micro["labels"]).long())
            (loss / 2).backward()
            total += loss.item() / 2
        opt.step()
        losses.append(total)
    np.testing.assert_allclose(summary["losses"], losses, rtol=1e-5, atol=1e-6)
    with np.load(out / "params.npz") as saved:
        for k in p:
            np.testing.assert_allclose(saved[k], p[k].detach().numpy(), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# The loop op's semantics in each engine


LOOP = """func.func @f(%w: tensor<5x3xELEM> {step.param}, %x: tensor<KKx4x5xELEM>)
    -> (tensor<ELEM> {step.output = "loss"}, tensor<5x3xELEM> {step.output = "grad.w"})
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %l, %g = step.accumulate (%x.micro = %x) : (tensor<KKx4x5xELEM>) -> (tensor<ELEM>, tensor<5x3xELEM>) {
    %y = step.matmul %x.micro, %w : (tensor<4x5xELEM>, tensor<5x3xELEM>) -> tensor<4x3xELEM>
    %t = step.tanh %y : tensor<4x3xELEM>
    %s = step.sum %t : tensor<4x3xELEM> -> tensor<ELEM>
    %xt = step.transpose %x.micro perm [1, 0] : tensor<4x5xELEM> -> tensor<5x4xELEM>
    %g1 = step.matmul %xt, %t : (tensor<5x4xELEM>, tensor<4x3xELEM>) -> tensor<5x3xELEM>
    step.yield %s, %g1 : tensor<ELEM>, tensor<5x3xELEM>
  }
  func.return %l, %g : tensor<ELEM>, tensor<5x3xELEM>
}
"""


# The loop's body alone, a program of one micro-batch.
BODY = """func.func @f(%w: tensor<5x3xELEM> {step.param}, %x: tensor<4x5xELEM>)
    -> (tensor<ELEM> {step.output = "loss"}, tensor<5x3xELEM> {step.output = "grad.w"}) {
  %y = step.matmul %x, %w : (tensor<4x5xELEM>, tensor<5x3xELEM>) -> tensor<4x3xELEM>
  %t = step.tanh %y : tensor<4x3xELEM>
  %s = step.sum %t : tensor<4x3xELEM> -> tensor<ELEM>
  %xt = step.transpose %x perm [1, 0] : tensor<4x5xELEM> -> tensor<5x4xELEM>
  %g1 = step.matmul %xt, %t : (tensor<5x4xELEM>, tensor<4x3xELEM>) -> tensor<5x3xELEM>
  func.return %s, %g1 : tensor<ELEM>, tensor<5x3xELEM>
}
"""


def loop_program(element: str, count: int) -> str:
    return LOOP.replace("ELEM", element).replace("KK", str(count))


def loop_inputs(element: str, count: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((5, 3)).astype(NUMPY[element]),
            "x": rng.standard_normal((count, 4, 5)).astype(NUMPY[element])}  # fmt: skip


def test_interpreter_sums_the_body_over_micro_batches_in_order() -> None:
    inputs = loop_inputs("f64", 5)
    out = run_function(parse_text(loop_program("f64", 5), "loop.ir"), inputs)
    w, x = inputs["w"], inputs["x"]
    expected_g = np.zeros((5, 3))
    expected_l = 0.0
    for k in range(5):
        t = np.tanh(x[k] @ w)
        expected_l += t.sum()
        expected_g += x[k].T @ t
    assert relative_error(out["loss"], expected_l) <= 1e-15
    assert relative_error(out["grad.w"], expected_g) <= 1e-15


@pytest.mark.parametrize("element", ["f32", "bf16", "f16"])
def test_loop_within_its_bound_in_the_interpreter_and_in_xla(element: str) -> None:
    """The op's bound rule (the body's bounds on each micro-batch, then a sum of K terms in the
    result's type) holds for the interpreter and for XLA's `stablehlo.while`, in each
    precision; and equals the bound of `step.sum` over the stacked axis of the same terms."""
    count = 12
    module = parse_text(loop_program(element, count), "loop.ir")
    verify(module)
    fn = step_function(module)
    inputs = loop_inputs(element, count, seed=3)
    bounds = evaluate_with_bounds(fn, inputs)
    comparison = Comparison()
    comparison.compare_all(bounds, run_function(module, inputs), "interpreter")
    lowered = lowered_clone(module)
    comparison.compare_all(bounds, XlaExecutable.from_module(lowered)(inputs), "XLA")
    assert comparison.ok, (comparison.worst, comparison.ratio)
    assert comparison.ratio > 0  # a check that compared something
    # the loop's running sum equals `step.sum`'s bound over the body's stacked values and bounds
    body = parse_text(BODY.replace("ELEM", element), "body.ir")
    micro = [evaluate_with_bounds(step_function(body), {"w": inputs["w"], "x": inputs["x"][k]}) for k in range(count)]
    for key in bounds:
        terms = Bounded(*(np.stack([getattr(m[key], f) for m in micro]) for f in ("value", "error", "sigma")))
        summed = _sum(terms, (0,), Precision.of(np.dtype(NUMPY[element])))
        np.testing.assert_allclose(bounds[key].value, summed.value, rtol=1e-12)
        np.testing.assert_allclose(bounds[key].error, summed.error, rtol=1e-12)
        np.testing.assert_allclose(bounds[key].sigma, summed.sigma, rtol=1e-12)
    assert step.AccumulateOp in REGION_RULES


def test_lowered_loop_is_text_xla_compiles_and_reads_back() -> None:
    module = parse_text(loop_program("f32", 3), "loop.ir")
    verify(module)
    lowered = lowered_clone(module)
    text = module_text(lowered)
    assert '"stablehlo.while"' in text and '"stablehlo.dynamic_slice"' in text
    back = parse_module(text)
    verify(back)
    assert module_text(back) == text
    inputs = loop_inputs("f32", 3)
    xla = XlaExecutable.from_text(text, ["w", "x"], ["loss", "grad.w"])(inputs)
    reference = run_function(module, inputs)
    for key in reference:
        np.testing.assert_allclose(xla[key], reference[key], rtol=1e-5)


def test_jaxpr_evaluator_runs_the_loop_and_its_jvp() -> None:
    """`while` and `dynamic_slice` in NumPy, as the reduced contracts run them: the lowered
    loop and its `jax.jvp` (the loop with tangents carried) equal XLA's, f64."""
    module = parse_text(loop_program("f64", 4), "loop.ir")
    verify(module)
    jf = jax_function(lowered_clone(module))
    inputs = loop_inputs("f64", 4, seed=9)
    tangents = loop_inputs("f64", 4, seed=10)
    with jax.enable_x64(True):
        args = (inputs["w"], inputs["x"])
        dots = (tangents["w"], tangents["x"])
        numpy_out = evaluate(lambda *a: jax.jvp(jf.fn, a, dots), *args)
        xla_out = jax.tree_util.tree_leaves(jax.jit(lambda *a: jax.jvp(jf.fn, a, dots))(*args))
    assert len(numpy_out) == len(xla_out) == 4
    for got, want in zip(numpy_out, xla_out):
        np.testing.assert_allclose(got, np.asarray(want), rtol=1e-12, atol=1e-12)


def test_dynamic_slice_clamps_as_xla() -> None:
    """The primitive clamps each start so that the slice fits (`lax.dynamic_slice` wraps negative
    starts before it, in ops of their own)."""
    from stepc.backends.jaxpr_numpy import PRIMITIVES

    x = np.arange(12.0).reshape(4, 3)
    primitive = jax.jit(lambda a, i, j: jax.lax.dynamic_slice_p.bind(a, i, j, slice_sizes=(2, 2)))
    for start in (-2, 0, 2, 3, 9):
        got = PRIMITIVES["dynamic_slice"](x, np.int32(start), np.int32(1), slice_sizes=(2, 2))
        np.testing.assert_array_equal(got, np.asarray(primitive(x, np.int32(start), np.int32(1))))


def test_loop_op_verifier_and_while_verifier() -> None:
    text = loop_program("f32", 3).replace("(%x.micro = %x)", "(%x.micro = %x, %w.micro = %w)").replace(
        "(tensor<3x4x5xf32>) -> (tensor<f32>", "(tensor<3x4x5xf32>, tensor<5x3xf32>) -> (tensor<f32>"
    )
    with pytest.raises(StepcError, match="operand 0 has 3 along its leading axis, operand 1 has 5"):
        verify(parse_text(text, "bad.ir"))
    lowered = lowered_clone(parse_text(loop_program("f32", 3), "loop.ir"))
    loop = next(op for op in lowered.walk() if isinstance(op, shlo.WhileOp))
    loop.body.block.last_op.operands = list(loop.body.block.last_op.operands)[::-1]  # type: ignore[union-attr]
    with pytest.raises(StepcError, match="the body region returns the next value of each operand"):
        verify(lowered)


# ---------------------------------------------------------------------------------------------
# Data parallel: the accumulated step on 8 devices


SHARDED = r"""
import json, sys
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import stepc

prog = stepc.compile(sys.argv[1], check=False)
rng = np.random.default_rng(0)
PARAMS = {"w1": 0.1 * rng.standard_normal((64, 128)), "b1": 0.1 * rng.standard_normal(128),
          "w2": 0.1 * rng.standard_normal((128, 10)), "b2": np.zeros(10)}
PARAMS = {k: v.astype(np.float32) for k, v in PARAMS.items()}
BATCH = {"x": rng.standard_normal((4, 64, 64)).astype(np.float32),
         "labels": rng.integers(0, 10, (4, 64)).astype(np.int32)}
STATE = {k: np.asarray(v) for k, v in prog.init_state(PARAMS).items()}
single = jax.jit(prog.step)(PARAMS, STATE, BATCH)
report = {}
for kind in ("explicit", "auto"):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit if kind == "explicit" else AxisType.Auto,))
    for layout in ("replicated", "fsdp"):
        def sharding(value):
            return NamedSharding(mesh, P("data") if layout == "fsdp" and value.ndim and value.shape[0] % 8 == 0 else P())
        shardings = tuple({k: sharding(v) for k, v in d.items()} for d in (PARAMS, STATE))
        shardings += ({k: NamedSharding(mesh, P(None, "data")) for k in BATCH},)
        args = [jax.device_put(d, s) for d, s in zip((PARAMS, STATE, BATCH), shardings)]
        try:
            params, state, loss = jax.jit(prog.step, in_shardings=shardings)(*args)
            errors = [float(np.max(np.abs(np.asarray(params[k]) - np.asarray(single[0][k])))) for k in PARAMS]
            errors.append(abs(float(loss) - float(single[2])))
            report[f"{kind}-{layout}"] = {"error": max(errors), "devices": min(len(v.sharding.device_set) for v in params.values())}
        except Exception as e:
            report[f"{kind}-{layout}"] = {"failure": f"{type(e).__name__}: {e}"[:2000]}
print(json.dumps(report))
"""


def test_accumulated_step_on_eight_devices_equals_one(tmp_path: Path) -> None:
    """The micro-batches' rows sharded over 8 host devices, parameters replicated or FSDP-sharded,
    on explicit and auto mesh axes: the step equals one device's."""
    source = tmp_path / "digits_k4.ir"
    source.write_text(MLP_DIGITS.read_text().replace("weight_decay = 5.0e-4>}", "weight_decay = 5.0e-4>, step.accumulate = 4 : i64}"))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", SHARDED, str(source)], env=env, capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(report) == {"explicit-replicated", "explicit-fsdp", "auto-replicated", "auto-fsdp"}
    for case, result in report.items():
        assert "failure" not in result, (case, result)
        assert result["error"] <= 1e-5 and result["devices"] == 8, (case, result)


def test_run_on_two_devices_gives_the_losses_of_one(tmp_path: Path) -> None:
    source = tmp_path / "digits_k2.ir"
    source.write_text(MLP_DIGITS.read_text().replace("weight_decay = 5.0e-4>}", "weight_decay = 5.0e-4>, step.accumulate = 2 : i64}"))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    losses = []
    for devices in ("1", "2"):
        out = tmp_path / f"run{devices}"
        done = subprocess.run(
            [sys.executable, "-m", "stepc.tools.cli", "run", str(source), "--steps", "8", "--devices", devices,
             "--out", str(out), "--quiet", "--no-check"],
            env=env, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        losses.append(json.loads((out / "summary.json").read_text())["losses"])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)


def test_memory_benchmark_is_flat_in_k(tmp_path: Path) -> None:
    """`benchmarks/accumulate_memory.py` on mlp784: stepc's temps and its buffers beside the
    stacked batch are the same for K = 2 and 8, and optax `MultiSteps` is measured beside it."""
    out = tmp_path / "memory.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "accumulate_memory.py"), "--k", "2", "8", "--json", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    by_k = json.loads(out.read_text())["by_k"]

    def beside_batch(entry: dict[str, Any], variant: str) -> int:
        m = entry[variant]
        every = m["argument_size_in_bytes"] + m["output_size_in_bytes"] - m["alias_size_in_bytes"] + m["temp_size_in_bytes"]
        return every - entry["_batch"]

    two, eight = by_k["2"], by_k["8"]
    assert eight["_batch"] == 4 * two["_batch"]
    assert two["stepc"]["temp_size_in_bytes"] == eight["stepc"]["temp_size_in_bytes"]
    assert beside_batch(two, "stepc") == beside_batch(eight, "stepc")
    assert beside_batch(two, "stepc, donated") == beside_batch(eight, "stepc, donated")
    assert "optax MultiSteps, one jit" in eight and eight["_optax_acc_grads"] == eight["_params"]
    assert beside_batch(eight, "one batch of 8 x B rows") > beside_batch(two, "one batch of 2 x B rows")


def test_check_pass_on_dumps_catches_a_hand_edited_loop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`stepc check --pass accumulate-gradients BEFORE AFTER` on two dumps: the pass's output
    holds; edited to 2 micro-batches of the 4 asked for (a program that verifies), or to a mean
    over 3, it does not, and the error says why."""
    source = tmp_path / "k4.ir"
    source.write_text(mlp("f64", 4))
    dumps = tmp_path / "dumps"
    assert main(["compile", str(source), "--emit", "step", "--until", ACCUMULATE_GRADIENTS, "--no-check",
                 "--dump-dir", str(dumps), "-o", str(tmp_path / "out.mlir")]) == 0  # fmt: skip
    before, after = dumps / "05-canonicalize.mlir", dumps / "06-accumulate-gradients.mlir"
    assert main(["check", "--pass", ACCUMULATE_GRADIENTS, str(before), str(after)]) == 0
    capsys.readouterr()
    two = tmp_path / "two.mlir"
    two.write_text(after.read_text().replace("tensor<4x6x5xf64>", "tensor<2x6x5xf64>").replace("tensor<4x6xi32>", "tensor<2x6xi32>"))
    assert main(["check", "--pass", ACCUMULATE_GRADIENTS, str(before), str(two)]) == 1
    err = capsys.readouterr().err
    assert "arguments: expected" in err and "%x (input, (4, 6, 5), float64)" in err and "%x (input, (2, 6, 5), float64)" in err
    three = tmp_path / "three.mlir"
    three.write_text(after.read_text().replace("step.constant 4.0", "step.constant 3.0"))
    assert main(["check", "--pass", ACCUMULATE_GRADIENTS, str(before), str(three)]) == 1
    assert "contract of pass accumulate-gradients (mean over micro-batches) does not hold" in capsys.readouterr().err
