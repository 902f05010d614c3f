"""`--emit jax-py`: the emitted module runs where `import stepc` fails, with the numbers of
`stepc exec`, offers the API's functions, and no IR name or file name can inject code.

The emitted module runs in a subprocess started with `python -I -S` (no site: the editable
install's import hook never loads), in a temporary directory, with only the virtual
environment's site-packages on `sys.path`; it first checks that `import stepc` fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from stepc.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent
MLP = str(ROOT / "examples" / "mlp_digits.ir")

DRIVER = """
import json, sys
sys.path.append({site!r})
try:
    import stepc
except ImportError:
    pass
else:
    raise SystemExit("stepc is importable: the test would prove nothing")
import importlib.util
import numpy as np
spec = importlib.util.spec_from_file_location("emitted", {module!r})
emitted = importlib.util.module_from_spec(spec)
spec.loader.exec_module(emitted)
{body}
"""


def run_clean(tmp_path: Path, module: Path, body: str) -> subprocess.CompletedProcess[str]:
    site = sysconfig.get_paths()["purelib"]
    code = DRIVER.format(site=site, module=str(module), body=body)
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def mlp_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "w1": (0.1 * rng.standard_normal((64, 128))).astype(np.float32),
        "b1": (0.1 * rng.standard_normal(128)).astype(np.float32),
        "w2": (0.1 * rng.standard_normal((128, 10))).astype(np.float32),
        "b2": np.zeros(10, np.float32),
        "x": rng.standard_normal((64, 64)).astype(np.float32),
        "labels": rng.integers(0, 10, 64).astype(np.int32),
    }


def test_emitted_module_runs_without_stepc_and_equals_exec(tmp_path: Path) -> None:
    module = tmp_path / "mlp_step.py"
    assert main(["compile", MLP, "--emit", "jax-py", "-o", str(module), "--no-check"]) == 0
    inputs = mlp_inputs()
    np.savez(tmp_path / "in.npz", **inputs)
    assert main(["exec", MLP, "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "exec.npz"),
                 "--no-check", "--steps", "2"]) == 0  # fmt: skip
    assert main(["exec", MLP, "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "grad.npz"),
                 "--no-check", "--until", "seed-scalar-loss"]) == 0  # fmt: skip
    body = """
data = dict(np.load("in.npz"))
params = {k: data[k] for k in ("w1", "b1", "w2", "b2")}
batch = {k: data[k] for k in ("x", "labels")}
loss0, grads = emitted.grad(params, batch)
np.savez("grad_emitted.npz", loss=np.asarray(loss0), **{"grad." + k: np.asarray(v) for k, v in grads.items()})
state = emitted.init_state(params)
for _ in range(2):
    params, state, loss = emitted.step(params, state, batch)
np.savez("step_emitted.npz", loss=np.asarray(loss), **{k: np.asarray(v) for k, v in {**params, **state}.items()})
print(json.dumps({"forward": float(emitted.forward({k: data[k] for k in params}, batch)),
                  "functions": sorted(n for n in ("forward", "grad", "init_state", "step", "run") if hasattr(emitted, n))}))
