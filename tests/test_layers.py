"""The layers import one way (STYLE.md, "Layers that only look down"), checked on the source.

    ir/  <-  passes/  <-  check/  <-  pipeline.py  <-  api.py  <-  frontends/  <-  tools/
    ir/  <-  backends/  <-  check/

Each folder may import only the layers listed for it in `ALLOWED`; `ir/` and `passes/` never
import JAX; and no function imports from `stepc` inside its body (an import hidden in a function
is how a cycle gets closed) except the named lazy registries.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# layer -> the layers its modules may import (itself included)
ALLOWED: dict[str, set[str]] = {
    "ir": {"ir"},
    "passes": {"ir", "passes"},
    "backends": {"ir", "backends"},
    "check": {"ir", "passes", "backends", "check"},
    "pipeline": {"ir", "passes", "backends", "check", "pipeline"},
    "api": {"ir", "passes", "backends", "check", "pipeline", "api"},
    "frontends": {"ir", "passes", "backends", "check", "pipeline", "api", "frontends"},
    "tools": {"ir", "passes", "backends", "check", "pipeline", "api", "frontends", "tools", "stepc"},
}
NO_JAX = {"ir", "passes"}
# The named lazy registries: xDSL's `get_all_passes` idiom, and the package's lazy attributes.
LAZY_REGISTRIES = {("passes/__init__.py", "get_all_passes"), ("__init__.py", "__getattr__")}


def layer_of(path: Path) -> str:
    relative = path.relative_to(ROOT)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def sources() -> list[Path]:
    files = [ROOT / "pipeline.py", ROOT / "api.py"]
    for folder in ("ir", "passes", "backends", "check", "frontends", "tools"):
        files += sorted((ROOT / folder).glob("*.py"))
    return files


def stepc_layer(module: str) -> str | None:
    """`stepc.passes.fuse_sgd` -> `passes`; `stepc` -> `stepc`; not ours -> None."""
    parts = module.split(".")
    if parts[0] != "stepc":
        return None
    return parts[1] if len(parts) > 1 else "stepc"


def violations(path: Path, text: str) -> list[str]:
    """What the file at `path` (with source `text`) imports against the rules."""
    layer = layer_of(path)
    relative = path.relative_to(ROOT).as_posix()
    tree = ast.parse(text)
    found: list[str] = []
    functions: list[tuple[ast.AST, str]] = [
        (node, node.name) for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    inside: dict[int, str] = {}
    for fn, name in functions:
        for node in ast.walk(fn):
            if node is not fn:
                inside.setdefault(id(node), name)
    for node in ast.walk(tree):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            modules = [node.module]
        for module in modules:
            target = stepc_layer(module)
            where = f"{relative}:{node.lineno}"
            if layer in NO_JAX and module.split(".")[0] in ("jax", "jaxlib"):
                found.append(f"{where}: {layer}/ imports {module} (JAX belongs to backends/)")
            if target is None:
                continue
            if target not in ALLOWED[layer]:
                found.append(f"{where}: {layer} imports {module} (a {target} module): the layers only look down")
            function = inside.get(id(node))
            if function is not None and (relative, function) not in LAZY_REGISTRIES:
                found.append(f"{where}: `{module}` imported inside {function}(): import at the top of the module")
    return found


@pytest.mark.parametrize("path", sources(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_layer_directions(path: Path) -> None:
    assert violations(path, path.read_text()) == []


@pytest.mark.parametrize(
    "relative, text, expected",
    [
        ("backends/x.py", "from stepc.passes.lower_to_stablehlo import LOWERINGS\n", "the layers only look down"),
        ("passes/x.py", "import jax\n", "JAX belongs to backends/"),
        ("ir/x.py", "from stepc.check import CONTRACTS\n", "the layers only look down"),
        ("backends/x.py", "def f():\n    from stepc.ir.program import args\n", "imported inside f()"),
    ],
)
def test_the_rules_catch_a_crossing(relative: str, text: str, expected: str) -> None:
    """The checker itself can fail: each kind of crossing is reported."""
    (found,) = violations(ROOT / relative, text)
    assert expected in found


def test_every_folder_has_a_rule() -> None:
    assert {layer_of(p) for p in sources()} <= set(ALLOWED)
