"""What a user would otherwise write, for each benchmark model: the loss by hand in JAX and in
PyTorch, and the SGD step around it three ways (hand-written JAX, optax, torch.optim.SGD).

The optimizer's hyperparameters are read from the program's `#step.sgd` (so every contender
runs the same update); the code of the update is written here by hand, as
`torch.optim.SGD`'s documented equations. All contenders start from the same parameters and
zero momentum buffers (for dampening 0 the first step then matches PyTorch's `buf = grad`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Group:
    """The resolved torch.optim.SGD arguments of one parameter."""

    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool


def sgd_groups(module: Any) -> dict[str, Group]:
    """Each parameter's SGD arguments from the program (function attribute and overrides)."""
    from stepc.ir.program import function_sgd, params, step_function

    fn = step_function(module)
    sgd = function_sgd(fn)
    assert sgd is not None
    out = {}
    for p in params(fn):
        f = sgd.resolved(p.sgd_override)
        if f["dampening"] or f["maximize"]:
            raise ValueError("the hand-written references implement dampening = 0, maximize = false only")
        out[p.name] = Group(float(f["lr"]), float(f["momentum"]), float(f["weight_decay"]), bool(f["nesterov"]))
    return out


# ---------------------------------------------------------------------------------------------
# The losses, by hand. Each model: (jax loss, torch loss, a random batch).


def _mlp_jax(params: Any, batch: Any) -> Any:
    import jax
    import jax.numpy as jnp

    h = batch["x"]
    n_layers = sum(1 for k in params if k.startswith("w"))
    for i in range(1, n_layers + 1):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < n_layers:
            h = jax.nn.relu(h)
    logp = jax.nn.log_softmax(h, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, batch["labels"][:, None], axis=1))


def _mlp_torch(params: Any, batch: Any) -> Any:
    import torch.nn.functional as F

    h = batch["x"]
    n_layers = sum(1 for k in params if k.startswith("w"))
    for i in range(1, n_layers + 1):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < n_layers:
            h = F.relu(h)
    return F.cross_entropy(h, batch["labels"].long())


def _softmax_jax(params: Any, batch: Any) -> Any:
    import jax
    import jax.numpy as jnp

    logp = jax.nn.log_softmax(batch["x"] @ params["w"] + params["b"], axis=1)
    return jnp.mean(-jnp.sum(logp * batch["onehot"], axis=1))


def _softmax_torch(params: Any, batch: Any) -> Any:
    import torch

    logp = torch.log_softmax(batch["x"] @ params["w"] + params["b"], dim=1)
    return torch.mean(-torch.sum(logp * batch["onehot"], dim=1))


def _attention_jax(params: Any, batch: Any) -> Any:
    import jax
    import jax.numpy as jnp

    x = batch["x"]
    q, k, v = x @ params["wq"], x @ params["wk"], x @ params["wv"]
    p = jax.nn.softmax((q @ jnp.swapaxes(k, 1, 2)) * 0.125, axis=2)
    y = (p @ v) @ params["wo"]
    return jnp.mean((y - batch["target"]) ** 2)


def _attention_torch(params: Any, batch: Any) -> Any:
    import torch

    x = batch["x"]
    q, k, v = x @ params["wq"], x @ params["wk"], x @ params["wv"]
    p = torch.softmax((q @ k.transpose(1, 2)) * 0.125, dim=2)
    y = (p @ v) @ params["wo"]
    return torch.mean((y - batch["target"]) ** 2)