"""
    done = run_clean(tmp_path, module, body)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["functions"] == ["forward", "grad", "init_state", "run", "step"]
    for emitted_file, exec_file in (("step_emitted.npz", "exec.npz"), ("grad_emitted.npz", "grad.npz")):
        with np.load(tmp_path / emitted_file) as got, np.load(tmp_path / exec_file) as want:
            assert sorted(got.files) == sorted(want.files)
            for key in want.files:
                np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-7, err_msg=key)
    with np.load(tmp_path / "grad.npz") as want:
        np.testing.assert_allclose(report["forward"], want["loss"], rtol=1e-6)


INJECTION = r"""
func.func @quad(%w: tensor<3xf32> {step.param}, %x: tensor<3xf32>,
                %m: tensor<3xf32> {step.state = "momentum.w')\0Aopen('PWNED1', 'w')\0A#"})
    -> (tensor<3xf32> {step.output = "w"},
        tensor<3xf32> {step.output = "\"\"\"; open('PWNED2', 'w') #\0A\27\27\27; open('PWNED3', 'w')"},
        tensor<f32> {step.output = "loss"}) {
  %d = step.sub %w, %x : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xf32>
  %s = step.square %d : tensor<3xf32>
  %loss = step.sum %s : tensor<3xf32> -> tensor<f32>
  %new = step.sub %w, %m : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xf32>
  func.return %new, %d, %loss : tensor<3xf32>, tensor<3xf32>, tensor<f32>
}
"""


def test_names_cannot_inject_code(tmp_path: Path) -> None:
    from stepc.backends.jax_py import emit_module
    from stepc.ir.parse import parse_text, verify
    from stepc.ir.program import args, output_names, step_function
    from stepc.passes.lower_to_stablehlo import lowered_clone

    module = parse_text(INJECTION, "injection.ir")
    verify(module)
    fn = step_function(module)
    state_key = next(a.state_key for a in args(fn) if a.state_key)
    weird_output = output_names(fn)[1]
    assert "\n" in state_key and '"""' in weird_output  # the names really are hostile
    source = "evil\nopen('PWNED4', 'w')\n\"\"\"'''"
    text = emit_module({"program": lowered_clone(module)}, "program", source=source)
    for line in text.splitlines():
        assert not line.lstrip().startswith("open(")
    path = tmp_path / "emitted.py"
    path.write_text(text)
    body = f"""
out = emitted.run({{"w": np.ones(3, np.float32), "x": np.zeros(3, np.float32), {state_key!r}: np.ones(3, np.float32)}})
assert sorted(out) == sorted(["w", {weird_output!r}, "loss"]), sorted(out)
assert float(out["loss"]) == 3.0
print("ok")
"""
    done = run_clean(tmp_path, path, body)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok")
    assert not any(tmp_path.glob("PWNED*"))


@pytest.mark.parametrize("until,functions", [("seed-scalar-loss", {"grad", "forward", "run"})])
def test_emitted_functions_follow_the_program(tmp_path: Path, until: str, functions: set[str]) -> None:
    import ast

    out = tmp_path / "m.py"
    assert main(["compile", MLP, "--emit", "jax-py", "--until", until, "-o", str(out), "--no-check"]) == 0
    tree = ast.parse(out.read_text())
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")}
    assert defined - helper_names() == functions  # the helpers every emitted module carries
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names} | {node.module.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module}  # fmt: skip
    assert imported <= {"jax", "numpy", "lax"}


def helper_names() -> set[str]:
    """The public functions of `backends/helpers.py`."""
    import ast
    import inspect

    from stepc.backends import helpers

    tree = ast.parse(inspect.getsource(helpers))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")}


def test_helpers_are_real_code_the_emitted_module_carries_verbatim(tmp_path: Path) -> None:
    """`backends/helpers.py` imports only jax and lax (the emitted module's header makes both), has
    no `from __future__` import (its copy sits mid-module), and its code after the imports is in
    the emitted module as it is; the backend's table calls the very same functions."""
    import ast
    import inspect

    from stepc.backends import helpers
    from stepc.backends.jax import NAMESPACE

    source = inspect.getsource(helpers)
    imports = [node for node in ast.parse(source).body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert [ast.unparse(node) for node in imports] == ["import jax", "from jax import lax"]
    assert helper_names() == {"abs0", "relu0", "dot_general", "aligned", "while_loop"}
    for name in helper_names():
        assert NAMESPACE[name] is getattr(helpers, name)
    out = tmp_path / "m.py"
    assert main(["compile", MLP, "--emit", "jax-py", "-o", str(out), "--no-check"]) == 0
    text = out.read_text()
    code = source[source.index("\n", source.index("from jax import lax")) + 1 :]
    assert code.strip() in text
    for name in helper_names():
        assert inspect.getsource(getattr(helpers, name)) in text
