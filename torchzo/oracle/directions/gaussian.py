"""Gaussian directions: ``randn(numel)`` per device block, from the block's seed."""
from __future__ import annotations

from torch import Tensor

from .blocks import Block

__all__ = ["GAUSSIAN", "Gaussian"]


class Gaussian:
    """The default kind: independent standard normal coordinates."""

    independent = True
    packs = False

    def fill(self, block: Block, out: Tensor, seed: int) -> None:
        # randn's bits: normal_ fills as randn(out=) does, without its Python (a batched step
        # at small d draws q rows of a few hundred entries, where the calls are the cost).
        block.generator.manual_seed(block.seed_for(seed))
        out.normal_(generator=block.generator)

    def framed(self, numel: int, q: int) -> bool:
        return False


GAUSSIAN = Gaussian()
