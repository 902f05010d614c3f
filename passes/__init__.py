"""Passes: one transformation per file, registered here lazily (as xDSL's `get_all_passes`).

The default pipeline is the spec's four passes with cleanups between them:
differentiate, cse, dce, seed-scalar-loss, canonicalize, fuse-sgd, cse, dce, lower-to-stablehlo.
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
)
