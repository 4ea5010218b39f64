"""A regression whose loss is only seen on a grid: an ordered, piecewise-constant objective.

Unlike the 0-1 loss of a classifier (:class:`~torchzo.tasks.synthetic.ZeroOneLinear`), which
counts errors and ignores how wrong a prediction is, a quantised loss keeps the magnitude of
the error down to its grid's resolution: the plateaus are level sets of a smooth function, and
a radius that crosses one sees the slope.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Problem
from .synthetic import log_uniform, randint

__all__ = ["QuantisedLeastSquares"]


class QuantisedLeastSquares(Problem):
    """``mean (a . x - y)^2 / 2`` rounded down to a grid of ``L(x0) / levels``, with ``levels``
    log-uniform in ``[1e2, 1e4]``: the loss reads only 100 to 10,000 values between the start
    and the optimum, so a radius ``mu`` well above float rounding is needed (the family gives
    one).

    d from 5 to 100, ``n = 2 d + 20`` rows of unevenly scaled Gaussian features, and exact
    targets of a planted ``x_star`` (an interpolating fit): the optimum is 0 at ``x_star``,
    and the grid's lowest cell ``[0, L(x0) / levels)`` reads 0 too. ``x0`` is Gaussian.
    """

    f_min = 0.0

    def __init__(self, g: torch.Generator) -> None:
        d = randint(g, 5, 100)
        n = 2 * d + 20
        scales = torch.logspace(0, -log_uniform(g, 0.01, 2.0), d)
        self.a = torch.randn(n, d, generator=g) * scales
        self.x_star = torch.randn(d, generator=g)
        self.y = self.a @ self.x_star
        self.x0 = torch.randn(d, generator=g)
        self.levels = log_uniform(g, 1e2, 1e4)
        self.step = float(self._smooth(self.x0[None])[0]) / self.levels

    def _smooth(self, X: Tensor) -> Tensor:
        # In float64: a batch and a single row round differently in float32 (gemm and gemv),
        # and where that crosses a cell's edge the value jumps a whole cell.
        r = X.double() @ self.a.double().T - self.y.double()
        return 0.5 * (r ** 2).mean(-1)

    def loss(self, X: Tensor, batch: object = None) -> Tensor:
        return (torch.floor(self._smooth(X) / self.step) * self.step).to(X.dtype)
