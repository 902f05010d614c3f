"""XLA's memory analysis of the fused SGD step against the gradient program and a separate update.

    .venv/bin/python benchmarks/memory_fused.py                       # examples/mlp_digits.ir
    .venv/bin/python benchmarks/memory_fused.py PROGRAM.ir --json out.json

Three ways to run one training step of the same program, each compiled by XLA for the local
device, and `Compiled.memory_analysis()` of each (`CompiledMemoryStats`: argument, output,
alias and temp bytes, and peak bytes where the backend reports them):

- `fused`: stepc's step after `fuse-sgd` (one jitted function: params, batch, state -> new
  params, new state, loss); also `fused+donate`, with params and state donated, as a training
  loop would call it (their buffers are reused for the outputs: the alias bytes).
- `separate`: the gradient program (stepc's program after `seed-scalar-loss`, jitted) and then
  a separate jitted update (the same torch.optim.SGD equation written in jax.numpy, with each
  parameter's resolved fields): two executables, the gradients materialized in memory between
  them; also `separate+donate`, the update donating params and state.
  The peak of the pair is the larger of the gradient call's peak plus the state it leaves
  aside (the update needs it) and the update call's peak.
- `composed`: the gradient program and the jax.numpy update traced into one jitted function,
  so XLA sees the whole step (what a user writing `jax.jit(value_and_grad + update)` gets).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIELDS = (
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "alias_size_in_bytes",
    "temp_size_in_bytes",
    "generated_code_size_in_bytes",
    "peak_memory_in_bytes",
)


def memory(compiled: Any) -> dict[str, int]:
    stats = compiled.memory_analysis()
    return {f: int(getattr(stats, f, 0) or 0) for f in FIELDS}


def nbytes(arrays: dict[str, Any]) -> int:
    return int(sum(np.asarray(a).nbytes for a in arrays.values()))


def jax_update(hyper: dict[str, Any]):  # type: ignore[no-untyped-def]
    """torch.optim.SGD's `_single_tensor_sgd` in jax.numpy: (params, grads, state) -> (params, state).

    `state` holds `momentum.NAME` for each parameter with momentum and, when some parameter is
    dampened, `first_step` (the same state the fused program takes; see passes/fuse_sgd.py).
    """
    import jax.numpy as jnp

    def update(params: dict[str, Any], grads: dict[str, Any], state: dict[str, Any]):  # type: ignore[no-untyped-def]
        new_params, new_state = {}, {}
        first = state.get("first_step")
        for name, p in params.items():
            h = hyper[name]
            d_p = -grads[name] if h.maximize else grads[name]
            if h.weight_decay != 0.0:
                d_p = d_p + h.weight_decay * p
            if h.momentum != 0.0:
                buf = state[f"momentum.{name}"]
                later = h.momentum * buf + (1.0 - h.dampening) * d_p
                buf = later if first is None else jnp.where(first.astype(bool), d_p, later).astype(p.dtype)
                new_state[f"momentum.{name}"] = buf
                d_p = d_p + h.momentum * buf if h.nesterov else buf
            new_params[name] = p - h.lr * d_p
        if first is not None:
            new_state["first_step"] = jnp.zeros_like(first)
        return new_params, new_state

    return update


def analyse(path: str) -> dict[str, Any]:
    import jax

    import stepc
    from stepc.ir.program import step_function
    from stepc.passes.fuse_sgd import hyperparameters

    prog = stepc.compile(path, check=False)
    step_fn, grad_fn = prog.function("step"), prog.function("grad")
    hyper = hyperparameters(step_function(prog.module("grad")))
    rng = np.random.default_rng(0)

    def arrays(specs: list[Any]) -> dict[str, Any]:
        out = {}
        for s in specs:
            if np.issubdtype(np.dtype(s.dtype), np.integer):
                out[s.key] = np.zeros(s.shape, dtype=s.dtype)
            else:
                out[s.key] = rng.standard_normal(s.shape).astype(s.dtype)
        return out

    step_args = arrays(step_fn.specs)
    roles = {s.key: s.role for s in step_fn.specs}
    params = {k: v for k, v in step_args.items() if roles[k] == "param"}
    batch = {k: v for k, v in step_args.items() if roles[k] == "input"}
    state = {k: v for k, v in step_args.items() if roles[k] == "state"}
    positional = [step_args[s.key] for s in step_fn.specs]
    param_positions = tuple(i for i, s in enumerate(step_fn.specs) if s.role in ("param", "state"))

    results: dict[str, Any] = {}
    results["fused"] = memory(jax.jit(step_fn.fn).lower(*positional).compile())
    donated = jax.jit(step_fn.fn, donate_argnums=param_positions)
    results["fused+donate"] = memory(donated.lower(*positional).compile())

    grad_positional = [{**params, **batch}[s.key] for s in grad_fn.specs]
    grad_mem = memory(jax.jit(grad_fn.fn).lower(*grad_positional).compile())
    grad_names = [name.removeprefix("grad.") for name in grad_fn.output_names]
    update = jax_update(hyper)
    grads_example = {name: params[name] for name in params}
    for variant, donate in (("separate", ()), ("separate+donate", (0, 2))):
        update_jit = jax.jit(update, donate_argnums=donate)
        update_mem = memory(update_jit.lower(params, grads_example, state).compile())
        results[variant] = {
            "gradient program": grad_mem,
            "update": update_mem,
            "gradients between the calls": nbytes(grads_example),
            "temp_size_in_bytes": grad_mem["temp_size_in_bytes"] + update_mem["temp_size_in_bytes"],
            "peak_memory_in_bytes": max(
                grad_mem["peak_memory_in_bytes"] + nbytes(state), update_mem["peak_memory_in_bytes"]
            ),
        }

    def composed(*flat: Any):  # type: ignore[no-untyped-def]
        named = dict(zip([s.key for s in step_fn.specs], flat))
        outs = grad_fn.fn(*(named[s.key] for s in grad_fn.specs))
        by_name = dict(zip(grad_names, outs))
        loss = by_name.pop("loss")
        new_params, new_state = update(
            {k: named[k] for k in params}, {k: by_name[k] for k in params}, {k: named[k] for k in state}
        )
        return new_params, new_state, loss

    results["composed"] = memory(jax.jit(composed).lower(*positional).compile())
    results["_sizes"] = {"params": nbytes(params), "batch": nbytes(batch), "state": nbytes(state)}
    results["_device"] = str(jax.devices()[0].device_kind)
    return results


def table(results: dict[str, Any]) -> str:
    header = f"{'variant':<32} {'argument':>10} {'output':>10} {'alias':>10} {'temp':>10} {'peak':>10}"
    lines = [header, "-" * len(header)]

    def row(name: str, m: dict[str, int]) -> str:
        return (
            f"{name:<32} {m['argument_size_in_bytes']:>10} {m['output_size_in_bytes']:>10} "
            f"{m['alias_size_in_bytes']:>10} {m['temp_size_in_bytes']:>10} {m['peak_memory_in_bytes']:>10}"
        )

    lines.append(row("fused (stepc)", results["fused"]))
    lines.append(row("fused (stepc), donated", results["fused+donate"]))
    for variant, label in (("separate", "separate"), ("separate+donate", "separate, donated")):
        sep = results[variant]
        lines.append(row(f"{label}: gradients", sep["gradient program"]))
        lines.append(row(f"{label}: update", sep["update"]))
        lines.append(
            f"{label + ': both calls':<32} {'':>10} {'':>10} {'':>10} {sep['temp_size_in_bytes']:>10} "
            f"{sep['peak_memory_in_bytes']:>10}"
        )
    lines.append(row("composed (one jax.jit)", results["composed"]))
    sizes = results["_sizes"]
    lines.append(
        f"bytes: params {sizes['params']}, batch {sizes['batch']}, state {sizes['state']}, "
        f"gradients between the separate calls {results['separate']['gradients between the calls']}; "
        f"device {results['_device']}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("program", nargs="?", default=str(ROOT / "examples" / "mlp_digits.ir"))
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    results = analyse(args.program)
    print(f"XLA memory_analysis() of one SGD step of {args.program} (bytes)")
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
