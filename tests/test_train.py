"""The training library behind `stepc run` (stepc.tools.data and stepc.tools.loop): data, init, batches, the cut
at the logits, accuracy, the loop's stop on a non-finite loss, and the files of a run.

Oracles: the digits' published class counts, PyTorch's own fan-in computation for its
`nn.Linear` init, NumPy formulas of the logits, and direct NumPy argmax.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest

from stepc.ir.diagnostics import StepcError
from stepc.ir.parse import load, load_text
from stepc.ir.program import args, step_function
from stepc.tools import data as train_data
from stepc.tools import loop as train_loop
from stepc.tools.run_cmd import FORCE_DEVICES, xla_flags_for

MLP = "examples/mlp_digits.ir"
SOFTMAX = "examples/softmax_regression.ir"
LINREG = "examples/linreg.ir"

# The UCI optical digits test set (scikit-learn's load_digits): images per class 0..9.
DIGIT_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


@pytest.fixture(scope="module")
def mlp():
    return load(MLP)


def test_bundled_digits_archive():
    with np.load(train_data.digits_path(), allow_pickle=False) as archive:
        images, labels = archive["images"], archive["labels"]
    assert images.shape == (1797, 64) and images.dtype == np.uint8
    assert images.min() == 0 and images.max() == 16
    assert labels.dtype == np.int32
    assert np.bincount(labels).tolist() == DIGIT_COUNTS


def test_digits_split_is_fixed_disjoint_and_scaled(mlp):
    data = train_data.load_data(None, train_data.signature(mlp))
    assert data.name == "digits"
    assert data.n_train + data.n_test == 1797
    assert data.n_test == round(1797 * 0.2)
    labels = np.concatenate([data.train["labels"], data.test["labels"]])
    assert np.bincount(labels).tolist() == DIGIT_COUNTS
    with np.load(train_data.digits_path()) as archive:
        images = archive["images"].astype(np.float64) / 16.0
    rows = np.concatenate([data.train["x"], data.test["x"]]).astype(np.float64)
    # every image appears exactly as often as in the archive: a permutation of the rows
    key = lambda a: sorted(map(bytes, np.round(a * 16).astype(np.uint8)))  # noqa: E731
    assert key(rows) == key(images)
    assert data.train["x"].dtype == np.float32 and rows.min() >= 0.0 and rows.max() == 1.0
    again = train_data.load_data("digits", train_data.signature(mlp))
    np.testing.assert_array_equal(again.test["x"], data.test["x"])


def test_digits_feed_one_hot_targets():
    with open(SOFTMAX) as f:
        text = f.read().replace("5x3", "64x10").replace("32x5", "32x64").replace("32x3", "32x10")
    text = text.replace("tensor<3xf32>", "tensor<10xf32>")
    module = load_text(text, "digits_softmax.ir")
    data = train_data.load_data(None, train_data.signature(module))
    onehot = data.train["onehot"]
    assert onehot.shape == (data.n_train, 10)
    np.testing.assert_array_equal(onehot.sum(axis=1), 1.0)


def test_digits_refuse_a_program_that_does_not_fit():
    with pytest.raises(StepcError, match="does not fit the batch inputs of @linreg"):
        train_data.load_data(None, train_data.signature(load(LINREG)))


def test_digits_refuse_a_language_model_and_name_the_copy_task():
    module = load("examples/transformer_lm.ir")
    with pytest.raises(StepcError, match=r"does not fit the batch inputs of @transformer_lm.*--data copy"):
        train_data.load_data(None, train_data.signature(module))


def test_default_init_is_pytorch_linear(mlp):
    torch = pytest.importorskip("torch")
    params = train_data.default_init(mlp, seed=0)
    fn = step_function(mlp)
    # PyTorch's nn.Linear(in, out) keeps weight (out, in); ours is (in, out). Its fan-in, per
    # torch's own helper, and the bound 1/sqrt(fan_in) for weight and bias alike.
    expected_fan_in = {}
    for layer_in, layer_out, w, b in ((64, 128, "w1", "b1"), (128, 10, "w2", "b2")):
        fan, _ = torch.nn.init._calculate_fan_in_and_fan_out(torch.nn.Linear(layer_in, layer_out).weight)
        expected_fan_in[w] = expected_fan_in[b] = fan
    for arg in args(fn):
        if arg.role != "param":
            continue
        assert train_data.fan_in(fn, arg.value) == expected_fan_in[arg.name]
        bound = 1 / math.sqrt(expected_fan_in[arg.name])
        values = params[arg.name].astype(np.float64)
        assert values.shape == tuple(arg.type.get_shape()) and params[arg.name].dtype == np.float32
        assert np.all(np.abs(values) <= bound)
        if values.size >= 1000:  # a uniform distribution: spread and standard deviation
            assert np.abs(values).max() > 0.98 * bound
            assert abs(values.std() - bound / math.sqrt(3)) < 0.05 * bound
    again = train_data.default_init(mlp, seed=0)
    other = train_data.default_init(mlp, seed=1)
    assert all(np.array_equal(params[k], again[k]) for k in params)
    assert not np.array_equal(params["w1"], other["w1"])


def test_fan_in_of_a_lone_bias_is_its_length():
    text = """func.func @f(%b: tensor<7xf32> {step.param}, %x: tensor<4x7xf32>) -> tensor<f32>
        attributes {step.sgd = #step.sgd<lr = 0.1>} {
      %y = step.add %x, %b : (tensor<4x7xf32>, tensor<7xf32>) -> tensor<4x7xf32>
      %loss = step.mean %y : tensor<4x7xf32> -> tensor<f32>
      func.return %loss : tensor<f32>
    }"""
    fn = step_function(load_text(text, "bias.ir"))
    assert train_data.fan_in(fn, args(fn)[0].value) == 7


def test_default_init_of_the_cnn_is_pytorch_conv2d_and_linear():
    """`nn.Conv2d(C, O, K)`'s kernel and bias both draw U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with
    the fan-in torch's own helper computes from the kernel (C/groups*KH*KW); the linear head as
    `nn.Linear`."""
    torch = pytest.importorskip("torch")
    module = load("examples/cnn_digits.ir")
    fn = step_function(module)

    def conv_fan(c: int, o: int) -> int:
        return torch.nn.init._calculate_fan_in_and_fan_out(torch.nn.Conv2d(c, o, 3).weight)[0]

    def linear_fan(i: int, o: int) -> int:
        return torch.nn.init._calculate_fan_in_and_fan_out(torch.nn.Linear(i, o).weight)[0]

    expected = {"k1": conv_fan(1, 16), "kb1": conv_fan(1, 16), "k2": conv_fan(16, 32), "kb2": conv_fan(16, 32),
                "w": linear_fan(512, 10), "b": linear_fan(512, 10)}  # fmt: skip
    params = train_data.default_init(module, seed=3)
    for arg in args(fn):
        if arg.role != "param":
            continue
        assert train_data.init_rule(fn, arg.value) == ("uniform", 1 / math.sqrt(expected[arg.name])), arg.name
        assert np.all(np.abs(params[arg.name]) <= 1 / math.sqrt(expected[arg.name]))


def test_default_init_of_the_transformer_is_pytorch_layer_norm_and_embedding():
    """`nn.LayerNorm`: weight ones, bias zeros; `nn.Embedding`: N(0, 1) (the token table, which
    `step.embedding` reads); the position table, added rather than looked up, and the linear
    layers as `nn.Linear`."""
    module = load("examples/transformer_lm.ir")
    fn = step_function(module)
    params = train_data.default_init(module, seed=0)
    for name in ("ln1_g", "ln2_g", "lnf_g"):
        np.testing.assert_array_equal(params[name], np.ones(64, np.float32))
    for name in ("ln1_b", "ln2_b", "lnf_b"):
        np.testing.assert_array_equal(params[name], np.zeros(64, np.float32))
    table = params["tok_emb"].astype(np.float64)
    assert abs(table.mean()) < 0.1 and abs(table.std() - 1.0) < 0.1 and np.abs(table).max() > 2.0
    rules = {arg.name: train_data.init_rule(fn, arg.value) for arg in args(fn) if arg.role == "param"}
    assert rules["tok_emb"] == ("normal", 1.0)
    assert rules["w_fc1"] == ("uniform", 1 / 8.0) and rules["b_fc1"] == ("uniform", 1 / 8.0)  # fan-in 64
    assert rules["w_fc2"] == ("uniform", 1 / 16.0) and rules["b_fc2"] == ("uniform", 1 / 16.0)  # fan-in 256


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_user_data_split_and_held_out_keys(tmp_path):
    spec = train_data.signature(load(LINREG))
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((200, 4)), rng.standard_normal((200, 1))
    data = train_data.load_data(_write_npz(tmp_path / "d.npz", x=x, t=t), spec)
    assert (data.n_train, data.n_test) == (160, 40)
    assert data.train["x"].dtype == np.float32
    data = train_data.load_data(
        _write_npz(tmp_path / "e.npz", x=x, t=t, **{"test.x": x[:10], "test.t": t[:10]}), spec
    )
    assert (data.n_train, data.n_test) == (200, 10)
    # too few to hold out a fifth and keep a full batch: everything trains
    data = train_data.load_data(_write_npz(tmp_path / "f.npz", x=x[:35], t=t[:35]), spec)
    assert (data.n_train, data.test) == (35, None)


BAD_DATA = [
    ("missing", lambda x, t, labels: {"x": x}, "missing t"),
    ("extra", lambda x, t, labels: {"x": x, "t": t, "y": t}, "unknown keys y"),
    ("shape", lambda x, t, labels: {"x": x[:, :3], "t": t}, r"'x' has shape \(100, 3\)"),
    ("count", lambda x, t, labels: {"x": x, "t": t[:50]}, "'t' has 50 examples but 'x' has 100"),
    ("nan", lambda x, t, labels: {"x": np.where(x > 2, np.nan, x), "t": t}, "non-finite"),
    ("strings", lambda x, t, labels: {"x": x.astype(str), "t": t}, "needs numbers"),
    ("few", lambda x, t, labels: {"x": x[:20], "t": t[:20]}, "fewer than the step's batch size 32"),
    ("half test", lambda x, t, labels: {"x": x, "t": t, "test.x": x}, "missing test.t"),
]


@pytest.mark.parametrize("name,make,message", BAD_DATA, ids=[row[0] for row in BAD_DATA])
def test_user_data_errors_are_located(tmp_path, name, make, message):
    spec = train_data.signature(load(LINREG))
    rng = np.random.default_rng(0)
    arrays = make(rng.standard_normal((100, 4)), rng.standard_normal((100, 1)), None)
    path = _write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(StepcError, match=message) as info:
        train_data.load_data(path, spec)
    assert "bad.npz" in info.value.message


LABEL_ERRORS = [
    ("range", lambda n: np.full(n, 10), "labels must lie in 0..9"),
    ("negative", lambda n: np.full(n, -1), "labels must lie in 0..9"),
    ("float", lambda n: np.zeros(n, np.float32), "needs integers"),
]


@pytest.mark.parametrize("name,labels,message", LABEL_ERRORS, ids=[row[0] for row in LABEL_ERRORS])
def test_user_labels_are_checked(tmp_path, mlp, name, labels, message):
    spec = train_data.signature(mlp)
    path = _write_npz(tmp_path / "l.npz", x=np.zeros((100, 64), np.float32), labels=labels(100))
    with pytest.raises(StepcError, match=message) as info:
        train_data.load_data(path, spec)
    assert info.value.loc is not None and info.value.loc.file == MLP


def test_data_files_never_unpickle(tmp_path, mlp):
    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object), labels=np.zeros(1, np.int32))
    with pytest.raises(StepcError, match="pickle"):
        train_data.load_data(str(path), train_data.signature(mlp))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(StepcError, match=r"not an .npz"):
        train_data.load_data(str(tmp_path / "junk.npz"), train_data.signature(mlp))
    with pytest.raises(StepcError, match="no such"):
        train_data.load_data(str(tmp_path / "absent.npz"), train_data.signature(mlp))
    with pytest.raises(StepcError, match="no such data set"):
        train_data.load_data("mnist", train_data.signature(mlp))


def test_init_file_is_checked(tmp_path, mlp):
    spec = train_data.signature(mlp)
    good = train_data.default_init(mlp, seed=3)
    path = _write_npz(tmp_path / "init.npz", **good)
    loaded = train_data.load_params(path, spec)
    assert all(np.array_equal(loaded[k], good[k]) for k in good)
    with pytest.raises(StepcError, match="missing b2"):
        train_data.load_params(_write_npz(tmp_path / "a.npz", **{k: v for k, v in good.items() if k != "b2"}), spec)
    with pytest.raises(StepcError, match="w1 is tensor<64x128xf32>"):
        train_data.load_params(_write_npz(tmp_path / "b.npz", **{**good, "w1": good["w1"].T}), spec)
    with pytest.raises(StepcError, match="non-finite"):
        train_data.load_params(_write_npz(tmp_path / "c.npz", **{**good, "b1": good["b1"] * np.inf}), spec)


def test_batches_are_shuffled_epochs_without_the_remainder():
    data = {"i": np.arange(10), "j": np.arange(10) * 2}
    stream = train_data.batches(data, 3, seed=5)
    epoch1 = [next(stream) for _ in range(3)]  # 10 // 3 = 3 batches an epoch, one row dropped
    epoch2 = [next(stream) for _ in range(3)]
    for epoch in (epoch1, epoch2):
        rows = np.concatenate([b["i"] for b in epoch])
        assert len(set(rows.tolist())) == 9
        for b in epoch:
            np.testing.assert_array_equal(b["j"], b["i"] * 2)
    assert not np.array_equal(np.concatenate([b["i"] for b in epoch1]), np.concatenate([b["i"] for b in epoch2]))
    replay = train_data.batches(data, 3, seed=5)
    assert all(np.array_equal(next(replay)["i"], b["i"]) for b in epoch1)


def test_steps_and_epochs():
    assert train_data.resolve_steps(7, None, 100, 10) == 7
    assert train_data.resolve_steps(None, 2.5, 105, 10) == 25
    assert train_data.resolve_steps(None, None, 100, 10) == train_data.DEFAULT_EPOCHS * 10
    with pytest.raises(StepcError, match="not both"):
        train_data.resolve_steps(5, 1.0, 100, 10)
    with pytest.raises(StepcError, match="at least 1"):
        train_data.resolve_steps(0, None, 100, 10)


def _mlp_logits(p, b):
    h = np.maximum(b["x"].astype(np.float64) @ p["w1"] + p["b1"], 0.0)
    return h @ p["w2"] + p["b2"]


def test_logits_module_returns_the_logits(mlp):
    from stepc.ir.interpreter import run_function

    cut, head = train_loop.logits_module(mlp)
    assert head == train_loop.Head("labels", False, 10)
    rng = np.random.default_rng(0)
    params = train_data.default_init(mlp, seed=0)
    batch = {"x": rng.random((64, 64)).astype(np.float32), "labels": rng.integers(0, 10, 64).astype(np.int32)}
    out = run_function(cut, {**params, **batch})
    assert list(out) == ["logits"]
    np.testing.assert_allclose(out["logits"], _mlp_logits(params, batch), rtol=1e-5, atol=1e-5)
    # the original program is untouched
    assert step_function(mlp).function_type.outputs.data[0].get_shape() == ()


def test_logits_module_of_one_hot_softmax_and_of_a_regression():
    from stepc.ir.interpreter import run_function

    module = load(SOFTMAX)
    cut, head = train_loop.logits_module(module)
    assert head == train_loop.Head("onehot", True, 3)
    rng = np.random.default_rng(1)
    inputs = {"w": rng.standard_normal((5, 3)), "b": rng.standard_normal(3), "x": rng.standard_normal((32, 5)),
              "onehot": np.eye(3)[rng.integers(0, 3, 32)]}
    inputs = {k: v.astype(np.float32) for k, v in inputs.items()}
    out = run_function(cut, inputs)["logits"]
    np.testing.assert_allclose(out, inputs["x"] @ inputs["w"] + inputs["b"], rtol=1e-5, atol=1e-5)
    assert train_loop.logits_module(load(LINREG)) is None


def test_accuracy_covers_every_example_with_padding(mlp):
    rng = np.random.default_rng(2)
    params = train_data.default_init(mlp, seed=0)
    data = {"x": rng.random((150, 64)).astype(np.float32), "labels": rng.integers(0, 10, 150).astype(np.int32)}
    head = train_loop.Head("labels", False, 10)
    calls = []

    def logits(p, b):
        assert b["x"].shape == (64, 64)
        calls.append(1)
        return _mlp_logits(p, b)

    acc, correct, total = train_loop.accuracy(logits, params, data, head, 64)
    truth = np.argmax(_mlp_logits(params, data), axis=1) == data["labels"]
    assert correct == int(truth.sum()) and acc == pytest.approx(truth.mean()) and total == 150
    assert len(calls) == 3


LM = """func.func @lm(%w: tensor<8x5xf32> {step.param}, %x: tensor<4x3x8xf32>, %targets: tensor<4x3xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.1>} {
  %l = step.matmul %x, %w : (tensor<4x3x8xf32>, tensor<8x5xf32>) -> tensor<4x3x5xf32>
  %flat = step.reshape %l : tensor<4x3x5xf32> -> tensor<12x5xf32>
  %t = step.reshape %targets : tensor<4x3xi32> -> tensor<12xi32>
  %loss = step.cross_entropy %flat, %t : (tensor<12x5xf32>, tensor<12xi32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}
"""


def test_per_token_labels_are_found_through_reshapes_and_counted_per_token():
    """A language model's `BxT` targets flattened to the cross-entropy's `B*T` labels: the head,
    the label range (data checks, random inputs) and the accuracy see through the reshape, and
    the accuracy counts every token of every example once (10 examples, batch 4: padded)."""
    module = load_text(LM, "lm.ir")
    cut, head = train_loop.logits_module(module)
    assert head == train_loop.Head("targets", False, 5)
    spec = train_data.signature(module)
    assert {s.name: s.classes for s in spec.inputs} == {"x": None, "targets": 5}
    rng = np.random.default_rng(3)
    params = {"w": rng.standard_normal((8, 5)).astype(np.float32)}
    data = {"x": rng.standard_normal((10, 3, 8)).astype(np.float32),
            "targets": rng.integers(0, 5, (10, 3)).astype(np.int32)}
    fn = train_loop.logits_function(cut)
    acc, correct, total = train_loop.accuracy(lambda p, b: np.asarray(fn(p, b)), params, data, head, 4)
    truth = np.argmax(np.einsum("btk,kv->btv", data["x"].astype(np.float64), params["w"]), axis=-1) == data["targets"]
    assert total == 30 and correct == int(truth.sum()) and acc == pytest.approx(truth.mean())


def test_train_stops_on_a_non_finite_loss_and_keeps_the_last_finite_params():
    def step(params, state, batch):
        new = {"w": params["w"] + 1.0}
        loss = np.nan if params["w"] >= 2.0 else float(params["w"])
        return new, state, np.float32(loss)

    stream = iter(lambda: {}, None)
    result = train_loop.train(step, {"w": np.float32(0.0)}, {}, stream, steps=10)
    assert result.steps == 2 and result.losses == [0.0, 1.0]
    assert result.stopped is not None and "at step 3" in result.stopped
    assert float(result.params["w"]) == 2.0  # the parameters step 3 started from


def test_progress_bar_lines():
    out = io.StringIO()
    bar = train_loop.Progress(20, stream=out)
    for i in range(1, 21):
        bar.update(i, 1.0 / i)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("step  1/20 [")
    assert lines[-1].startswith("step 20/20 [##############################] loss 0.0500")
    assert len(lines) <= 12


def test_write_run(tmp_path):
    params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    losses = [2.0, 1.0, 0.5, 0.25]
    written = train_loop.write_run(tmp_path / "out", {"steps": 4, "final_loss": 0.25}, params, losses)
    assert set(written) == {"params.npz", "loss.png", "summary.json"}
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == {"steps": 4, "final_loss": 0.25}
    with np.load(tmp_path / "out" / "params.npz") as saved:
        np.testing.assert_array_equal(saved["w"], params["w"])
    assert (tmp_path / "out" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "file").write_text("x")
    with pytest.raises(StepcError, match="not a directory"):
        train_loop.write_run(tmp_path / "file", {}, params, losses)


def test_xla_flags_for_forced_host_devices():
    assert xla_flags_for("", 8) == f"{FORCE_DEVICES}=8"
    assert xla_flags_for("--xla_foo=1", 4) == f"--xla_foo=1 {FORCE_DEVICES}=4"
    assert xla_flags_for(f"{FORCE_DEVICES}=16 --xla_foo=1", 8) is None
    assert xla_flags_for(f"{FORCE_DEVICES}=2 --xla_foo=1", 8) == f"--xla_foo=1 {FORCE_DEVICES}=8"
    assert xla_flags_for("", 1) is None


BIGRAM = """func.func @bigram(%w: tensor<6x6xf32> {step.param}, %tokens: tensor<8x12xi32>, %targets: tensor<8x12xi32>) -> tensor<f32>
    attributes {step.sgd = #step.sgd<lr = 0.5>} {
  %ids = step.reshape %tokens : tensor<8x12xi32> -> tensor<96xi32>
  %x = step.one_hot %ids : tensor<96xi32> -> tensor<96x6xf32>
  %logits = step.matmul %x, %w : (tensor<96x6xf32>, tensor<6x6xf32>) -> tensor<96x6xf32>
  %t = step.reshape %targets : tensor<8x12xi32> -> tensor<96xi32>
  %loss = step.cross_entropy %logits, %t : (tensor<96x6xf32>, tensor<96xi32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}
"""


def test_copy_data_repeats_a_pattern_and_shifts_targets_by_one():
    spec = train_data.signature(load_text(BIGRAM, "bigram.ir"))
    data = train_data.load_data("copy", spec, seed=5)
    n = train_data.COPY_EXAMPLES
    assert data.n_train + data.n_test == n and data.n_test == round(n * train_data.TEST_FRACTION)
    for part in (data.train, data.test):
        assert part is not None
        tokens, targets = part["tokens"], part["targets"]
        assert tokens.shape[1:] == (12,) and tokens.dtype == np.int32 and targets.dtype == np.int32
        assert tokens.min() >= 0 and max(tokens.max(), targets.max()) <= 5
        np.testing.assert_array_equal(targets[:, :-1], tokens[:, 1:])  # next-token targets
        period = train_data.COPY_PERIOD
        np.testing.assert_array_equal(tokens[:, period:], tokens[:, :-period])  # the pattern repeats
    assert len({tuple(r) for r in data.train["tokens"][:, :4]}) > 600  # patterns vary (6**4 = 1296 possible)
    other = train_data.load_data("copy", spec, seed=6)
    assert not np.array_equal(other.train["tokens"], data.train["tokens"])  # drawn from --seed
    again = train_data.load_data("copy", spec, seed=5)
    np.testing.assert_array_equal(again.train["tokens"], data.train["tokens"])


def test_copy_data_refuses_a_program_it_does_not_fit():
    spec = train_data.signature(load_text(LM, "lm.ir"))  # float features, not token ids
    with pytest.raises(StepcError, match=r"copy data set .* does not fit"):
        train_data.load_data("copy", spec)


def test_step_keys_are_fresh_per_step_and_key_and_fixed_by_the_seed():
    keys = {(k, s): tuple(train_data.step_key(7, k, s)) for k in range(2) for s in range(50)}
    assert len(set(keys.values())) == 100
    assert train_data.step_key(7, 1, 3).dtype == np.uint32 and train_data.step_key(7, 1, 3).shape == (2,)
    np.testing.assert_array_equal(train_data.step_key(7, 1, 3), train_data.step_key(7, 1, 3))
    assert tuple(train_data.step_key(8, 1, 3)) != keys[1, 3]
