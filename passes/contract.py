"""What each pass promises, checked by running the program before and after it.

A pass states its contract once, as the class attribute `contract` (a `Contract`); the
pipeline, `stepc check` and the tests all run that same object.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass


@dataclass
class ContractReport:
    """One row of the check table."""

    pass_name: str
    contract: str
    trials: int
    max_abs: float
    max_rel: float
    tolerance: str
    ok: bool
    seconds: float
    worst: str = ""  # the output (or parameter) with the largest error

    def failure_message(self) -> str:
        return (
            f"contract of pass {self.pass_name} ({self.contract}) does not hold: "
            f"worst output {self.worst or '?'} has abs error {self.max_abs:.3g}, rel error {self.max_rel:.3g} "
            f"(tolerance {self.tolerance})"
        )


class Contract(ABC):
    """A before/after property of one pass."""

    name: str

    @abstractmethod
    def check(self, pass_name: str, before: ModuleOp, after: ModuleOp, *, trials: int, seed: int) -> ContractReport:
        """Run both programs on `trials` random inputs and compare."""


def contract_of(p: ModulePass | type[ModulePass]) -> Contract | None:
    return getattr(p, "contract", None)


def format_table(reports: list[ContractReport]) -> str:
    header = f"{'pass':<20} {'contract':<24} {'trials':>6} {'max abs err':>12} {'max rel err':>12} {'tolerance':<18} {'verdict':<7} {'time':>8}"
    lines = [header, "-" * len(header)]
    for r in reports:
        lines.append(
            f"{r.pass_name:<20} {r.contract:<24} {r.trials:>6} {r.max_abs:>12.3e} {r.max_rel:>12.3e} "
            f"{r.tolerance:<18} {'ok' if r.ok else 'FAILED':<7} {r.seconds * 1000:>6.0f}ms"
        )
    return "\n".join(lines)


def label_range(fn, arg) -> int:  # type: ignore[no-untyped-def]
    """How many classes an i32 input ranges over: read from the ops that consume it."""
    from stepc.ir.dialect import CrossEntropyOp, OneHotOp, shape_of

    classes = []
    for use in arg.value.uses:
        op = use.operation
        if isinstance(op, CrossEntropyOp) and use.index == 1:
            classes.append(shape_of(op.logits)[-1])
        elif isinstance(op, OneHotOp):
            classes.append(shape_of(op.result)[-1])
    return min(classes) if classes else 2


def random_inputs(fn, rng, *, float_dtype=None, scale: float = 1.0):  # type: ignore[no-untyped-def]
    """Random values for every argument of a step function, keyed by argument name.

    Floats are standard normal times `scale` (and `fan_in_scale` for weights) in the argument's
    own dtype (or `float_dtype`);
    i32 labels are uniform over the classes their consumers expect (see `label_range`).
    """
    import numpy as np

    from stepc.ir.dialect import is_i32
    from stepc.ir.program import args
    from stepc.ir.values import numpy_dtype

    out = {}
    for arg in args(fn):
        shape = tuple(arg.type.get_shape())
        element = arg.type.get_element_type()
        if is_i32(element):
            out[arg.name] = rng.integers(0, label_range(fn, arg), size=shape).astype(np.int32)
        else:
            dtype = float_dtype or numpy_dtype(element)
            out[arg.name] = (rng.standard_normal(shape) * scale * fan_in_scale(arg)).astype(dtype)
    return out


def fan_in_scale(arg) -> float:  # type: ignore[no-untyped-def]
    """1/sqrt(k) for an argument a matmul contracts over k (a weight), else 1.

    With unit-normal data, every matmul's output then has unit scale, as under PyTorch's
    default initialization: contracts test programs where they are well conditioned, not where
    a 784-wide layer makes logits of 1e4 and softmax a step function."""
    from stepc.ir.dialect import MatmulOp, shape_of

    for use in arg.value.uses:
        if isinstance(use.operation, MatmulOp) and use.index == 1:
            return 1.0 / float(shape_of(arg.value)[-2]) ** 0.5
    return 1.0
