"""The generated family of benchmarks/family.py (issue 12): every program is a valid step program.

Each point parses and verifies (`load_text`: the ops, dominance and the step-function rules) and
has the parameters its generator reports; the small points compile through the default pipeline
without contracts (as `stepc compile --no-check`) and run one step through the JAX backend. The
contracts at these sizes are `benchmarks/contracts.py`'s business, not the test suite's.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import stepc
from stepc.ir.parse import load_text
from stepc.ir.program import inputs, label_range, params, step_function

ROOT = Path(__file__).resolve().parent.parent


def _family_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("family", ROOT / "benchmarks" / "family.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("family", module)  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


family = _family_module()
NAMES = [p.name for p in family.FAMILY]


def test_family_spans_the_issue_ranges() -> None:
    points = family.FAMILY
    assert min(p.width for p in points) == 64 and max(p.width for p in points) == 8192
    assert max(p.depth for p in points) == 24
    assert max(p.batch for p in points) == 1024
    assert {p.dtype for p in points} == {"f32", "bf16", "f16"}
    assert {p.kind for p in points} == {"mlp", "transformer"}
    assert len(set(NAMES)) == len(NAMES)
    assert set(family.SMALL) <= set(NAMES)


def test_the_issue_model() -> None:
    """784-2048-2048-10, batch 256, SGD momentum 0.9."""
    step = family.point("mlp784_2048").build()
    assert list(step.params.values()) == [(784, 2048), (2048,), (2048, 2048), (2048,), (2048, 10), (10,)]
    assert step.param_count == 784 * 2048 + 2048 + 2048 * 2048 + 2048 + 2048 * 10 + 10
    assert step.inputs == {"x": ((256, 784), "f32"), "labels": ((256,), "i32")}
    assert "#step.sgd<lr = 0.05, momentum = 0.9>" in step.text


@pytest.mark.parametrize("name", NAMES)
def test_point_parses_and_verifies(name: str) -> None:
    step = family.point(name).build()
    module = load_text(step.text, f"{name}.ir")
    fn = step_function(module)
    found = {a.name: tuple(a.type.get_shape()) for a in params(fn)}
    assert found == step.params
    assert sum(math.prod(s) for s in found.values()) == step.param_count
    assert {a.name: tuple(a.type.get_shape()) for a in inputs(fn)} == {k: s for k, (s, _) in step.inputs.items()}


@pytest.mark.parametrize(
    "build",
    [
        lambda: family.mlp(64, 3, 16, "bf16", in_dim=32, classes=5, momentum=0.9, activation="sigmoid", loss="mse"),
        lambda: family.transformer(64, 1, 8, "f16", heads=4, causal=True, loss="mse"),
        lambda: family.transformer(32, 2, 8, "bf16", heads=2, causal=True, activation="tanh"),
    ],
    ids=["mlp-bf16-sigmoid-mse", "tf-f16-4heads-causal-mse", "tf-bf16-2heads-causal"],
)
def test_generator_options_parse(build) -> None:  # type: ignore[no-untyped-def]
    step = build()
    load_text(step.text, f"{step.name}.ir")


def test_generator_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="dtype"):
        family.mlp(64, 1, 8, "f64")
    with pytest.raises(ValueError, match="heads"):
        family.transformer(64, 1, 8, heads=3)


@pytest.mark.parametrize("name", family.SMALL)
def test_small_point_compiles_and_steps(name: str, tmp_path: Path) -> None:
    """The default pipeline without contracts (from a file, as `stepc compile --no-check`), then
    one step on random inputs: finite, and the parameters moved."""
    step = family.point(name).build()
    path = tmp_path / f"{name}.ir"
    path.write_text(step.text)
    prog = stepc.compile(str(path), check=False)
    rng = np.random.default_rng(0)
    fn = step_function(prog.module("forward"))
    dtypes = {s.name: s.dtype for s in prog.function("forward").specs}
    param_values = {a.name: (rng.standard_normal(a.type.get_shape()) * 0.1).astype(dtypes[a.name]) for a in params(fn)}
    batch = {
        a.name: rng.integers(0, label_range(a), size=a.type.get_shape()).astype(np.int32)
        if dtypes[a.name] == np.int32
        else rng.standard_normal(a.type.get_shape()).astype(dtypes[a.name])
        for a in inputs(fn)
    }
    new_params, state, loss = prog.step(param_values, prog.init_state(param_values), batch)
    assert np.isfinite(np.asarray(loss, dtype=np.float64))
    assert set(new_params) == set(param_values)
    assert any(not np.array_equal(np.asarray(new_params[k]), param_values[k]) for k in param_values)
    for value in state.values():
        assert np.all(np.isfinite(np.asarray(value, dtype=np.float64)))
