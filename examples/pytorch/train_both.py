"""The same three training steps in PyTorch and through stepc, side by side (docs/importing.md).

    python examples/pytorch/train_both.py [mlp|cnn|transformer]
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

import stepc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models


def main(name: str = "transformer") -> None:
    model, loss_fn, batch, optimizer = getattr(models, name)()
    imp = stepc.from_torch(model, loss_fn, batch, optimizer)  # checked: loss and grads = autograd (f64)
    prog = imp.compile()
    params = imp.params()  # before torch trains the model
    state = prog.init_state(params)

    generator = torch.Generator().manual_seed(1)
    classes = 16 if name == "transformer" else 10
    for step in range(3):
        torch_batch = {k: torch.randn(v.shape, generator=generator) if v.is_floating_point()
                       else torch.randint(0, classes, v.shape, generator=generator) for k, v in batch.items()}  # fmt: skip
        step_batch = imp.batch(torch_batch)  # int64 -> int32, plus a fresh key per dropout

        optimizer.zero_grad()  # the PyTorch loop
        with imp.torch_dropout(step_batch):  # torch's dropout draws stepc's masks
            loss = loss_fn(model, torch_batch)
        loss.backward()
        optimizer.step()

        params, state, step_loss = prog.step(params, state, step_batch)  # the compiled step
        print(f"step {step}: torch loss {loss.item():.7f}   stepc loss {float(step_loss):.7f}")

    named = dict(model.named_parameters())
    worst = max(
        float(np.max(np.abs(np.asarray(params[ir]) - named[t].detach().numpy())) / np.max(np.abs(named[t].detach().numpy())))
        for t, ir in imp.names.items()
    )
    print(f"after 3 steps: largest relative difference of a parameter tensor {worst:.2e}")


if __name__ == "__main__":
    main(*sys.argv[1:])
