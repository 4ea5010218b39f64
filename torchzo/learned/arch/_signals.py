"""Scale-free signals that the architectures with a group-level controller share: sums and
cosines over a group's coordinates, and the loss change over its running magnitude.

Every function takes per-tensor values with any leading population dimensions and returns
population-shaped results.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

__all__ = ["TINY", "cosine", "group_sum", "loss_signals", "zeros"]

#: Below any meaningful norm; guards divisions of sums of squares.
TINY = 1e-30


def zeros(p: Tensor, population: tuple[int, ...], *shapes: tuple[int, ...]) -> list[Tensor]:
    """float32 zeros of each of ``shapes`` behind ``population``, on ``p``'s device."""
    return [torch.zeros((*population, *shape), device=p.device, dtype=torch.float32)
            for shape in shapes]


def group_sum(xs: Sequence[Tensor]) -> Tensor:
    """The sum over every coordinate of a group's tensors: population-shaped."""
    total = xs[0].sum(-1)
    for x in xs[1:]:
        total = total + x.sum(-1)
    return total


def cosine(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """The cosine of two vectors given by their tensors (0 where either is zero)."""
    dot = group_sum([x * y for x, y in zip(a, b)])
    norms = (group_sum([x * x for x in a]) * group_sum([y * y for y in b])).sqrt()
    return torch.where(norms > 0, dot / norms.clamp(min=TINY), torch.zeros_like(dot))


class _LossMemory(Protocol):
    @property
    def prev_loss(self) -> Tensor: ...

    @property
    def loss_scale(self) -> Tensor: ...

    @property
    def t(self) -> Tensor: ...


def loss_signals(g0: _LossMemory, t: Tensor, loss: Tensor | None
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The loss now, its change, the change's running magnitude, and the change over it
    (clipped to [-5, 5]); ``g0``: a group state with ``prev_loss``, ``loss_scale`` and
    ``t`` (steps before this one); ``loss``: ``None`` keeps the last loss (no change)."""
    first = g0.t == 0
    if loss is None:
        loss_now = g0.prev_loss
    else:
        loss_now = torch.as_tensor(loss, dtype=torch.float32, device=t.device).expand_as(t)
    change = torch.where(first, torch.zeros_like(t), loss_now - g0.prev_loss)
    magnitude = torch.where(g0.loss_scale > 0, 0.9 * g0.loss_scale + 0.1 * change.abs(),
                            change.abs())
    scaled = torch.where(magnitude > 0, change / magnitude.clamp(min=TINY),
                         torch.zeros_like(change)).clamp(-5, 5)
    return loss_now, change, magnitude, scaled
