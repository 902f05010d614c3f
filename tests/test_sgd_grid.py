"""fuse-sgd against torch.optim.SGD: the issue's grid, 5 steps per case.

momentum {0, 0.9} x dampening {0, 0.3} x nesterov x weight_decay {0, 1e-2} x maximize x
parameter groups (with/without a per-parameter override) x {f32, f64}, valid combinations
only (nesterov needs momentum and no dampening): 80 cases. The step is least squares with two
parameters of different shapes, `y = x w + b`; its gradient program (the input of fuse-sgd,
written out by hand here) runs fused through the reference interpreter for 5 steps, each on
a fresh batch, feeding parameters and state forward; PyTorch runs the same model with autograd
and `torch.optim.SGD(foreach=False)`. Parameters and momentum buffers must agree after every
step: f64 relative error <= 1e-12, f32 <= 1e-5 (max |ours - torch| / max |torch| per tensor).

A smaller test updates f16 and bf16 parameters, each in its own dtype.
"""

from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
import pytest
import torch

from stepc.ir.interpreter import run_function
from stepc.ir.parse import make_context, parse_text, verify
from stepc.ir.program import args, initial_state, output_names, step_function
from stepc.passes.fuse_sgd import FuseSGD

STEPS = 5
N, D, K = 8, 4, 3  # batch, features, outputs: w is DxK, b is K
TOLERANCE = {"f64": 1e-12, "f32": 1e-5, "f16": 1e-2, "bf16": 4e-2}
NUMPY = {"f64": np.float64, "f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16}
TORCH = {"f64": torch.float64, "f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def gradient_program(element: str, sgd: str, override: str | None) -> str:
    """The program after differentiate + seed-scalar-loss for mse(x w + b, t): loss, grad.w, grad.b.

    d loss / d y = 2 (y - t) / (N K); grad.w = x^T dy; grad.b = sum over the batch of dy.
    """

    def t(*shape: int) -> str:
        return "tensor<" + "".join(f"{d}x" for d in shape) + element + ">"

    b_attr = "{step.param}" if override is None else f"{{step.param = #step.sgd<{override}>}}"
    return f"""
func.func @linreg(%w: {t(D, K)} {{step.param}}, %b: {t(K)} {b_attr}, %x: {t(N, D)}, %t: {t(N, K)})
    -> ({t()} {{step.output = "loss"}}, {t(D, K)} {{step.output = "grad.w"}}, {t(K)} {{step.output = "grad.b"}})
    attributes {{step.sgd = #step.sgd<{sgd}>}} {{
  %xw = step.matmul %x, %w : ({t(N, D)}, {t(D, K)}) -> {t(N, K)}
  %y = step.add %xw, %b : ({t(N, K)}, {t(K)}) -> {t(N, K)}
  %loss = step.mse %y, %t : ({t(N, K)}, {t(N, K)}) -> {t()}
  %r = step.sub %y, %t : ({t(N, K)}, {t(N, K)}) -> {t(N, K)}
  %scale = step.constant {2.0 / (N * K)!r} : {t()}
  %dy = step.mul %r, %scale : ({t(N, K)}, {t()}) -> {t(N, K)}
  %xt = step.transpose %x perm [1, 0] : {t(N, D)} -> {t(D, N)}
  %gw = step.matmul %xt, %dy : ({t(D, N)}, {t(N, K)}) -> {t(D, K)}
  %gb = step.sum %dy dims [0] : {t(N, K)} -> {t(K)}
  func.return %loss, %gw, %gb : {t()}, {t(D, K)}, {t(K)}
}}
"""


def fused(element: str, hyper: dict[str, float | bool], group: dict[str, float] | None):  # type: ignore[no-untyped-def]
    def text(fields: dict[str, float | bool]) -> str:
        return ", ".join(
            f"{k} = {str(v).lower() if isinstance(v, bool) else repr(float(v))}" for k, v in fields.items()
        )

    module = parse_text(gradient_program(element, text(hyper), text(group) if group else None), "grid.mlir")
    verify(module)
    FuseSGD().apply(make_context(), module)
    verify(module)
    return module


def data(rng: np.random.Generator) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    params = {"w": rng.standard_normal((D, K)), "b": rng.standard_normal(K)}
    batches = [{"x": rng.standard_normal((N, D)), "t": rng.standard_normal((N, K))} for _ in range(STEPS)]
    return params, batches


def run_ours(module, element: str, params, batches):  # type: ignore[no-untyped-def]
    """5 fused steps through the interpreter; parameters and buffers after each step."""
    fn = step_function(module)
    dtype = NUMPY[element]
    current = {k: v.astype(dtype) for k, v in params.items()}
    state = initial_state(fn)
    history = []
    for batch in batches:
        out = run_function(module, {**current, **{k: v.astype(dtype) for k, v in batch.items()}, **state})
        current = {name: out[name] for name in params}
        state = {key: out[key] for key in state}
        history.append({**current, **{k: v for k, v in state.items() if k.startswith("momentum.")}})
    return history


def run_torch(element: str, hyper: dict[str, float | bool], group: dict[str, float] | None, params, batches):  # type: ignore[no-untyped-def]
    dtype = TORCH[element]
    tensors = {
        k: torch.tensor(v.astype(NUMPY[element]).astype(np.float64), dtype=dtype, requires_grad=True)
        for k, v in params.items()
    }
    groups = [{"params": [tensors["w"]]}, {"params": [tensors["b"]], **(group or {})}]
    opt = torch.optim.SGD(groups, foreach=False, **hyper)  # type: ignore[arg-type]
    history = []
    for batch in batches:
        x, t = (torch.tensor(batch[k].astype(NUMPY[element]).astype(np.float64), dtype=dtype) for k in ("x", "t"))
        opt.zero_grad()
        torch.nn.functional.mse_loss(x @ tensors["w"] + tensors["b"], t).backward()
        opt.step()
        snapshot = {k: v.detach().to(torch.float64).numpy().copy() for k, v in tensors.items()}
        for k, v in tensors.items():
            buf = opt.state[v].get("momentum_buffer")
            if buf is not None:
                snapshot[f"momentum.{k}"] = buf.to(torch.float64).numpy().copy()
        history.append(snapshot)
    return history


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    ours64 = np.asarray(ours, dtype=np.float64)
    return float(np.max(np.abs(ours64 - theirs)) / max(np.max(np.abs(theirs)), 1e-300))


def compare(ours, theirs, element: str) -> None:  # type: ignore[no-untyped-def]
    for step, (a, b) in enumerate(zip(ours, theirs), start=1):
        assert sorted(a) == sorted(b), f"step {step}: our tensors {sorted(a)}, torch's {sorted(b)}"
        for key in b:
            assert a[key].dtype == NUMPY[element], f"{key} came back as {a[key].dtype}"
            err = relative_error(a[key], b[key])
            assert err <= TOLERANCE[element], f"step {step}, {key}: relative error {err:.3g} > {TOLERANCE[element]}"


def valid_grid() -> list[tuple]:
    cases = []
    for momentum, dampening, nesterov, weight_decay, maximize, groups, element in itertools.product(
        (0.0, 0.9), (0.0, 0.3), (False, True), (0.0, 1e-2), (False, True), (False, True), ("f32", "f64")
    ):
        if nesterov and (momentum <= 0.0 or dampening != 0.0):
            continue  # torch.optim.SGD refuses it (tests/test_sgd_errors.py)
        cases.append((momentum, dampening, nesterov, weight_decay, maximize, groups, element))
    return cases


GRID = valid_grid()


def test_grid_has_every_valid_combination() -> None:
    # (momentum, dampening, nesterov): (0, 0, F), (0, .3, F), (.9, 0, F), (.9, 0, T), (.9, .3, F)
    assert len(GRID) == 5 * 2 * 2 * 2 * 2


@pytest.mark.parametrize(
    "momentum, dampening, nesterov, weight_decay, maximize, groups, element",
    GRID,
    ids=[
        f"m{m}-d{d}-{'nesterov' if n else 'plain'}-wd{wd}-{'max' if mx else 'min'}-{'groups' if g else 'one'}-{e}"
        for m, d, n, wd, mx, g, e in GRID
    ],
)
def test_fused_sgd_matches_torch(momentum, dampening, nesterov, weight_decay, maximize, groups, element) -> None:  # type: ignore[no-untyped-def]
    hyper = dict(
        lr=0.1, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov, maximize=maximize
    )
    # A parameter group for b: its own lr, no weight decay and (with momentum) its own momentum.
    group = dict(lr=0.05, weight_decay=0.0, **({"momentum": 0.5} if momentum else {})) if groups else None
    module = fused(element, hyper, group)
    fn = step_function(module)
    expected_state = [f"momentum.{p}" for p in ("w", "b") if momentum] + (
        ["first_step"] if momentum and dampening else []
    )
    assert [a.name for a in args(fn) if a.role == "state"] == expected_state
    assert output_names(fn) == ["w", "b", *expected_state, "loss"]
    case = (momentum, dampening, nesterov, weight_decay, maximize, groups, element)
    params, batches = data(np.random.default_rng(GRID.index(case)))
    compare(run_ours(module, element, params, batches), run_torch(element, hyper, group, params, batches), element)


@pytest.mark.parametrize(
    "hyper, group",
    [
        # b's group turns momentum off: b has no buffer, w's buffer is dampened (first_step flag)
        (dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=1e-2), dict(momentum=0.0)),
        # b's group alone is dampened and maximized
        (dict(lr=0.1, momentum=0.9, nesterov=True), dict(nesterov=False, dampening=0.5, maximize=True)),
        # lr = 0 leaves the parameters alone but still moves the buffers
        (dict(lr=0.0, momentum=0.9, dampening=0.1), None),
    ],
    ids=["group-without-momentum", "group-dampened", "lr-zero"],
)
def test_groups_with_different_momentum(hyper, group) -> None:  # type: ignore[no-untyped-def]
    module = fused("f64", hyper, group)
    params, batches = data(np.random.default_rng(5))
    compare(run_ours(module, "f64", params, batches), run_torch("f64", hyper, group, params, batches), "f64")


@pytest.mark.parametrize("element", ["f16", "bf16"])
def test_half_precision_parameters_update_in_their_own_dtype(element: str) -> None:
    hyper = dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=1e-2)
    module = fused(element, hyper, dict(lr=0.05))
    fn = step_function(module)
    # Every value the update computes for a parameter is in the parameter's own element type.
    for op in fn.body.blocks.first.ops:
        for result in op.results:
            if result.type.get_shape() != ():  # type: ignore[attr-defined]
                assert str(result.type.get_element_type()) == element, op  # type: ignore[attr-defined]
    params, batches = data(np.random.default_rng(11))
    # torch runs the same model in the same dtype (its CPU kernels round each op to it too).
    compare(
        run_ours(module, element, params, batches), run_torch(element, hyper, dict(lr=0.05), params, batches), element
    )
