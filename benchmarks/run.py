"""stepc against what a user would otherwise write: one command, every number.

    .venv/bin/python benchmarks/run.py            # the full run (about 2 minutes on 2 CPU cores)
    .venv/bin/python benchmarks/run.py --quick    # a smoke test (CI): tiny blocks, small programs
    .venv/bin/python benchmarks/run.py --json results.json

It prints, for each model in `MODELS`:

1. step time of stepc's compiled step (`jax.jit(stepc.compile(path).step)`) against the
   hand-written JAX step (`jax.jit` of `value_and_grad` plus the SGD update), `optax.sgd`, and
   PyTorch eager (`torch.optim.SGD(foreach=True)`), as ratios of medians. The contenders run
   in interleaved blocks in one process, so a slow spell of the machine hits all of them alike;
   each contender runs right after each of the others equally often, and each timed block
   follows an untimed lead-in of its own (`balanced_order`, `interleaved_medians`). Before timing, the
   four are run three steps from the same parameters and must agree on the losses;
2. XLA's cost and memory analyses of the compiled step: flops, temp and peak bytes, stepc
   against the hand-written JAX step;
3. compile time by stage: parse, each pass and each contract (the pipeline's listeners),
   JAX tracing of the lowered program, XLA compilation;
4. compile-time scaling on generated deep programs (100 to 10,000 ops, no contracts): time
   per op of stepc (parse and passes) and, up to `--xla-max-ops`, of JAX tracing and XLA.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import references  # noqa: E402  (benchmarks/references.py, beside this file)

# model name -> (program, the hand-written loss family in references.MODELS)
MODELS: dict[str, tuple[str, str]] = {
    "mlp_digits": ("examples/mlp_digits.ir", "mlp"),
    "mlp784": ("benchmarks/models/mlp784.ir", "mlp"),
    "softmax784": ("benchmarks/models/softmax784.ir", "softmax"),
    "attention": ("benchmarks/models/attention.ir", "attention"),
    "cnn_digits": ("examples/cnn_digits.ir", "cnn"),
    "transformer_lm": ("examples/transformer_lm.ir", "transformer"),
}
CONTENDERS = ("stepc", "jax", "optax", "torch")
SCALING_SIZES = (100, 300, 1000, 3000, 10000)
QUICK_SCALING_SIZES = (30, 100)


# ---------------------------------------------------------------------------------------------
# Step time


@dataclass
class Contender:
    """One way to run the step: `run(k)` runs k steps from its current state and waits."""

    name: str
    run: Callable[[int], float]
    compiled: Any = None  # the jax.stages.Compiled of a JAX step, for cost and memory analyses


def jax_contender(name: str, step: Any, params: Any, state: Any, batch: Any) -> Contender:
    import jax

    params, state, batch = jax.device_put((params, state, batch))
    box = {"params": params, "state": state}

    def run(k: int) -> float:
        p, s = box["params"], box["state"]
        loss = None
        for _ in range(k):
            p, s, loss = step(p, s, batch)
        jax.block_until_ready((p, s, loss))
        box["params"], box["state"] = p, s
        return float(loss)

    compiled = step.lower(params, state, batch).compile()
    return Contender(name, run, compiled)


@dataclass
class ModelSetup:
    """One benchmark model's hand-written losses, SGD groups, initial parameters and batch."""

    jax_loss: Callable[..., Any]
    torch_loss: Callable[..., Any]
    groups: dict[str, references.Group]
    params: dict[str, np.ndarray]
    batch: dict[str, np.ndarray]


def model_setup(model: str) -> ModelSetup:
    from stepc.ir.parse import load
    from stepc.tools import data as train_data

    path, family = MODELS[model]
    module = load(ROOT / path)
    jax_loss, torch_loss, make_batch = references.MODELS[family]
    batch = make_batch(train_data.signature(module), np.random.default_rng(0))
    return ModelSetup(jax_loss, torch_loss, references.sgd_groups(module), train_data.default_init(module, seed=0), batch)


