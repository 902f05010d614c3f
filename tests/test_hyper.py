"""Run-time optimizer fields (`{step.hyper = "FIELD"}`) against torch.optim with the field changed
between steps (`group["lr"] = ...`, as a scheduler does), through the whole pipeline and the
Python API; their located errors; `stepc exec` and the emitted jax-py module with a hyper input.

The model is mse(x w + b, t) with a parameter group for `b`; torch runs the single-tensor path
(`foreach=False`). After every step, parameters and optimizer state must agree: f64 relative
error <= 1e-12, f32 <= 1e-5 (max |ours - torch| / max |torch| per tensor)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

import stepc
from stepc.ir.diagnostics import StepcError

D, K, N = 4, 3, 8
STEPS = 6
TOLERANCE = {"f32": 1e-5, "f64": 1e-12}
NUMPY = {"f32": np.float32, "f64": np.float64}
TORCH = {"f32": torch.float32, "f64": torch.float64}
OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def number(v: float) -> str:
    """A float as MLIR reads it (`1.0e-06`, not `1e-06`)."""
    text = repr(float(v))
    return text.replace("e", ".0e") if "e" in text and "." not in text else text


def fields_text(fields: dict[str, float | bool]) -> str:
    return ", ".join(f"{k} = {str(v).lower() if isinstance(v, bool) else number(v)}" for k, v in fields.items())


def program(element: str, kind: str, fixed: dict, group: dict | None, run_time: list[str], hyper_type: str = "f64") -> str:  # type: ignore[type-arg]
    """The forward program, its optimizer `kind` with `fixed` fields, `b`'s own `group`, and one
    `{step.hyper}` argument per field of `run_time` (named after the field)."""

    def t(*shape: int) -> str:
        return "tensor<" + "".join(f"{d}x" for d in shape) + element + ">"

    b_attr = "{step.param}" if group is None else f"{{step.param = #step.{kind}<{fields_text(group)}>}}"
    hypers = "".join(f', %{name}: tensor<{hyper_type}> {{step.hyper = "{name}"}}' for name in run_time)
    return f"""\
