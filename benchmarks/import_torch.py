"""The PyTorch importer on a causal transformer block: import time, and the imported step against
torch eager and `torch.compile` of the same training step, side by side in one process (CPU).

    .venv/bin/python benchmarks/import_torch.py [--rounds 6] [--block-seconds 0.5] [--json out.json]

The model is `examples/pytorch/models.py`'s `CausalBlock` at a benchmark size (vocabulary 64,
width 128, 4 heads, 64 positions, batch 16, dropout 0.1 in training mode) with Adam (lr 3e-3).

- import: `stepc.from_torch`'s phases (torch.export and decompositions, translation, the import
  check), then `imp.compile()` with every pass contract, then XLA's compile of the jitted step;
- `stepc`: the imported step (`prog.step`, jitted), params and state carried from step to step;
- `torch`: eager PyTorch, `zero_grad`, forward, backward, `optimizer.step()`;
- `torch.compile`: that same training-step function under `torch.compile` (inductor, default
  mode), its first call (the compile) timed apart.

The step times are medians over interleaved blocks in a balanced order with lead-ins
(`benchmarks/run.py`'s `interleaved_medians`: PyTorch's threads spin into the next block).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "examples" / "pytorch"))

import run as bench  # noqa: E402  (benchmarks/run.py)

SIZE = {"vocab": 64, "d": 128, "heads": 4, "seq": 64}
BATCH = 16


def make(seed: int = 0) -> tuple[Any, Any, dict[str, Any], Any]:
    import models  # examples/pytorch/models.py
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    model = models.CausalBlock(**SIZE, dropout=0.1)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss_fn(model: Any, batch: dict[str, Any]) -> Any:
        logits = model(batch["tokens"])
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), batch["targets"].view(-1))

    tokens = torch.randint(0, SIZE["vocab"], (BATCH, SIZE["seq"]))
    return model, loss_fn, {"tokens": tokens, "targets": torch.roll(tokens, -1, dims=1)}, optimizer


def torch_contender(name: str, compiled: bool) -> tuple[bench.Contender, float]:
    import torch

    model, loss_fn, batch, optimizer = make()

    def train_step() -> Any:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch)
        loss.backward()
        optimizer.step()
        return loss.detach()

    step = torch.compile(train_step) if compiled else train_step
    start = time.perf_counter()
    step()  # the first call: the compile, for torch.compile
    first = time.perf_counter() - start

    def run(k: int) -> float:
        loss = None
        for _ in range(k):
            loss = step()
        return float(loss)  # type: ignore[arg-type]

    return bench.Contender(name, run), first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--block-seconds", type=float, default=0.5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import jax

    import stepc

    model, loss_fn, batch, optimizer = make()
    start = time.perf_counter()
    imp = stepc.from_torch(model, loss_fn, batch, optimizer)
    import_s = time.perf_counter() - start
    start = time.perf_counter()
    prog = imp.compile()
    compile_s = time.perf_counter() - start
    params = imp.params()
    state = prog.init_state(params)
    step_batch = imp.batch(batch)
    step = jax.jit(prog.step)
    start = time.perf_counter()
    contender = bench.jax_contender("stepc", step, params, state, step_batch)
    xla_s = time.perf_counter() - start
    eager, _ = torch_contender("torch", compiled=False)
    compiled, torch_compile_s = torch_contender("torch.compile", compiled=True)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"CausalBlock {SIZE}, batch {BATCH}: {n_params:,} parameters, {len(imp.text.splitlines())} lines of step IR")
    print(f"import: {import_s:.2f} s (export {imp.seconds['export']:.2f}, translation {imp.seconds['translate']:.3f}, "
          f"check {imp.seconds['check']:.2f}); stepc compile with contracts {compile_s:.2f} s; XLA compile {xla_s:.2f} s")
    print(f"torch.compile: first call (compile) {torch_compile_s:.2f} s")
    times = bench.interleaved_medians([contender, eager, compiled], args.rounds, args.block_seconds)
    base = times["torch.compile"]["median_s"]
    for name, t in times.items():
        print(f"{name:<14} {t['median_s'] * 1e3:8.2f} ms/step (min {t['min_s'] * 1e3:.2f})   / torch.compile {t['median_s'] / base:.3f}")
    if args.json:
        args.json.write_text(json.dumps({
            "parameters": n_params, "import_s": import_s, "import_phases_s": imp.seconds, "stepc_compile_s": compile_s,
            "xla_compile_s": xla_s, "torch_compile_first_call_s": torch_compile_s,
            "step": {k: {kk: v for kk, v in t.items() if kk != "samples_s"} for k, t in times.items()},
        }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
