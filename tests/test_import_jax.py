"""`stepc.from_jax`: JAX losses over params pytrees, and optimizer attributes, as step programs.

Oracles: `jax.value_and_grad` of the same loss (f32, as the user runs it), a hand-written JAX SGD
loop, and the import's own check (`jax.value_and_grad` in float64); never stepc's earlier output.
"""

from __future__ import annotations

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stepc
from stepc.frontends.jax import from_jax, ir_name, jax_name
from stepc.ir.diagnostics import StepcError

SGD = "#step.sgd<lr = 0.1, momentum = 0.9>"


def _relative(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _line_of(fn, text: str) -> int:
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if text in line)


# ---------------------------------------------------------------------------------------------
# Models


def _mlp_params(rng):
    return {
        "layer1": {"w": (rng.standard_normal((8, 16)) / np.sqrt(8)).astype(np.float32), "b": np.zeros(16, np.float32)},
        "layer2": {"w": (rng.standard_normal((16, 5)) / 4).astype(np.float32), "b": np.zeros(5, np.float32)},
    }


def _mlp_batch(rng):
    return {"x": rng.standard_normal((12, 8)).astype(np.float32), "labels": rng.integers(0, 5, 12)}  # int64 labels


def _logits(params, x):
    h = jax.nn.relu(x @ params["layer1"]["w"] + params["layer1"]["b"])
    return h @ params["layer2"]["w"] + params["layer2"]["b"]


def mlp_take_along_axis(params, batch):
    logp = jax.nn.log_softmax(_logits(params, batch["x"]))
    return -jnp.mean(jnp.take_along_axis(logp, batch["labels"][:, None], axis=1))


def mlp_one_hot(params, batch):
    logp = jax.nn.log_softmax(_logits(params, batch["x"]), axis=-1)
    return -jnp.mean(jnp.sum(jax.nn.one_hot(batch["labels"], 5) * logp, axis=-1))


def _attention_params(rng):
    return {name: (rng.standard_normal((8, 8)) / np.sqrt(8)).astype(np.float32) for name in ("wq", "wk", "wv", "wo")}


def _attention_batch(rng):
    return {"x": rng.standard_normal((2, 6, 8)).astype(np.float32), "y": rng.standard_normal((2, 6, 8)).astype(np.float32)}


def attention(params, batch):
    x = batch["x"]
    q, k, v = x @ params["wq"], x @ params["wk"], x @ params["wv"]
    scores = jnp.einsum("btd,bsd->bts", q, k) / jnp.sqrt(8.0)
    mask = jnp.tril(jnp.ones((6, 6), dtype=bool))
    scores = jnp.where(mask, scores, -jnp.inf)
    out = jnp.einsum("bts,bsd->btd", jax.nn.softmax(scores, axis=-1), v) @ params["wo"]
    return jnp.mean((jax.nn.gelu(out, approximate=False) - batch["y"]) ** 2)


def _to_jax(imp, params_by_ir, step_batch):
    """The stepc side's values as the JAX loss takes them (the params pytree, the batch)."""
    return imp.tree(params_by_ir), step_batch


# ---------------------------------------------------------------------------------------------
# Loss, gradients and training steps against JAX


