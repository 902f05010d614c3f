"""`stepc exec`: .npz in and out, --until, --steps, and inputs checked before running.

Oracles: NumPy formulas of least squares (loss, gradients, the plain SGD update) and the
Python API's `step` for `--steps` on a momentum program (itself checked against PyTorch in
tests/test_api.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stepc.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent
LINREG = str(ROOT / "examples" / "linreg.ir")
MLP = str(ROOT / "examples" / "mlp_digits.ir")


def linreg_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal((4, 1)).astype(np.float32),
        "b": rng.standard_normal(1).astype(np.float32),
        "x": rng.standard_normal((32, 4)).astype(np.float32),
        "t": rng.standard_normal((32, 1)).astype(np.float32),
    }


def mlp_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w1": (0.1 * rng.standard_normal((64, 128))).astype(np.float32),
        "b1": np.zeros(128, np.float32),
        "w2": (0.1 * rng.standard_normal((128, 10))).astype(np.float32),
        "b2": np.zeros(10, np.float32),
        "x": rng.standard_normal((64, 64)).astype(np.float32),
        "labels": rng.integers(0, 10, 64).astype(np.int32),
    }


def run_exec(tmp_path: Path, program: str, inputs: dict, *extra: str) -> dict[str, np.ndarray]:  # type: ignore[type-arg]
    np.savez(tmp_path / "in.npz", **inputs)
    out = tmp_path / "out.npz"
    assert main(["exec", program, "--inputs", str(tmp_path / "in.npz"), "-o", str(out), "--no-check", *extra]) == 0
    with np.load(out, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def linreg_oracle(inp: dict[str, np.ndarray]) -> tuple[float, np.ndarray, np.ndarray]:
    x, w, b, t = (inp[k].astype(np.float64) for k in ("x", "w", "b", "t"))
    r = x @ w + b - t
    return float(np.mean(r**2)), 2 * x.T @ r / r.size, 2 * r.sum(0) / r.size


def test_exec_until_seed_gives_loss_and_gradients(tmp_path: Path) -> None:
    inp = linreg_inputs()
    out = run_exec(tmp_path, LINREG, inp, "--until", "seed-scalar-loss")
    assert sorted(out) == ["grad.b", "grad.w", "loss"]
    loss, gw, gb = linreg_oracle(inp)
    np.testing.assert_allclose(out["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(out["grad.w"], gw, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["grad.b"], gb, rtol=1e-4, atol=1e-6)


def test_exec_full_pipeline_and_steps(tmp_path: Path) -> None:
    inp = linreg_inputs()
    out = run_exec(tmp_path, LINREG, inp, "--steps", "3")
    assert sorted(out) == ["b", "loss", "w"]
    params = {k: inp[k].astype(np.float64) for k in inp}
    for _ in range(3):
        loss, gw, gb = linreg_oracle(params)
        params["w"], params["b"] = params["w"] - 0.01 * gw, params["b"] - 0.01 * gb
    np.testing.assert_allclose(out["w"], params["w"], rtol=1e-5)
    np.testing.assert_allclose(out["b"], params["b"], rtol=1e-5)
    np.testing.assert_allclose(out["loss"], loss, rtol=1e-5)  # the loss at the last step's input


def test_exec_steps_with_momentum_state_equal_the_api(tmp_path: Path) -> None:
    import stepc

    inp = mlp_inputs()
    out = run_exec(tmp_path, MLP, inp, "--steps", "2")
    prog = stepc.compile(MLP, check=False)
    params = {k: inp[k] for k in prog.param_names()}
    batch = {k: inp[k] for k in prog.input_names()}
    state = prog.init_state(params)
    for _ in range(2):
        params, state, loss = prog.step(params, state, batch)
    for key, value in {**params, **state, "loss": loss}.items():
        np.testing.assert_allclose(out[key], value, rtol=1e-6, atol=1e-7, err_msg=key)
    # Continue from the written state: one more step equals a third API step.
    more = run_exec(tmp_path, MLP, {**{k: out[k] for k in params}, **batch, **{k: out[k] for k in state}})
    params, state, loss = prog.step(params, state, batch)
    np.testing.assert_allclose(more["w1"], params["w1"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda d: d.pop("x"), "missing input 'x'"),
        (lambda d: d.update(z=np.zeros(3, np.float32)), "unexpected key 'z'"),
        (lambda d: d.update(x=np.zeros((4, 64), np.float32)), "'x' has shape (4, 64), expected (64, 64)"),
        (lambda d: d.update(x=d["x"].astype(np.float64)), "'x' has dtype float64, expected float32"),
        (lambda d: d["labels"].__setitem__(5, 10), "label 'labels'[5] is 10, outside the 10 classes"),
        (lambda d: d["labels"].__setitem__(0, -1), "label 'labels'[0] is -1"),
        (lambda d: d.update({"momentum.w1": np.zeros((64, 128), np.float32)}), "momentum.w1 given but"),
    ],
)
def test_exec_input_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], change, message: str) -> None:  # type: ignore[no-untyped-def]
    inp = mlp_inputs()
    change(inp)
    np.savez(tmp_path / "in.npz", **inp)
    rc = main(["exec", MLP, "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out.npz"), "--no-check"])
    err = capsys.readouterr().err
    assert rc == 1 and message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out.npz").exists()


def test_exec_points_at_the_argument(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = linreg_inputs()
    inp["t"] = inp["t"].astype(np.float64)
    np.savez(tmp_path / "in.npz", **inp)
    assert (
        main(["exec", LINREG, "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "o.npz"), "--no-check"]) == 1
    )
    err = capsys.readouterr().err
    assert f"{LINREG}:3:" in err and "%t" in err and "^" in err


@pytest.mark.parametrize(
    "payload,message",
    [
        (b"not a zip at all", "is not an .npz file"),
        (None, "never unpickles"),
        ("npy", "is not an .npz file"),
    ],
)
def test_exec_refuses_bad_npz(tmp_path: Path, capsys: pytest.CaptureFixture[str], payload, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "in.npz"
    if payload is None:
        np.savez(path, w=np.array([{"a": 1}], dtype=object))
    elif payload == "npy":
        with open(path, "wb") as f:
            np.save(f, np.zeros(3))
    else:
        path.write_bytes(payload)
    assert main(["exec", LINREG, "--inputs", str(path), "-o", str(tmp_path / "o.npz"), "--no-check"]) == 1
    assert message in capsys.readouterr().err


def test_exec_steps_needs_the_whole_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.savez(tmp_path / "in.npz", **linreg_inputs())
    args = ["exec", LINREG, "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "o.npz"), "--no-check"]
    assert main([*args, "--until", "seed-scalar-loss", "--steps", "2"]) == 1
    assert "--steps 2 feeds each step's parameters" in capsys.readouterr().err
    assert main([*args, "--steps", "0"]) == 1
    assert "--steps must be at least 1" in capsys.readouterr().err


def test_exec_refuses_to_overwrite_its_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "in.npz"
    np.savez(path, **linreg_inputs())
    before = path.read_bytes()
    assert main(["exec", LINREG, "--inputs", str(path), "-o", str(path), "--no-check"]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert path.read_bytes() == before
