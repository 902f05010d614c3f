"""`stepc.from_torch` and `stepc import`: PyTorch modules, losses and optimizers as step programs.

Oracles: the torch training loop itself (the same module, loss and optimizer stepped by torch),
torch autograd, and the import's own check (autograd on a float64 copy); never stepc's output.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import stepc  # noqa: E402
from stepc.frontends import torch_ops  # noqa: E402
from stepc.frontends.torch import from_torch, ir_name, torch_name  # noqa: E402
from stepc.ir.diagnostics import StepcError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "examples" / "pytorch" / "models.py"


def _models():
    spec = importlib.util.spec_from_file_location("stepc_test_models", MODELS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _random_batch(batch, generator, classes):
    out = {}
    for key, value in batch.items():
        if value.is_floating_point():
            out[key] = torch.randn(value.shape, generator=generator)
        else:
            out[key] = torch.randint(0, classes, value.shape, generator=generator)
    return out


def _relative(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.mark.parametrize(("name", "kind", "classes"), [("mlp", "sgd", 10), ("cnn", "adamw", 10), ("transformer", "adam", 16)])
def test_three_steps_equal_the_torch_loop(name, kind, classes):
    """The compiled step, three times on three batches, against torch's own loop (same module,
    loss and optimizer; dropout drawing stepc's masks): loss and every parameter within 1e-5."""
    model, loss_fn, batch, optimizer = getattr(_models(), name)()
    imp = from_torch(model, loss_fn, batch, optimizer)
    assert imp.report is not None and imp.report.ok
    assert f"step.{kind} = #step.{kind}<" in imp.text
    prog = imp.compile()
    params = imp.params()
    state = prog.init_state(params)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        torch_batch = _random_batch(batch, generator, classes)
        step_batch = imp.batch(torch_batch)
        optimizer.zero_grad()
        with imp.torch_dropout(step_batch):
            loss = loss_fn(model, torch_batch)
        loss.backward()
        optimizer.step()
        params, state, step_loss = prog.step(params, state, step_batch)
        assert abs(float(step_loss) - loss.item()) <= 1e-5 * abs(loss.item())
    for torch_param, ir in imp.names.items():
        assert _relative(params[ir], dict(model.named_parameters())[torch_param].detach()) <= 1e-5, torch_param


def test_mlp_groups_become_parameter_attributes():
    model, loss_fn, batch, optimizer = _models().mlp()
    imp = from_torch(model, loss_fn, batch, optimizer, check=False)
    assert "attributes {step.sgd = #step.sgd<lr = 0.1, momentum = 0.9, weight_decay = 0.0005>}" in imp.text
    assert "%_0.bias: tensor<32xf32> {step.param = #step.sgd<weight_decay = 0.0>}" in imp.text
    assert "%_0.weight: tensor<32x64xf32> {step.param}," in imp.text
    assert imp.names == {"0.weight": "_0.weight", "0.bias": "_0.bias", "2.weight": "_2.weight", "2.bias": "_2.bias"}


@pytest.mark.parametrize(
    "name", ["0.weight", "_0.weight", "__12.bias", "blocks.1.attn.qkv.weight", "tok_emb.weight", "w", "_w", "x1"]
)
def test_names_round_trip(name):
    ir = ir_name(name)
    assert re.fullmatch(r"[A-Za-z_$.-][\w$.-]*", ir)
    assert torch_name(ir) == name


def test_names_are_injective_and_readable():
    names = ["0.weight", "_0.weight", "__0.weight", "a.0", "_a.0"]
    assert len({ir_name(n) for n in names}) == len(names)
    assert ir_name("blocks.1.attn.qkv.weight") == "blocks.1.attn.qkv.weight"
    with pytest.raises(StepcError, match="cannot be an IR value name"):
        ir_name("a b")


