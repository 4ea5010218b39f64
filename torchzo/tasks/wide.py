"""Problems in thousands of dimensions, and warm starts.

Where a learned ZO step meets large d: a q-direction estimate has cosine about ``sqrt(q / d)``
with the gradient, so a step that is right at d = 100 overshoots by orders of magnitude at
d = 1e4. The warm starts put the point much closer to the minimum than the parameters' own
scale, as fine-tuning a pretrained model does: a start step relative to the parameters' RMS
is then far too large, and has to shrink. Elementwise objectives only, so that a population's
runs stay cheap at this size (a population of 33 weight sets runs 500 steps of a
10,000-dimensional instance in about 15 seconds on one core).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .synthetic import Rosenbrock, SeparableQuadratic, log_uniform, randint

__all__ = ["NearOptimum", "WarmRosenbrock", "WideQuadratic"]


class WideQuadratic(SeparableQuadratic):
    """A separable quadratic in 1,000 to 10,000 dimensions."""

    def __init__(self, g: torch.Generator) -> None:
        super().__init__(g, randint(g, 1_000, 10_000))


class NearOptimum(SeparableQuadratic):
    """A separable quadratic started at ``x* + delta``, the minimum ``x*`` at unit scale and
    ``delta`` at 1e-3 to 1e-1 of it per coordinate (100 to 10,000 dimensions)."""

    def __init__(self, g: torch.Generator) -> None:
        super().__init__(g, randint(g, 100, 10_000))
        offset = log_uniform(g, 1e-3, 1e-1)
        self.x0 = self.x_star + offset * torch.randn(self.dim, generator=g)


class WarmRosenbrock(Rosenbrock):
    """The chained Rosenbrock valley in 1,000 to 10,000 dimensions, started near its minimum
    (all ones) at 1e-2 to 3e-1 of it per coordinate."""

    def __init__(self, g: torch.Generator) -> None:
        d = randint(g, 1_000, 10_000)
        offset = log_uniform(g, 1e-2, 0.3)
        self.x0 = 1 + offset * torch.randn(d, generator=g)

    def loss(self, X: Tensor, batch: object = None) -> Tensor:
        # Per coordinate, so that the scale of the loss does not grow with d.
        return super().loss(X, batch) / math.sqrt(X.shape[-1])
