"""Passes: one transformation per file, registered here lazily (as xDSL's `get_all_passes`).

The default pipeline is the spec's four passes with cleanups between them:
differentiate, cse, dce, seed-scalar-loss, canonicalize, fuse-sgd, cse, dce, lower-to-stablehlo,
simplify-stablehlo (peephole rewrites of the lowered program). A program that asks for
gradient accumulation (`step.accumulate = K`) also runs `accumulate-gradients` right before
`fuse-sgd` (`requested_passes`). `cut-at-logits` (the forward program returning a
classifier's logits, for accuracy) runs outside the default pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass

from stepc.ir.dialect import ACCUMULATE, ADAM, ADAMW, CLIP_GRAD_NORM
from stepc.ir.program import step_function


def get_all_passes() -> dict[str, Callable[[], type[ModulePass]]]:
    """Every pass by name; each entry imports its module only when the pass is used."""

    def get_differentiate() -> type[ModulePass]:
        from stepc.passes.differentiate import Differentiate

        return Differentiate

    def get_seed_scalar_loss() -> type[ModulePass]:
        from stepc.passes.seed_scalar_loss import SeedScalarLoss

        return SeedScalarLoss

    def get_fuse_sgd() -> type[ModulePass]:
        from stepc.passes.fuse_sgd import FuseSGD

        return FuseSGD

    def get_lower_to_stablehlo() -> type[ModulePass]:
        from stepc.passes.lower_to_stablehlo import LowerToStableHLO

        return LowerToStableHLO

    def get_simplify_stablehlo() -> type[ModulePass]:
        from stepc.passes.simplify_stablehlo import SimplifyStableHLO

        return SimplifyStableHLO

    def get_cut_at_logits() -> type[ModulePass]:
        from stepc.passes.cut_at_logits import CutAtLogits

        return CutAtLogits

    def get_accumulate_gradients() -> type[ModulePass]:
        from stepc.passes.accumulate_gradients import AccumulateGradients

        return AccumulateGradients

    def get_fuse_adam() -> type[ModulePass]:
        from stepc.passes.fuse_adam import FuseAdam

        return FuseAdam

    def get_clip_grad_norm() -> type[ModulePass]:
        from stepc.passes.clip_grad_norm import ClipGradNorm

        return ClipGradNorm

    def get_canonicalize() -> type[ModulePass]:
        from stepc.passes.cleanup import Canonicalize

        return Canonicalize

    def get_cse() -> type[ModulePass]:
        from stepc.passes.cleanup import CSE

        return CSE

    def get_dce() -> type[ModulePass]:
        from stepc.passes.cleanup import DCE

        return DCE

    return {
        "differentiate": get_differentiate,
        "seed-scalar-loss": get_seed_scalar_loss,
        "accumulate-gradients": get_accumulate_gradients,
        "fuse-sgd": get_fuse_sgd,
        "lower-to-stablehlo": get_lower_to_stablehlo,
        "simplify-stablehlo": get_simplify_stablehlo,
        "cut-at-logits": get_cut_at_logits,
        "canonicalize": get_canonicalize,
        "cse": get_cse,
        "dce": get_dce,
        "fuse-adam": get_fuse_adam,
        "clip-grad-norm": get_clip_grad_norm,
    }


DEFAULT_PIPELINE: tuple[str, ...] = (
    "differentiate",
    "cse",
    "dce",
    "seed-scalar-loss",
    "canonicalize",
    "fuse-sgd",
    "cse",
    "dce",
    "lower-to-stablehlo",
    "simplify-stablehlo",
)
# The passes that take a step program to StableHLO: the tail of every lowered pipeline.
LOWERING_PASSES: tuple[str, ...] = ("lower-to-stablehlo", "simplify-stablehlo")

# Passes of the default pipeline that run only on a program asking for them by a function
# attribute: the pass, the attribute, and the pass of `DEFAULT_PIPELINE` it runs right before.
ACCUMULATE_GRADIENTS = "accumulate-gradients"
CLIP_GRAD_NORM_PASS = "clip-grad-norm"
REQUESTED_PASSES: tuple[tuple[str, str, str], ...] = (
    (ACCUMULATE_GRADIENTS, ACCUMULATE, "fuse-sgd"),
    (CLIP_GRAD_NORM_PASS, CLIP_GRAD_NORM, "fuse-sgd"),
)


# The optimizer passes: the default pipeline's `fuse-sgd` is the optimizer's place, where a
# function with another optimizer attribute runs that optimizer's pass instead.
FUSE_SGD = "fuse-sgd"
OPTIMIZER_PASSES: tuple[tuple[str, str], ...] = ((ADAM, "fuse-adam"), (ADAMW, "fuse-adam"))


def requested_passes(names: Sequence[str], module: ModuleOp) -> list[str]:
    """The default pipeline's `names` (cut anywhere) with each pass of `REQUESTED_PASSES` that
    the program asks for put in at its place: `accumulate-gradients` right before `fuse-sgd`
    for a function with `step.accumulate` (none where the cut left `fuse-sgd` out, none twice);
    `fuse-sgd` itself replaced by the optimizer pass of a function with another optimizer
    (`OPTIMIZER_PASSES`: `fuse-adam` for `step.adam` and `step.adamw`)."""
    out = list(names)
    attributes = step_function(module).attributes
    for name, attribute, before in REQUESTED_PASSES:
        if attribute in attributes and name not in out and before in out:
            out.insert(out.index(before), name)
    for attribute, name in OPTIMIZER_PASSES:
        if attribute in attributes and FUSE_SGD in out:
            out[out.index(FUSE_SGD)] = name
    return out


def optimizer_pass(module: ModuleOp) -> str:
    """The optimizer pass the default pipeline runs on `module` (`fuse-sgd`, or the pass of its
    optimizer attribute in `OPTIMIZER_PASSES`)."""
    return requested_passes([FUSE_SGD], module)[0]


def requested_cut(names: Sequence[str], last: str) -> list[str] | None:
    """The default pipeline `names` cut after `last` when `last` is one of `REQUESTED_PASSES`
    (the passes before its place, then it: explicit, it runs whatever the program asks), or an
    optimizer pass (cut at the optimizer's place, `fuse-sgd`), else None."""
    if last in {name for _, name in OPTIMIZER_PASSES} and last not in names and FUSE_SGD in names:
        out = list(names)
        return out[: out.index(FUSE_SGD) + 1]
    for name, _, before in REQUESTED_PASSES:
        if last == name and name not in names and before in names:
            out = list(names)
            return [*out[: out.index(before)], name]
    return None