class _ManyOps(nn.Module):
    """Ops of the table not in the three models, each in one forward (checked by the import's
    contract against float64 autograd, and by a direct gradient comparison below)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.lin = nn.Linear(8, 8)
        self.ln = nn.LayerNorm(8, elementwise_affine=False)
        self.drop = nn.Dropout(0.5)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 8))

    def forward(self, ids, x):
        e = self.emb(ids)  # (4, 6, 8)
        c = self.conv(e.transpose(1, 2)).transpose(1, 2)  # conv1d
        a, b = c.chunk(2, dim=1)  # (4, 3, 8) each
        h = torch.cat([a * torch.sigmoid(b), torch.tanh(a) - b], dim=1)
        h = self.ln(h) * self.scale
        h = F.gelu(self.lin(h)) + F.silu(h).pow(2) + (h.abs() + 1.0).sqrt() * 0.1
        h = self.drop(h)  # eval mode: the identity
        h = h.masked_fill(h > 2.0, 2.0) + torch.clamp(h, min=-1.0, max=1.0)
        s = h @ h.transpose(-1, -2) / 8.0  # (4, 6, 6)
        w = torch.where(s > 0, s, 0.5 * s).var(dim=-1) + s.mean(dim=(1, 2), keepdim=True).squeeze(-1)
        p = F.log_softmax(h[:, -1, :], dim=-1)  # a slice with a negative index
        return w, p, x


def test_many_ops_import_and_match_autograd():
    torch.manual_seed(0)
    model = _ManyOps().eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

    def loss_fn(model, batch):
        w, p, x = model(batch["ids"], batch["x"])
        return F.mse_loss(w, x) + F.nll_loss(p, batch["labels"]) + F.cross_entropy(p, batch["soft"], label_smoothing=0.1)

    batch = {"ids": torch.randint(0, 12, (4, 6)), "x": torch.randn(4, 6), "labels": torch.randint(0, 8, (4,)),
             "soft": torch.softmax(torch.randn(4, 8), dim=-1)}  # fmt: skip
    imp = from_torch(model, loss_fn, batch, optimizer, trials=3)
    assert imp.report is not None and imp.report.ok and imp.report.unchecked == 0
    for op in ("step.conv2d", "step.concat", "step.slice", "step.layer_norm", "step.select", "step.one_hot"):
        assert op in imp.text, op
    assert "step.dropout" not in imp.text  # eval mode
    loss, grads = imp.compile(check=False).grad(imp.params(), imp.batch(batch))
    expected = loss_fn(model, batch)
    expected.backward()
    assert abs(float(loss) - expected.item()) <= 1e-5 * abs(expected.item())
    for torch_param, ir in imp.names.items():
        assert _relative(grads[ir], dict(model.named_parameters())[torch_param].grad) <= 1e-4, torch_param


def test_amax_and_max_values_match_autograd():
    """`amax` and `max(dim)`'s values (step.max). Apart: the error bound of step.max's derivative is
    infinite wherever a slice's runners-up lie within rounding of its maximum, so the contract
    leaves those elements unchecked; autograd is the oracle here."""
    torch.manual_seed(1)
    model = nn.Linear(6, 5)
    batch = {"x": torch.randn(4, 3, 6)}

    def loss_fn(model, batch):
        y = model(batch["x"])
        return y.amax(dim=-1).sum() + y.max(dim=1).values.pow(2).mean()

    imp = from_torch(model, loss_fn, batch, torch.optim.SGD(model.parameters(), lr=0.1))
    loss, grads = imp.compile(check=False).grad(imp.params(), imp.batch(batch))
    expected = loss_fn(model, batch)
    expected.backward()
    assert abs(float(loss) - expected.item()) <= 1e-5 * abs(expected.item())
    for torch_param, ir in imp.names.items():
        assert _relative(grads[ir], dict(model.named_parameters())[torch_param].grad) <= 1e-5


def test_frozen_parameters_and_buffers_are_constants():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    optimizer = torch.optim.Adam([model[0].bias, model[2].weight], lr=1e-2)  # 2.bias in no group: frozen too
    imp = from_torch(model, lambda m, b: F.mse_loss(m(b["x"]), b["y"]), {"x": torch.randn(3, 4), "y": torch.randn(3, 2)},
                     optimizer)  # fmt: skip
    assert set(imp.names) == {"0.bias", "2.weight"}
    assert imp.text.count("step.constant") >= 2


def _line_of(fn, text: str) -> int:
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if text in line)


class _Cumsum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return torch.cumsum(self.fc(x), dim=1)


class _Branch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = self.fc(x)
        if y.sum() > 0:
            return y * 2
        return y


def _mse(model, batch):
    return F.mse_loss(model(batch["x"]), batch["y"])


BATCH = {"x": torch.randn(2, 4), "y": torch.randn(2, 3)}


def test_an_op_without_a_rule_is_an_error_at_the_users_line():
    model = _Cumsum()
    with pytest.raises(StepcError) as info:
        from_torch(model, _mse, BATCH, torch.optim.SGD(model.parameters(), lr=0.1))
    error = info.value
    assert "cannot import aten.cumsum.default" in error.message
    assert error.loc is not None and error.loc.file == __file__
    assert error.loc.line == _line_of(_Cumsum.forward, "torch.cumsum")
    assert "return torch.cumsum(self.fc(x), dim=1)" in error.render()


def test_data_dependent_control_flow_is_an_error_at_the_users_line():
    model = _Branch()
    with pytest.raises(StepcError) as info:
        from_torch(model, _mse, BATCH, torch.optim.SGD(model.parameters(), lr=0.1))
    assert "torch.export could not capture the loss" in info.value.message
    assert info.value.loc is not None and info.value.loc.line == _line_of(_Branch.forward, "if y.sum() > 0")


def test_optimizers_stepc_does_not_import_are_errors():
    model = nn.Linear(4, 3)
    with pytest.raises(StepcError, match=r"RMSprop: stepc imports torch.optim.SGD, Adam and AdamW"):
        from_torch(model, _mse, BATCH, torch.optim.RMSprop(model.parameters()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.optim.lr_scheduler.StepLR(optimizer, 2)
    with pytest.raises(StepcError, match="learning-rate scheduler is attached"):
        from_torch(model, _mse, BATCH, optimizer)
    stepped = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _mse(model, BATCH).backward()
    stepped.step()
    with pytest.raises(StepcError, match="already stepped"):
        from_torch(model, _mse, BATCH, stepped)


def test_adam_with_decoupled_weight_decay_is_adamw():
    model = nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=0.1, decoupled_weight_decay=True)
    imp = from_torch(model, _mse, BATCH, optimizer, check=False)
    assert "step.adamw = #step.adamw<lr = 0.001, weight_decay = 0.1>" in imp.text


def test_the_import_check_fails_on_a_wrong_rule(monkeypatch):
    """The contract can fail: a table whose tanh writes a sigmoid is caught."""
    monkeypatch.setitem(torch_ops.RULES, torch.ops.aten.tanh.default, torch_ops._unary("sigmoid", "wrong"))
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh())
    with pytest.raises(StepcError, match=r"the import .* does not hold"):
        from_torch(model, _mse, BATCH, torch.optim.SGD(model.parameters(), lr=0.1))


def test_batch_conversion():
    model, loss_fn, batch, optimizer = _models().transformer()
    imp = from_torch(model, loss_fn, batch, optimizer, check=False)
    converted = imp.batch(batch)
    assert converted["tokens"].dtype == np.int32 and converted["dropout_key"].dtype == np.uint32
    with pytest.raises(StepcError, match="holds -1"):
        imp.batch({**batch, "tokens": batch["tokens"] - 1 - batch["tokens"]})
    with pytest.raises(StepcError, match="missing"):
        imp.batch({"tokens": batch["tokens"]})


def test_op_table_in_the_docs_is_the_rule_table():
    """docs/importing.md lists every op of the table with its rule's first docstring line."""
    text = (ROOT / "docs" / "importing.md").read_text()
    rows = dict(re.findall(r"^\| `(aten\.[\w.]+)` \| (.+) \|$", text, flags=re.M))
    table = {str(op): (fn.__doc__ or "").strip().split("\n")[0] for op, fn in torch_ops.RULES.items()}
    assert rows == table


