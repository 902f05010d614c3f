"""8-way data parallelism on CPU: the batch sharded over 8 host devices with `NamedSharding`,
parameters and state replicated, through the API's jitted `forward`, `grad` and `step`,
equals one device.

It runs in a subprocess because `XLA_FLAGS=--xla_force_host_platform_device_count=8` must be
set before JAX is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import json
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
import stepc

assert jax.device_count() == 8, jax.devices()
prog = stepc.compile({program!r}, check=False)
rng = np.random.default_rng(0)
params = {{"w1": 0.1 * rng.standard_normal((64, 128)), "b1": 0.1 * rng.standard_normal(128),
          "w2": 0.1 * rng.standard_normal((128, 10)), "b2": np.zeros(10)}}
params = {{k: v.astype(np.float32) for k, v in params.items()}}
batch = {{"x": rng.standard_normal((64, 64)).astype(np.float32),
         "labels": rng.integers(0, 10, 64).astype(np.int32)}}
state = {{k: np.asarray(v) for k, v in prog.init_state(params).items()}}

def run(params, state, batch):
    forward = jax.jit(prog.forward)(params, batch)
    loss, grads = jax.jit(prog.grad)(params, batch)
    step = jax.jit(prog.step)
    p, s, step_loss = step(params, state, batch)
    p, s, step_loss = step(p, s, batch)
    return {{"forward": forward, "loss": loss, **{{"grad." + k: v for k, v in grads.items()}},
            **p, **s, "step_loss": step_loss}}

one = jax.devices()[0]
single = run(*(jax.device_put(d, one) for d in (params, state, batch)))

# Auto axes (GSPMD propagation): the gradient contracts the sharded batch dim, whose output
# sharding explicit axes would ask the caller to name.
mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
replicated = NamedSharding(mesh, P())
rows = NamedSharding(mesh, P("data"))
sharded_batch = {{k: jax.device_put(v, rows) for k, v in batch.items()}}
assert sharded_batch["x"].addressable_shards[0].data.shape == (8, 64)
parallel = run(jax.device_put(params, replicated), jax.device_put(state, replicated), sharded_batch)
assert len(parallel["w1"].sharding.device_set) == 8

errors = {{k: float(np.max(np.abs(np.asarray(parallel[k]) - np.asarray(single[k])))) for k in single}}
scale = {{k: float(np.max(np.abs(np.asarray(single[k])))) for k in single}}
print(json.dumps({{"errors": errors, "scale": scale}}))
"""


def test_eight_way_data_parallel_equals_one_device() -> None:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    code = SCRIPT.format(program=str(ROOT / "examples" / "mlp_digits.ir"))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(report["errors"]) >= {"forward", "loss", "grad.w1", "w1", "momentum.w1", "step_loss"}
    for key, error in report["errors"].items():
        assert error <= 1e-5 * max(1.0, report["scale"][key]), (key, error)