@pytest.mark.parametrize("loss_fn", [mlp_take_along_axis, mlp_one_hot], ids=["take_along_axis", "one_hot"])
def test_mlp_loss_grads_and_three_sgd_steps_equal_jax(loss_fn):
    rng = np.random.default_rng(0)
    params, batch = _mlp_params(rng), _mlp_batch(rng)
    imp = from_jax(loss_fn, params, batch, SGD)
    assert imp.report is not None and imp.report.ok
    assert "step.log_softmax" in imp.text and "step.one_hot" in imp.text and "step.relu" in imp.text
    assert "step.sgd = #step.sgd<lr = 0.1, momentum = 0.9>" in imp.text
    prog = imp.compile()

    fresh = _mlp_batch(np.random.default_rng(1))  # not the batch the import traced
    loss, grads = prog.grad(imp.params(), imp.batch(fresh))
    expected_loss, expected_grads = jax.value_and_grad(loss_fn)(params, fresh)
    assert abs(float(loss) - float(expected_loss)) <= 1e-5 * abs(float(expected_loss))
    for path, ir in imp.names.items():
        expected = jax.tree_util.tree_leaves(expected_grads)[list(imp.names).index(path)]
        assert _relative(grads[ir], expected) <= 1e-5, path

    # Three SGD steps (momentum 0.9: the buffer starts as the first gradient, as torch.optim.SGD).
    step_params, state = imp.params(), prog.init_state(imp.params())
    jax_params, momentum = params, None
    grad_fn = jax.jit(jax.value_and_grad(loss_fn))
    for seed in range(3):
        b = _mlp_batch(np.random.default_rng(10 + seed))
        step_params, state, step_loss = prog.step(step_params, state, imp.batch(b))
        jax_loss, g = grad_fn(jax_params, b)
        momentum = g if momentum is None else jax.tree_util.tree_map(lambda m, gi: 0.9 * m + gi, momentum, g)
        jax_params = jax.tree_util.tree_map(lambda p, m: p - 0.1 * m, jax_params, momentum)
        assert abs(float(step_loss) - float(jax_loss)) <= 1e-5 * abs(float(jax_loss))
    for path, leaf in zip(imp.names, jax.tree_util.tree_leaves(jax_params)):
        assert _relative(step_params[imp.names[path]], leaf) <= 1e-5, path


def test_causal_attention_with_softmax_and_exact_gelu_equals_jax():
    rng = np.random.default_rng(2)
    params, batch = _attention_params(rng), _attention_batch(rng)
    imp = stepc.from_jax(attention, params, batch, "#step.adamw<lr = 1.0e-3>")
    assert imp.report is not None and imp.report.ok
    assert "step.adamw = #step.adamw<lr = 1.0e-3>" in imp.text
    for op in ("step.softmax", "step.select", "step.gelu", "step.matmul"):
        assert op in imp.text, op
    assert "erfc" not in imp.text and "stop_gradient" not in imp.text
    prog = imp.compile(check=False)
    fresh = _attention_batch(np.random.default_rng(3))
    loss, grads = prog.grad(imp.params(), imp.batch(fresh))
    expected_loss, expected_grads = jax.value_and_grad(attention)(params, fresh)
    assert abs(float(loss) - float(expected_loss)) <= 1e-5 * abs(float(expected_loss))
    for name in params:
        assert _relative(grads[name], expected_grads[name]) <= 1e-5, name


def test_relu_keeps_jaxs_derivative_at_zero_and_max_keeps_its_ties():
    """`jax.nn.relu` has a custom derivative, 0 at 0 (`step.relu`'s); `jnp.maximum(x, 0)` splits a
    tie in halves (`step.maximum`'s). Both at exactly 0, against jax.grad."""

    def loss(params, batch):
        z = batch["x"] @ params["w"]  # zeros: every pre-activation is exactly 0
        return jnp.sum(jax.nn.relu(z) * batch["c"]) + jnp.sum(jnp.maximum(z, 0.0) * batch["c"])

    params = {"w": np.zeros((3, 4), np.float32)}
    batch = {"x": np.ones((2, 3), np.float32), "c": np.arange(8, dtype=np.float32).reshape(2, 4)}
    imp = from_jax(loss, params, batch, SGD)
    assert "step.relu" in imp.text and "step.maximum" in imp.text
    _, grads = imp.compile(check=False).grad(imp.params(), imp.batch(batch))
    expected = jax.grad(loss)(params, batch)["w"]
    assert float(np.max(np.abs(expected))) > 0  # the maximum's half
    np.testing.assert_allclose(grads["w"], expected, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Names


def test_names_of_a_nested_params_dict_round_trip():
    params = {
        "layer1": {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)},
        "blocks": [{"w": np.full((3, 3), 0.5, np.float32)}],
        "0": {"scale": np.ones(3, np.float32)},
    }

    def loss(p, batch):
        h = batch["x"] @ p["layer1"]["w"] + p["layer1"]["b"]
        return jnp.mean((h @ p["blocks"][0]["w"] * p["0"]["scale"]) ** 2)

    imp = from_jax(loss, params, {"x": np.ones((4, 2), np.float32)}, SGD)
    assert imp.names == {"0.scale": "_0.scale", "blocks.0.w": "blocks.0.w", "layer1.b": "layer1.b", "layer1.w": "layer1.w"}
    for path, name in imp.names.items():
        assert jax_name(name) == path and f"%{name}: " in imp.text
    tree = imp.tree(imp.params())
    assert jax.tree_util.tree_structure(tree) == jax.tree_util.tree_structure(params)
    for got, want in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(got, want)
    for path in ["w", "0.w", "_1.b", "__2", "a.0.b_c"]:
        assert jax_name(ir_name(path)) == path


