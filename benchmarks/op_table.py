"""The per-op gradient table: stepc's gradient of each row of `tests/test_vjp_table.py` against
`jax.grad` and PyTorch autograd in float64, as numbers.

    .venv/bin/python benchmarks/op_table.py                    # the second op set (issue 13)
    .venv/bin/python benchmarks/op_table.py --ops all          # every row
    .venv/bin/python benchmarks/op_table.py --ops conv2d,gelu  # rows whose op is one of these

The test asserts each relative error (max |ours - oracle| / max |oracle|) is at most 1e-10; this
prints them: for each row, the worst over its parameters and two random draws, of stepc's
gradient run by the reference interpreter and by the JAX backend (XLA), against each oracle.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

SECOND_SET = ("select", "conv2d", "max_pool2d", "avg_pool2d", "layer_norm", "embedding", "gelu", "dropout",
              "concat", "slice")  # fmt: skip


def row_op(line: str) -> str:
    """The op a row is about: the first `step.` op of its line."""
    return line.split("step.")[1].split()[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", default=",".join(SECOND_SET), help="comma-separated op names, or 'all'")
    args = parser.parse_args(argv)

    import numpy as np
    import test_vjp_table as table  # tests/test_vjp_table.py: the rows, their oracles and runners

    from stepc.backends.jax import jax_function
    from stepc.ir.interpreter import run_function
    from stepc.passes.lower_to_stablehlo import lowered_clone

    wanted = None if args.ops == "all" else set(args.ops.split(","))
    rows = [r for r in table.ROWS if wanted is None or row_op(r.line) in wanted]
    print("| row | op | interpreter vs jax.grad | interpreter vs torch | XLA vs jax.grad | XLA vs torch |")
    print("| --- | --- | --- | --- | --- | --- |")
    worst = 0.0
    for row in rows:
        module = table.gradient_program(row)
        compiled = jax_function(lowered_clone(module))
        errs = {(how, name): 0.0 for how in ("interpreter", "xla") for name in ("jax.grad", "torch")}
        for seed in (0, 1):
            inputs = table.inputs_of(row, seed)
            ours = {"interpreter": run_function(module, inputs), "xla": compiled(inputs)}
            oracles = {"jax.grad": table.jax_gradients(row, inputs), "torch": table.torch_gradients(row, inputs)}
            for name, oracle in oracles.items():
                for param, expected in oracle.items():
                    for how, got in ours.items():
                        err = table.rel_error(np.asarray(got[f"grad.{param}"]), expected)
                        errs[how, name] = max(errs[how, name], err)
        worst = max(worst, *errs.values())
        cells = " | ".join(f"{errs[k]:.1e}" for k in (("interpreter", "jax.grad"), ("interpreter", "torch"),
                                                        ("xla", "jax.grad"), ("xla", "torch")))  # fmt: skip
        print(f"| {row.id} | {row_op(row.line)} | {cells} |")
    print(f"\n{len(rows)} rows; worst relative error {worst:.2e} (the test's bound: {table.REL_TOL:g})")
    return 0 if worst <= table.REL_TOL else 1


if __name__ == "__main__":
    raise SystemExit(main())
