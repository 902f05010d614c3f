"""No injection: names from a program's text reach the emitted Python, dumps and messages as
data, never as code or terminal control; they round-trip exactly.

The lexer's rules (xDSL 0.74): a value name is `[a-zA-Z$._-][a-zA-Z0-9$._-]*` (ASCII only, no
quotes), so the hostile characters can only come through a function's `@"..."` name (any
string, with `\\22` quotes, `\\0A` newlines and non-ASCII), the file's path, and attribute
strings. Each is tried here.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from stepc.ir.parse import load, parse_text
from stepc.ir.program import args, step_function
from stepc.tools.cli import main

HAS_JAX_PY = importlib.util.find_spec("stepc.backends.jax_py") is not None
needs_jax_py = pytest.mark.skipif(not HAS_JAX_PY, reason="--emit jax-py is not built yet")

# Legal value names with every punctuation the lexer allows.
PARAM_W, PARAM_B, INPUT_X, INPUT_T = "a-b", "$x.1", ".in", "t_"


def evil_name(marker: Path) -> str:
    """A function name that, pasted into Python unescaped, would run `touch MARKER`."""
    return (
        f"evil\"; __import__('os').system('touch {marker}') #\n"
        f"import os; os.system('touch {marker}')\n"
        "ü π \u202e"
    )


def ir_string(text: str) -> str:
    """`text` as an MLIR string literal: quotes, backslashes, newlines and non-ASCII as \\XX bytes."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        out.append(ch if 0x20 <= byte < 0x7F and ch not in '"\\' else f"\\{byte:02X}")
    return '"' + "".join(out) + '"'


