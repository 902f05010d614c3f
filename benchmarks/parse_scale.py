"""Parse + verify time of a generated deep step program (10,000 ops by default).

The program is a chain of elementwise ops in which every op also reads an earlier value
(fan-out), with broadcasting from a bias and a few matmuls, ending in a scalar loss:

    .venv/bin/python benchmarks/parse_scale.py [--ops 10000] [--repeat 3] [--profile]

It prints the size of the text and the best time of parsing, verifying (ops, dominance and
the function-level rules) and both together, wall-clock and CPU time of this process (the
CPU time is the steadier number on a shared machine). Target: under 3 s for 10,000 ops.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import sys
import time

from stepc.ir.parse import parse_text, verify
from stepc.ir.program import step_function, verify_step_function

UNARY = ("exp", "neg", "tanh", "sigmoid", "relu", "square", "abs")
BINARY = ("add", "sub", "mul", "maximum", "minimum")


def generate(ops: int, seed: int = 0, rows: int = 8, cols: int = 16) -> str:
    """A step function of exactly `ops` step ops (plus func.return)."""
    rng = random.Random(seed)
    t = f"tensor<{rows}x{cols}xf32>"
    bias = f"tensor<{cols}xf32>"
    square = f"tensor<{cols}x{cols}xf32>"
    lines = [
        f"func.func @deep(%w: {square} {{step.param}}, %b: {bias} {{step.param}}, %x: {t}) -> tensor<f32>",
        "    attributes {step.sgd = #step.sgd<lr = 0.01, momentum = 0.9>} {",
    ]
    values = ["x"]
    for i in range(ops - 2):
        prev = values[-1]
        name = f"v{i}"
        kind = i % 10
        if kind == 0:
            lines.append(f"  %{name} = step.matmul %{prev}, %w : ({t}, {square}) -> {t}")
        elif kind == 1:
            lines.append(f"  %{name} = step.add %{prev}, %b : ({t}, {bias}) -> {t}")
        elif kind in (2, 5, 8):
            lines.append(f"  %{name} = step.{rng.choice(UNARY)} %{prev} : {t}")
        else:
            other = values[rng.randrange(max(0, len(values) - 50), len(values))]  # fan-out
            lines.append(f"  %{name} = step.{rng.choice(BINARY)} %{prev}, %{other} : ({t}, {t}) -> {t}")
        values.append(name)
    lines.append(f"  %sq = step.square %{values[-1]} : {t}")
    lines.append(f"  %loss = step.mean %sq : {t} -> tensor<f32>")
    lines.append("  func.return %loss : tensor<f32>")
    lines.append("}")
    return "\n".join(lines) + "\n"


def timed(fn, *args):  # type: ignore[no-untyped-def]
    """The result, the wall-clock seconds and the CPU seconds of this process."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def measure(text: str) -> tuple[float, float, float]:
    """Wall seconds of parsing and of verifying, and CPU seconds of both."""
    module, parse_s, parse_cpu = timed(parse_text, text, "deep.ir")
    _, verify_ops_s, verify_ops_cpu = timed(verify, module)
    _, verify_fn_s, verify_fn_cpu = timed(verify_step_function, step_function(module))
    return parse_s, verify_ops_s + verify_fn_s, parse_cpu + verify_ops_cpu + verify_fn_cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="print the 25 costliest functions of one run")
    args = p.parse_args(argv)
    text = generate(args.ops)
    n_ops = sum(1 for line in text.splitlines() if " = step." in line)
    print(f"program: {n_ops} step ops, {len(text.splitlines())} lines, {len(text) / 1e6:.2f} MB")
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(measure, text)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(25)
    runs = [measure(text) for _ in range(args.repeat)]
    parse_s = min(r[0] for r in runs)
    verify_s = min(r[1] for r in runs)
    total_s = min(r[0] + r[1] for r in runs)
    cpu_s = min(r[2] for r in runs)
    print(f"parse  {parse_s:.3f} s")
    print(f"verify {verify_s:.3f} s")
    print(f"parse+verify {total_s:.3f} s wall, {cpu_s:.3f} s CPU (best of {args.repeat}; target < 3 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
