"""Contracts: what each pass promises, one file per pass it checks (`contract.py` is the framework).

`CONTRACTS` maps a pass name to its contract; the pipeline, `stepc check` and the tests all run
these same objects. A pass without an entry (none today) runs unchecked.
"""

from __future__ import annotations

from typing import Any

from stepc.check.accumulate_gradients import AccumulationContract
from stepc.check.cleanup import ExactIdentityContract, IdentityContract
from stepc.check.clip_grad_norm import ClipContract
from stepc.check.contract import Contract, ContractReport, format_table
from stepc.check.differentiate import VJPContract
from stepc.check.fuse_adam import AdamEquationContract
from stepc.check.fuse_sgd import SGDEquationContract
from stepc.check.lower_to_stablehlo import LoweringContract
from stepc.check.seed_scalar_loss import SeedContract
from stepc.check.simplify_stablehlo import SimplifyContract

CONTRACTS: dict[str, Contract[Any]] = {
    "differentiate": VJPContract(),
    "seed-scalar-loss": SeedContract(),
    "accumulate-gradients": AccumulationContract(),
    "fuse-sgd": SGDEquationContract(),
    "lower-to-stablehlo": LoweringContract(),
    "simplify-stablehlo": SimplifyContract(),
    "cse": ExactIdentityContract(),
    "dce": ExactIdentityContract(),
    "canonicalize": IdentityContract(),
    "fuse-adam": AdamEquationContract(),
    "clip-grad-norm": ClipContract(),
}


def contract_for(pass_name: str) -> Contract[Any] | None:
    """The contract of the pass named `pass_name` (options such as `{a=1}` ignored)."""
    return CONTRACTS.get(pass_name.partition("{")[0])


__all__ = ["CONTRACTS", "Contract", "ContractReport", "contract_for", "format_table"]
