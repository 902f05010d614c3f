"""The loss chart of `stepc run --out DIR` (stepc.tools.plot): a PNG from NumPy alone, so a plain
`pip install stepc` writes loss.png too.

Oracles: Pillow's PNG decoder (independent of stepc's encoder), the chart's geometry written out
by hand (matplotlib's 5% margins, a geometric series as a straight line on a log axis),
`np.convolve` for the moving average, and runs in a Python where `import matplotlib` fails.
"""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stepc.tools.plot import RAW_COLOUR, SMOOTH_COLOUR, LossChart, encode_png, loss_chart, moving_average

ROOT = Path(__file__).resolve().parent.parent
MLP = str(ROOT / "examples" / "mlp_digits.ir")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAN, INF = float("nan"), float("inf")


def decode(png: bytes) -> np.ndarray:
    """The PNG decoded by Pillow, after Pillow's own integrity check (chunk CRCs, zlib stream)."""
    assert png[:8] == PNG_SIGNATURE
    Image.open(io.BytesIO(png)).verify()
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        return np.asarray(image.convert("RGB"), dtype=np.int64)


def curve_pixels(pixels: np.ndarray, chart: LossChart, colour: tuple[int, int, int]) -> np.ndarray:
    """How much of `colour` each pixel inside the frame (outside the legend) holds, 0..1: its
    distance from the background towards the colour, read along that direction. The background is
    white, or grey on a grid line, read off the frame's inner edges where no curve reaches."""
    left, top, right, bottom = chart.axes.box
    image = pixels.astype(np.float64)
    background = np.minimum(image[:, left + 1 : left + 2], image[top + 1 : top + 2, :])
    away = background - image
    direction = background - np.array(colour, dtype=np.float64)
    amount = (away * direction).sum(axis=-1) / (direction * direction).sum(axis=-1)
    residual = np.linalg.norm(away - amount[..., None] * direction, axis=-1)
    hits = np.where((amount > 0.1) & (residual < 4.0), amount, 0.0)  # off the colour's line: text, other curve
    inside = np.zeros(hits.shape, dtype=bool)
    inside[top + 2 : bottom, left + 2 : right] = True
    if chart.legend is not None:
        l0, t0, l1, t1 = chart.legend
        inside[t0 : t1 + 1, l0 : l1 + 1] = False
    return np.where(inside, hits, 0.0)


def test_the_png_decodes_at_the_asked_size() -> None:
    losses = [2.3 * 0.97**i for i in range(60)]
    chart = loss_chart(losses, "examples/mlp_digits.ir on digits")
    assert decode(chart.png).shape == (400, 640, 3)
    wide = loss_chart(losses, "wide", width=900, height=330)
    assert decode(wide.png).shape == (330, 900, 3)
    assert (chart.points, chart.skipped, chart.window) == (60, 0, 1)
    with pytest.raises(ValueError, match="at least"):
        loss_chart(losses, width=100, height=80)


def test_encode_png_round_trips_through_pillow() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(7, 13, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode(encode_png(image)), image)


