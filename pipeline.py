"""One pass pipeline for every entry point (CLI, Python API, tests).

It runs named passes in order and, after each, calls the listeners: the pass's contract
(the before/after check), the `--dump-dir` writer, `--print-after-all` and `--time-passes`.
A failure inside a pass becomes a located `StepcError` naming the pass.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass
from xdsl.utils.arg_spec import ArgSpec, parse_pipeline
from xdsl.utils.exceptions import ArgSpecParseError, PassFailedException, VerifyException

from stepc.check import ContractReport, contract_for
from stepc.check.reduced import ContractRunner, check_mode_name
from stepc.ir.diagnostics import StepcError
from stepc.ir.parse import make_context, no_gc, verify
from stepc.passes import DEFAULT_PIPELINE, LOWERING_PASSES, get_all_passes, requested_cut, requested_passes


@dataclass
class PassEvent:
    """What a listener sees after each pass (index 0 is the input, before any pass)."""

    index: int
    name: str
    module: ModuleOp
    seconds: float = 0.0
    report: ContractReport | None = None


Listener = Callable[[PassEvent], None]
LOWERING = "lower-to-stablehlo"


@dataclass
class Pipeline:
    names: Sequence[str] = DEFAULT_PIPELINE
    check: bool = True
    trials: int = 3
    seed: int = 0
    listeners: list[Listener] = field(default_factory=list)
    # Where contracts run: "auto" (reduced shapes for a big program), "full" or "reduced";
    # see `stepc.check.reduced` for what each guarantees.
    check_mode: str = "auto"
    # The default pipeline (`default`): the passes a program asks for by its attributes are
    # put in when it runs (`passes.requested_passes`); a pipeline of named passes runs those.
    requested: bool = False

    def __post_init__(self) -> None:
        check_trials(self.trials)
        check_seed(self.seed)
        check_mode_name(self.check_mode)

    @staticmethod
    def parse(spec: str, **options) -> Pipeline:  # type: ignore[no-untyped-def]
        """A comma-separated pipeline, as `stepc opt -p` (xDSL's syntax: `name{option=value}`)."""
        return Pipeline(names=[str(s) for s in _parse_specs(spec)], **options)

    @staticmethod
    def default(until: str | None = None, lower: bool = True, **options) -> Pipeline:  # type: ignore[no-untyped-def]
        """The default pipeline cut after `until`; with `lower`, ending in the lowering passes
        (`LOWERING_PASSES`, appended when the cut removed them), else without them."""
        pipeline = Pipeline(DEFAULT_PIPELINE, **options, requested=True).until(until)
        names = [n for n in pipeline.names if n not in LOWERING_PASSES]
        if lower:
            names.extend(LOWERING_PASSES)
        pipeline.names = names
        return pipeline

    def until(self, last: str | None) -> Pipeline:
        """The pipeline cut after the first pass named `last` (the `--until` option)."""
        if last is None:
            return self
        cut = requested_cut(self.names, last) if self.requested else None
        if cut is not None:
            return replace(self, names=cut)
        if last not in self.names:
            raise StepcError(f"--until {last}: no such pass in the pipeline ({', '.join(self.names)})")
        names = list(self.names)
        return replace(self, names=names[: names.index(last) + 1])

    def names_for(self, module: ModuleOp) -> list[str]:
        """The passes that run on `module`: the default pipeline with those the program asks
        for (`passes.requested_passes`), or the named passes as they are."""
        return requested_passes(self.names, module) if self.requested else list(self.names)

    def passes(self, names: Sequence[str] | None = None) -> list[ModulePass]:
        """Every pass (of `names`, by default the pipeline's), built before any runs: an unknown
        name or a bad option is a StepcError."""
        available = get_all_passes()
        out: list[ModulePass] = []
        for name in self.names if names is None else names:
            if not isinstance(name, str):
                raise TypeError(f"a pass is named by a str, found {type(name).__name__} {name!r}")
            specs = _parse_specs(name)
            if len(specs) != 1:
                raise StepcError(f"'{name}' is not one pass (a pipeline names one pass per entry)")
            spec = specs[0]
            if spec.name not in available:
                raise StepcError(f"unknown pass '{spec.name}'; the passes are: {', '.join(sorted(available))}")
            cls = available[spec.name]()
            try:
                out.append(cls.from_spec(spec) if spec.parameters else cls())
            except (ValueError, TypeError) as e:
                raise StepcError(f"pass {spec.name}: {e} (stepc's passes take no options)") from None
        return out

    def run(self, module: ModuleOp) -> list[PassEvent]:
        """Run every pass on `module` in place; returns the events (input first)."""
        ctx = make_context()
        runner = ContractRunner(self.check_mode)
        events = [PassEvent(0, "input", module)]
        self._emit(events[0])
        names = self.names_for(module)
        for index, (name, p) in enumerate(zip(names, self.passes(names)), start=1):
            contract = contract_for(p.name) if self.check else None
            before = module.clone() if contract is not None else None
            start = time.perf_counter()
            try:
                with no_gc():  # a pass allocates many long-lived objects: see `no_gc`
                    p.apply(ctx, module)
                    verify(module)
            except StepcError:
                raise
            except (PassFailedException, VerifyException) as e:
                raise StepcError(f"pass {p.name} failed: {e}") from e
            seconds = time.perf_counter() - start
            report = None
            if contract is not None and before is not None:
                report = runner.check(contract, p, before, module, trials=self.trials, seed=self.seed + index)
            event = PassEvent(index, name.partition("{")[0], module, seconds, report)
            events.append(event)
            self._emit(event)
            if report is not None and not report.ok:
                raise StepcError(report.failure_message())
        return events

    def _emit(self, event: PassEvent) -> None:
        for listener in self.listeners:
            listener(event)


def _parse_specs(text: str) -> list[ArgSpec]:
    """A pipeline's passes as xDSL parses them; a syntax error (`dce{`) is a StepcError.

    (xDSL's parse error is a `BaseException`, which no `except Exception` would catch.)"""
    if not isinstance(text, str):
        raise TypeError(f"a pipeline is a str of comma-separated pass names, found {type(text).__name__}")
    try:
        return list(parse_pipeline(_tight(text)))
    except (ArgSpecParseError, ValueError) as e:
        detail = " ".join(str(e).split())  # xDSL's message spans lines with a caret
        raise StepcError(f"cannot read the pass pipeline {text!r}: {detail}") from None


def _tight(text: str) -> str:
    """`differentiate, cse` as `differentiate,cse`: blanks around the names, outside any `{...}`
    of options (where blanks separate the options), mean nothing."""
    out: list[str] = []
    depth = 0
    for part in re.split(r"([{}])", text):
        if part == "{":
            depth += 1
        elif part == "}":
            depth = max(0, depth - 1)
        elif depth == 0:
            part = ",".join(name.strip() for name in part.split(","))
        out.append(part)
    return "".join(out).strip()


def check_trials(trials: object) -> int:
    """`trials`, random inputs per contract: an int of at least 1 (0 would check nothing)."""
    if not isinstance(trials, int) or isinstance(trials, bool):
        raise TypeError(f"trials must be an int (random inputs per contract), found {type(trials).__name__}")
    if trials < 1:
        raise StepcError(f"trials must be at least 1 (random inputs per contract), found {_shown(trials)}: "
                         "zero trials would check nothing")
    return trials


MAX_SEED = 2**64 - 1


def check_seed(seed: object) -> int:
    """`seed` of the contracts' random inputs: an int in [0, 2**64)."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, found {type(seed).__name__}")
    if not 0 <= seed <= MAX_SEED:
        raise StepcError(f"seed must be an integer from 0 to 2**64 - 1, found {_shown(seed)}")
    return seed


def _shown(n: int) -> str:
    """An int for a message (one of 5,000 digits cannot even be formatted: Python's digit limit)."""
    return str(n) if n.bit_length() <= 256 else f"{'-' if n < 0 else ''}an integer of {n.bit_length()} bits"
