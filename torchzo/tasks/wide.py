"""Problems in thousands of dimensions, and warm starts.

Where a learned ZO step meets large d: a q-direction estimate has cosine about ``sqrt(q / d)``
with the gradient, so a step that is right at d = 100 overshoots by orders of magnitude at
d = 1e4. The warm starts put the point much closer to the minimum than the parameters' own
scale, as fine-tuning a pretrained model does: a start step relative to the parameters' RMS
is then far too large, and has to shrink. Elementwise objectives only, so that a population's
runs stay cheap at this size (a population of 33 weight sets runs 500 steps of a
10,000-dimensional instance in about 15 seconds on one core).

Fine-tuning with minibatches adds noise on top: a step's batch moves the minimum, so a
difference quotient carries the batch's gradient, whose noise is many times the gradient's own
when the point is near the minimum. The ``minibatch-`` families put that noise at a gradient
signal-to-noise ratio of 1/2 to 1/100 at the start, falling as the point nears the minimum
(the batch's minimum stays where it was), so the step has to shrink with it.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .synthetic import Rosenbrock, SeparableQuadratic, log_uniform, randint

__all__ = ["MinibatchNearOptimum", "MinibatchWarmRosenbrock", "NearOptimum", "WarmRosenbrock",
           "WideQuadratic"]


class WideQuadratic(SeparableQuadratic):
    """A separable quadratic in 1,000 to 10,000 dimensions."""

    def __init__(self, g: torch.Generator) -> None:
        super().__init__(g, randint(g, 1_000, 10_000))


class NearOptimum(SeparableQuadratic):
    """A separable quadratic started at ``x* + delta``, the minimum ``x*`` at unit scale and
    ``delta`` at 1e-3 to 1e-1 of it per coordinate (100 to 10,000 dimensions)."""

    def __init__(self, g: torch.Generator, low: int = 100) -> None:
        super().__init__(g, randint(g, low, 10_000))
        self.offset = log_uniform(g, 1e-3, 1e-1)
        self.x0 = self.x_star + self.offset * torch.randn(self.dim, generator=g)


class WarmRosenbrock(Rosenbrock):
    """The chained Rosenbrock valley in 1,000 to 10,000 dimensions, started near its minimum
    (all ones) at 1e-2 to 3e-1 of it per coordinate."""

    def __init__(self, g: torch.Generator) -> None:
        d = randint(g, 1_000, 10_000)
        self.offset = log_uniform(g, 1e-2, 0.3)
        self.x0 = 1 + self.offset * torch.randn(d, generator=g)

    def loss(self, X: Tensor, batch: object = None) -> Tensor:
        # Per coordinate, so that the scale of the loss does not grow with d.
        return super().loss(X, batch) / math.sqrt(X.shape[-1])


def _batch_shift(problem: NearOptimum | WarmRosenbrock, g: torch.Generator) -> float:
    """A batch's move of the minimum per coordinate: 1 to 10 times the start's offset, a
    gradient signal-to-noise ratio of 1 / (1 + ratio^2) at the start (exactly so on the
    quadratic; about so in the valley)."""
    return log_uniform(g, 1.0, 10.0) * problem.offset


class MinibatchNearOptimum(NearOptimum):
    """:class:`NearOptimum` (1,000 to 10,000 dimensions) whose every step's batch moves the
    minimum by ``shift * N(0, 1)`` per coordinate, shared by the step's queries; the reported
    loss is noiseless."""

    def __init__(self, g: torch.Generator) -> None:
        super().__init__(g, low=1_000)
        self.shift = _batch_shift(self, g)

    def sample_batch(self, generator: torch.Generator) -> Tensor:
        return torch.randn(self.dim, generator=generator)

    def loss(self, X: Tensor, batch: Any = None) -> Tensor:
        if batch is None:
            return super().loss(X)
        return 0.5 * ((X - self.x_star - self.shift * batch) ** 2 * self.eig).sum(-1)


class MinibatchWarmRosenbrock(WarmRosenbrock):
    """:class:`WarmRosenbrock` whose every step's batch moves the valley by
    ``shift * N(0, 1)`` per coordinate, shared by the step's queries; the reported loss is
    noiseless."""

    def __init__(self, g: torch.Generator) -> None:
        super().__init__(g)
        self.shift = _batch_shift(self, g)

    def sample_batch(self, generator: torch.Generator) -> Tensor:
        return torch.randn(self.dim, generator=generator)

    def loss(self, X: Tensor, batch: Any = None) -> Tensor:
        return super().loss(X if batch is None else X - self.shift * batch)