def program_text(function_name: str) -> str:
    return f"""\
// hostile names
func.func @{ir_string(function_name)}(%{PARAM_W}: tensor<4x1xf32> {{step.param}},
    %{PARAM_B}: tensor<1xf32> {{step.param = #step.sgd<momentum = 0.5>}},
    %{INPUT_X}: tensor<32x4xf32>, %{INPUT_T}: tensor<32x1xf32>) -> tensor<f32>
    attributes {{step.sgd = #step.sgd<lr = 0.01>}} {{
  %xw = step.matmul %{INPUT_X}, %{PARAM_W} : (tensor<32x4xf32>, tensor<4x1xf32>) -> tensor<32x1xf32>
  %y = step.add %xw, %{PARAM_B} : (tensor<32x1xf32>, tensor<1xf32>) -> tensor<32x1xf32>
  %loss = step.mse %y, %{INPUT_T} : (tensor<32x1xf32>, tensor<32x1xf32>) -> tensor<f32>
  func.return %loss : tensor<f32>
}}
"""


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def import_file(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"stepc_emitted_{abs(hash(path))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_no_code_from_names(source: str) -> None:
    """The emitted module calls nothing a name could smuggle in."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            assert node.id not in ("__import__", "eval", "exec", "os", "compile"), f"name {node.id} in the module"
        if isinstance(node, ast.Attribute):
            assert node.attr != "system", "os.system in the module"
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert all(m.split(".")[0] in ("jax", "numpy", "__future__", "math", "functools") for m in modules), modules


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, str]:
    monkeypatch.chdir(tmp_path)  # a relative `touch` would land here too
    marker = tmp_path / "PWNED"
    name = evil_name(marker)
    path = tmp_path / "hostile.ir"
    path.write_text(program_text(name), encoding="utf-8")
    return path, marker, name


def test_names_parse_and_round_trip_through_the_ir(hostile: tuple[Path, Path, str], tmp_path: Path) -> None:
    path, marker, name = hostile
    fn = step_function(load(path))
    assert fn.sym_name.data == name
    assert [a.name for a in args(fn)] == [PARAM_W, PARAM_B, INPUT_X, INPUT_T]
    status, _, err = run_cli(["compile", path, "--emit", "step", "--no-check", "--dump-dir", tmp_path / "dumps",
                              "-o", tmp_path / "out.mlir"])  # fmt: skip
    assert status == 0, err
    for dump in [tmp_path / "out.mlir", *sorted((tmp_path / "dumps").iterdir())]:
        text = dump.read_text(encoding="utf-8")
        again = step_function(parse_text(text, str(dump)))
        assert again.sym_name.data == name, dump.name  # escaped in the dump, equal once parsed
        assert {PARAM_W, PARAM_B, INPUT_X, INPUT_T} <= {a.name for a in args(again)}
        assert "\u202e" not in text and "\nimport os" not in text
    assert not marker.exists()


def numpy_oracle(params: dict[str, np.ndarray], batch: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
    """MSE of x w + b against t, and its gradients, in float64."""
    w, b = params[PARAM_W].astype(np.float64), params[PARAM_B].astype(np.float64)
    x, t = batch[INPUT_X].astype(np.float64), batch[INPUT_T].astype(np.float64)
    residual = x @ w + b - t
    n = residual.size
    return float(np.mean(residual**2)), {PARAM_W: 2.0 / n * x.T @ residual, PARAM_B: 2.0 / n * residual.sum(axis=0)}


@needs_jax_py
def test_emitted_module_runs_nothing_and_keeps_names(hostile: tuple[Path, Path, str], tmp_path: Path) -> None:
    path, marker, _name = hostile
    out = tmp_path / "emitted.py"
    status, _, err = run_cli(["compile", path, "--emit", "jax-py", "--no-check", "-o", out])
    assert status == 0, err
    source = out.read_text(encoding="utf-8")
    assert_no_code_from_names(source)
    module = import_file(out)
    assert not marker.exists()

    rng = np.random.default_rng(7)
    params = {PARAM_W: rng.standard_normal((4, 1)).astype(np.float32), PARAM_B: rng.standard_normal(1).astype(np.float32)}
    batch = {INPUT_X: rng.standard_normal((32, 4)).astype(np.float32), INPUT_T: rng.standard_normal((32, 1)).astype(np.float32)}
    loss_oracle, grads_oracle = numpy_oracle(params, batch)

    loss, grads = module.grad(params, batch)
    assert set(grads) == {f"grad.{PARAM_W}", f"grad.{PARAM_B}"} or set(grads) == {PARAM_W, PARAM_B}
    np.testing.assert_allclose(float(loss), loss_oracle, rtol=1e-5)
    for key, value in grads.items():
        np.testing.assert_allclose(np.asarray(value), grads_oracle[key.removeprefix("grad.")], rtol=1e-4, atol=1e-6)

    state = module.init_state(params)
    assert set(state) == {f"momentum.{PARAM_B}"}
    new_params, new_state, loss = module.step(params, state, batch)
    assert set(new_params) == {PARAM_W, PARAM_B} and set(new_state) == {f"momentum.{PARAM_B}"}
    np.testing.assert_allclose(float(loss), loss_oracle, rtol=1e-5)
    # plain SGD on a-b; momentum's first step on $x.1 is plain SGD too (the buffer starts as the gradient)
    for key in (PARAM_W, PARAM_B):
        np.testing.assert_allclose(np.asarray(new_params[key]), params[key] - 0.01 * grads_oracle[key], rtol=1e-5, atol=1e-6)
    assert not marker.exists()


@needs_jax_py
def test_hostile_file_path_in_the_emitted_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED_BY_PATH"
    directory = tmp_path / f"d'\"\n__import__('os').system('touch {marker.name}')#"
    directory.mkdir()
    path = directory / "x'''\"\"\"\\.ir"
    path.write_text((Path(__file__).resolve().parent.parent / "examples" / "linreg.ir").read_text())
    out = tmp_path / "from_path.py"
    status, _, err = run_cli(["compile", path, "--emit", "jax-py", "--no-check", "-o", out])
    assert status == 0, err
    assert_no_code_from_names(out.read_text(encoding="utf-8"))
    module = import_file(out)
    assert callable(module.step)
    assert not marker.exists()


@pytest.mark.parametrize("bad_name", ['%"quoted"', "%ü", "%a b", "%'x'"])
def test_illegal_value_names_are_located_errors(bad_name: str, tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parent.parent / "examples" / "linreg.ir").read_text()
    path = tmp_path / "bad.ir"
    path.write_text(text.replace("%w:", f"{bad_name}:", 1), encoding="utf-8")
    status, _, err = run_cli(["opt", path])
    assert status == 1
    assert err.startswith(f"{path}:2:"), err
    assert "Traceback" not in err and "internal error" not in err


def test_messages_escape_control_characters(tmp_path: Path) -> None:
    """A name holding a terminal escape is shown escaped, never sent to the terminal."""
    name = "\x1b]0;owned\x07\x1b[2J"
    path = tmp_path / "ansi.ir"
    path.write_text(f"func.func @{ir_string(name)}(%w: tensor<4xf32> {{step.param}}) -> tensor<f32>\n")
    status, _, err = run_cli(["opt", path])
    assert status == 1 and err.startswith(f"{path}:1:1: error: ")
    assert "\x1b" not in err and "\x07" not in err


@needs_jax_py
def test_attribute_strings_do_not_become_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown attribute holding Python on an argument stays data (or is refused)."""
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED_BY_ATTR"
    payload = f"')\n__import__('os').system('touch {marker}')\n#"
    text = (Path(__file__).resolve().parent.parent / "examples" / "linreg.ir").read_text()
    path = tmp_path / "attr.ir"
    path.write_text(text.replace("%x: tensor<32x4xf32>", f"%x: tensor<32x4xf32> {{note = {ir_string(payload)}}}"))
    out = tmp_path / "attr.py"
    status, _, err = run_cli(["compile", path, "--emit", "jax-py", "--no-check", "-o", out])
    assert status in (0, 1) and "internal error" not in err, err
    if status == 0:
        assert_no_code_from_names(out.read_text(encoding="utf-8"))
        import_file(out)
    assert not marker.exists()


def test_no_module_state_leaks_into_sys_modules() -> None:
    assert not any("PWNED" in name for name in sys.modules)


def _rename(text: str, old: str, new: str) -> str:
    return text.replace(old + ":", new + ":", 1).replace(old + " ", new + " ")


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda t: _rename(_rename(t, "%loss", "%l"), "%t", "%loss"), "keys of stepc's outputs"),
        (lambda t: _rename(t, "%t", "%grad.w"), "keys of stepc's outputs"),
        (lambda t: _rename(t, "%b", "%momentum.w"), "keys of stepc's outputs"),
    ],
    ids=["loss", "grad.w", "momentum.w"],
)
def test_names_that_would_collide_as_keys_are_refused(edit, message: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    text = (Path(__file__).resolve().parent.parent / "examples" / "linreg.ir").read_text()
    path = tmp_path / "collide.ir"
    path.write_text(edit(text))
    status, _, err = run_cli(["opt", path])
    assert status == 1 and err.startswith(f"{path}:"), err
    assert message in err.splitlines()[0]