def test_a_geometric_series_is_a_straight_falling_line_on_the_log_axis() -> None:
    n = 40
    losses = [5.0 * 0.9**i for i in range(n)]  # all positive: log scale, as the matplotlib figure had
    chart = loss_chart(losses, "geometric")
    pixels = decode(chart.png)
    left, top, right, bottom = chart.axes.box
    assert chart.axes.log_y
    # the frame is drawn where the chart says it is
    assert (pixels[top, left : right + 1] == 0).all() and (pixels[bottom, left : right + 1] == 0).all()
    assert (pixels[top : bottom + 1, left] == 0).all() and (pixels[top : bottom + 1, right] == 0).all()

    # by hand: steps 1..n and log(loss) span the middle 20/22 of the frame (5% margins each side)
    def column(step: float) -> float:
        return left + (right - left) * (1 + 20 * (step - 1) / (n - 1)) / 22

    def row(loss: float) -> float:
        low, high = math.log(losses[-1]), math.log(losses[0])
        return bottom - (bottom - top) * (1 + 20 * (math.log(loss) - low) / (high - low)) / 22

    cover = curve_pixels(pixels, chart, RAW_COLOUR)
    first, last = round(column(1)) + 2, round(column(n)) - 2
    measured: list[float] = []
    for col in range(first, last + 1):
        weights = cover[:, col]
        assert weights.sum() > 0.3, f"no curve in column {col}"
        measured.append(float(weights @ np.arange(len(weights)) / weights.sum()))
        step = 1 + (col - column(1)) / (column(n) - column(1)) * (n - 1)
        expected = row(5.0 * 0.9 ** (step - 1))  # between the points too: a straight line on the log axis
        assert abs(measured[-1] - expected) < 1.0, (col, measured[-1], expected)
    assert np.all(np.diff(measured) > 0)  # falling loss: the curve moves down the picture, column by column
    assert cover[:, : first - 6].sum() == 0 and cover[:, last + 6 :].sum() == 0  # nothing past the ends
    # the raw loss is matplotlib's first colour at half opacity: half way from the background to it
    assert 0.47 < cover.max() < 0.53


def test_a_long_run_also_draws_its_moving_average() -> None:
    losses = [2.0 + math.sin(i / 3) for i in range(250)]
    chart = loss_chart(losses, "long")
    assert chart.window == 5  # len // 50, as the matplotlib figure had
    pixels = decode(chart.png)
    assert curve_pixels(pixels, chart, SMOOTH_COLOUR).sum() > 100
    assert curve_pixels(pixels, chart, RAW_COLOUR).sum() > 100


def test_the_moving_average_is_numpy_convolve() -> None:
    rng = np.random.default_rng(1)
    values = rng.standard_normal(997) * 10.0 ** rng.integers(-3, 4, 997)
    values[[10, 500, 501]] = [NAN, INF, -INF]
    for window in (1, 2, 19, 333, 997):
        got = moving_average(values, window)
        bad = np.convolve(~np.isfinite(values), np.ones(window), mode="valid") > 0
        expected = np.convolve(np.where(np.isfinite(values), values, 0.0), np.ones(window) / window, mode="valid")
        assert got.shape == expected.shape
        np.testing.assert_array_equal(np.isfinite(got), ~bad)
        np.testing.assert_allclose(got[~bad], expected[~bad], rtol=1e-9, atol=1e-9)
    # a spike does not drown the later means in rounding
    np.testing.assert_allclose(moving_average([1e30] + [0.1] * 99, 50)[-1], 0.1, rtol=1e-12)


def test_log_scale_exactly_when_every_finite_loss_is_positive() -> None:
    assert loss_chart([2.0, 1.0, 0.5]).axes.log_y
    assert loss_chart([2.0, NAN, 0.5]).axes.log_y
    assert not loss_chart([2.0, 1.0, 0.0]).axes.log_y
    assert not loss_chart([1.0, -1.0]).axes.log_y


@pytest.mark.parametrize(
    "losses, points, skipped",
    [
        ([], 0, 0),
        ([1.5], 1, 0),
        ([0.7] * 10, 10, 0),
        ([0.0] * 5, 5, 0),
        ([NAN, INF, -INF], 0, 3),
        ([3.0, 2.0, NAN, 1.5, INF, 1.2, 1.1], 5, 2),
        (list(np.logspace(300, -300, 120)), 120, 0),
        ([-1.7e308, 1.79e308, 0.0], 3, 0),
        ([5e-324, 1e-320], 2, 0),
        ([1.0, 1.0 + 1e-15, 1.0], 3, 0),
    ],
    ids=["empty", "one", "constant", "zeros", "none-finite", "gaps", "huge-log", "huge-linear", "subnormal", "flat"],
)
def test_edge_cases_still_make_a_chart(losses: list[float], points: int, skipped: int) -> None:
    chart = loss_chart(losses, "edge")
    pixels = decode(chart.png)
    assert pixels.shape == (400, 640, 3)
    assert (chart.points, chart.skipped) == (points, skipped)
    assert all(math.isfinite(v) for v in (*chart.axes.x_limits, *chart.axes.y_limits))
    drawn = curve_pixels(pixels, chart, RAW_COLOUR).sum()
    assert (drawn > 0) == (points > 0)
    if points == 0:
        assert chart.legend is None


