"""`stepc run --lr-schedule SPEC`: learning rates computed on the host, one per step, fed into the
program's run-time `lr` (an argument `%lr: tensor<f64> {step.hyper = "lr"}`), so that a schedule
never recompiles the step.

SPEC is `NAME` or `NAME:KEY=VALUE,KEY=VALUE,...`; `t` below is the step, counted from 0 (the
number of `scheduler.step()` calls torch made before that step's `optimizer.step()`), `lr` the
base learning rate (the key `lr`, else the optimizer attribute's `lr`: written, or Adam's
default 1e-3):

| SPEC | the learning rate of step t | torch |
| --- | --- | --- |
| `constant` | `lr` | no scheduler (or `ConstantLR(factor=1)`) |
| `step:step_size=S,gamma=G` | `lr * G ** (t // S)` (G defaults to 0.1) | `StepLR(opt, step_size=S, gamma=G)` |
| `cosine:warmup=W,total=T,start_factor=F,min_lr=M` | `t < W`: `lr * (F + (1 - F) * t / W)`; else `M + (lr - M) * (1 + cos(pi * (t - W) / (T - W))) / 2` | `SequentialLR([LinearLR(opt, F, 1.0, W), CosineAnnealingLR(opt, T - W, M)], milestones=[W])` |

`cosine` defaults: `warmup=0` (no warmup: `CosineAnnealingLR(opt, T, M)` alone), `total` the
run's `--steps`, `start_factor` 1/3 (torch's LinearLR default), `min_lr` 0. Past `total` the
cosine goes on as torch's closed form does (it rises again). torch computes these recursively
(each rate from the previous one); the closed forms here agree with it to a few ulps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from stepc.ir.diagnostics import StepcError, location_of
from stepc.ir.program import function_optimizer, step_function
from stepc.tools.data import Arrays, Signature

SCHEDULES = ("constant", "step", "cosine")
KEYS: Mapping[str, tuple[str, ...]] = {
    "constant": ("lr",),
    "step": ("lr", "step_size", "gamma"),
    "cosine": ("lr", "warmup", "total", "start_factor", "min_lr"),
}


@dataclass(frozen=True)
class Schedule:
    """A parsed `--lr-schedule`: its text, and the learning rate of each step (from 0)."""

    text: str
    rate: Callable[[int], float]

    def __call__(self, step: int) -> float:
        return self.rate(step)


def parse_schedule(text: str, base_lr: float | None, steps: int) -> Schedule:
    """`--lr-schedule TEXT` for a run of `steps` steps; `base_lr` is the optimizer attribute's lr
    (None when it has none). Every mistake is a StepcError saying what is accepted."""
    name, _, rest = text.partition(":")
    name = name.strip()
    if name not in SCHEDULES:
        raise StepcError(f"--lr-schedule {text!r}: unknown schedule '{name}'; the schedules are {', '.join(SCHEDULES)}")
    values: dict[str, float] = {}
    for item in (part.strip() for part in rest.split(",") if part.strip()):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in KEYS[name]:
            raise StepcError(
                f"--lr-schedule {text!r}: '{item}' is not KEY=VALUE with a key of {name} ({', '.join(KEYS[name])})"
            )
        if key in values:
            raise StepcError(f"--lr-schedule {text!r}: {key} is given twice")
        try:
            number = float(value)
        except ValueError:
            raise StepcError(f"--lr-schedule {text!r}: {key}={value.strip()!r} is not a number") from None
        if not math.isfinite(number):
            raise StepcError(f"--lr-schedule {text!r}: {key} must be finite, found {value.strip()}")
        values[key] = number
    lr = values.get("lr", base_lr)
    if lr is None:
        raise StepcError(
            f"--lr-schedule {text!r}: no base learning rate: give lr=BASE (the optimizer attribute writes no lr)"
        )
    if lr < 0:
        raise StepcError(f"--lr-schedule {text!r}: the learning rate must be >= 0, found {lr}")
    if name == "constant":
        return Schedule(text, lambda t: lr)
    if name == "step":
        return _step_decay(text, lr, values)
    return _cosine(text, lr, values, steps)


def _integer(text: str, values: Mapping[str, float], key: str, default: int | None, least: int) -> int:
    value = values.get(key)
    if value is None:
        if default is None:
            raise StepcError(f"--lr-schedule {text!r}: {key}=N is required")
        return default
    if value != int(value) or value < least:
        raise StepcError(f"--lr-schedule {text!r}: {key} must be an integer of at least {least}, found {value:g}")
    return int(value)


def _step_decay(text: str, lr: float, values: Mapping[str, float]) -> Schedule:
    step_size = _integer(text, values, "step_size", None, 1)
    gamma = values.get("gamma", 0.1)
    return Schedule(text, lambda t: lr * gamma ** (t // step_size))


def _cosine(text: str, lr: float, values: Mapping[str, float], steps: int) -> Schedule:
    warmup = _integer(text, values, "warmup", 0, 0)
    total = _integer(text, values, "total", steps, 1)
    if total <= warmup:
        raise StepcError(f"--lr-schedule {text!r}: total ({total}) must exceed warmup ({warmup})")
    start = values.get("start_factor", 1.0 / 3.0)
    if not 0.0 < start <= 1.0:
        raise StepcError(f"--lr-schedule {text!r}: start_factor must be in (0, 1] (as torch's LinearLR), found {start:g}")
    low = values.get("min_lr", 0.0)
    span = total - warmup

    def rate(t: int) -> float:
        if t < warmup:
            return lr * (start + (1.0 - start) * t / warmup)
        return low + (lr - low) * (1.0 + math.cos(math.pi * (t - warmup) / span)) / 2.0

    return Schedule(text, rate)


def run_schedule(text: str | None, module: ModuleOp, spec: Signature, steps: int) -> Schedule | None:
    """The schedule `stepc run` feeds the program's run-time lr (None for a program without
    one); located errors for a schedule without a run-time lr to feed, a run-time lr without a
    schedule, and a run-time field other than lr (which `stepc run` cannot feed)."""
    fn = step_function(module)
    fields = dict(spec.hypers)
    for field, arg in spec.hypers:
        if field != "lr":
            raise StepcError(
                f"%{arg.name} gives the optimizer's {field} at run time: stepc run feeds only a run-time lr "
                "(--lr-schedule); call the Python API's step with it in the batch",
                arg.loc,
            )
    if text is None:
        if "lr" in fields:
            raise StepcError(
                f"%{fields['lr'].name} gives the learning rate at run time: give --lr-schedule "
                "(constant:lr=0.1 for a fixed rate; see stepc run --help)",
                fields["lr"].loc,
            )
        return None
    if "lr" not in fields:
        raise StepcError(
            f"--lr-schedule {text!r} feeds a run-time lr, which @{fn.sym_name.data} has not: add an argument "
            '%lr: tensor<f64> {step.hyper = "lr"} (the optimizer attribute\'s lr is then only the default base rate)',
            location_of(fn),
        )
    found = function_optimizer(fn)
    base = None
    if found is not None:
        written = found[1].fields().get("lr")
        resolved = found[1].resolved().get("lr")  # Adam's default 1e-3; SGD has none
        base = float(written) if written is not None else (float(resolved) if resolved is not None else None)
    return parse_schedule(text, base, steps)


def with_rates(stream: Iterator[Arrays], spec: Signature, schedule: Schedule, first_step: int = 0) -> Iterator[Arrays]:
    """Each batch of `stream` with step t's learning rate as the run-time lr (in its dtype)."""
    lr = dict(spec.hypers)["lr"]
    for step, batch in enumerate(stream, start=first_step):
        yield {**batch, lr.name: np.asarray(schedule(step), dtype=lr.dtype)}