def _stepc(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stepc.tools.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def test_cli_import_then_compile(tmp_path):
    out = tmp_path / "mlp.ir"
    done = _stepc("import", f"{MODELS}:mlp", "-o", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "import               loss, grads = torch f64" in done.stdout and " ok " in done.stdout
    compiled = _stepc("compile", str(out), "-o", str(tmp_path / "mlp.mlir"), cwd=tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    assert "stablehlo" in (tmp_path / "mlp.mlir").read_text()


def test_cli_import_error_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import torch\nfrom torch import nn\n\n"
        "def make():\n"
        "    model = nn.Linear(4, 3)\n"
        "    loss = lambda m, b: torch.cumsum(m(b['x']), 1).sum()\n"
        "    return model, loss, {'x': torch.randn(2, 4)}, torch.optim.SGD(model.parameters(), lr=0.1)\n"
    )
    done = _stepc("import", f"{bad}:make", cwd=tmp_path)
    assert done.returncode == 1
    assert f"{bad}:6:5: error: cannot import aten.cumsum.default" in done.stderr
    assert "Traceback" not in done.stderr
    missing = _stepc("import", f"{bad}:nothing", cwd=tmp_path)
    assert missing.returncode == 1 and "defines no function 'nothing'" in missing.stderr


def test_stepc_from_torch_is_the_package_entry():
    model = nn.Linear(4, 3)
    imp = stepc.from_torch(model, _mse, BATCH, torch.optim.SGD(model.parameters(), lr=0.1))
    assert imp.names == {"weight": "weight", "bias": "bias"}


def test_without_torch_stepc_import_says_what_to_install(tmp_path):
    """torch is an optional extra: with it missing, `stepc import` is a one-line error naming it
    and `stepc.from_torch` a ModuleNotFoundError saying what to install; stepc itself imports."""
    script = (
        "import sys\n"
        "sys.modules['torch'] = None  # as if torch were not installed\n"
        "import stepc\n"
        "from stepc.tools.cli import main\n"
        "status = main(['import', 'models.py:make'])\n"
        "try:\n"
        "    stepc.from_torch\n"
        "except ModuleNotFoundError as e:\n"
        "    print('API:', e)\n"
        "sys.exit(status)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "stepc: error: stepc import needs PyTorch: pip install 'stepc[torch]'" in done.stderr
    assert "Traceback" not in done.stderr
    assert "API: stepc.from_torch needs PyTorch" in done.stdout
