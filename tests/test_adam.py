"""fuse-adam against torch.optim.Adam and AdamW, and clip-grad-norm against
torch.nn.utils.clip_grad_norm_: the issue's grids, 6 steps per case.

Adam and AdamW x amsgrad x maximize x weight_decay {0, 0.1} x parameter groups (with/without a
group for `b` with its own lr, betas, eps, weight decay) x {f32, f64}: 64 cases. As in
tests/test_sgd_grid.py the input of the pass is the least-squares gradient program written out by
hand; the fused program runs through the reference interpreter, each step on a fresh batch,
feeding parameters and state forward; PyTorch runs the same model with autograd and
`torch.optim.Adam/AdamW(foreach=False)` (the single-tensor path). Parameters, `exp_avg`,
`exp_avg_sq`, `max_exp_avg_sq` and `step` must agree after every step: f64 relative error
<= 1e-12, f32 <= 1e-5 (max |ours - torch| / max |torch| per tensor).

The whole pipeline (contracts, lowering, XLA through the Python API) runs a few cases end to end.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import stepc
from stepc.ir.diagnostics import StepcError
from stepc.ir.interpreter import run_function
from stepc.ir.parse import make_context, parse_text, verify
from stepc.ir.program import args, initial_state, output_names, step_function, verify_step_function
from stepc.passes.clip_grad_norm import ClipGradNorm
from stepc.passes.fuse_adam import FuseAdam
from stepc.passes.fuse_sgd import FuseSGD
from tests.test_sgd_grid import NUMPY, TOLERANCE, TORCH, D, K, N, gradient_program, relative_error

STEPS = 6
KINDS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def fields_text(fields: dict[str, float | bool]) -> str:
    return ", ".join(f"{k} = {str(v).lower() if isinstance(v, bool) else repr(float(v))}" for k, v in fields.items())


def program(element: str, kind: str, hyper: dict, group: dict | None, extra: str = "") -> str:  # type: ignore[type-arg]
    text = gradient_program(element, fields_text(hyper), fields_text(group) if group is not None else None)
    text = text.replace("step.sgd = #step.sgd<", f"step.{kind} = #step.{kind}<").replace("#step.sgd<", f"#step.{kind}<")
    return text.replace("attributes {", "attributes {" + extra) if extra else text


def fused(element: str, kind: str, hyper: dict, group: dict | None, clip: float | None = None):  # type: ignore[no-untyped-def, type-arg]
    extra = f"step.clip_grad_norm = {clip!r} : f64, " if clip is not None else ""
    module = parse_text(program(element, kind, hyper, group, extra), "grid.mlir")
    verify(module)
    if clip is not None:
        ClipGradNorm().apply(make_context(), module)
        verify(module)
    (FuseSGD() if kind == "sgd" else FuseAdam()).apply(make_context(), module)
    verify(module)
    return module


def data(rng: np.random.Generator, scale: float = 1.0):  # type: ignore[no-untyped-def]
    params = {"w": rng.standard_normal((D, K)), "b": rng.standard_normal(K)}
    batches = [{"x": rng.standard_normal((N, D)) * scale, "t": rng.standard_normal((N, K)) * scale} for _ in range(STEPS)]
    return params, batches


def run_ours(module, element: str, params, batches):  # type: ignore[no-untyped-def]
    fn = step_function(module)
    dtype = NUMPY[element]
    current = {k: v.astype(dtype) for k, v in params.items()}
    state = initial_state(fn)
    history = []
    for batch in batches:
        out = run_function(module, {**current, **{k: v.astype(dtype) for k, v in batch.items()}, **state})
        current = {name: out[name] for name in params}
        state = {key: out[key] for key in state}
        history.append({**current, **state})
    return history


def torch_group(group: dict | None) -> dict:  # type: ignore[type-arg]
    """A group of our field names as torch's (beta1, beta2 -> betas)."""
    out = dict(group or {})
    if "beta1" in out or "beta2" in out:
        out["betas"] = (out.pop("beta1", 0.9), out.pop("beta2", 0.999))
    return out


def run_torch(element: str, kind: str, hyper: dict, group: dict | None, params, batches, clip: float | None = None):  # type: ignore[no-untyped-def, type-arg]
    dtype = TORCH[element]
    tensors = {
        k: torch.tensor(v.astype(NUMPY[element]).astype(np.float64), dtype=dtype, requires_grad=True)
        for k, v in params.items()
    }
    groups = [{"params": [tensors["w"]]}, {"params": [tensors["b"]], **torch_group(group)}]
    if kind == "sgd":
        opt = torch.optim.SGD(groups, foreach=False, **hyper)
    else:
        opt = KINDS[kind](groups, foreach=False, **torch_group(hyper))
    history = []
    for batch in batches:
        x, t = (torch.tensor(batch[k].astype(NUMPY[element]).astype(np.float64), dtype=dtype) for k in ("x", "t"))
        opt.zero_grad()
        torch.nn.functional.mse_loss(x @ tensors["w"] + tensors["b"], t).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(tensors.values()), clip, foreach=False)
        opt.step()
        snapshot = {k: v.detach().to(torch.float64).numpy().copy() for k, v in tensors.items()}
        for k, v in tensors.items():
            for name, value in opt.state[v].items():
                if name == "momentum_buffer":
                    name = "momentum"
                if name == "step":
                    snapshot["step"] = np.asarray(float(value))
                else:
                    snapshot[f"{name}.{k}"] = value.to(torch.float64).numpy().copy()
        history.append(snapshot)
    return history