def _cnn_jax(params: Any, batch: Any) -> Any:
    """examples/cnn_digits.ir by hand: `lax.conv_general_dilated` (NCHW, OIHW), `jax.nn.relu`,
    `lax.reduce_window` max pooling, a linear classifier."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    def conv(x: Any, k: Any) -> Any:
        return lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW"))

    h = jax.nn.relu(conv(batch["x"], params["k1"]) + params["kb1"])
    h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    h = jax.nn.relu(conv(h, params["k2"]) + params["kb2"])
    logits = h.reshape(h.shape[0], -1) @ params["w"] + params["b"]
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, batch["labels"][:, None], axis=1))


def _cnn_torch(params: Any, batch: Any) -> Any:
    import torch.nn.functional as F

    h = F.relu(F.conv2d(batch["x"], params["k1"], padding=1) + params["kb1"])
    h = F.max_pool2d(h, 2)
    h = F.relu(F.conv2d(h, params["k2"], padding=1) + params["kb2"])
    return F.cross_entropy(h.flatten(1) @ params["w"] + params["b"], batch["labels"].long())


TRANSFORMER_HEADS = 4
DROPOUT = 0.1


def _transformer_jax(params: Any, batch: Any) -> Any:
    """examples/transformer_lm.ir by hand: `jax.nn` layer norm arithmetic, causal attention,
    `jax.random.bernoulli` dropout from the batch's key, `jax.nn.gelu(approximate=False)`."""
    import jax
    import jax.numpy as jnp

    def layer_norm(x: Any, g: Any, b: Any) -> Any:
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + 1e-5) * g + b

    p, tokens = params, batch["tokens"]
    n, t = tokens.shape
    d = p["w_q"].shape[0]
    heads = TRANSFORMER_HEADS
    h0 = p["tok_emb"][tokens] + p["pos_emb"]
    x = layer_norm(h0, p["ln1_g"], p["ln1_b"])
    q, k, v = (jnp.transpose((x @ p[w]).reshape(n, t, heads, d // heads), (0, 2, 1, 3)) for w in ("w_q", "w_k", "w_v"))
    scores = (q @ jnp.swapaxes(k, -1, -2)) * (d // heads) ** -0.5
    scores = jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, -jnp.inf)
    mixed = jnp.transpose(jax.nn.softmax(scores, axis=-1) @ v, (0, 2, 1, 3)).reshape(n, t, d)
    proj = mixed @ p["w_o"]
    keep = jax.random.bernoulli(jax.random.wrap_key_data(batch["key"], impl="threefry2x32"), 1.0 - DROPOUT, proj.shape)
    h1 = h0 + jnp.where(keep, proj / (1.0 - DROPOUT), 0.0)
    f = jax.nn.gelu(layer_norm(h1, p["ln2_g"], p["ln2_b"]) @ p["w_fc1"] + p["b_fc1"], approximate=False)
    h2 = h1 + f @ p["w_fc2"] + p["b_fc2"]
    logits = (layer_norm(h2, p["lnf_g"], p["lnf_b"]) @ p["w_head"]).reshape(n * t, -1)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, batch["targets"].reshape(-1, 1), axis=1))


def _transformer_torch(params: Any, batch: Any) -> Any:
    """The same in PyTorch eager. The dropout mask is the batch's `keep` (the JAX key's mask,
    drawn once when the batch is made), so that all contenders compute the same loss; torch's
    own `F.dropout` would draw a different one."""
    import torch
    import torch.nn.functional as F

    p, tokens = params, batch["tokens"].long()
    n, t = tokens.shape
    d = p["w_q"].shape[0]
    heads = TRANSFORMER_HEADS
    h0 = F.embedding(tokens, p["tok_emb"]) + p["pos_emb"]
    x = F.layer_norm(h0, (d,), p["ln1_g"], p["ln1_b"])
    q, k, v = ((x @ p[w]).view(n, t, heads, d // heads).transpose(1, 2) for w in ("w_q", "w_k", "w_v"))
    scores = (q @ k.transpose(-1, -2)) * (d // heads) ** -0.5
    scores = scores.masked_fill(~torch.tril(torch.ones(t, t, dtype=torch.bool)), float("-inf"))
    mixed = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(n, t, d)
    h1 = h0 + (mixed @ p["w_o"]) * batch["keep"] / (1.0 - DROPOUT)
    h2 = h1 + F.gelu(F.layer_norm(h1, (d,), p["ln2_g"], p["ln2_b"]) @ p["w_fc1"] + p["b_fc1"]) @ p["w_fc2"] + p["b_fc2"]
    logits = F.layer_norm(h2, (d,), p["lnf_g"], p["lnf_b"]) @ p["w_head"]
    return F.cross_entropy(logits.view(n * t, -1), batch["targets"].long().view(-1))


TORCH_ONLY = ("keep",)  # batch entries only the PyTorch contender reads


def _token_batch(spec: Any, rng: np.random.Generator) -> Arrays:
    """Token ids and per-token targets from the copy data's vocabulary, a dropout key, and
    (for the PyTorch contender, `_transformer_torch`) the key's keep mask of the attention
    output, `jax.random.bernoulli` as stepc's `step.dropout` draws it."""
    import jax

    out: Arrays = {s.name: rng.integers(0, s.classes or 2, size=s.shape).astype(np.int32) for s in spec.inputs}
    for s in spec.keys:
        out[s.name] = rng.integers(0, 2**32, size=s.shape, dtype=np.uint32)
    width = next(p.shape[1] for p in spec.params if p.name == "tok_emb")
    key = jax.random.wrap_key_data(out["key"], impl="threefry2x32")
    out["keep"] = np.asarray(jax.random.bernoulli(key, 1.0 - DROPOUT, (*out["tokens"].shape, width)), np.float32)
    return out


def _classification_batch(spec: Any, rng: np.random.Generator) -> Arrays:
    out: Arrays = {}
    for s in spec.inputs:
        if s.dtype == np.int32:
            out[s.name] = rng.integers(0, s.classes or 10, size=s.shape).astype(np.int32)
        elif s.name == "onehot":
            out[s.name] = np.eye(s.shape[-1], dtype=s.dtype)[rng.integers(0, s.shape[-1], size=s.shape[0])]
        else:
            out[s.name] = rng.random(s.shape).astype(s.dtype)
    return out


def _regression_batch(spec: Any, rng: np.random.Generator) -> Arrays:
    return {s.name: rng.standard_normal(s.shape).astype(s.dtype) for s in spec.inputs}


LossFns = tuple[Callable[..., Any], Callable[..., Any], Callable[[Any, np.random.Generator], Arrays]]
MODELS: dict[str, LossFns] = {
    "mlp": (_mlp_jax, _mlp_torch, _classification_batch),
    "softmax": (_softmax_jax, _softmax_torch, _classification_batch),
    "attention": (_attention_jax, _attention_torch, _regression_batch),
    "cnn": (_cnn_jax, _cnn_torch, _classification_batch),
    "transformer": (_transformer_jax, _transformer_torch, _token_batch),
}


# ---------------------------------------------------------------------------------------------
# The three steps around a hand-written loss


def hand_jax_step(loss_fn: Callable[..., Any], groups: dict[str, Group]) -> Callable[..., Any]:
    """`jax.jit` of `value_and_grad` plus torch.optim.SGD's update, written out."""
    import jax

    def step(params: Any, buffers: Any, batch: Any) -> Any:
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        new_params, new_buffers = {}, {}
        for name, p in params.items():
            g, hp = grads[name], groups[name]
            if hp.weight_decay:
                g = g + hp.weight_decay * p
            if hp.momentum:
                buf = hp.momentum * buffers[name] + g
                new_buffers[name] = buf
                g = g + hp.momentum * buf if hp.nesterov else buf
            new_params[name] = p - hp.lr * g
        return new_params, new_buffers, loss

    return jax.jit(step)


def hand_jax_state(params: Arrays, groups: dict[str, Group]) -> Arrays:
    return {k: np.zeros_like(v) for k, v in params.items() if groups[k].momentum}


def optax_step(loss_fn: Callable[..., Any], groups: dict[str, Group], params: Arrays) -> tuple[Callable[..., Any], Any]:
    """`optax.sgd` (with `add_decayed_weights` masked per parameter for weight decay)."""
    import jax
    import optax

    first = next(iter(groups.values()))
    if any((g.lr, g.momentum, g.nesterov) != (first.lr, first.momentum, first.nesterov) for g in groups.values()):
        raise ValueError("the optax reference takes one lr, momentum and nesterov for all parameters")
    transforms = []
    for decay in sorted({g.weight_decay for g in groups.values()} - {0.0}):
        mask = {k: g.weight_decay == decay for k, g in groups.items()}
        transforms.append(optax.add_decayed_weights(decay, mask=mask))
    transforms.append(optax.sgd(first.lr, momentum=first.momentum or None, nesterov=first.nesterov))
    tx = optax.chain(*transforms)

    def step(params: Any, opt_state: Any, batch: Any) -> Any:
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step), tx.init(params)


class TorchStep:
    """PyTorch eager: the hand-written loss, `loss.backward()`, `torch.optim.SGD(foreach=True)`."""

    def __init__(self, loss_fn: Callable[..., Any], groups: dict[str, Group], params: Arrays, batch: Arrays):
        import torch

        self.torch = torch
        self.loss_fn = loss_fn
        self.params = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
        self.batch = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
        by_group: dict[Group, list[Any]] = {}
        for k, g in groups.items():  # one torch parameter group per distinct set of arguments
            by_group.setdefault(g, []).append(self.params[k])
        param_groups = [
            {"params": ps, "lr": g.lr, "momentum": g.momentum, "weight_decay": g.weight_decay, "nesterov": g.nesterov}
            for g, ps in by_group.items()
        ]
        self.optimizer = torch.optim.SGD(param_groups, lr=first_lr(groups), foreach=True)

    def step(self) -> Any:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.params, self.batch)
        loss.backward()
        self.optimizer.step()
        return loss

    def run(self, k: int) -> float:
        loss = None
        for _ in range(k):
            loss = self.step()
        return float(loss.detach()) if loss is not None else float("nan")


def first_lr(groups: dict[str, Group]) -> float:
    return next(iter(groups.values())).lr
