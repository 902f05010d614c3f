"""8-way data parallelism on CPU: the batch sharded over 8 host devices along a mesh axis
`data`, the parameters and their optimizer state replicated or sharded FSDP-style (a tensor
whose first dim divides by 8 sharded along `data` there), on a mesh of explicit axes (JAX's
default) and of auto axes: the API's jitted `forward`, `grad` and `step`, and the `step` of
the module `--emit jax-py` writes, equal one device.

Beside them, on the same meshes, a hand-written `jax.value_and_grad` step of the same model
and optimizer: it works there too and equals stepc's step, so the sharded runs compare
against an independent oracle as well as against one device.

One subprocess runs every case, because `XLA_FLAGS=--xla_force_host_platform_device_count=8`
must be set before JAX is imported; it reports each case's largest errors, the shardings of
the new parameters, or the error that stopped the case.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stepc.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent
MLP = ROOT / "examples" / "mlp_digits.ir"

MESHES = ("explicit", "auto")
LAYOUTS = ("replicated", "fsdp")

SCRIPT = r'''
import importlib.util
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import stepc

program, emitted_path = sys.argv[1], sys.argv[2]
assert jax.device_count() == 8, jax.devices()
prog = stepc.compile(program, check=False)
spec = importlib.util.spec_from_file_location("emitted", emitted_path)
emitted = importlib.util.module_from_spec(spec)
spec.loader.exec_module(emitted)

rng = np.random.default_rng(0)
PARAMS = {"w1": 0.1 * rng.standard_normal((64, 128)), "b1": 0.1 * rng.standard_normal(128),
          "w2": 0.1 * rng.standard_normal((128, 10)), "b2": np.zeros(10)}
PARAMS = {k: v.astype(np.float32) for k, v in PARAMS.items()}
BATCH = {"x": rng.standard_normal((64, 64)).astype(np.float32),
         "labels": rng.integers(0, 10, 64).astype(np.int32)}
STATE = {k: np.asarray(v) for k, v in prog.init_state(PARAMS).items()}

# The hand-written twin of examples/mlp_digits.ir and of torch.optim.SGD as fuse-sgd applies it.
LR, MOMENTUM, DECAY = 0.1, 0.9, 5e-4
DECAYED = ("w1", "w2")  # the biases are exempt from weight decay


def hand_loss(params, batch):
    h = jnp.maximum(batch["x"] @ params["w1"] + params["b1"], 0.0)
    logits = h @ params["w2"] + params["b2"]
    picked = jnp.sum(jax.nn.one_hot(batch["labels"], 10, dtype=logits.dtype) * logits, axis=1)
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - picked)


def hand_step(params, state, batch, gather):
    """One SGD step; `gather` is FSDP's all-gather of a parameter at its use (identity when
    replicated), whose transpose reduce-scatters the gradient back to the parameter's sharding."""
    loss, grads = jax.value_and_grad(lambda p: hand_loss({k: gather(v) for k, v in p.items()}, batch))(params)
    new_params, new_state = {}, {}
    for k, p in params.items():
        d_p = grads[k] + DECAY * p if k in DECAYED else grads[k]
        buf = MOMENTUM * state["momentum." + k] + d_p
        new_params[k], new_state["momentum." + k] = p - LR * buf, buf
    return new_params, new_state, loss


def flat(params, state, loss, **more):
    return {**params, **state, "loss": loss, **more}


def two_steps(step, params, state, batch):
    """Two steps, the second fed the first's outputs (as sharded as the step left them)."""
    params, state, _ = step(params, state, batch)
    return step(params, state, batch)


def errors(got, want):
    """The largest |got - want| of each key, beside the largest |want|."""
    return {k: [float(np.max(np.abs(np.asarray(got[k], np.float64) - np.asarray(want[k], np.float64)))),
                float(np.max(np.abs(np.asarray(want[k], np.float64))))] for k in want}


def specs(values):
    return {k: str(tuple(v.sharding.spec)) for k, v in values.items()}


one = jax.devices()[0]
local = [jax.device_put(d, one) for d in (PARAMS, STATE, BATCH)]
stepc_single = flat(*two_steps(jax.jit(prog.step), *local),
                    forward=jax.jit(prog.forward)(local[0], local[2]),
                    **{"grad." + k: v for k, v in jax.jit(prog.grad)(local[0], local[2])[1].items()})
hand_single = flat(*two_steps(jax.jit(lambda p, s, b: hand_step(p, s, b, lambda w: w)), *local))
report = {"hand_vs_stepc": errors(hand_single, {k: stepc_single[k] for k in hand_single})}