def contenders_for(model: str, prog: Any) -> tuple[list[Contender], dict[str, list[float]]]:
    """The four steps of one model from the same parameters, and their first three losses."""
    import jax

    m = model_setup(model)
    jax_loss, torch_loss, groups, params, torch_batch = m.jax_loss, m.torch_loss, m.groups, m.params, m.batch
    batch = {k: v for k, v in torch_batch.items() if k not in references.TORCH_ONLY}
    stepc_step = jax.jit(prog.step)
    hand_step = references.hand_jax_step(jax_loss, groups)
    optax_step, optax_state = references.optax_step(jax_loss, groups, params)
    made = {
        "stepc": lambda: jax_contender("stepc", stepc_step, params, prog.init_state(params), batch),
        "jax": lambda: jax_contender("jax", hand_step, params, references.hand_jax_state(params, groups), batch),
        "optax": lambda: jax_contender("optax", optax_step, params, optax_state, batch),
    }
    contenders = [make() for make in made.values()]
    torch_step = references.TorchStep(torch_loss, groups, params, torch_batch)
    contenders.append(Contender("torch", torch_step.run))
    first_losses = {c.name: [c.run(1) for _ in range(3)] for c in contenders}
    return contenders, first_losses


def balanced_order(n: int, blocks_each: int) -> list[int]:
    """The order of the timed blocks of `n` contenders: each contender runs at least
    `blocks_each` blocks, and right after each of the others equally often.

    A block that follows another contender's pays for what that contender left behind (a block
    right after PyTorch's ran 15-30% slower here: its OpenMP threads still spin for a few ms), so
    who-follows-whom must be the same for everyone. The order repeats an Eulerian circuit of the
    complete directed graph on the contenders (Hierholzer): each ordered pair of distinct
    contenders is adjacent exactly once per circuit, the circuit's end included, and each
    contender runs `n - 1` blocks per circuit.
    """
    if n < 1 or blocks_each < 1:
        raise ValueError(f"balanced_order needs n >= 1 and blocks_each >= 1, got {n}, {blocks_each}")
    if n == 1:
        return [0] * blocks_each
    unused = {a: [b for b in range(n) if b != a] for a in range(n)}
    stack, walk = [0], []
    while stack:
        v = stack[-1]
        if unused[v]:
            stack.append(unused[v].pop())
        else:
            walk.append(stack.pop())
    circuit = walk[::-1][:-1]  # a closed walk: drop the repeated start
    return circuit * -(-blocks_each // (n - 1))


def interleaved_medians(contenders: list[Contender], rounds: int, block_seconds: float,
                        lead_seconds: float = 0.02) -> dict[str, dict[str, Any]]:
    """Seconds per step of each contender: the median over at least `rounds` interleaved blocks.

    The block length (steps) is calibrated once per contender so a block takes about
    `block_seconds`. The blocks run in `balanced_order` (each contender right after each of the
    others equally often), and each timed block starts after an untimed lead-in of the same
    contender (about `lead_seconds`, at least two steps) that lets the previous contender's
    threads settle and wakes this one's.
    """
    order = balanced_order(len(contenders), rounds)
    # calibrate the one that runs last in the order last: the first timed block then follows it,
    # as it does in the order's wrap-around, and no pair is counted once more than the others
    last = contenders[order[-1]]
    blocks, leads = {}, {}
    for c in [c for c in contenders if c is not last] + [last]:
        c.run(2)  # warm
        start = time.perf_counter()
        c.run(3)
        per_step = (time.perf_counter() - start) / 3
        blocks[c.name] = max(1, min(2000, round(block_seconds / max(per_step, 1e-7))))
        leads[c.name] = max(2, min(2000, round(lead_seconds / max(per_step, 1e-7)))) if lead_seconds > 0 else 0
    samples: dict[str, list[float]] = {c.name: [] for c in contenders}
    for i in order:
        c = contenders[i]
        k = blocks[c.name]
        if leads[c.name]:
            c.run(leads[c.name])
        start = time.perf_counter()
        c.run(k)
        samples[c.name].append((time.perf_counter() - start) / k)
    return {
        name: {"median_s": statistics.median(s), "min_s": min(s), "max_s": max(s), "block_steps": blocks[name],
               "lead_steps": leads[name], "rounds": len(s), "samples_s": s}
        for name, s in samples.items()
    }


def _ratio_text(ratio: float, interval: tuple[float, float]) -> str:
    """`1.023 (0.98-1.07)`: a ratio to JAX with its 95% interval."""
    return f"{ratio:.3f} ({interval[0]:.2f}-{interval[1]:.2f})"


def ratio_interval(num: list[float], den: list[float], level: float = 0.95, resamples: int = 2000,
                   seed: int = 0) -> tuple[float, float]:
    """A bootstrap interval of `median(num) / median(den)`: resample each contender's blocks
    with replacement, take the ratio of the medians, keep the central `level` of the ratios.
    An interval that holds 1.0 says the two are not told apart by this run."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    ra = np.median(rng.choice(a, size=(resamples, a.size)), axis=1)
    rb = np.median(rng.choice(b, size=(resamples, b.size)), axis=1)
    lo, hi = np.quantile(ra / rb, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def xla_costs(compiled: Any) -> dict[str, float]:
    cost = compiled.cost_analysis()
    if isinstance(cost, list):  # older JAX: one dict per computation
        cost = cost[0]
    memory = compiled.memory_analysis()
    return {
        "flops": float(cost.get("flops", float("nan"))),
        "bytes_accessed": float(cost.get("bytes accessed", float("nan"))),
        "temp_bytes": float(memory.temp_size_in_bytes),
        "peak_bytes": float(getattr(memory, "peak_memory_in_bytes", float("nan"))),
        "argument_bytes": float(memory.argument_size_in_bytes),
        "output_bytes": float(memory.output_size_in_bytes),
    }


# ---------------------------------------------------------------------------------------------
# Compile time by stage


def compile_stages(path: Path, check: bool = True) -> tuple[list[tuple[str, float]], str | None]:
    """(stage, seconds) of one compile: parse, each pass, each contract, JAX trace, XLA; and
    the failure message of a contract that did not hold (the compile then goes on without
    contracts, so the remaining stages are still timed)."""
    import jax

    from stepc.api import Program
    from stepc.ir.diagnostics import StepcError
    from stepc.ir.parse import load
    from stepc.pipeline import PassEvent, Pipeline
    from stepc.tools import data as train_data

    stages: list[tuple[str, float]] = []
    start = time.perf_counter()
    module = load(path)
    stages.append(("parse", time.perf_counter() - start))
    snapshots: list[tuple[str, Any]] = []

    def listen(event: PassEvent) -> None:
        if event.index == 0 and snapshots:
            return  # the input again, when the compile goes on without contracts
        snapshots.append((event.name, event.module.clone()))
        if event.index:
            number = len(snapshots) - 1  # pipeline order (cse and dce run twice)
            stages.append((f"pass {number} {event.name}", event.seconds))
            if event.report is not None:
                stages.append((f"contract {number} {event.name}", event.report.seconds))

    spec = train_data.signature(module)
    params = train_data.default_init(module, seed=0)
    batch = {s.name: np.zeros(s.shape, s.dtype) for s in (*spec.inputs, *spec.keys)}
    failure = None
    try:
        Pipeline.default(check=check, listeners=[listen]).run(module)
    except StepcError as e:
        failure = e.message
        done = [name for name, _ in snapshots[1:]]
        rest = list(Pipeline.default().names)[len(done) :]
        Pipeline(rest, check=False, listeners=[listen]).run(module)
    prog = Program(str(path), snapshots)
    start = time.perf_counter()
    state = prog.init_state(params)
    traced = jax.jit(prog.step).trace(params, state, batch)
    lowered = traced.lower()
    stages.append(("JAX trace and lower", time.perf_counter() - start))
    start = time.perf_counter()
    lowered.compile()
    stages.append(("XLA compile", time.perf_counter() - start))
    return stages, failure


def hand_compile_times(model: str) -> dict[str, float]:
    """For reference: the hand-written JAX step's own trace-and-lower and XLA compile times."""
    m = model_setup(model)
    step = references.hand_jax_step(m.jax_loss, m.groups)  # already jax.jit
    start = time.perf_counter()
    lowered = step.trace(m.params, references.hand_jax_state(m.params, m.groups), m.batch).lower()
    trace = time.perf_counter() - start
    start = time.perf_counter()
    lowered.compile()
    return {"trace_and_lower": trace, "xla_compile": time.perf_counter() - start}


def deep_program(n_ops: int) -> str:
    """A generated deep program of about `n_ops` ops: layers of `tanh(h @ w + b)` sharing
    one weight and bias, then the mean."""
    layers = max(1, (n_ops - 1) // 3)
    lines = [
        "func.func @deep(%w: tensor<16x16xf32> {step.param}, %b: tensor<16xf32> {step.param},",
        "                %x: tensor<8x16xf32>) -> tensor<f32>",
        "    attributes {step.sgd = #step.sgd<lr = 0.01, momentum = 0.9>} {",
    ]
    h = "%x"
    for i in range(layers):
        lines.append(f"  %m{i} = step.matmul {h}, %w : (tensor<8x16xf32>, tensor<16x16xf32>) -> tensor<8x16xf32>")
        lines.append(f"  %a{i} = step.add %m{i}, %b : (tensor<8x16xf32>, tensor<16xf32>) -> tensor<8x16xf32>")
        lines.append(f"  %h{i} = step.tanh %a{i} : tensor<8x16xf32>")
        h = f"%h{i}"
    lines.append(f"  %loss = step.mean {h} : tensor<8x16xf32> -> tensor<f32>")
    lines.append("  func.return %loss : tensor<f32>")
    lines.append("}")
    return "\n".join(lines) + "\n"


def scaling_row(n_ops: int, xla: bool = True) -> dict[str, Any]:
    """Compile a generated program without contracts, by stage."""
    import jax

    from stepc.ir.parse import load_text
    from stepc.pipeline import PassEvent, Pipeline

    text = deep_program(n_ops)
    start = time.perf_counter()
    module = load_text(text, f"deep{n_ops}.ir")
    parse = time.perf_counter() - start
    ops = sum(1 for op in module.walk() if op.name.startswith("step."))
    passes: dict[str, float] = {}

    def listen(event: PassEvent) -> None:
        if event.index:
            passes[event.name] = passes.get(event.name, 0.0) + event.seconds

    Pipeline.default(check=False, listeners=[listen]).run(module)
    row: dict[str, Any] = {"ops": ops, "parse_s": parse, "passes_s": sum(passes.values()), "by_pass_s": passes}
    row["stepc_s"] = parse + row["passes_s"]
    row["stepc_us_per_op"] = row["stepc_s"] / ops * 1e6
    if xla:
        from stepc.backends.jax import jax_function

        jf = jax_function(module)  # already lowered: the JAX function of the step
        arrays = [np.zeros(spec.shape, spec.dtype) for spec in jf.specs]
        start = time.perf_counter()
        lowered = jax.jit(jf.fn).trace(*arrays).lower()
        row["trace_s"] = time.perf_counter() - start
        start = time.perf_counter()
        lowered.compile()
        row["xla_s"] = time.perf_counter() - start
        row["total_s"] = row["stepc_s"] + row["trace_s"] + row["xla_s"]
    return row


# ---------------------------------------------------------------------------------------------
# The report


def machine() -> dict[str, Any]:
    import jax

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "device": str(jax.devices()[0].device_kind),
        "platform": jax.devices()[0].platform,
        "nproc": os.cpu_count(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = [line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")]
        info["cpu"] = model[0] if model else platform.processor()
    except (OSError, subprocess.SubprocessError):
        info["cpu"] = platform.processor()
    if info["platform"] == "gpu":
        info["gpu"] = str(jax.devices()[0].device_kind)
    return info


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "| " + " | ".join("-" * w for w in widths) + " |", *map(line, rows)])


@dataclass
class Results:
    machine: dict[str, Any]
    step_time: dict[str, Any] = field(default_factory=dict)
    xla: dict[str, Any] = field(default_factory=dict)
    agreement: dict[str, Any] = field(default_factory=dict)
    compile: dict[str, Any] = field(default_factory=dict)
    scaling: list[dict[str, Any]] = field(default_factory=list)


def run_benchmarks(models: list[str], rounds: int, block_seconds: float, scaling_sizes: tuple[int, ...],
                   check: bool = True, xla_max_ops: int = 3000, out: Any = sys.stdout,
                   lead_seconds: float = 0.02) -> Results:
    results = Results(machine())
    say = lambda text="": print(text, file=out, flush=True)  # noqa: E731
    m = results.machine
    say(f"machine: {m['cpu']}, {m['nproc']} CPUs, {m['platform']} ({m['device']}); "
        f"JAX {m['jax']}, PyTorch {m.get('torch', '-')} ({m.get('torch_threads', '-')} threads), Python {m['python']}")

    compile_rows = []
    for model in models:
        path = ROOT / MODELS[model][0]
        stages, failure = compile_stages(path, check=check)
        hand = hand_compile_times(model)
        results.compile[model] = {"stages": dict(stages), "total": sum(s for _, s in stages), "failure": failure,
                                  "hand_jax": hand}
        compile_rows.append((model, stages, failure, hand))
    say(f"\n## Compile time by stage (contracts {'on' if check else 'off'})\n")
    for model, stages, failure, hand in compile_rows:
        contracts = sum(sec for name, sec in stages if name.startswith("contract"))
        say(f"{model}: total {fmt_time(sum(sec for _, sec in stages))}, of which contracts {fmt_time(contracts)}")
        if failure:
            say(f"  CONTRACT FAILED (the compile went on without contracts): {failure}")
        say(table(["stage", "time"], [[name, fmt_time(sec)] for name, sec in stages]))
        say(f"(for reference, the hand-written JAX step: trace and lower {fmt_time(hand['trace_and_lower'])}, "
            f"XLA compile {fmt_time(hand['xla_compile'])})\n")

    import stepc

    time_rows, cost_rows = [], []
    for model in models:
        prog = stepc.compile(str(ROOT / MODELS[model][0]), check=False)
        contenders, first = contenders_for(model, prog)
        reference = np.array(first["jax"])
        agreement = {name: float(np.max(np.abs(np.array(v) - reference) / np.maximum(np.abs(reference), 1e-12)))
                     for name, v in first.items()}
        results.agreement[model] = {"first_losses": first, "max_rel_diff_vs_jax": agreement}
        if max(agreement.values()) > 1e-3:
            raise SystemExit(f"{model}: the contenders disagree on the first losses: {first}")
        timing = interleaved_medians(contenders, rounds, block_seconds, lead_seconds)
        results.step_time[model] = timing
        jax_median = timing["jax"]["median_s"]
        ratios = {name: timing[name]["median_s"] / jax_median for name in timing}
        intervals = {name: ratio_interval(timing[name]["samples_s"], timing["jax"]["samples_s"])
                     for name in timing if name != "jax"}
        results.step_time[model]["ratio_vs_jax"] = ratios
        results.step_time[model]["ratio_vs_jax_95"] = intervals
        time_rows.append([
            model, *(fmt_time(timing[c]["median_s"]) for c in CONTENDERS),
            _ratio_text(ratios["stepc"], intervals["stepc"]), _ratio_text(ratios["optax"], intervals["optax"]),
            f"{ratios['torch']:.3f}",
            f"{timing['stepc']['median_s'] / timing['torch']['median_s']:.3f}",
        ])
        costs = {c.name: xla_costs(c.compiled) for c in contenders if c.compiled is not None}
        results.xla[model] = costs
        s, j = costs["stepc"], costs["jax"]
        cost_rows.append([
            model, f"{s['flops']:.4g}", f"{j['flops']:.4g}", f"{s['flops'] / j['flops']:.4f}",
            fmt_bytes(s["temp_bytes"]), fmt_bytes(j["temp_bytes"]), _ratio(s["temp_bytes"], j["temp_bytes"]),
            fmt_bytes(s["peak_bytes"]), fmt_bytes(j["peak_bytes"]), _ratio(s["peak_bytes"], j["peak_bytes"]),
        ])
    blocks_each = min((t["stepc"]["rounds"] for t in results.step_time.values()), default=rounds)
    say(f"## Step time: median over {blocks_each} interleaved blocks of ~{block_seconds * 1e3:.0f} ms per contender "
        f"(each right after each other contender equally often, after a ~{lead_seconds * 1e3:.0f} ms untimed lead-in)\n")
    say(table(["model", "stepc", "hand JAX", "optax", "PyTorch eager", "stepc/JAX (95%)", "optax/JAX (95%)",
               "torch/JAX", "stepc/torch"], time_rows))
    say("\n(95%: a bootstrap interval of the ratio of medians over the blocks; an interval holding 1.00 means this "
        "run does not tell the two apart)")
    say("\nAll four agree on the first three losses (max relative difference against hand JAX: "
        + ", ".join(f"{k} {max(v['max_rel_diff_vs_jax'].values()):.1e}" for k, v in results.agreement.items()) + ")")
    say("\n## XLA cost and memory analyses of the compiled step (stepc against hand JAX)\n")
    say(table(["model", "flops stepc", "flops JAX", "ratio", "temp stepc", "temp JAX", "ratio", "peak stepc",
               "peak JAX", "ratio"], cost_rows))

    if scaling_sizes:
        say("\n## Compile-time scaling: generated deep programs, no contracts\n")
        header = ["ops", "parse", "passes", "stepc", "stepc us/op", "JAX trace", "XLA", "total", "total us/op"]
        widths = [6, 10, 10, 10, 11, 10, 10, 10, 11]
        line = lambda cells: "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
        say(line(header))
        say("| " + " | ".join("-" * w for w in widths) + " |")
        for n in scaling_sizes:
            row = scaling_row(n, xla=n <= xla_max_ops)
            results.scaling.append(row)
            xla = "xla_s" in row
            say(line([row["ops"], fmt_time(row["parse_s"]), fmt_time(row["passes_s"]), fmt_time(row["stepc_s"]),
                      f"{row['stepc_us_per_op']:.0f}", fmt_time(row["trace_s"]) if xla else "-",
                      fmt_time(row["xla_s"]) if xla else "-", fmt_time(row["total_s"]) if xla else "-",
                      f"{row['total_s'] / row['ops'] * 1e6:.0f}" if xla else "-"]))
        big = [r for r in results.scaling if r["ops"] >= 1000]
        if len(big) >= 2:
            lo, hi = big[0], big[-1]
            say(f"\nstepc time per op, {hi['ops']} ops against {lo['ops']}: "
                f"{hi['stepc_us_per_op'] / lo['stepc_us_per_op']:.2f}x")
        if results.scaling:
            hi = results.scaling[-1]
            say(f"by pass at {hi['ops']} ops: parse {fmt_time(hi['parse_s'])}, "
                + ", ".join(f"{name} {fmt_time(sec)}" for name, sec in hi["by_pass_s"].items()))
    return results


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.4f}" if b else ("1.0000" if a == b else "inf")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke test: few short rounds, small programs")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of: {', '.join(MODELS)}")
    parser.add_argument("--rounds", type=int,
                        help="timed blocks per contender (default 63, quick 3; rounded up to a multiple of 3 so "
                        "that each contender follows each other one equally often)")
    parser.add_argument("--block-ms", type=float, help="the length of one timed block (default 50 ms, quick 5)")
    parser.add_argument("--lead-ms", type=float,
                        help="the untimed run of the same contender before each timed block (default 20 ms, quick 2; "
                        "0: none)")
    parser.add_argument("--scaling", help="comma-separated op counts (default 100,300,1000,3000,10000)")
    parser.add_argument("--xla-max-ops", type=int, default=3000,
                        help="compile the scaling programs with XLA only up to this size (default 3000: XLA's own "
                        "compile of the 10,000-op step takes over 15 minutes on 2 cores)")
    parser.add_argument("--no-check", action="store_true", help="compile without contracts (the stage table too)")
    parser.add_argument("--json", metavar="FILE", help="also write every number here")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(MODELS)}")
    rounds = args.rounds or (3 if args.quick else 63)
    block = (args.block_ms or (5 if args.quick else 50)) / 1e3
    lead = (args.lead_ms if args.lead_ms is not None else (2 if args.quick else 20)) / 1e3
    if args.scaling is not None:
        sizes = tuple(int(s) for s in args.scaling.split(",") if s.strip())
    else:
        sizes = QUICK_SCALING_SIZES if args.quick else SCALING_SIZES
    results = run_benchmarks(models, rounds, block, sizes, check=not args.no_check, xla_max_ops=args.xla_max_ops,
                             lead_seconds=lead)
    if args.json:
        Path(args.json).write_text(json.dumps(results.__dict__, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
