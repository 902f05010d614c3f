"""fuse-sgd: its contract, the form of the fused function, and whole examples against PyTorch.

- The contract (the SGD equation in float64 on the pre-pass gradients) holds on a table of
  configurations and element types, and fails on fused programs with a wrong update.
- The fused function has the documented form: state arguments and results, no gradient
  result, only step ops, each located in the user's file.
- The examples, through the default pipeline up to fuse-sgd (differentiate included), train
  for 5 steps as torch.optim.SGD does with autograd on the same model and data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from xdsl.dialects import func
from xdsl.dialects.builtin import FileLineColLoc

from stepc.check.fuse_sgd import SGDEquationContract
from stepc.ir.dialect import ConstantOp
from stepc.ir.interpreter import run_function
from stepc.ir.parse import load, make_context, parse_text, verify
from stepc.ir.printing import program_text
from stepc.ir.program import FIRST_STEP, args, initial_state, missing_state_value, output_names, step_function
from stepc.passes.fuse_sgd import FuseSGD, state_layout
from stepc.pipeline import Pipeline

ROOT = Path(__file__).resolve().parent.parent
N, D, K = 8, 4, 3


def gradient_program(sgd: str, override: str | None = None, w_type: str = "f32", b_type: str | None = None) -> str:
    """The seeded gradient program of mse(x w + b, t) (loss, grad.w, grad.b), written by hand;
    b may have another element type than w (converted into w's on the way in and out)."""
    b_type = b_type or w_type

    def t(element: str, *shape: int) -> str:
        return "tensor<" + "".join(f"{d}x" for d in shape) + element + ">"

    e = w_type
    b_attr = "{step.param}" if override is None else f"{{step.param = #step.sgd<{override}>}}"
    mixed = b_type != w_type
    b_in = f"%bw = step.convert %b : {t(b_type, K)} -> {t(e, K)}" if mixed else ""
    b_out = f"%gb = step.convert %gbw : {t(e, K)} -> {t(b_type, K)}" if mixed else ""
    return f"""\
func.func @linreg(%w: {t(e, D, K)} {{step.param}}, %b: {t(b_type, K)} {b_attr}, %x: {t(e, N, D)}, %t: {t(e, N, K)})
    -> ({t(e)} {{step.output = "loss"}}, {t(e, D, K)} {{step.output = "grad.w"}},
        {t(b_type, K)} {{step.output = "grad.b"}})
    attributes {{step.sgd = #step.sgd<{sgd}>}} {{
  %xw = step.matmul %x, %w : ({t(e, N, D)}, {t(e, D, K)}) -> {t(e, N, K)}
  {b_in}
  %y = step.add %xw, {"%bw" if mixed else "%b"} : ({t(e, N, K)}, {t(e, K)}) -> {t(e, N, K)}
  %loss = step.mse %y, %t : ({t(e, N, K)}, {t(e, N, K)}) -> {t(e)}
  %r = step.sub %y, %t : ({t(e, N, K)}, {t(e, N, K)}) -> {t(e, N, K)}
  %scale = step.constant {2.0 / (N * K)!r} : {t(e)}
  %dy = step.mul %r, %scale : ({t(e, N, K)}, {t(e)}) -> {t(e, N, K)}
  %xt = step.transpose %x perm [1, 0] : {t(e, N, D)} -> {t(e, D, N)}
  %gw = step.matmul %xt, %dy : ({t(e, D, N)}, {t(e, N, K)}) -> {t(e, D, K)}
  %gbw = step.sum %dy dims [0] : {t(e, N, K)} -> {t(e, K)}
  {b_out}
  func.return %loss, %gw, {"%gb" if mixed else "%gbw"} : {t(e)}, {t(e, D, K)}, {t(b_type, K)}
}}
"""


def parsed(text: str, name: str = "grad.mlir"):  # type: ignore[no-untyped-def]
    module = parse_text(text, name)
    verify(module)
    return module


def fused(text: str):  # type: ignore[no-untyped-def]
    before = parsed(text)
    after = before.clone()
    FuseSGD().apply(make_context(), after)
    verify(after)
    return before, after


# (id, function's #step.sgd, b's override, w's element type, b's element type)
CONFIGS = [
    ("plain", "lr = 0.1", None, "f32", None),
    ("momentum", "lr = 0.1, momentum = 0.9", None, "f32", None),
    ("dampening", "lr = 0.1, momentum = 0.9, dampening = 0.3, weight_decay = 0.01", None, "f64", None),
    ("nesterov-maximize", "lr = 0.1, momentum = 0.9, nesterov = true, maximize = true", None, "f64", None),
    ("group-no-momentum", "lr = 0.1, momentum = 0.9, dampening = 0.2", "momentum = 0.0, lr = 0.3", "f32", None),
    ("group-dampened", "lr = 0.1, momentum = 0.9", "dampening = 0.5, weight_decay = 0.1", "f64", None),
    ("f16", "lr = 0.1, momentum = 0.9, dampening = 0.3, weight_decay = 0.01", None, "f16", None),
    ("bf16", "lr = 0.1, momentum = 0.9, weight_decay = 0.01, maximize = true", None, "bf16", None),
    ("mixed-f64-f32", "lr = 0.1, momentum = 0.9, dampening = 0.3", None, "f64", "f32"),
    ("mixed-f32-bf16", "lr = 0.1, momentum = 0.5, dampening = 0.1", "lr = 0.2", "f32", "bf16"),
]


@pytest.mark.parametrize("sgd, override, w_type, b_type", [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_contract_holds(sgd, override, w_type, b_type) -> None:  # type: ignore[no-untyped-def]
    before, after = fused(gradient_program(sgd, override, w_type, b_type))
    report = SGDEquationContract().check("fuse-sgd", before, after, trials=2, seed=1)
    assert report.ok, report.failure_message()
    assert report.trials == 4  # a first and a later step per trial
    # Each parameter is updated in its own element type.
    outputs = dict(zip(output_names(step_function(after)), step_function(after).function_type.outputs.data))
    assert str(outputs["w"].get_element_type()) == w_type  # type: ignore[attr-defined]
    assert str(outputs["b"].get_element_type()) == (b_type or w_type)  # type: ignore[attr-defined]


SGD_ALL = "lr = 0.1, momentum = 0.9, dampening = 0.3, weight_decay = 0.01"


def _mutant(after, pick, value: float):  # type: ignore[no-untyped-def]
    """The fused program with one constant changed: the `pick`-th constant equal to a value."""
    module = after.clone()
    constants = [op for op in step_function(module).walk() if isinstance(op, ConstantOp)]
    target = pick(constants)
    target.properties["value"] = ConstantOp(value, target.result.type).value
    return module


@pytest.mark.parametrize(
    "what, pick, value",
    [
        ("lr off by 1%", lambda cs: [c for c in cs if c.splat == 0.1][-1], 0.101),
        ("no weight decay", lambda cs: next(c for c in cs if c.splat == 0.01), 0.0),
        ("dampening ignored", lambda cs: next(c for c in cs if c.splat == 0.7), 1.0),
        ("momentum wrong", lambda cs: next(c for c in cs if c.splat == 0.9), 0.8),
        ("next step marked first", lambda cs: cs[-1], 1.0),
    ],
)
def test_contract_catches_a_wrong_update(what, pick, value) -> None:  # type: ignore[no-untyped-def]
    before, after = fused(gradient_program(SGD_ALL, None, "f64"))
    assert SGDEquationContract().check("fuse-sgd", before, after, trials=1, seed=0).ok
    report = SGDEquationContract().check("fuse-sgd", before, _mutant(after, pick, value), trials=1, seed=0)
    assert not report.ok, what


def test_contract_catches_a_missing_buffer() -> None:
    before, _ = fused(gradient_program("lr = 0.1, momentum = 0.9", None, "f64"))
    # A program that updates with plain SGD is not the momentum step the pre-pass program asks for.
    _, plain = fused(gradient_program("lr = 0.1", None, "f64"))
    report = SGDEquationContract().check("fuse-sgd", before, plain, trials=1, seed=0)
    assert not report.ok and "momentum" in report.worst


def test_fused_form() -> None:
    text = gradient_program(SGD_ALL, "momentum = 0.0, maximize = true")
    _, after = fused(text)
    fn = step_function(after)
    roles = [(a.name, a.role, a.state_key) for a in args(fn)]
    assert roles == [
        ("w", "param", None),
        ("b", "param", None),
        ("x", "input", None),
        ("t", "input", None),
        ("momentum.w", "state", "momentum.w"),  # b's group has no momentum: no buffer
        (FIRST_STEP, "state", FIRST_STEP),
    ]
    assert output_names(fn) == ["w", "b", "momentum.w", FIRST_STEP, "loss"]
    assert [(k, str(t)) for k, t in state_layout(step_function(parsed(text)))] == [
        ("momentum.w", "tensor<4x3xf32>"),
        (FIRST_STEP, "tensor<f32>"),
    ]
    # Only step ops, each located in the user's file (the new ones at the function or a parameter).
    for op in fn.body.blocks.first.ops:
        assert op.name.startswith("step.") or isinstance(op, func.ReturnOp), op.name
        assert isinstance(op.location, FileLineColLoc) and op.location.filename.data == "grad.mlir", op


def test_no_flag_without_dampening() -> None:
    _, after = fused(gradient_program("lr = 0.1, momentum = 0.9, nesterov = true"))
    assert output_names(step_function(after)) == ["w", "b", "momentum.w", "momentum.b", "loss"]
    _, after = fused(gradient_program("lr = 0.1, weight_decay = 0.1"))
    assert output_names(step_function(after)) == ["w", "b", "loss"]


def test_initial_state_is_a_first_step() -> None:
    _, after = fused(gradient_program(SGD_ALL, None, "bf16"))
    state = initial_state(step_function(after))
    assert sorted(state) == [FIRST_STEP, "momentum.b", "momentum.w"]
    assert state[FIRST_STEP].shape == () and state[FIRST_STEP] == 1.0 and state[FIRST_STEP].dtype == np.float32
    assert state["momentum.w"].shape == (D, K) and str(state["momentum.w"].dtype) == "bfloat16"
    assert not np.any(state["momentum.w"].astype(np.float32))


def test_state_left_out() -> None:
    # Nothing given: a first step. Buffers given: the run goes on, so not a first step.
    assert missing_state_value(FIRST_STEP, []) == 1.0
    assert missing_state_value("momentum.w", []) == 0.0
    assert missing_state_value(FIRST_STEP, ["momentum.w"]) == 0.0


def test_printed_program_reads_back_and_runs_the_same() -> None:
    _, after = fused(gradient_program(SGD_ALL, "lr = 0.05", "f64"))
    again = parsed(program_text(after), "again.mlir")
    rng = np.random.default_rng(0)
    inputs = {a.name: rng.standard_normal(a.type.get_shape()) for a in args(step_function(after))}
    inputs[FIRST_STEP] = np.array(0.0, dtype=np.float32)
    a, b = run_function(after, inputs), run_function(again, inputs)
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_the_pipeline_runs_the_contract() -> None:
    module = parsed(gradient_program(SGD_ALL, "lr = 0.05"))
    events = Pipeline.parse("fuse-sgd", trials=2).run(module)
    report = events[-1].report
    assert report is not None and report.ok and report.contract == "SGD equation"


# ---------------------------------------------------------------------------------------------
# The examples, differentiate included, against torch.optim.SGD


def torch_mlp_digits(p, batch):  # type: ignore[no-untyped-def]
    h = torch.relu(batch["x"] @ p["w1"] + p["b1"])
    return torch.nn.functional.cross_entropy(h @ p["w2"] + p["b2"], batch["labels"].long())


def torch_linreg(p, batch):  # type: ignore[no-untyped-def]
    return torch.nn.functional.mse_loss(batch["x"] @ p["w"] + p["b"], batch["t"])


def torch_softmax_regression(p, batch):  # type: ignore[no-untyped-def]
    lp = torch.log_softmax(batch["x"] @ p["w"] + p["b"], dim=1)
    return (-(lp * batch["onehot"]).sum(dim=1)).mean()


EXAMPLES = [
    # (file, torch model, torch param groups: {param: overrides}, SGD arguments)
    (
        "mlp_digits.ir",
        torch_mlp_digits,
        {"b1": {"weight_decay": 0.0}, "b2": {"weight_decay": 0.0}},
        dict(lr=0.1, momentum=0.9, weight_decay=5e-4),
    ),
    ("linreg.ir", torch_linreg, {}, dict(lr=0.01)),
    ("softmax_regression.ir", torch_softmax_regression, {}, dict(lr=0.5, momentum=0.9, nesterov=True)),
]


@pytest.mark.parametrize("file, model, groups, hyper", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example_trains_as_torch(file, model, groups, hyper) -> None:  # type: ignore[no-untyped-def]
    module = load(ROOT / "examples" / file)
    forward = step_function(module)
    names = [a.name for a in args(forward) if a.role == "param"]
    Pipeline.default(until="fuse-sgd", lower=False, check=False).run(module)
    fn = step_function(module)

    rng = np.random.default_rng(3)
    params = {
        a.name: (rng.standard_normal(a.type.get_shape()) * 0.3).astype(np.float32)
        for a in args(fn)
        if a.role == "param"
    }
    batches = []
    for _ in range(5):
        batch = {}
        for a in args(fn):
            if a.role != "input":
                continue
            shape = tuple(a.type.get_shape())
            if a.name == "labels":
                batch[a.name] = rng.integers(0, 10, size=shape).astype(np.int32)
            elif a.name == "onehot":
                batch[a.name] = np.eye(shape[1], dtype=np.float32)[rng.integers(0, shape[1], size=shape[0])]
            else:
                batch[a.name] = rng.standard_normal(shape).astype(np.float32)
        batches.append(batch)

    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    plain = [tensors[n] for n in names if n not in groups]
    param_groups = ([{"params": plain}] if plain else []) + [{"params": [tensors[n]], **o} for n, o in groups.items()]
    opt = torch.optim.SGD(param_groups, foreach=False, **hyper)

    current, state = dict(params), initial_state(fn)
    for step, batch in enumerate(batches, start=1):
        out = run_function(module, {**current, **batch, **state})
        current = {n: out[n] for n in names}
        state = {k: out[k] for k in state}

        opt.zero_grad()
        loss = model(tensors, {k: torch.from_numpy(v) for k, v in batch.items()})
        loss.backward()
        assert abs(float(out["loss"]) - loss.item()) <= 1e-5 * max(1.0, abs(loss.item()))
        opt.step()
        for n in names:
            theirs = tensors[n].detach().numpy().astype(np.float64)
            err = np.max(np.abs(current[n] - theirs)) / np.max(np.abs(theirs))
            assert err <= 1e-5, f"{file} step {step}: {n} relative error {err:.3g}"
            buf = opt.state[tensors[n]].get("momentum_buffer")
            if buf is not None:
                theirs = buf.numpy().astype(np.float64)
                err = np.max(np.abs(state[f"momentum.{n}"] - theirs)) / np.max(np.abs(theirs))
                assert err <= 1e-5, f"{file} step {step}: momentum.{n} relative error {err:.3g}"