def compare(ours, theirs, element: str) -> float:  # type: ignore[no-untyped-def]
    worst = 0.0
    for step, (a, b) in enumerate(zip(ours, theirs), start=1):
        assert sorted(a) == sorted(b), f"step {step}: our tensors {sorted(a)}, torch's {sorted(b)}"
        for key in b:
            err = relative_error(a[key], b[key])
            worst = max(worst, err)
            assert err <= TOLERANCE[element], f"step {step}, {key}: relative error {err:.3g} > {TOLERANCE[element]}"
    return worst


GRID = list(itertools.product(("adam", "adamw"), (False, True), (False, True), (0.0, 0.1), (False, True), ("f32", "f64")))


@pytest.mark.parametrize(
    "kind, amsgrad, maximize, weight_decay, groups, element",
    GRID,
    ids=[
        f"{k}-{'ams' if a else 'plain'}-{'max' if m else 'min'}-wd{wd}-{'groups' if g else 'one'}-{e}"
        for k, a, m, wd, g, e in GRID
    ],
)
def test_fused_adam_matches_torch(kind, amsgrad, maximize, weight_decay, groups, element) -> None:  # type: ignore[no-untyped-def]
    hyper = dict(lr=0.05, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize)
    # b's group: its own lr, betas, eps and no weight decay (and amsgrad flipped)
    group = dict(lr=0.02, beta1=0.5, beta2=0.9, eps=1e-3, weight_decay=0.0, amsgrad=not amsgrad) if groups else None
    module = fused(element, kind, hyper, group)
    fn = step_function(module)
    b_ams = (not amsgrad) if groups else amsgrad
    expected_state = ["exp_avg.w", "exp_avg_sq.w", *(["max_exp_avg_sq.w"] if amsgrad else []),
                      "exp_avg.b", "exp_avg_sq.b", *(["max_exp_avg_sq.b"] if b_ams else []), "step"]  # fmt: skip
    assert [a.name for a in args(fn) if a.role == "state"] == expected_state
    assert output_names(fn) == ["w", "b", *expected_state, "loss"]
    params, batches = data(np.random.default_rng(GRID.index((kind, amsgrad, maximize, weight_decay, groups, element))))
    compare(run_ours(module, element, params, batches), run_torch(element, kind, hyper, group, params, batches), element)


def test_defaults_are_torchs() -> None:
    """No field written: Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0) and AdamW's 0.01."""
    for kind in ("adam", "adamw"):
        module = fused("f64", kind, {}, None)
        params, batches = data(np.random.default_rng(7))
        compare(run_ours(module, "f64", params, batches), run_torch("f64", kind, {}, None, params, batches), "f64")