for kind in ("explicit", "auto"):
    axis_type = AxisType.Explicit if kind == "explicit" else AxisType.Auto
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    for layout in ("replicated", "fsdp"):
        def sharding(value):
            fsdp = layout == "fsdp" and value.ndim >= 1 and value.shape[0] % 8 == 0
            return NamedSharding(mesh, P("data") if fsdp else P())

        shardings = tuple({k: sharding(v) for k, v in d.items()} for d in (PARAMS, STATE))
        shardings += ({k: NamedSharding(mesh, P("data")) for k in BATCH},)
        params, state, batch = (jax.device_put(d, s) for d, s in zip((PARAMS, STATE, BATCH), shardings))
        assert batch["x"].addressable_shards[0].data.shape == (8, 64)
        case = f"{kind}-{layout}"

        def stepc_run():
            forward = jax.jit(prog.forward, in_shardings=(shardings[0], shardings[2]))(params, batch)
            _, grads = jax.jit(prog.grad, in_shardings=(shardings[0], shardings[2]))(params, batch)
            new = two_steps(jax.jit(prog.step, in_shardings=shardings), params, state, batch)
            return new[0], flat(*new, forward=forward, **{"grad." + k: v for k, v in grads.items()})

        if kind == "explicit":  # FSDP's all-gather of a parameter at its use, named as explicit axes ask
            gather = lambda w: jax.sharding.reshard(w, NamedSharding(mesh, P()))
        else:  # GSPMD places it
            gather = lambda w: w
        hand = jax.jit(lambda p, s, b: hand_step(p, s, b, gather), in_shardings=shardings)

        def hand_run():
            new = two_steps(hand, params, state, batch)
            return new[0], flat(*new)

        runs = {"stepc": (stepc_run, stepc_single), "hand": (hand_run, hand_single)}
        if kind == "explicit":
            def emitted_run():
                new = two_steps(emitted.step, params, state, batch)
                return new[0], flat(*new)

            runs["emitted"] = (emitted_run, stepc_single)
        for name, (run, single) in runs.items():
            try:
                new_params, outputs = run()
                report[f"{name}/{case}"] = {"errors": errors(outputs, {k: single[k] for k in outputs}),
                                            "specs": specs(new_params),
                                            "devices": min(len(v.sharding.device_set) for v in new_params.values())}
            except Exception as e:
                report[f"{name}/{case}"] = {"error": f"{type(e).__name__}: {e}"[:2000]}
print(json.dumps(report))
'''


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every case's errors, run once in an 8-device subprocess."""
    emitted = tmp_path_factory.mktemp("sharding") / "mlp_step.py"
    assert main(["compile", str(MLP), "--emit", "jax-py", "-o", str(emitted), "--no-check"]) == 0
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(MLP), str(emitted)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_case(report: dict[str, Any], case: str, keys: set[str]) -> None:
    """The case ran, every output is within 1e-5 of one device (relative to its scale), and the
    new parameters lie on all 8 devices."""
    result = report[case]
    assert "error" not in result, f"{case}: {result.get('error')}"
    assert set(result["errors"]) >= keys
    for key, (error, scale) in result["errors"].items():
        assert error <= 1e-5 * max(1.0, scale), (case, key, error, scale)
    assert result["devices"] == 8


def expected_specs(mesh: str, layout: str) -> dict[str, str] | None:
    """The shardings the new parameters keep on explicit axes: those the step was given (so the
    next step takes them as they are); auto axes leave them to GSPMD."""
    if mesh != "explicit":
        return None
    sharded = "('data', None)" if layout == "fsdp" else "(None, None)"
    return {"w1": sharded, "w2": sharded, "b1": "('data',)" if layout == "fsdp" else "(None,)", "b2": "(None,)"}


STEP_KEYS = {"loss", "w1", "b1", "w2", "b2", "momentum.w1", "momentum.b2"}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mesh", MESHES)
def test_stepc_step_on_sharded_batch_equals_one_device(report: dict[str, Any], mesh: str, layout: str) -> None:
    case = f"stepc/{mesh}-{layout}"
    check_case(report, case, STEP_KEYS | {"forward", "grad.w1", "grad.b1"})
    want = expected_specs(mesh, layout)
    if want is not None:
        assert report[case]["specs"] == want


@pytest.mark.parametrize("layout", LAYOUTS)
def test_emitted_module_step_on_explicit_axes_equals_one_device(report: dict[str, Any], layout: str) -> None:
    case = f"emitted/explicit-{layout}"
    check_case(report, case, STEP_KEYS)
    assert report[case]["specs"] == expected_specs("explicit", layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mesh", MESHES)
def test_hand_written_value_and_grad_step_on_the_same_meshes(report: dict[str, Any], mesh: str, layout: str) -> None:
    check_case(report, f"hand/{mesh}-{layout}", STEP_KEYS)


def test_hand_written_step_equals_stepc_step(report: dict[str, Any]) -> None:
    """The oracle: on one device, the hand-written model and SGD equal stepc's step."""
    for key, (error, scale) in report["hand_vs_stepc"].items():
        assert error <= 1e-5 * max(1.0, scale), (key, error, scale)
