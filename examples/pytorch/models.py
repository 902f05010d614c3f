"""Three PyTorch training steps for `stepc import` (and `stepc.from_torch`): each function returns
`(model, loss_fn, batch, optimizer)`, as `stepc import FILE.py:FUNCTION` expects.

    stepc import examples/pytorch/models.py:cnn -o cnn.ir
    stepc compile cnn.ir

- `mlp`: a two-layer perceptron on 8x8 digits with SGD, momentum and two parameter groups
  (weight decay on the weights only), cross-entropy;
- `cnn`: a small convolutional network (conv, ReLU, max pool, conv, GELU, average pool, flatten,
  linear) with AdamW, cross-entropy;
- `transformer`: a causal pre-norm transformer block (token and position embeddings, layer norm,
  4-head attention with a causal-mask buffer and masked_fill(-inf), dropout, a GELU MLP, a
  linear head) with Adam, next-token cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mlp(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    optimizer = torch.optim.SGD(
        [{"params": weights}, {"params": biases, "weight_decay": 0.0}], lr=0.1, momentum=0.9, weight_decay=5e-4
    )

    def loss_fn(model, batch):
        return F.cross_entropy(model(batch["x"]), batch["labels"])

    batch = {"x": torch.randn(16, 64), "labels": torch.randint(0, 10, (16,))}
    return model, loss_fn, batch, optimizer


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.pool2 = nn.AvgPool2d(2)
        self.head = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):
        x = self.pool1(F.relu(self.conv1(x)))
        x = self.pool2(F.gelu(self.conv2(x)))
        return self.head(torch.flatten(x, 1))


def cnn(seed: int = 0):
    torch.manual_seed(seed)
    model = SmallCNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)

    def loss_fn(model, batch):
        return F.cross_entropy(model(batch["images"]), batch["labels"])

    batch = {"images": torch.randn(8, 1, 8, 8), "labels": torch.randint(0, 10, (8,))}
    return model, loss_fn, batch, optimizer


class CausalBlock(nn.Module):
    def __init__(self, vocab: int = 16, d: int = 32, heads: int = 4, seq: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        self.heads = heads
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(seq, d) * 0.02)
        self.ln1 = nn.LayerNorm(d)
        # No bias on q, k, v: the key's bias has a gradient of exactly 0 (softmax ignores a constant
        # added to a row of scores), so Adam would turn its rounding noise into lr-sized steps.
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))
        self.lnf = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.register_buffer("causal", torch.tril(torch.ones(seq, seq, dtype=torch.bool)))

    def forward(self, ids):
        b, t = ids.shape
        x = self.tok(ids) + self.pos[:t]
        q, k, v = self.qkv(self.ln1(x)).split(x.shape[-1], dim=-1)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / (q.shape[-1] ** 0.5)
        scores = scores.masked_fill(~self.causal[:t, :t], float("-inf"))
        y = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, t, -1)
        x = x + self.drop(self.proj(y))
        x = x + self.mlp(self.ln2(x))
        return self.head(self.lnf(x))


def transformer(seed: int = 0):
    torch.manual_seed(seed)
    model = CausalBlock()
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss_fn(model, batch):
        logits = model(batch["tokens"])
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), batch["targets"].view(-1))

    tokens = torch.randint(0, 16, (4, 8))
    batch = {"tokens": tokens, "targets": torch.roll(tokens, -1, dims=1)}
    return model, loss_fn, batch, optimizer