def test_a_key_that_cannot_be_a_name_is_an_error():
    with pytest.raises(StepcError, match=r"keys are made of letters, digits and '_'"):
        from_jax(lambda p, b: jnp.sum(p["a.b"] * b["x"]), {"a.b": np.ones(2, np.float32)}, {"x": np.ones(2, np.float32)}, SGD)


# ---------------------------------------------------------------------------------------------
# What cannot be imported: errors at the user's line


def cumsum_loss(params, batch):
    h = batch["x"] @ params["w"]
    return jnp.sum(jnp.cumsum(h, axis=1))


def sort_loss(params, batch):
    h = batch["x"] @ params["w"]
    return jnp.sum(jnp.sort(h, axis=1)[:, -1])


def stop_gradient_loss(params, batch):
    h = batch["x"] @ params["w"]
    return jnp.sum(h * jax.lax.stop_gradient(h))


def branch_loss(params, batch):
    h = batch["x"] @ params["w"]
    if jnp.sum(h) > 0:
        return jnp.sum(h)
    return -jnp.sum(h)


W = {"w": np.ones((3, 2), np.float32)}
X = {"x": np.ones((4, 3), np.float32)}


@pytest.mark.parametrize(("loss_fn", "primitive", "code"), [
    (cumsum_loss, "cumsum", "jnp.cumsum(h, axis=1)"),
    (sort_loss, "sort", "jnp.sort(h, axis=1)"),
    (stop_gradient_loss, "stop_gradient", "jax.lax.stop_gradient(h)"),
])  # fmt: skip
def test_a_primitive_without_a_rule_is_an_error_at_the_users_line(loss_fn, primitive, code):
    with pytest.raises(StepcError) as info:
        from_jax(loss_fn, W, X, SGD)
    error = info.value
    assert f"cannot import the JAX primitive {primitive}" in error.message
    assert error.loc is not None and error.loc.file == __file__
    assert error.loc.line == _line_of(loss_fn, code)
    assert code in error.render()


def test_data_dependent_control_flow_is_an_error_at_the_users_line():
    with pytest.raises(StepcError) as info:
        from_jax(branch_loss, W, X, SGD)
    assert "could not trace the loss" in info.value.message
    assert info.value.loc is not None and info.value.loc.line == _line_of(branch_loss, "if jnp.sum(h) > 0")


def test_optimizer_attribute_errors():
    with pytest.raises(StepcError, match=r"is not one stepc reads"):
        from_jax(cumsum_loss, W, X, "sgd(lr=0.1)")
    with pytest.raises(StepcError, match=r"is not one stepc reads"):
        from_jax(cumsum_loss, W, X, "#step.rmsprop<lr = 0.1>")
    with pytest.raises(StepcError, match=r"the optimizer attribute '#step.sgd<lr = -1.0>'"):
        from_jax(lambda p, b: jnp.sum(b["x"] @ p["w"]), W, X, "#step.sgd<lr = -1.0>")