@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_whole_pipeline_matches_torch(kind: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Every contract, the lowering and XLA (the Python API), f64 and f32, with clipping."""
    hyper = dict(lr=0.05, weight_decay=0.1, amsgrad=True)
    group = dict(lr=0.02, beta1=0.5, maximize=True)
    for element in ("f64", "f32"):
        for clip in (None, 0.5):
            extra = f"step.clip_grad_norm = {clip!r} : f64, " if clip is not None else ""
            path = tmp_path / f"{kind}-{element}.ir"
            path.write_text(program(element, kind, hyper, group, extra).replace(
                ' {step.output = "loss"}, ', ", ").replace("step.output", "step.unused"))
            prog = stepc.compile(str(_forward(path, element, kind, hyper, group, extra)))
            params, batches = data(np.random.default_rng(3))
            dtype = NUMPY[element]
            current = {k: v.astype(dtype) for k, v in params.items()}
            state = prog.init_state(current)
            assert all(float(np.max(np.abs(np.asarray(v)))) == 0.0 for v in state.values())  # zeros and step 0
            ours = []
            for batch in batches:
                current, state, _ = prog.step(current, state, {k: v.astype(dtype) for k, v in batch.items()})
                ours.append({**{k: np.asarray(v) for k, v in current.items()}, **{k: np.asarray(v) for k, v in state.items()}})
            compare(ours, run_torch(element, kind, hyper, group, params, batches, clip), element)


def _forward(path, element: str, kind: str, hyper: dict, group: dict | None, extra: str):  # type: ignore[no-untyped-def, type-arg]
    """The forward program (what users write) of the least-squares model."""

    def t(*shape: int) -> str:
        return "tensor<" + "".join(f"{d}x" for d in shape) + element + ">"

    b_attr = "{step.param}" if group is None else f"{{step.param = #step.{kind}<{fields_text(group)}>}}"
    path.write_text(f"""
func.func @linreg(%w: {t(D, K)} {{step.param}}, %b: {t(K)} {b_attr}, %x: {t(N, D)}, %t: {t(N, K)}) -> {t()}
    attributes {{{extra}step.{kind} = #step.{kind}<{fields_text(hyper)}>}} {{
  %xw = step.matmul %x, %w : ({t(N, D)}, {t(D, K)}) -> {t(N, K)}
  %y = step.add %xw, %b : ({t(N, K)}, {t(K)}) -> {t(N, K)}
  %loss = step.mse %y, %t : ({t(N, K)}, {t(N, K)}) -> {t()}
  func.return %loss : {t()}
}}
""")
    return path


# ---------------------------------------------------------------------------------------------
# clip_grad_norm: above and below the limit, with every optimizer


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("element", ["f32", "f64"])
@pytest.mark.parametrize("clip, scale", [(0.1, 1.0), (1e3, 1.0), (1.0, 0.05), (1.0, 20.0)],
                         ids=["clipped", "unclipped", "small-grads", "large-grads"])
def test_clip_grad_norm_matches_torch(kind: str, element: str, clip: float, scale: float) -> None:
    hyper: dict = dict(lr=0.05, momentum=0.9) if kind == "sgd" else dict(lr=0.05)  # type: ignore[type-arg]
    module = fused(element, kind, hyper, None, clip=clip)
    params, batches = data(np.random.default_rng(11), scale)
    compare(run_ours(module, element, params, batches), run_torch(element, kind, hyper, None, params, batches, clip), element)


def test_clip_both_sides_of_the_limit_are_exercised() -> None:
    """The cases above do clip, and do not: torch's total norms on either side of the limit."""
    params, batches = data(np.random.default_rng(11), 1.0)
    w = torch.tensor(params["w"], requires_grad=True)
    b = torch.tensor(params["b"], requires_grad=True)
    x, t = (torch.tensor(batches[0][k]) for k in ("x", "t"))
    torch.nn.functional.mse_loss(x @ w + b, t).backward()
    norm = float(torch.nn.utils.clip_grad_norm_([w, b], math.inf))
    assert 0.1 < norm < 1e3


# ---------------------------------------------------------------------------------------------
# torch's ValueErrors, located


@pytest.mark.parametrize(
    "fields, message",
    [
        ("lr = -1.0", "invalid Adam lr: -1"),
        ("eps = -1.0e-8", "invalid Adam eps"),
        ("beta1 = 1.0", "invalid Adam beta1: 1"),
        ("beta2 = -0.5", "invalid Adam beta2"),
        ("weight_decay = -0.1", "invalid Adam weight_decay"),
    ],
)
def test_adam_value_errors_are_located(fields: str, message: str) -> None:
    text = f"""func.func @f(%w: tensor<3xf32> {{step.param}}, %x: tensor<3xf32>) -> tensor<f32>
    attributes {{step.adam = #step.adam<{fields}>}} {{
  %y = step.mul %w, %x : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xf32>
  %l = step.sum %y : tensor<3xf32> -> tensor<f32>
  func.return %l : tensor<f32>
}}"""
    with pytest.raises(StepcError, match=message) as info:
        verify_step_function(step_function(parse_text(text, "e.mlir")))
    assert "e.mlir:2:" in info.value.render()
    # torch refuses the same fields
    name, raw = fields.split(" = ")
    arg = {"betas": (float(raw), 0.999)} if name == "beta1" else {"betas": (0.9, float(raw))} if name == "beta2" else {name: float(raw)}
    with pytest.raises(ValueError):
        torch.optim.Adam([torch.zeros(3, requires_grad=True)], **arg)  # type: ignore[arg-type]


def test_group_of_another_optimizer_is_located() -> None:
    text = """func.func @f(%w: tensor<3xf32> {step.param = #step.sgd<lr = 0.1>}, %x: tensor<3xf32>) -> tensor<f32>
    attributes {step.adam = #step.adam<>} {
  %y = step.mul %w, %x : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xf32>
  %l = step.sum %y : tensor<3xf32> -> tensor<f32>
  func.return %l : tensor<f32>
}"""
    with pytest.raises(StepcError, match=r"must be a #step\.adam") as info:
        verify_step_function(step_function(parse_text(text, "g.mlir")))
    assert "g.mlir:1:" in info.value.render()