def test_one_loss_is_a_dot_where_it_belongs() -> None:
    chart = loss_chart([1.5], "one")
    cover = curve_pixels(decode(chart.png), chart, RAW_COLOUR)
    rows, cols = np.nonzero(cover)
    x, y = chart.axes.pixels([1.0], [1.5])
    left, top, right, bottom = chart.axes.box
    assert abs(x[0] - (left + right) / 2) < 1 and abs(y[0] - (top + bottom) / 2) < 1  # centred by the margins
    assert np.abs(cols - x[0]).max() <= 3 and np.abs(rows - y[0]).max() <= 3


def test_non_finite_losses_leave_gaps() -> None:
    losses = [3.0, 2.0, NAN, NAN, 1.5, 1.2]
    chart = loss_chart(losses, "gaps")
    cover = curve_pixels(decode(chart.png), chart, RAW_COLOUR)
    xs, _ = chart.axes.pixels([2.0, 5.0], [2.0, 1.5])
    assert cover[:, round(xs[0]) + 3 : round(xs[1]) - 3].sum() == 0  # nothing between steps 2 and 5
    assert cover[:, : round(xs[0])].sum() > 0 and cover[:, round(xs[1]) :].sum() > 0


def test_same_losses_same_bytes() -> None:
    losses = [2.3 * 0.99**i + 0.1 * math.sin(i) ** 2 for i in range(300)]
    assert loss_chart(losses, "again").png == loss_chart(list(losses), "again").png


def _without_matplotlib(tmp_path: Path) -> dict[str, str]:
    """An environment in which `import matplotlib` raises ImportError: a package of that name,
    first on the path, that refuses to load, as in a plain `pip install stepc`."""
    blocker = tmp_path / "blocker" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ImportError("matplotlib is not installed (blocked for this test)")\n')
    path = os.pathsep.join(p for p in (str(blocker.parent), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def test_write_run_writes_loss_png_without_matplotlib(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = (
        "import sys\n"
        "sys.modules['matplotlib'] = None  # any `import matplotlib` now raises ImportError\n"
        "try:\n"
        "    import matplotlib\n"
        "except ImportError:\n"
        "    pass\n"
        "else:\n"
        "    sys.exit('matplotlib still imports')\n"
        "from stepc.tools import loop as train_loop\n"
        f"print(train_loop.write_run({str(out)!r}, {{'steps': 3}}, {{'w': [1.0, 2.0]}}, [2.0, 1.0, 0.5]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "loss.png" in proc.stdout
    assert decode((out / "loss.png").read_bytes()).shape == (400, 640, 3)


def test_stepc_run_writes_loss_png_without_matplotlib(tmp_path: Path) -> None:
    env = _without_matplotlib(tmp_path)
    probe = subprocess.run(
        [sys.executable, "-c", "import matplotlib"], check=False, capture_output=True, text=True, env=env
    )
    assert probe.returncode != 0 and "blocked for this test" in probe.stderr
    out = tmp_path / "run"
    command = ["run", MLP, "--steps", "5", "--out", str(out), "--quiet", "--no-check"]
    proc = subprocess.run(
        [sys.executable, "-m", "stepc.tools.cli", *command],
        check=False, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "loss.png" in proc.stdout
    assert decode((out / "loss.png").read_bytes()).shape == (400, 640, 3)
