"""A device's share of a layout: the tensors that live there, drawn as one flat vector."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .seeds import SEED_MAX

__all__ = ["Block", "Fill"]

# Decorrelates the streams of two device blocks that share a query seed.
_BLOCK_STRIDE = 0x9E3779B97F4A7C15


class Block:
    """The tensors of a layout that live on one device: their positions ``index`` in the layout,
    their sizes ``numels``, the ``dtype`` their directions are drawn in, and the block's
    ``position`` among the layout's devices (which offsets its seeds)."""

    def __init__(self, device: torch.device, index: list[int], numels: list[int],
                 dtype: torch.dtype, position: int) -> None:
        self.device = device
        self.index = index
        self.numels = numels
        self.dtype = dtype
        self.position = position
        self.numel = sum(numels)

    def seed_for(self, seed: int) -> int:
        """The seed of this block's piece of the direction of ``seed``."""
        return (seed + self.position * _BLOCK_STRIDE) % SEED_MAX

    def rows(self, fill: Fill, seeds: Sequence[int]) -> Tensor:
        """The block's directions of ``seeds``, each drawn by ``fill``, as the rows of a new
        tensor."""
        out = torch.empty(len(seeds), self.numel, dtype=self.dtype, device=self.device)
        for row, seed in zip(out.unbind(0), seeds):
            fill(self, row, seed)
        return out


#: Draws a block's piece of one direction from the direction's own seed into a flat tensor.
Fill = Callable[[Block, Tensor, int], None]
