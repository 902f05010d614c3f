"""One pass pipeline for every entry point (CLI, Python API, tests).

It runs named passes in order and, after each, calls the listeners: the pass's contract
(the before/after check), the `--dump-dir` writer, `--print-after-all` and `--time-passes`.
A failure inside a pass becomes a located `StepcError` naming the pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass
from xdsl.utils.arg_spec import ArgSpec, parse_pipeline
from xdsl.utils.exceptions import PassFailedException, VerifyException

from stepc.check import ContractReport, contract_for
from stepc.ir.diagnostics import StepcError
from stepc.ir.parse import make_context, no_gc, verify
from stepc.passes import DEFAULT_PIPELINE, LOWERING_PASSES, get_all_passes


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

    @staticmethod
    def parse(spec: str, **options) -> Pipeline:  # type: ignore[no-untyped-def]
        """A comma-separated pipeline, as `stepc opt -p`."""
        names = [n.strip() for n in spec.split(",") if n.strip()]
        return Pipeline(names=names, **options)

    @staticmethod
    def default(until: str | None = None, lower: bool = True, **options) -> Pipeline:  # type: ignore[no-untyped-def]
        """The default pipeline cut after `until`; with `lower`, ending in the lowering passes
        (`LOWERING_PASSES`, appended when the cut removed them), else without them."""
        pipeline = Pipeline(DEFAULT_PIPELINE, **options).until(until)
        names = [n for n in pipeline.names if n not in LOWERING_PASSES]
        if lower:
            names.extend(LOWERING_PASSES)
        pipeline.names = names
        return pipeline

    def until(self, last: str | None) -> Pipeline:
        """The pipeline cut after the first pass named `last` (the `--until` option)."""
        if last is None:
            return self
        if last not in self.names:
            raise StepcError(f"--until {last}: no such pass in the pipeline ({', '.join(self.names)})")
        names = list(self.names)
        return Pipeline(names[: names.index(last) + 1], self.check, self.trials, self.seed, self.listeners)

    def passes(self) -> list[ModulePass]:
        available = get_all_passes()
        out: list[ModulePass] = []
        for name in self.names:
            base, _, options = name.partition("{")
            if base not in available:
                raise StepcError(f"unknown pass '{base}'; the passes are: {', '.join(sorted(available))}")
            cls = available[base]()
            out.append(cls.from_spec(_spec(name)) if options else cls())
        return out

    def run(self, module: ModuleOp) -> list[PassEvent]:
        """Run every pass on `module` in place; returns the events (input first)."""
        ctx = make_context()
        events = [PassEvent(0, "input", module)]
        self._emit(events[0])
        for index, (name, p) in enumerate(zip(self.names, self.passes()), start=1):
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
                report = contract.check(p.name, before, module, trials=self.trials, seed=self.seed + index)
            event = PassEvent(index, name.partition("{")[0], module, seconds, report)
            events.append(event)
            self._emit(event)
            if report is not None and not report.ok:
                raise StepcError(report.failure_message())
        return events

    def _emit(self, event: PassEvent) -> None:
        for listener in self.listeners:
            listener(event)


def _spec(text: str) -> ArgSpec:
    (spec,) = tuple(parse_pipeline(text))
    return spec