func.func @linreg(%w: {t(D, K)} {{step.param}}, %b: {t(K)} {b_attr}, %x: {t(N, D)}, %t: {t(N, K)}{hypers}) -> {t()}
    attributes {{step.{kind} = #step.{kind}<{fields_text(fixed)}>}} {{
  %xw = step.matmul %x, %w : ({t(N, D)}, {t(D, K)}) -> {t(N, K)}
  %y = step.add %xw, %b : ({t(N, K)}, {t(K)}) -> {t(N, K)}
  %loss = step.mse %y, %t : ({t(N, K)}, {t(N, K)}) -> {t()}
  func.return %loss : {t()}
}}
"""


def torch_fields(fields: dict) -> dict:  # type: ignore[type-arg]
    out = dict(fields)
    if "beta1" in out or "beta2" in out:
        out["betas"] = (out.pop("beta1", 0.9), out.pop("beta2", 0.999))
    return out


def schedule(run_time: list[str], rng: np.random.Generator) -> list[dict[str, float]]:
    """A value of each run-time field for each step: lr from torch's CosineAnnealingLR (its
    `get_last_lr()` after each `step()`), the others drawn in their valid ranges."""
    w = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.3)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS)
    ranges = {"momentum": (0.5, 0.95), "dampening": (0.0, 0.5), "weight_decay": (0.0, 0.1),
              "beta1": (0.3, 0.95), "beta2": (0.9, 0.999), "eps": (1e-8, 1e-3)}  # fmt: skip
    out = []
    for _ in range(STEPS):
        values = {"lr": float(cosine.get_last_lr()[0])}
        values.update({name: float(rng.uniform(*ranges[name])) for name in run_time if name != "lr"})
        out.append({name: values[name] for name in run_time})
        opt.step()
        cosine.step()
    return out


def run_both(element: str, kind: str, fixed: dict, group: dict | None, run_time: list[str]) -> float:  # type: ignore[type-arg]
    rng = np.random.default_rng(7)
    dtype = NUMPY[element]
    params = {"w": rng.standard_normal((D, K)).astype(dtype), "b": rng.standard_normal(K).astype(dtype)}
    batches = [{"x": rng.standard_normal((N, D)).astype(dtype), "t": rng.standard_normal((N, K)).astype(dtype)}
               for _ in range(STEPS)]  # fmt: skip
    values = schedule(run_time, rng)

    prog = stepc.compile_text(program(element, kind, fixed, group, run_time), filename="hyper.mlir")
    tensors = {k: torch.tensor(v.astype(np.float64), dtype=TORCH[element], requires_grad=True) for k, v in params.items()}
    groups = [{"params": [tensors["w"]]}, {"params": [tensors["b"]], **torch_fields(group or {})}]
    opt = OPTIMIZERS[kind](groups, foreach=False, **torch_fields(fixed))
    with jax.enable_x64(True):
        ours = dict(params)
        state = prog.init_state(ours)
        worst = 0.0
        for step, (batch, fed) in enumerate(zip(batches, values), start=1):
            ours, state, _ = prog.step(ours, state, {**batch, **{k: np.asarray(v) for k, v in fed.items()}})
            for g in opt.param_groups:  # as a scheduler sets them
                for name, value in fed.items():
                    if name in ("beta1", "beta2"):
                        betas = list(g["betas"])
                        betas[name == "beta2"] = value
                        g["betas"] = tuple(betas)
                    else:
                        g[name] = value
            x, t = (torch.tensor(batch[k].astype(np.float64), dtype=TORCH[element]) for k in ("x", "t"))
            opt.zero_grad()
            torch.nn.functional.mse_loss(x @ tensors["w"] + tensors["b"], t).backward()
            opt.step()
            for key, tensor in tensors.items():
                expected = {key: tensor.detach()}
                for name, value in opt.state[tensor].items():
                    if name != "step":
                        expected[f"{'momentum' if name == 'momentum_buffer' else name}.{key}"] = value
                for k, v in expected.items():
                    got = np.asarray(ours[k] if k in ours else state[k], dtype=np.float64)
                    want = v.to(torch.float64).numpy()
                    err = float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-300))
                    worst = max(worst, err)
                    assert err <= TOLERANCE[element], f"step {step}, {k}: relative error {err:.3g}"
    return worst


CASES = [
    ("sgd", {"lr": 0.1}, None, ["lr"]),
    ("sgd", {"momentum": 0.9}, {"momentum": 0.5}, ["lr"]),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": False}, None, ["lr", "momentum", "dampening", "weight_decay"]),
    ("sgd", {"momentum": 0.9, "nesterov": True}, {"weight_decay": 0.01}, ["lr", "momentum"]),
    ("adamw", {}, {"weight_decay": 0.0}, ["lr"]),
    ("adamw", {"amsgrad": True}, None, ["lr", "beta1", "beta2", "eps", "weight_decay"]),
    ("adam", {"weight_decay": 0.1, "maximize": True}, {"eps": 1e-6}, ["lr"]),
    ("adam", {"amsgrad": True}, None, ["lr", "beta1", "beta2", "eps", "weight_decay"]),
]


# f64 runs every case; f32 the lr-only ones (the f64 ones check every field).
GRID = [(*case, "f64") for case in CASES] + [(*case, "f32") for case in CASES if case[3] == ["lr"]]


@pytest.mark.parametrize("kind, fixed, group, run_time, element", GRID,
                         ids=[f"{c[0]}-{'-'.join(c[3])}-{c[4]}" for c in GRID])  # fmt: skip
def test_run_time_fields_match_torch(kind, fixed, group, run_time, element) -> None:  # type: ignore[no-untyped-def]
    run_both(element, kind, fixed, group, run_time)


# ---------------------------------------------------------------------------------------------
# Located errors

ERRORS = [
    ('%lr: tensor<f64> {step.hyper = "rate"}', "sgd", "#step.sgd has no float field 'rate'"),
    ('%lr: tensor<f64> {step.hyper = "nesterov"}', "sgd", "(a boolean field, fixed at compile time)"),
    ('%lr: tensor<f64> {step.hyper = "beta1"}', "sgd", "#step.sgd has no float field 'beta1'"),
    ('%lr: tensor<f64> {step.hyper = "momentum"}', "adam", "#step.adam has no float field 'momentum'"),
    ('%lr: tensor<2xf64> {step.hyper = "lr"}', "sgd", "must be a rank-0 float tensor"),
    ('%lr: tensor<i32> {step.hyper = "lr"}', "adamw", "must be a rank-0 float tensor"),
    ('%lr: tensor<f64> {step.hyper = 1.0}', "sgd", "takes the name of an optimizer field"),
    ('%lr: tensor<f64> {step.hyper = "lr"}, %lr2: tensor<f32> {step.hyper = "lr"}', "sgd",
     "%lr2 and %lr both give the optimizer field 'lr' at run time"),
]  # fmt: skip


def error_program(kind: str, extra: str, b_attr: str = "{step.param}") -> str:
    fields = "lr = 0.1" if kind == "sgd" else ""
    return f"""\
