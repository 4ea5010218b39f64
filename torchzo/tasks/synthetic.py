"""Analytic objectives of the generalist's task distribution: quadratics, valleys, l1, plateaus.

Every class draws its instance from a ``torch.Generator`` and is float32, batched over rows of
``X`` (B, d). ``f_min`` is a known lower bound of the loss (0 unless said otherwise): the
meta-objective and the benchmarks normalise by it.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .base import Problem

__all__ = ["Ackley", "NoisyQuadratic", "Quartic", "Rastrigin", "RotatedQuadratic", "Rosenbrock",
           "SeparableQuadratic", "SharpRidge", "ZeroOneLinear", "log_uniform", "randint"]


def log_uniform(g: torch.Generator, low: float, high: float) -> float:
    u = float(torch.rand((), generator=g))
    return math.exp(math.log(low) + u * (math.log(high) - math.log(low)))


def randint(g: torch.Generator, low: int, high: int) -> int:
    """An int in ``[low, high]``, log-uniform (sizes span decades)."""
    return int(round(log_uniform(g, low, high + 0.999) - 0.499))


class RotatedQuadratic(Problem):
    """``0.5 (x - x*)^T H (x - x*)``, H = Q diag(eig) Q^T, eigenvalues log-spaced over ``cond``."""

    f_min = 0.0

    def __init__(self, g: torch.Generator, dim: int | None = None, cond: float | None = None
                 ) -> None:
        d = dim or randint(g, 10, 200)
        cond = cond or log_uniform(g, 1.0, 1e4)
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
        eig = torch.logspace(0, -math.log10(cond), d)
        self.H = (q * eig) @ q.T
        self.x_star = torch.randn(d, generator=g)
        self.x0 = torch.randn(d, generator=g)

    def loss(self, X: Tensor, batch: object = None) -> Tensor:
        r = X - self.x_star
        return 0.5 * ((r @ self.H) * r).sum(-1)


class SeparableQuadratic(Problem):
    """A diagonal quadratic in up to a few thousand dimensions, randomly permuted spectrum."""

    f_min = 0.0

    def __init__(self, g: torch.Generator, dim: int | None = None) -> None:
        d = dim or randint(g, 50, 2000)
        cond = log_uniform(g, 1.0, 1e5)
        self.eig = torch.logspace(0, -math.log10(cond), d)[torch.randperm(d, generator=g)]
        self.x_star = torch.randn(d, generator=g)
        self.x0 = torch.zeros(d) if float(torch.rand((), generator=g)) < 0.3 else \
            torch.randn(d, generator=g)

    def loss(self, X: Tensor, batch: object = None) -> Tensor:
        return 0.5 * ((X - self.x_star) ** 2 * self.eig).sum(-1)


class NoisyQuadratic(SeparableQuadratic):
    """A separable quadratic whose every step sees a fresh multiplicative and additive noise
    (a minibatch's), shared by the step's queries; the reported loss is noiseless."""

    def __init__(self, g: torch.Generator) -> None:
        super().__init__(g, randint(g, 20, 500))
        self.noise = log_uniform(g, 0.01, 0.5)

    def sample_batch(self, generator: torch.Generator) -> Tensor:
        return torch.randn(self.dim, generator=generator)

    def loss(self, X: Tensor, batch: Any = None) -> Tensor:
        if batch is None:
            return super().loss(X)
        shift = self.noise * batch * self.eig.sqrt()
        return 0.5 * ((X - self.x_star - shift) ** 2 * self.eig).sum(-1)


class Rosenbrock(Problem):
    """The chained Rosenbrock valley ``sum 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2``."""

    f_min = 0.0

    def __init__(self, g: torch.Generator, dim: int | None = None) -> None:
        d = dim or randint(g, 2, 50)
        self.x0 = 0.5 * torch.randn(d, generator=g)

    def loss(self, X: Tensor, batch: object = None) -> Tensor:
        a, b = X[..., :-1], X[..., 1:]
        return (100 * (b - a * a) ** 2 + (1 - a) ** 2).sum(-1)


class Quartic(Problem):
    """``sum_i w_i (x_i - c_i)^4`` plus a weak coupling: flat near its minimum."""

    f_min = 0.0

    def __init__(self, g: torch.Generator) -> None:
        d = randint(g, 10, 300)
        self.w = torch.rand(d, generator=g) + 0.1
        self.c = torch.randn(d, generator=g)
        self.x0 = self.c + torch.randn(d, generator=g)

    def loss(self, X: Tensor, batch: object = None) -> Tensor:
        r = X - self.c
        return (self.w * r ** 4).sum(-1) + 0.1 * (r.sum(-1) ** 2) / r.shape[-1]


class Rastrigin(Problem):
    """A shallow Rastrigin: a quadratic bowl with cosine ripples (many local minima)."""

    f_min = 0.0

    def __init__(self, g: torch.Generator) -> None:
        d = randint(g, 5, 100)
        self.amp = log_uniform(g, 0.1, 1.0)
        self.x0 = 3 * torch.randn(d, generator=g)

    def loss(self, X: Tensor, batch: object = None) -> Tensor:
        return (X ** 2 + self.amp * (1 - torch.cos(2 * math.pi * X))).sum(-1)


class SharpRidge(Problem):
    """BBOB's sharp ridge ``z_1^2 + alpha |z_{2..d}|``, ``z = R (x - x*)`` with a random
    rotation ``R``: a steep cone around one axis, a shallow quadratic along it, and not
    differentiable on it."""

    f_min = 0.0

    def __init__(self, g: torch.Generator) -> None:
        d = randint(g, 10, 200)
        self.alpha = log_uniform(g, 10.0, 100.0)
        self.R, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
        self.x_star = torch.randn(d, generator=g)
        self.x0 = torch.randn(d, generator=g)

    def loss(self, X: Tensor, batch: object = None) -> Tensor:
        z = (X - self.x_star) @ self.R.T
        # vector_norm, not sqrt of a sum: its gradient on the ridge is 0, not nan.
        return z[..., 0] ** 2 + self.alpha * torch.linalg.vector_norm(z[..., 1:], dim=-1)


class Ackley(Problem):
    """The Ackley function of ``z = x - x*``: a cone under a grid of cosine ripples, started
    a fraction of a ripple from its optimum (further out, ZO methods stall in the ripples)."""

    f_min = 0.0

    def __init__(self, g: torch.Generator) -> None:
        d = randint(g, 10, 200)
        self.x_star = torch.randn(d, generator=g)
        self.x0 = self.x_star + log_uniform(g, 0.15, 0.4) * torch.randn(d, generator=g)

    def loss(self, X: Tensor, batch: object = None) -> Tensor:
        z = X - self.x_star
        rms = torch.linalg.vector_norm(z, dim=-1) / math.sqrt(z.shape[-1])
        ripples = torch.cos(2 * math.pi * z).mean(-1)
        # The usual -20 exp(-0.2 rms) - exp(ripples) + 20 + e cancels to ~1e-6 in float32
        # (not 0 at the optimum); as two expm1 terms each is >= 0 and accurate near it.
        return -20 * torch.expm1(-0.2 * rms) - math.e * torch.expm1(ripples - 1)


class ZeroOneLinear(Problem):
    """The 0-1 loss (error rate) of a linear classifier: piecewise constant, so every method
    needs a radius ``mu`` well above float rounding (the family gives one)."""

    f_min = 0.0

    def __init__(self, g: torch.Generator) -> None:
        d = randint(g, 5, 100)
        n = 400
        w_star = torch.randn(d, generator=g)
        self.a = torch.randn(n, d, generator=g)
        margin = self.a @ w_star
        flip = torch.rand(n, generator=g) < 0.05
        self.y = torch.where(flip, -margin.sign(), margin.sign())
        self.x0 = torch.randn(d, generator=g)

    def loss(self, X: Tensor, batch: object = None) -> Tensor:
        return ((X @ self.a.T) * self.y <= 0).float().mean(-1)
