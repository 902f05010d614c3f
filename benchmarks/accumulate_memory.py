"""XLA's memory analysis of gradient accumulation: stepc's accumulated step against optax `MultiSteps`.

    .venv/bin/python benchmarks/accumulate_memory.py                    # benchmarks/models/mlp784.ir, K = 1, 4, 16
    .venv/bin/python benchmarks/accumulate_memory.py PROGRAM.ir --k 1 2 8 --json out.json

For each K, the program with `step.accumulate = K : i64` added to its function attributes is
compiled by stepc (no contracts), and XLA compiles one update over K micro-batches of the
program's batch, each way below; `Compiled.memory_analysis()` gives argument, output, alias,
temp and peak bytes, and `all`, every buffer at once (arguments + outputs - aliased + temps:
an upper bound of the peak, which XLA's CPU backend reports as arguments and outputs alone).
The batch itself grows with K (K stacked micro-batches are an argument); what accumulation
promises is that nothing else does: `peak - batch`, `all - batch` and `temp` flat in K.

- `stepc`: the compiled step (params, state, K stacked micro-batches -> new params, new state,
  mean loss): a `stablehlo.while` over the micro-batches holding one accumulator per
  parameter; `stepc, donated`: params and state donated, as a training loop calls it.
- `optax MultiSteps, K calls`: `optax.MultiSteps(optax.sgd(lr, momentum), every_k_schedule=K)`
  on a hand-written JAX twin of the model (`jax.value_and_grad`), one jitted call per
  micro-batch as optax's documentation uses it: the numbers of one call (flat in K by
  construction), whose state carries `acc_grads`, a parameter-sized buffer kept between calls
  (the `state` bytes), beside the optimizer's own momentum.
- `optax MultiSteps, one jit`: the same K calls as a `lax.fori_loop` over the stacked
  micro-batches inside one jitted function (the interface of stepc's step).
- `one batch of K x B rows` (for scale): the program without accumulation at a batch K times
  as large, as stepc compiles it: what accumulation saves.

The hand-written twin is built for the MLP programs of `benchmarks/models` (matmul, add, relu,
cross-entropy); another program is measured for stepc alone.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
from memory_fused import memory, nbytes  # benchmarks/memory_fused.py, beside this file

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PROGRAM = ROOT / "benchmarks" / "models" / "mlp784.ir"
DEFAULT_K = (1, 4, 16)


def all_bytes(m: dict[str, int]) -> int:
    """Every buffer of the call at once: arguments, outputs not aliasing them, and temps (an
    upper bound of the peak; XLA's CPU backend reports a peak of arguments and outputs alone)."""
    return m["argument_size_in_bytes"] + m["output_size_in_bytes"] - m["alias_size_in_bytes"] + m["temp_size_in_bytes"]


def with_accumulation(text: str, count: int) -> str:
    """The program text with `step.accumulate = K : i64` among its function attributes."""
    new, n = re.subn(r"attributes \{", f"attributes {{step.accumulate = {count} : i64, ", text, count=1)
    if n != 1:
        raise SystemExit("the program has no `attributes {...}` to add step.accumulate to")
    return new


def with_batch(text: str, rows: int, factor: int) -> str:
    """The program text with its batch of `rows` rows made `factor` times larger (the leading
    dim of every tensor type that has `rows` there)."""
    return re.sub(rf"tensor<{rows}x", f"tensor<{rows * factor}x", text)


def arrays_for(specs: list[Any], rng: np.random.Generator) -> dict[str, Any]:
    out = {}
    for s in specs:
        if np.issubdtype(np.dtype(s.dtype), np.integer):
            out[s.key] = np.zeros(s.shape, dtype=s.dtype)
        else:
            out[s.key] = rng.standard_normal(s.shape).astype(s.dtype)
    return out


def stepc_step(text: str, name: str) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The compiled step's JAX function and random params, state and batch for it."""
    import stepc

    prog = stepc.compile_text(text, filename=name, check=False)
    jf = prog.function("step")
    values = arrays_for(jf.specs, np.random.default_rng(0))
    groups: dict[str, dict[str, Any]] = {"param": {}, "input": {}, "state": {}}
    for s in jf.specs:
        groups[str(s.role)][s.key] = values[s.key]
    return jf, groups["param"], groups["state"], groups["input"]


def measure_stepc(text: str, name: str) -> dict[str, Any]:
    import jax

    jf, params, state, batch = stepc_step(text, name)
    positional = [{**params, **state, **batch}[s.key] for s in jf.specs]
    donate = tuple(i for i, s in enumerate(jf.specs) if s.role in ("param", "state"))
    return {
        "stepc": memory(jax.jit(jf.fn).lower(*positional).compile()),
        "stepc, donated": memory(jax.jit(jf.fn, donate_argnums=donate).lower(*positional).compile()),
        "_batch": nbytes(batch),
        "_params": nbytes(params),
        "_state": nbytes(state),
    }


def mlp_twin(text: str) -> tuple[list[tuple[str, str]], float, float] | None:
    """The layers `(weight, bias)` of an MLP program (matmul, add, relu ..., cross-entropy),
    its SGD lr and momentum; None for another program."""
    if any(op not in ("matmul", "add", "relu", "cross_entropy") for op in re.findall(r"= step\.(\w+)", text)):
        return None
    layers = re.findall(r"step\.matmul %\w+, %(\w+) .*\n\s*%\w+ = step\.add %\w+, %(\w+)", text)
    sgd = re.search(r"#step\.sgd<lr = ([\d.e+-]+), momentum = ([\d.e+-]+)>", text)
    if not layers or sgd is None:
        return None
    return layers, float(sgd.group(1)), float(sgd.group(2))


def measure_optax(text: str, count: int, twin: tuple[list[tuple[str, str]], float, float]) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import optax

    layers, lr, momentum = twin
    _, params, _, stacked = stepc_step(with_accumulation(text, count), "twin.ir")
    features = next(k for k, v in stacked.items() if v.dtype.kind == "f")
    labels = next(k for k, v in stacked.items() if v.dtype.kind == "i")

    def loss_fn(p: dict[str, Any], x: Any, y: Any) -> Any:
        h = x
        for i, (w, b) in enumerate(layers):
            h = h @ p[w] + p[b]
            if i < len(layers) - 1:
                h = jax.nn.relu(h)
        return jnp.mean(jax.nn.logsumexp(h, axis=1) - jnp.take_along_axis(h, y[:, None], axis=1)[:, 0])

    opt = optax.MultiSteps(optax.sgd(lr, momentum=momentum), every_k_schedule=count)
    state = opt.init(params)

    def micro_step(p: dict[str, Any], s: Any, x: Any, y: Any) -> tuple[Any, Any, Any]:
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    def whole_step(p: dict[str, Any], s: Any, xs: Any, ys: Any) -> tuple[Any, Any, Any]:
        def body(k: Any, carry: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
            p, s, total = carry
            p, s, loss = micro_step(p, s, xs[k], ys[k])
            return p, s, total + loss / count

        return jax.lax.fori_loop(0, count, body, (p, s, jnp.zeros((), jnp.float32)))

    xs, ys = stacked[features], stacked[labels]
    one = jax.jit(micro_step).lower(params, state, xs[0], ys[0]).compile()
    whole = jax.jit(whole_step).lower(params, state, xs, ys).compile()
    return {
        "optax MultiSteps, K calls": memory(one),
        "optax MultiSteps, one jit": memory(whole),
        "_optax_state": nbytes(dict(enumerate(jax.tree_util.tree_leaves(state)))),
        "_optax_acc_grads": nbytes(dict(enumerate(jax.tree_util.tree_leaves(state.acc_grads)))),
        "_micro_batch": int(xs[0].nbytes + ys[0].nbytes),
    }


def analyse(path: str, ks: tuple[int, ...] = DEFAULT_K) -> dict[str, Any]:
    import jax

    text = Path(path).read_text()
    twin = mlp_twin(text)
    labels = re.search(r"tensor<(\d+)xi32>", text)  # the batch's rows, from its labels
    rows = int(labels.group(1)) if labels is not None else None
    results: dict[str, Any] = {"_device": str(jax.devices()[0].device_kind), "_program": str(path), "by_k": {}}
    for count in ks:
        entry = measure_stepc(with_accumulation(text, count), f"{Path(path).stem}_k{count}.ir")
        if twin is not None:
            entry.update(measure_optax(text, count, twin))
        if rows is not None:
            big = measure_stepc(with_batch(text, rows, count), f"{Path(path).stem}_x{count}.ir")
            entry[f"one batch of {count} x B rows"] = big["stepc"]
            entry["_big_batch"] = big["_batch"]
        results["by_k"][str(count)] = entry
    return results


def table(results: dict[str, Any]) -> str:
    header = (
        f"{'K':>3} {'variant':<28} {'argument':>10} {'output':>10} {'alias':>10} {'temp':>10} {'peak':>10} "
        f"{'peak-batch':>11} {'all':>10} {'all-batch':>10}"
    )
    lines = [header, "-" * len(header)]
    for count, entry in results["by_k"].items():
        for variant in (
            "stepc", "stepc, donated", "optax MultiSteps, K calls", "optax MultiSteps, one jit",
            f"one batch of {count} x B rows",
        ):  # fmt: skip
            m = entry.get(variant)
            if m is None:
                continue
            if variant == "optax MultiSteps, K calls":
                batch = entry["_micro_batch"]
            elif variant.startswith("one batch"):
                batch = entry["_big_batch"]
            else:
                batch = entry["_batch"]
            every = all_bytes(m)
            lines.append(
                f"{count:>3} {variant:<28} {m['argument_size_in_bytes']:>10} {m['output_size_in_bytes']:>10} "
                f"{m['alias_size_in_bytes']:>10} {m['temp_size_in_bytes']:>10} {m['peak_memory_in_bytes']:>10} "
                f"{m['peak_memory_in_bytes'] - batch:>11} {every:>10} {every - batch:>10}"
            )
    first = next(iter(results["by_k"].values()))
    note = f"bytes: params {first['_params']}, stepc state {first['_state']} (momentum)"
    if "_optax_state" in first:
        note += f", optax MultiSteps state {first['_optax_state']} (momentum, acc_grads {first['_optax_acc_grads']}, counters)"
    batches = ", ".join(f"K={k} {entry['_batch']}" for k, entry in results["by_k"].items())
    note += f"; the K micro-batches: {batches}; device {results['_device']}"
    return "\n".join([*lines, note])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("program", nargs="?", default=str(DEFAULT_PROGRAM))
    parser.add_argument("--k", type=int, nargs="+", default=list(DEFAULT_K), help="the micro-batch counts (default 1 4 16)")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    results = analyse(args.program, tuple(args.k))
    print(f"XLA memory_analysis() of one update over K micro-batches of {args.program} (bytes)")
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