func.func @f(%w: tensor<4x3xf32> {{step.param}}, %b: tensor<3xf32> {b_attr}, %x: tensor<8x4xf32>, {extra}) -> tensor<f32>
    attributes {{step.{kind} = #step.{kind}<{fields}>}} {{
  %xw = step.matmul %x, %w : (tensor<8x4xf32>, tensor<4x3xf32>) -> tensor<8x3xf32>
  %y = step.add %xw, %b : (tensor<8x3xf32>, tensor<3xf32>) -> tensor<8x3xf32>
  %loss = step.sum %y : tensor<8x3xf32> -> tensor<f32>
  func.return %loss : tensor<f32>
}}
"""


@pytest.mark.parametrize("extra, kind, message", ERRORS)
def test_hyper_errors_are_located(extra: str, kind: str, message: str) -> None:
    text = error_program(kind, extra)
    with pytest.raises(StepcError) as info:
        stepc.compile_text(text, filename="bad.mlir", check=False)
    assert message in str(info.value)
    loc = info.value.loc
    assert loc is not None and loc.line == 1
    # the column of the (last) hyper argument's name
    assert text.splitlines()[0][loc.col - 1 :].startswith(extra.split(", ")[-1].split(":")[0])


def test_parameter_attribute_may_not_set_a_run_time_field() -> None:
    text = error_program("adamw", '%lr: tensor<f64> {step.hyper = "lr"}', "{step.param = #step.adamw<lr = 0.01>}")
    with pytest.raises(StepcError, match=re.escape("parameter %b: its #step.adamw<lr = 0.01> sets lr, which %lr gives at run time")):
        stepc.compile_text(text, filename="bad.mlir", check=False)


def test_hyper_on_a_parameter_is_an_error() -> None:
    text = error_program("sgd", "%z: tensor<f32>").replace('{step.param}, %b', '{step.param, step.hyper = "lr"}, %b', 1)
    with pytest.raises(StepcError, match="%w is a param and cannot also be the run-time 'lr'"):
        stepc.compile_text(text, filename="bad.mlir", check=False)


def test_sgd_lr_may_come_at_run_time_only() -> None:
    prog = stepc.compile_text(error_program("sgd", '%lr: tensor<f32> {step.hyper = "lr"}').replace("lr = 0.1", ""))
    assert "lr" in prog.function("step").arg_names


# ---------------------------------------------------------------------------------------------
# stepc exec and the emitted jax-py module


def test_exec_and_jax_py_take_the_hyper_input(tmp_path: Path) -> None:
    source = tmp_path / "hyper.mlir"
    source.write_text(program("f64", "adamw", {}, None, ["lr"]))
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((D, K)), "b": rng.standard_normal(K)}
    batch = {"x": rng.standard_normal((N, D)), "t": rng.standard_normal((N, K)), "lr": np.asarray(0.05)}
    np.savez(tmp_path / "in.npz", **params, **batch)
    env_cmd = [sys.executable, "-m", "stepc.tools.cli"]
    subprocess.run([*env_cmd, "exec", str(source), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out.npz"),
                    "--steps", "3"], check=True, capture_output=True)  # fmt: skip
    out = np.load(tmp_path / "out.npz")

    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    opt = torch.optim.AdamW(list(tensors.values()), lr=0.05, foreach=False)
    for _ in range(3):
        opt.zero_grad()
        x, t = torch.tensor(batch["x"]), torch.tensor(batch["t"])
        torch.nn.functional.mse_loss(x @ tensors["w"] + tensors["b"], t).backward()
        opt.step()
    for k, v in tensors.items():
        assert np.max(np.abs(out[k] - v.detach().numpy())) <= 1e-12 * np.max(np.abs(v.detach().numpy()))
    assert "lr" not in out.files

    module_path = tmp_path / "step_module.py"
    subprocess.run([*env_cmd, "compile", str(source), "--emit", "jax-py", "-o", str(module_path)],
                   check=True, capture_output=True)  # fmt: skip
    script = (
        "import sys, numpy as np, jax; jax.config.update('jax_enable_x64', True); sys.path.insert(0, sys.argv[1]);"
        "import step_module as m; d = np.load(sys.argv[2]);"
        "p = {k: d[k] for k in ('w', 'b')}; s = m.init_state(p);"
        "b = {k: d[k] for k in ('x', 't', 'lr')};"
        "[p, s, l] = m.step(p, s, b); [p, s, l] = m.step(p, s, b); [p, s, l] = m.step(p, s, b);"
        "np.savez(sys.argv[3], **{k: np.asarray(v) for k, v in p.items()})"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path), str(tmp_path / "in.npz"), str(tmp_path / "py.npz")],
                   check=True, capture_output=True)  # fmt: skip
    emitted = np.load(tmp_path / "py.npz")
    for k, v in tensors.items():
        assert np.max(np.abs(emitted[k] - v.detach().numpy())) <= 1e-12 * np.max(np.abs(v.detach().numpy()))
