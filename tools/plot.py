"""The training-loss chart of `stepc run --out DIR` (`loss.png`), drawn with NumPy alone.

    chart = loss_chart([2.3, 1.1, 0.7], "examples/mlp_digits.ir on digits")
    Path("loss.png").write_bytes(chart.png)

It draws what stepc's figure has always shown: the loss per step (thin, translucent blue), a
moving average over `len(losses) // 50` steps (orange) once that window exceeds 1, a log-scale
y axis when every plotted loss is positive, a grid, a legend in the corner the curves cover
least, tick labels, the axis labels "step" and "training loss", and a title. Text is drawn in
a built-in 5x7 bitmap font, the PNG encoded with zlib and struct; the same input always gives
the same bytes.

Non-finite losses (NaN, inf) leave gaps in the curves and are counted in `LossChart.skipped`;
with no finite loss at all, the frame says so.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# ---------------------------------------------------------------------------------------------
# Font: printable ASCII in 5 columns x 7 rows; each row is two hex digits, 0x10 the left column

_GLYPHS = {
    " ": "00000000000000", "!": "04040404040004", '"': "0a0a0a00000000", "#": "0a0a1f0a1f0a0a",
    "$": "040f140e051e04", "%": "18190204081303", "&": "0c12140815120d", "'": "04040400000000",
    "(": "02040808080402", ")": "08040202020408", "*": "0004150e150400", "+": "0004041f040400",
    ",": "000000000c0408", "-": "0000001f000000", ".": "00000000000c0c", "/": "00010204081000",
    "0": "0e11131519110e", "1": "040c040404040e", "2": "0e11010204081f", "3": "1f02040201110e",
    "4": "02060a121f0202", "5": "1f101e0101110e", "6": "0608101e11110e", "7": "1f010204080808",
    "8": "0e11110e11110e", "9": "0e11110f01020c", ":": "000c0c000c0c00", ";": "000c0c000c0408",
    "<": "02040810080402", "=": "00001f001f0000", ">": "08040201020408", "?": "0e110102040004",
    "@": "0e11010d15150e", "A": "0e1111111f1111", "B": "1e11111e11111e", "C": "0e11101010110e",
    "D": "1c12111111121c", "E": "1f10101e10101f", "F": "1f10101e101010", "G": "0e11101711110f",
    "H": "1111111f111111", "I": "0e04040404040e", "J": "0702020202120c", "K": "11121418141211",
    "L": "1010101010101f", "M": "111b1515111111", "N": "11111915131111", "O": "0e11111111110e",
    "P": "1e11111e101010", "Q": "0e11111115120d", "R": "1e11111e141211", "S": "0f10100e01011e",
    "T": "1f040404040404", "U": "1111111111110e", "V": "11111111110a04", "W": "1111111515150a",
    "X": "11110a040a1111", "Y": "1111110a040404", "Z": "1f01020408101f", "[": "0e08080808080e",
    "\\": "00100804020100", "]": "0e02020202020e", "^": "040a1100000000", "_": "0000000000001f",
    "`": "08040200000000", "a": "00000e010f110f", "b": "1010161911111e", "c": "00000e1010110e",
    "d": "01010d1311110f", "e": "00000e111f100e", "f": "0609081c080808", "g": "000f11110f010e",
    "h": "10101619111111", "i": "04000c0404040e", "j": "0200060202120c", "k": "10101214181412",
    "l": "0c04040404040e", "m": "00001a15151111", "n": "00001619111111", "o": "00000e1111110e",
    "p": "00001e111e1010", "q": "00000d130f0101", "r": "00001619101010", "s": "00000e100e011e",
    "t": "08081c08080906", "u": "0000111111130d", "v": "00001111110a04", "w": "0000111115150a",
    "x": "0000110a040a11", "y": "000011110f010e", "z": "00001f0204081f", "{": "02040408040402",
    "|": "04040404040404", "}": "08040402040408", "~": "00000815020000",
}  # fmt: skip

GLYPH_W, GLYPH_H = 5, 7
SCALE = 2  # each font pixel drawn as 2x2: matplotlib's 10 pt text at 100 dpi is about 14 px tall
ADVANCE = (GLYPH_W + 1) * SCALE  # one blank font column between characters
TEXT_H = GLYPH_H * SCALE

Floats = npt.NDArray[np.float64]
Bits = npt.NDArray[np.bool_]
Colour = tuple[int, int, int]
Box = tuple[int, int, int, int]  # left, top, right, bottom pixel, inclusive
Marks = list[tuple[int, str]]  # ticks: (pixel row or column, label)

WHITE: Colour = (255, 255, 255)
BLACK: Colour = (0, 0, 0)
GRID: Colour = (230, 230, 230)
LEGEND_EDGE: Colour = (204, 204, 204)
RAW_COLOUR: Colour = (31, 119, 180)  # matplotlib's first two default colours, C0 and C1
SMOOTH_COLOUR: Colour = (255, 127, 14)
RAW_ALPHA = 0.5
RAW_WIDTH = 1.2  # line widths in pixels
SMOOTH_WIDTH = 2.0
DOT_RADIUS = 2.5  # a finite loss between two gaps has no segment to draw: it gets a dot
MARGIN = 0.05  # matplotlib's default data margin on each side of the axes
TICK = 4  # tick length in pixels
PAD = 8  # space between the parts of the layout, in pixels
FLOAT_MAX = float(np.finfo(np.float64).max)
MIN_SIZE = (320, 200)


def _bitmaps() -> dict[str, Bits]:
    """Each glyph of `_GLYPHS` as a (GLYPH_H * SCALE, GLYPH_W * SCALE) boolean array."""
    out: dict[str, Bits] = {}
    for char, code in _GLYPHS.items():
        rows = [int(code[2 * r : 2 * r + 2], 16) for r in range(GLYPH_H)]
        bits = np.array([[row >> (GLYPH_W - 1 - c) & 1 for c in range(GLYPH_W)] for row in rows], dtype=bool)
        out[char] = np.repeat(np.repeat(bits, SCALE, axis=0), SCALE, axis=1)
    return out


_BITMAPS = _bitmaps()


# ---------------------------------------------------------------------------------------------
# The chart


@dataclass(frozen=True)
class Axes:
    """Where data lands in the picture: the frame's pixel box and the step and loss at its edges."""

    box: Box  # the frame lines: left, top, right, bottom pixel
    x_limits: tuple[float, float]  # the steps at the left and right frame lines
    y_limits: tuple[float, float]  # the losses at the bottom and top frame lines
    log_y: bool

    def pixels(self, steps: npt.ArrayLike, losses: npt.ArrayLike) -> tuple[Floats, Floats]:
        """The (column, row) pixel coordinates of points; pixel centres are at whole numbers."""
        left, top, right, bottom = self.box
        x = _fraction(np.asarray(steps, dtype=np.float64), *self.x_limits)
        y = np.asarray(losses, dtype=np.float64)
        y_limits = self.y_limits
        if self.log_y:
            with np.errstate(divide="ignore", invalid="ignore"):  # a loss <= 0 has no place: NaN, a gap
                y = np.log10(y)
            y_limits = (math.log10(y_limits[0]), math.log10(y_limits[1]))
        return left + x * (right - left), bottom - _fraction(y, *y_limits) * (bottom - top)


