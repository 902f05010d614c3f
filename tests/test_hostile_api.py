"""Hostile use of the Python API (issue 18): a path or text given explicitly, never guessed;
clear errors for wrong types and values; labels checked on eager calls and consistent under
`jax.jit`."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stepc
from stepc.ir.diagnostics import StepcError

ROOT = Path(__file__).resolve().parent.parent
LINREG = ROOT / "examples" / "linreg.ir"
MLP = ROOT / "examples" / "mlp_digits.ir"


@pytest.fixture(scope="module")
def mlp() -> stepc.api.Program:  # type: ignore[name-defined]
    return stepc.compile(MLP, check=False)


def mlp_arrays(labels: object = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    params = {
        "w1": (rng.standard_normal((64, 128)) / 8).astype(np.float32),
        "b1": np.zeros(128, np.float32),
        "w2": (rng.standard_normal((128, 10)) / 11).astype(np.float32),
        "b2": np.zeros(10, np.float32),
    }
    batch = {
        "x": rng.standard_normal((64, 64)).astype(np.float32),
        "labels": rng.integers(0, 10, 64).astype(np.int32) if labels is None else np.asarray(labels, np.int32),
    }
    return params, batch


# ---------------------------------------------------------------------------------------------
# 6. A path or text, explicitly


def test_compile_takes_a_path_as_str_path_or_pathlike(tmp_path: Path) -> None:
    class Where(os.PathLike[str]):
        def __fspath__(self) -> str:
            return str(LINREG)

    for source in (str(LINREG), LINREG, Where()):
        prog = stepc.compile(source, check=False)
        assert prog.source == str(LINREG)
        assert prog.param_names() == ["w", "b"]


@pytest.mark.parametrize("name", ["mlp.func.func.ir", "two\nlines.ir", "-"])
def test_compile_reads_any_file_name_as_a_path(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path(name).write_text(LINREG.read_text())
    prog = stepc.compile(name, check=False)  # `-` too is a file's name here, not stdin
    assert prog.source == name
    assert prog.param_names() == ["w", "b"]


def test_compile_of_program_text_points_at_compile_text() -> None:
    with pytest.raises(StepcError, match=r"compile_text"):
        stepc.compile(LINREG.read_text(), check=False)
    with pytest.raises(StepcError, match=r"no such file"):
        stepc.compile(str(ROOT / "examples" / "missing.ir"), check=False)


def test_compile_text(tmp_path: Path) -> None:
    text = LINREG.read_text()
    prog = stepc.compile_text(text, check=False)
    assert prog.source == "<string>"
    named = stepc.compile_text(text, filename="mine.ir", check=False)
    assert named.source == "mine.ir"
    with pytest.raises(StepcError) as error:
        stepc.compile_text(text.replace("step.add", "step.addd"), filename="mine.ir", check=False)
    assert error.value.render().startswith("mine.ir:6:")
    # a text that happens to be the name of an existing file is still text
    (tmp_path / "f").write_text(text)
    with pytest.raises(StepcError):
        stepc.compile_text(str(tmp_path / "f"), check=False)


# ---------------------------------------------------------------------------------------------
# 12. Wrong types and values


@pytest.mark.parametrize("source", [LINREG.read_bytes(), 42, None, [str(LINREG)]], ids=["bytes", "int", "None", "list"])
def test_compile_of_a_non_path_is_a_clear_type_error(source: object) -> None:
    with pytest.raises(TypeError, match=r"path \(str or os\.PathLike\).*compile_text"):
        stepc.compile(source, check=False)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", [LINREG.read_bytes(), 42, None], ids=["bytes", "int", "None"])
def test_compile_text_of_a_non_str_is_a_clear_type_error(text: object) -> None:
    with pytest.raises(TypeError, match=r"compile_text takes the program as a str"):
        stepc.compile_text(text, check=False)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options,error,match",
    [
        ({"trials": 0}, StepcError, "trials must be at least 1"),
        ({"trials": -3}, StepcError, "trials must be at least 1"),
        ({"trials": 1.5}, TypeError, "trials"),
        ({"trials": True}, TypeError, "trials"),
        ({"seed": -5}, StepcError, "seed must be"),
        ({"seed": 2**64}, StepcError, "seed must be"),
        ({"seed": "0"}, TypeError, "seed"),
        ({"passes": "differentiate"}, TypeError, "passes"),
    ],
)
def test_compile_options_out_of_range(options: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        stepc.compile(LINREG, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["\0", "a\0b.ir"])
def test_a_path_holding_nul_is_a_clear_error(path: str) -> None:
    """Found by the surface fuzzer: `ValueError: embedded null byte` from `os.stat`."""
    with pytest.raises(StepcError, match="cannot hold a NUL"):
        stepc.compile(path, check=False)


@pytest.mark.parametrize("ragged", [[[1, 2], [3]], [[1], [2, [3]]]], ids=["ragged list", "ragged nesting"])
def test_a_batch_value_numpy_cannot_hold_is_a_clear_error(mlp, ragged: list[object]) -> None:  # type: ignore[no-untyped-def]
    """Found by the surface fuzzer: a raw NumPy ValueError from `np.asarray` of a ragged list."""
    params, batch = mlp_arrays()
    with pytest.raises(StepcError, match="'labels' is not an array of shape"):
        mlp.grad(params, {**batch, "labels": ragged})


def test_extra_keys_of_mixed_types_are_a_clear_error(mlp) -> None:  # type: ignore[no-untyped-def]
    params, batch = mlp_arrays()
    with pytest.raises(StepcError, match=r"unexpected.*1.*'zz'|unexpected.*'zz'.*1"):
        mlp.forward(params, {**batch, 1: 0, "zz": 0, (2, 3): 0})
    with pytest.raises(StepcError, match=r"unexpected"):
        mlp.init_state({**params, None: 0})
    with pytest.raises(StepcError, match=r"params: expected a dict"):
        mlp.init_state([1, 2])


@pytest.mark.parametrize("bad", [10, 99, 2**31 - 1, -1])
def test_eager_calls_check_label_ranges(mlp, bad: int) -> None:  # type: ignore[no-untyped-def]
    labels = np.arange(64) % 10
    labels[5] = bad
    params, batch = mlp_arrays(labels)
    state = mlp.init_state(params)
    for call in (lambda: mlp.forward(params, batch), lambda: mlp.grad(params, batch),
                 lambda: mlp.step(params, state, batch)):  # fmt: skip
        with pytest.raises(StepcError, match=rf"'labels'\[5\] is {bad}, outside the 10 classes"):
            call()
    jnp_batch = {**batch, "labels": jnp.asarray(batch["labels"])}
    with pytest.raises(StepcError, match="outside the 10 classes"):
        mlp.grad(params, jnp_batch)


def test_labels_in_range_run(mlp) -> None:  # type: ignore[no-untyped-def]
    params, batch = mlp_arrays()
    loss, grads = mlp.grad(params, batch)
    assert np.isfinite(loss) and set(grads) == set(params)


@pytest.mark.parametrize("bad", [10, 99, 2**31 - 1, -1])
def test_out_of_range_labels_under_jit_are_nan_in_loss_and_gradient_alike(mlp, bad: int) -> None:  # type: ignore[no-untyped-def]
    labels = np.arange(64) % 10
    labels[5] = bad
    params, batch = mlp_arrays(labels)
    loss, grads = jax.jit(mlp.grad)(params, batch)
    assert np.isnan(loss)
    assert all(np.isnan(np.asarray(g)).all() for g in grads.values())
    forward = jax.jit(mlp.forward)(params, batch)
    assert np.isnan(forward)
    new_params, _, step_loss = jax.jit(mlp.step)(params, mlp.init_state(params), batch)
    assert np.isnan(step_loss) and all(np.isnan(np.asarray(p)).all() for p in new_params.values())
    # in range, the same jitted call is finite and equals the eager one
    params, batch = mlp_arrays()
    loss, grads = jax.jit(mlp.grad)(params, batch)
    eager_loss, eager_grads = mlp.grad(params, batch)
    np.testing.assert_allclose(loss, eager_loss, rtol=1e-6)
    for key in grads:
        np.testing.assert_allclose(grads[key], eager_grads[key], rtol=1e-5, atol=1e-7)
