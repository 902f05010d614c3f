"""Cleanups after differentiation: xDSL's CSE, DCE and canonicalization, under stepc's contract.

All step ops are `Pure`, so CSE merges duplicates and DCE drops what no result reads. Their
contract is identity: the program computes the same outputs before and after.
"""

from __future__ import annotations

from typing import ClassVar

from xdsl.transforms.canonicalize import CanonicalizePass
from xdsl.transforms.common_subexpression_elimination import CommonSubexpressionElimination
from xdsl.transforms.dead_code_elimination import DeadCodeElimination

from stepc.passes.contract import Contract
from stepc.passes.contracts import IdentityContract


class CSE(CommonSubexpressionElimination):
    contract: ClassVar[Contract] = IdentityContract()


class DCE(DeadCodeElimination):
    contract: ClassVar[Contract] = IdentityContract()


class Canonicalize(CanonicalizePass):
    contract: ClassVar[Contract] = IdentityContract()