def test_a_loss_that_is_not_a_scalar_of_the_params_is_an_error():
    with pytest.raises(StepcError, match=r"scalar float computed from the parameters"):
        from_jax(lambda p, b: b["x"] @ p["w"], W, X, SGD)


# ---------------------------------------------------------------------------------------------
# One row per rule: the import's check (jax.value_and_grad in float64) holds


def _v(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


RULE_ROWS = [
    ("elementwise", lambda p, b: jnp.sum(jnp.exp(p["a"]) - jnp.log(jnp.abs(p["a"]) + 1) * jnp.tanh(p["a"]) / (2 + jax.nn.sigmoid(p["a"]))), "step.sigmoid"),
    ("sqrt_rsqrt_pow", lambda p, b: jnp.sum(jnp.sqrt(p["a"] ** 2 + 1) + jax.lax.rsqrt(p["a"] ** 2 + 1) + p["a"] ** -2 + jnp.square(p["a"])), "step.rsqrt"),
    ("min_max_reductions", lambda p, b: jnp.sum(jnp.minimum(p["a"], b["x"])) + jnp.min(p["a"]) + jnp.sum(jnp.max(p["a"], axis=0)), "step.minimum"),
    ("dot_forms", lambda p, b: jnp.sum(b["x"] @ p["a"].T) + jnp.sum(p["a"][0] @ p["a"]) + jnp.vdot(p["a"], p["a"]), "step.matmul"),
    ("batched_dot", lambda p, b: jnp.sum(jnp.einsum("bij,bjk->bik", jnp.stack([p["a"], p["a"] * 2]), jnp.stack([b["x"], b["x"]]))), "step.matmul"),
    ("shapes", lambda p, b: jnp.sum(jnp.transpose(p["a"].reshape(2, 2, 4), (2, 0, 1))[None, :, 0, :] * b["x"][:, :2, None].squeeze(-1)), "step.transpose"),
    ("slices_concat", lambda p, b: jnp.sum(jnp.concatenate([p["a"][1:3, ::2], jax.lax.dynamic_slice(p["a"], (2, 5), (2, 2)), jnp.split(b["x"] * p["a"], 2)[1]], axis=1) ** 2), "step.concat"),
    ("where_compare", lambda p, b: jnp.sum(jnp.where((p["a"] > b["x"]) & (b["x"] < 0.5), p["a"], -p["a"] * 3)), "step.compare"),
    ("convert", lambda p, b: jnp.sum(p["a"].astype(jnp.bfloat16).astype(jnp.float32) * b["x"]), "step.convert"),
    ("softmax_axis0", lambda p, b: jnp.sum(jax.nn.softmax(p["a"], axis=0) * b["x"]), "step.softmax"),
]


@pytest.mark.parametrize(("loss_fn", "op"), [row[1:] for row in RULE_ROWS], ids=[row[0] for row in RULE_ROWS])
def test_each_rule_imports_what_jax_computes(loss_fn, op):
    imp = from_jax(loss_fn, {"a": _v((4, 4))}, {"x": _v((4, 4), 1)}, SGD)
    assert imp.report is not None and imp.report.ok, imp.report
    assert op in imp.text


def test_primitive_table_in_the_docs_is_the_rule_table():
    """docs/importing.md's JAX table lists every primitive with its rule's first docstring line."""
    from pathlib import Path

    from stepc.frontends.jax import rule_table

    text = (Path(__file__).resolve().parent.parent / "docs" / "importing.md").read_text()
    section = text.split("## From JAX")[1]
    documented = {}
    for prims, doc in re.findall(r"^\| ((?:`[\w.]+`(?:, )?)+) \| (.+) \|$", section, flags=re.M):
        for prim in re.findall(r"`([\w.]+)`", prims):
            documented[prim] = doc
    assert documented == dict(rule_table())