@dataclass(frozen=True)
class LossChart:
    """A drawn loss chart: the PNG and what was drawn where."""

    png: bytes
    width: int
    height: int
    axes: Axes
    window: int  # the moving average's window; 1 when no moving average is drawn
    points: int  # the finite losses drawn
    skipped: int  # the non-finite losses left out, each a gap in the curves
    legend: Box | None  # None when there is nothing to name


@dataclass(frozen=True)
class _Series:
    """One curve: a value per step (NaN or inf where it has a gap) and how to draw it."""

    label: str
    steps: Floats
    values: Floats
    colour: Colour
    alpha: float
    width: float


def loss_chart(losses: Sequence[float], title: str = "", *, width: int = 640, height: int = 400) -> LossChart:
    """The chart of one loss per step (step 1 first) as an RGB PNG of `width` x `height` pixels."""
    if width < MIN_SIZE[0] or height < MIN_SIZE[1]:
        raise ValueError(f"a loss chart needs at least {MIN_SIZE[0]}x{MIN_SIZE[1]} pixels, asked for {width}x{height}")
    values = np.asarray(losses, dtype=np.float64).reshape(-1)
    finite = values[np.isfinite(values)]
    window = max(1, len(values) // 50)
    steps = np.arange(1, len(values) + 1, dtype=np.float64)
    series = [_Series("loss per step", steps, values, RAW_COLOUR, RAW_ALPHA, RAW_WIDTH)]
    if window > 1:
        series.append(_Series(f"moving average of {window}", steps[window - 1 :], moving_average(values, window),
                              SMOOTH_COLOUR, 1.0, SMOOTH_WIDTH))  # fmt: skip
    log_y = finite.size > 0 and float(finite.min()) > 0  # log scale whenever every finite loss allows it
    axes, y_marks, x_marks = _layout(len(values), finite, log_y, bool(title), (width, height))

    canvas = np.full((height, width, 3), WHITE, dtype=np.float64)
    left, top, right, bottom = axes.box
    for row, _ in y_marks:
        canvas[row, left + 1 : right] = GRID
    for col, _ in x_marks:
        canvas[top + 1 : bottom, col] = GRID
    strokes = [_stroke(axes, s, (height, width)) for s in series]
    for s, mask in zip(series, strokes, strict=True):
        _blend(canvas, mask, s.colour, s.alpha)
    _draw_frame(canvas, axes.box, y_marks, x_marks)
    if title:
        fitted = _fit(title, width - 2 * PAD)
        _draw_text(canvas, fitted, width // 2 - _text_width(fitted) // 2, PAD)

    legend = None
    if finite.size:
        legend = _legend(canvas, axes, series, strokes)
    else:
        message = "no finite loss to plot"
        _draw_text(canvas, message, (left + right) // 2 - _text_width(message) // 2, (top + bottom) // 2 - TEXT_H // 2)
    png = encode_png(np.round(canvas).astype(np.uint8))
    return LossChart(png, width, height, axes, window, int(finite.size), int(values.size - finite.size), legend)


def _layout(count: int, finite: Floats, log_y: bool, titled: bool, size: tuple[int, int]) -> tuple[Axes, Marks, Marks]:
    """The axes of `count` steps whose finite losses are `finite`, and their ticks as (pixel row
    or column, label) in a picture of `size` (width, height): the frame leaves room for the title
    above, the widest y tick label and the rotated axis label to the left, and the x tick labels
    and axis label below."""
    width, height = size
    x_range = _padded(1.0, float(max(count, 1)))
    if finite.size == 0:
        y_range = (0.0, 1.0)
    elif log_y:
        low, high = _padded(math.log10(float(finite.min())), math.log10(float(finite.max())), log=True)
        y_range = (_exp10(low), _exp10(high))
    else:
        y_range = _padded(float(finite.min()), float(finite.max()))
    top = PAD + (TEXT_H + PAD if titled else 0)
    bottom = height - 1 - (TICK + 6 + TEXT_H + PAD + TEXT_H + PAD)
    y_ticks = _y_ticks(y_range, log_y, max(2, (bottom - top) // 50))
    label_width = max((_text_width(label) for _, label in y_ticks), default=0)
    left = min(PAD + TEXT_H + PAD + label_width + 6 + TICK, width // 2)  # past half, huge labels are cut instead
    right = width - 1 - 2 * PAD
    x_ticks = _linear_ticks(*x_range, max(2, (right - left) // 90), least_step=1.0)
    axes = Axes((left, top, right, bottom), x_range, y_range, log_y)
    rows = axes.pixels(np.ones(len(y_ticks)), [value for value, _ in y_ticks])[1]
    columns = axes.pixels([value for value, _ in x_ticks], np.ones(len(x_ticks)))[0]
    y_marks = [(round(float(row)), label) for row, (_, label) in zip(rows, y_ticks, strict=True)]
    x_marks = [(round(float(col)), label) for col, (_, label) in zip(columns, x_ticks, strict=True)]
    return axes, y_marks, x_marks


def _draw_frame(canvas: Floats, box: Box, y_marks: Marks, x_marks: Marks) -> None:
    """The frame, its ticks and tick labels, and the axis labels."""
    left, top, right, bottom = box
    canvas[[top, bottom], left : right + 1] = BLACK
    canvas[top : bottom + 1, [left, right]] = BLACK
    for row, _ in y_marks:
        canvas[row, left - TICK : left] = BLACK
    for col, _ in x_marks:
        canvas[bottom + 1 : bottom + 1 + TICK, col] = BLACK
    _tick_labels(canvas, y_marks, left, bottom, vertical=True)
    _tick_labels(canvas, x_marks, left, bottom, vertical=False)
    _draw_text(canvas, "step", (left + right) // 2 - _text_width("step") // 2, canvas.shape[0] - PAD - TEXT_H)
    ylabel = np.rot90(_text_bits("training loss"))  # reads bottom to top, as matplotlib's
    _paint(canvas, ylabel, PAD, (top + bottom) // 2 - ylabel.shape[0] // 2, BLACK)


def moving_average(values: npt.ArrayLike, window: int) -> Floats:
    """The mean of each run of `window` consecutive values (NumPy's `convolve(..., "valid")` of
    a box), not finite for the runs that hold a non-finite value.

    Each run is summed from two partial sums inside blocks of `window` values rather than as a
    difference of running totals, so a spike of 1e30 cannot drown the later means in rounding,
    and the cost stays linear however long the window.
    """
    data = np.asarray(values, dtype=np.float64).reshape(-1)
    count = data.size - window + 1
    if window < 1 or count < 1:
        raise ValueError(f"a moving average of {window} needs at least {max(window, 1)} values, found {data.size}")
    blocks = -(-data.size // window) + 1
    table = np.zeros(blocks * window)
    table[: data.size] = data / window  # divided first: no sum of means can overflow
    table = table.reshape(blocks, window)
    with np.errstate(invalid="ignore"):  # inf - inf inside a run: NaN, a gap
        tails = np.cumsum(table[:, ::-1], axis=1)[:, ::-1]  # tails[k, j]: the sum of block k from j on
        heads = np.cumsum(np.pad(table[:, :-1], ((0, 0), (1, 0))), axis=1)  # heads[k, j]: block k's sum before j
        means = tails[:-1] + heads[1:]  # the run from (k, j) is block k's tail and block k+1's head
    return means.reshape(-1)[:count]


# ---------------------------------------------------------------------------------------------
# Ranges and ticks


def _fraction(values: Floats, low: float, high: float) -> Floats:
    """Where `values` fall between `low` (0) and `high` (1); on halves, so that the span of a
    range near the largest floats does not overflow."""
    return (values / 2 - low / 2) / (high / 2 - low / 2)


def _padded(low: float, high: float, log: bool = False) -> tuple[float, float]:
    """The data range [low, high] with matplotlib's margins, clamped to finite floats; a range
    of one value (up to rounding) is first opened around it, by 5% of it (0.05 decades on a log
    axis, 1 around 0), so that it has a height and ticks."""
    middle = low / 2 + high / 2
    half = high / 2 - low / 2
    if half <= (1e-9 if log else abs(middle) * 1e-9):
        half = 0.05 if log else (abs(middle) * MARGIN or 1.0)
    half *= 1 + 2 * MARGIN  # a margin of 5% of the whole span on each side
    return max(middle - half, -FLOAT_MAX), min(middle + half, FLOAT_MAX)


def _exp10(exponent: float) -> float:
    """10 ** exponent, kept within the positive finite floats (a log axis's limits past them)."""
    try:
        return max(10.0**exponent, math.ulp(0.0))
    except OverflowError:
        return FLOAT_MAX


def _nice_step(raw: float) -> float:
    """The smallest of 1, 2 and 5 times a power of ten that is at least `raw` (> 0)."""
    power = 10.0 ** max(math.floor(math.log10(raw)), -300)  # below 1e-300 the powers run into subnormals
    return next(m * power for m in (1.0, 2.0, 5.0, 10.0) if m * power >= raw * (1 - 1e-9))


def _linear_ticks(low: float, high: float, count: int, least_step: float = 0.0) -> list[tuple[float, str]]:
    """About `count` evenly spaced round values in [low, high], with their labels."""
    step = max(_nice_step((high / 2 - low / 2) / count * 2), least_step)
    ticks = [k * step for k in range(math.ceil(low / step), math.floor(high / step) + 1)]
    plain = _plain(ticks)
    return [(tick, _label(tick, step, plain)) for tick in ticks]


def _y_ticks(y_range: tuple[float, float], log_y: bool, count: int) -> list[tuple[float, str]]:
    """Linear ticks; on a log axis over many decades, powers of ten (every 2nd, 5th, ... when
    there are too many); over a few, 1, 2 and 5 times them; within one, linear ticks again."""
    if log_y:
        low, high = math.log10(y_range[0]), math.log10(y_range[1])
        decades = range(math.ceil(low), math.floor(high) + 1)
        if len(decades) > count // 2:
            stride = round(max(_nice_step((high - low) / count), 1.0))
            return [(10.0**k, _label(10.0**k, 10.0**k, _plain([10.0**k]))) for k in decades if k % stride == 0]
        marks = [m * 10.0**k for k in range(math.floor(low), math.floor(high) + 1) for m in (1.0, 2.0, 5.0)]
        marks = [v for v in marks if v > 0 and low <= math.log10(v) <= high]
        if len(marks) >= 2:
            return [(v, _label(v, v, _plain([v]))) for v in marks]
    return _linear_ticks(*y_range, count)


def _plain(ticks: list[float]) -> bool:
    """Whether the labels of these ticks read best as plain decimals rather than as 2e-5, 1e6."""
    return all(tick == 0 or 1e-4 <= abs(tick) < 1e6 for tick in ticks)


def _label(value: float, step: float, plain: bool) -> str:
    """`value` with as many digits as ticks `step` apart need: 0.5 1.0 1.5, 200, 1e-5, 2.5e300."""
    if value == 0:
        return "0"
    if plain:
        return f"{value:.{max(0, -math.floor(math.log10(step)))}f}"
    digits = math.floor(math.log10(abs(value))) - math.floor(math.log10(step)) + 1
    text = f"{value:.{min(max(digits, 1), 15)}g}"
    return re.sub(r"e\+?(-?)0*(\d)", r"e\1\2", text)  # 1e+06 -> 1e6, 1e-05 -> 1e-5


# ---------------------------------------------------------------------------------------------
# Rasterizing


def _stroke(axes: Axes, series: _Series, shape: tuple[int, ...]) -> Floats:
    """The coverage (0..1) of each pixel by the series' polyline, clipped to inside the frame;
    each run of finite values between gaps is drawn on its own."""
    mask = np.zeros(shape[:2])
    left, top, right, bottom = axes.box
    clip = (left + 1, top + 1, right - 1, bottom - 1)
    xs, ys = axes.pixels(series.steps, series.values)
    drawn = np.flatnonzero(np.isfinite(ys))
    for run in np.split(drawn, np.flatnonzero(np.diff(drawn) > 1) + 1):
        if run.size == 0:
            continue
        if run.size == 1:
            x, y = float(xs[run[0]]), float(ys[run[0]])
            _segment(mask, (x, y, x, y), DOT_RADIUS, clip)
            continue
        run_x, run_y = _thin_out(xs[run], ys[run])
        for i in range(run_x.size - 1):
            _segment(mask, (float(run_x[i]), float(run_y[i]), float(run_x[i + 1]), float(run_y[i + 1])),
                     series.width / 2, clip)  # fmt: skip
    return mask


def _thin_out(xs: Floats, ys: Floats) -> tuple[Floats, Floats]:
    """The points of a polyline (x increasing) that a picture can show: per pixel column the
    first, highest, lowest and last; a million steps then draw as fast as a thousand."""
    column = np.round(xs)
    first = np.flatnonzero(np.r_[True, column[1:] != column[:-1]])
    last = np.r_[first[1:] - 1, xs.size - 1]
    by_height = np.lexsort((ys, column))  # columns keep their blocks; inside each, rows ascend
    keep = np.unique(np.concatenate([first, last, by_height[first], by_height[last]]))
    return xs[keep], ys[keep]


def _segment(mask: Floats, ends: tuple[float, float, float, float], radius: float, clip: Box) -> None:
    """Cover the pixels within `radius` (+ half a pixel of antialiasing) of the segment
    (x0, y0)-(x1, y1), keeping the larger coverage where strokes overlap, so that joints are
    not drawn twice as dark."""
    x0, y0, x1, y1 = ends
    reach = radius + 1
    c0, c1 = max(clip[0], math.floor(min(x0, x1) - reach)), min(clip[2], math.ceil(max(x0, x1) + reach))
    r0, r1 = max(clip[1], math.floor(min(y0, y1) - reach)), min(clip[3], math.ceil(max(y0, y1) + reach))
    if c0 > c1 or r0 > r1:
        return
    cols = np.arange(c0, c1 + 1, dtype=np.float64)[None, :] - x0
    rows = np.arange(r0, r1 + 1, dtype=np.float64)[:, None] - y0
    dx, dy = x1 - x0, y1 - y0
    along = np.clip((cols * dx + rows * dy) / max(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
    distance = np.hypot(cols - along * dx, rows - along * dy)
    window = mask[r0 : r1 + 1, c0 : c1 + 1]
    np.maximum(window, np.clip(radius + 0.5 - distance, 0.0, 1.0), out=window)


def _blend(canvas: Floats, mask: Floats, colour: Colour, alpha: float) -> None:
    """Lay `colour` over the canvas with opacity `alpha` times the mask's coverage."""
    weight = (mask * alpha)[..., None]
    canvas *= 1 - weight
    canvas += weight * np.array(colour, dtype=np.float64)


def _legend(canvas: Floats, axes: Axes, series: list[_Series], strokes: list[Floats]) -> Box:
    """Draw the legend in the frame's corner that the curves cover least (matplotlib's 'best',
    among the corners, in its order on ties: upper right, upper left, lower left, lower right)."""
    left, top, right, bottom = axes.box
    sample = 24  # the length of each entry's line
    row_height = TEXT_H + 6
    width = 6 + sample + PAD + max(_text_width(s.label) for s in series) + 6
    height = len(series) * row_height + 6
    corners = [(right - PAD - width, top + PAD), (left + PAD, top + PAD), (left + PAD, bottom - PAD - height),
               (right - PAD - width, bottom - PAD - height)]  # fmt: skip
    covered = [sum(float(m[y : y + height, x : x + width].sum()) for m in strokes) for x, y in corners]
    x, y = corners[covered.index(min(covered))]
    box = (x, y, x + width - 1, y + height - 1)
    canvas[y : y + height, x : x + width] = WHITE
    canvas[[y, y + height - 1], x : x + width] = LEGEND_EDGE
    canvas[y : y + height, [x, x + width - 1]] = LEGEND_EDGE
    for i, s in enumerate(series):
        middle = y + 3 + i * row_height + row_height // 2
        mask = np.zeros(canvas.shape[:2])
        _segment(mask, (x + 6, middle, x + 6 + sample, middle), s.width / 2, box)
        _blend(canvas, mask, s.colour, s.alpha)
        _draw_text(canvas, s.label, x + 6 + sample + PAD, middle - TEXT_H // 2)
    return box


# ---------------------------------------------------------------------------------------------
# Text


def _text_bits(text: str) -> Bits:
    """`text` in the bitmap font; characters outside printable ASCII show as '?'."""
    out = np.zeros((TEXT_H, max(len(text) * ADVANCE - SCALE, 0)), dtype=bool)
    for i, char in enumerate(text):
        glyph = _BITMAPS.get(char, _BITMAPS["?"])
        out[:, i * ADVANCE : i * ADVANCE + glyph.shape[1]] = glyph
    return out


def _text_width(text: str) -> int:
    return max(len(text) * ADVANCE - SCALE, 0)


def _fit(text: str, width: int) -> str:
    """`text`, or its end after '...' when it is wider than `width` pixels: a run's title ends
    with the program's file name and data set, the parts worth keeping."""
    room = (width + SCALE) // ADVANCE
    return text if len(text) <= room else "..." + text[len(text) - room + 3 :]


def _draw_text(canvas: Floats, text: str, x: int, y: int) -> None:
    _paint(canvas, _text_bits(text), x, y, BLACK)


def _paint(canvas: Floats, bits: Bits, x: int, y: int, colour: Colour) -> None:
    """Set the pixels of `bits` placed with its top-left corner at column x, row y, clipped to the canvas."""
    height, width = canvas.shape[:2]
    r0, c0 = max(y, 0), max(x, 0)
    r1, c1 = min(y + bits.shape[0], height), min(x + bits.shape[1], width)
    if r0 < r1 and c0 < c1:
        region = canvas[r0:r1, c0:c1]
        region[bits[r0 - y : r1 - y, c0 - x : c1 - x]] = colour


def _tick_labels(canvas: Floats, ticks: Marks, left: int, bottom: int, vertical: bool) -> None:
    """Label ticks at pixel positions: the y axis's right-aligned beside the frame, the x axis's
    centred below it but kept inside the picture; a label that would touch the previous one is
    left out (its tick and grid line stay), as the 1, 2, 5 marks of a short log axis can."""
    end = -math.inf
    for position, label in sorted(ticks):
        size = TEXT_H if vertical else _text_width(label)
        start = position - size // 2 if vertical else min(position - size // 2, canvas.shape[1] - 1 - size)
        if start < end + PAD // 2:
            continue
        end = start + size
        if vertical:
            _draw_text(canvas, label, left - TICK - 6 - _text_width(label), start)
        else:
            _draw_text(canvas, label, start, bottom + 1 + TICK + 6)


# ---------------------------------------------------------------------------------------------
# PNG


def encode_png(image: npt.NDArray[np.uint8]) -> bytes:
    """An (height, width, 3) uint8 RGB array as the bytes of an 8-bit RGB PNG file."""
    height, width, channels = image.shape
    if channels != 3:
        raise ValueError(f"encode_png takes RGB: (height, width, 3), found shape {image.shape}")
    rows = np.zeros((height, 1 + 3 * width), dtype=np.uint8)  # each row starts with filter type 0: none
    rows[:, 1:] = image.reshape(height, 3 * width)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour, deflate, no interlace
    data = zlib.compress(rows.tobytes(), 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
