"""Passes: one transformation per file, registered here lazily (as xDSL's `get_all_passes`).

The default pipeline is the spec's four passes with cleanups between them:
differentiate, cse, dce, seed-scalar-loss, canonicalize, fuse-sgd, cse, dce, lower-to-stablehlo,
simplify-stablehlo (peephole rewrites of the lowered program). `cut-at-logits` (the forward
program returning a classifier's logits, for accuracy) runs outside the default pipeline.
"""

from __future__ import annotations

from collections.abc import Callable

from xdsl.passes import ModulePass


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
        "fuse-sgd": get_fuse_sgd,
        "lower-to-stablehlo": get_lower_to_stablehlo,
        "simplify-stablehlo": get_simplify_stablehlo,
        "cut-at-logits": get_cut_at_logits,
        "canonicalize": get_canonicalize,
        "cse": get_cse,
        "dce": get_dce,
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
