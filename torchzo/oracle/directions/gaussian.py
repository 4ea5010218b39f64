"""Gaussian directions: a counter-based stream per device block, keyed by the block's seed."""
from __future__ import annotations

from torch import Tensor

from .blocks import Block
from .counter import gaussian_range

__all__ = ["GAUSSIAN", "Gaussian"]


class Gaussian:
    """The default kind: independent standard normal coordinates.

    Drawn by :func:`~.counter.gaussian_range` (the compiled kernel where it runs): entry ``i``
    of a block's direction depends on the block's seed and ``i`` alone, so any piece can be
    drawn by itself, with the same bits on every device and for any split into pieces.
    """

    independent = True
    packs = False
    seekable = True
    # The stream's largest radius is sqrt(-2 ln 2**-24) = 5.7681 (u is at least 2**-24; the
    # logarithm's polynomial is accurate to 5e-7) times a sine or cosine of at most 1.
    largest = 5.78

    def fill(self, block: Block, out: Tensor, seed: int) -> None:
        self.fill_range(block, out, seed, 0)

    def fill_range(self, block: Block, out: Tensor, seed: int, start: int) -> None:
        gaussian_range(block.seed_for(seed), start, out)

    def framed(self, numel: int, q: int) -> bool:
        return False


GAUSSIAN = Gaussian()
