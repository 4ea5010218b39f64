"""Model-fitting objectives of the generalist's task distribution, on synthetic data.

Each problem holds a dataset drawn from its generator, fits a model whose parameters are the
flat vector ``x``, and may be stochastic: ``sample_batch`` gives the indices of one step's
minibatch (``batch=None`` in ``loss``: all the data, the reported objective).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from .base import Problem
from .synthetic import log_uniform, randint

__all__ = ["Hinge", "Huber", "Lasso", "LeastSquares", "Logistic", "MatrixFactorization",
           "MLPClassifier", "MLPRegression", "Poisson", "RobustRegression", "Softmax",
           "SquaredHinge", "StudentT"]


def _features(g: torch.Generator, n: int, d: int) -> Tensor:
    """Correlated, unevenly scaled features (a real design matrix is rarely white)."""
    mix = torch.randn(d, d, generator=g) / math.sqrt(d)
    scales = torch.logspace(0, -log_uniform(g, 0.01, 2.0), d)
    return (torch.randn(n, d, generator=g) @ (torch.eye(d) + mix)) * scales


class _Data(Problem):
    """A dataset ``(a, y)`` with an optional minibatch size."""

    a: Tensor
    y: Tensor
    batch_size: int | None = None

    def _minibatch(self, g: torch.Generator) -> None:
        n = self.a.shape[0]
        if float(torch.rand((), generator=g)) < 0.5:
            self.batch_size = min(n, randint(g, 16, 128))

    def sample_batch(self, generator: torch.Generator) -> Tensor | None:
        if self.batch_size is None:
            return None
        return torch.randperm(self.a.shape[0], generator=generator)[: self.batch_size]

    def _data(self, batch: Tensor | None) -> tuple[Tensor, Tensor]:
        return (self.a, self.y) if batch is None else (self.a[batch], self.y[batch])


class LeastSquares(_Data):
    """``mean (a . x - y)^2 / 2`` with noisy targets of a random linear model."""

    f_min = 0.0

    def __init__(self, g: torch.Generator) -> None:
        d = randint(g, 10, 300)
        n = 2 * d + 20
        self.a = _features(g, n, d)
        self.y = self.a @ torch.randn(d, generator=g) + 0.1 * torch.randn(n, generator=g)
        self.x0 = torch.zeros(d)
        self._minibatch(g)

    def loss(self, X: Tensor, batch: Tensor | None = None) -> Tensor:
        a, y = self._data(batch)
        return 0.5 * ((X @ a.T - y) ** 2).mean(-1)


class Lasso(LeastSquares):
    """Least squares plus ``lam * |x|_1``: non-smooth at the sparse solution."""

    def __init__(self, g: torch.Generator) -> None:
        super().__init__(g)
        self.lam = log_uniform(g, 1e-3, 1e-1)

    def loss(self, X: Tensor, batch: Tensor | None = None) -> Tensor:
        return super().loss(X, batch) + self.lam * X.abs().sum(-1)


class RobustRegression(LeastSquares):
    """The mean absolute error of a linear model, with outliers in the targets."""

    def __init__(self, g: torch.Generator) -> None:
        super().__init__(g)
        outliers = torch.rand(self.y.shape, generator=g) < 0.1
        self.y = torch.where(outliers, 10 * torch.randn(self.y.shape, generator=g), self.y)

    def loss(self, X: Tensor, batch: Tensor | None = None) -> Tensor:
        a, y = self._data(batch)
        return (X @ a.T - y).abs().mean(-1)


class Huber(RobustRegression):
    """The Huber loss of a linear model (quadratic near 0, linear beyond ``delta``)."""

    def loss(self, X: Tensor, batch: Tensor | None = None) -> Tensor:
        a, y = self._data(batch)
        r = X @ a.T - y
        return F.huber_loss(r, torch.zeros_like(r), reduction="none", delta=1.0).mean(-1)


class StudentT(RobustRegression):
    """The Student-t negative log-likelihood ``mean log(1 + r^2 / nu)`` of a linear model:
    outliers barely pull on it, at the price of a nonconvex loss."""

    def __init__(self, g: torch.Generator) -> None:
        super().__init__(g)
        self.nu = log_uniform(g, 1.0, 10.0)

    def loss(self, X: Tensor, batch: Tensor | None = None) -> Tensor:
        a, y = self._data(batch)
        return torch.log1p((X @ a.T - y) ** 2 / self.nu).mean(-1)


class Logistic(_Data):
    """Logistic regression (labels from a noisy linear rule), optionally l2-regularised."""

    f_min = 0.0

    def __init__(self, g: torch.Generator) -> None:
        d = randint(g, 10, 200)
        n = 4 * d + 50
        self.a = _features(g, n, d)
        logits = self.a @ torch.randn(d, generator=g) * log_uniform(g, 1.0, 10.0)
        self.y = (torch.rand(n, generator=g) < torch.sigmoid(logits)).float()
        self.l2 = log_uniform(g, 1e-4, 1e-2)
        self.x0 = torch.zeros(d)
        self._minibatch(g)

    def loss(self, X: Tensor, batch: Tensor | None = None) -> Tensor:
        a, y = self._data(batch)
        z = X @ a.T
        bce = F.binary_cross_entropy_with_logits(z, y.expand_as(z), reduction="none")
        return bce.mean(-1) + 0.5 * self.l2 * (X ** 2).sum(-1)


class Hinge(Logistic):
    """A linear support-vector machine: mean hinge loss plus an l2 penalty (non-smooth)."""

    def loss(self, X: Tensor, batch: Tensor | None = None) -> Tensor:
        a, y = self._data(batch)
        margin = (X @ a.T) * (2 * y - 1)
        return (1 - margin).clamp(min=0).mean(-1) + 0.5 * self.l2 * (X ** 2).sum(-1)


class SquaredHinge(Logistic):
    """A linear support-vector machine with the squared hinge loss: smooth, unlike the hinge,
    but its curvature switches off wherever a margin passes 1."""

    def loss(self, X: Tensor, batch: Tensor | None = None) -> Tensor:
        a, y = self._data(batch)
        margin = (X @ a.T) * (2 * y - 1)
        return ((1 - margin).clamp(min=0) ** 2).mean(-1) + 0.5 * self.l2 * (X ** 2).sum(-1)


class Poisson(_Data):
    """Poisson regression (log link) on count data: the negative log-likelihood, up to a
    constant, whose curvature grows exponentially with the linear predictor."""

    f_min = -1e30  # unbounded below in general; replaced by the data's own bound below

    def __init__(self, g: torch.Generator) -> None:
        d = randint(g, 5, 100)
        n = 4 * d + 50
        self.a = _features(g, n, d) / math.sqrt(d)
        rate = torch.exp(self.a @ torch.randn(d, generator=g))
        self.y = torch.poisson(rate, generator=g)
        # The saturated model's loss bounds every model's from below.
        y = self.y
        self.f_min = float((y - torch.xlogy(y, y)).mean())
        self.x0 = torch.zeros(d)
        self._minibatch(g)

    def loss(self, X: Tensor, batch: Tensor | None = None) -> Tensor:
        a, y = self._data(batch)
        z = X @ a.T
        return (z.exp() - y * z).mean(-1)


class Softmax(_Data):
    """Multinomial logistic regression on Gaussian clusters; ``x`` holds a (k, d) matrix."""

    f_min = 0.0

    def __init__(self, g: torch.Generator) -> None:
        d, k = randint(g, 5, 50), randint(g, 3, 10)
        n = 30 * k
        centres = 2 * torch.randn(k, d, generator=g)
        self.y = torch.arange(n) % k
        self.a = centres[self.y] + torch.randn(n, d, generator=g) * log_uniform(g, 0.5, 3.0)
        self.k = k
        self.x0 = torch.zeros(k * d)
        self._minibatch(g)

    def loss(self, X: Tensor, batch: Tensor | None = None) -> Tensor:
        a, y = self._data(batch)
        W = X.reshape(*X.shape[:-1], self.k, a.shape[1])
        logits = torch.einsum("...kd,nd->...nk", W, a)
        return F.cross_entropy(logits.reshape(-1, self.k), y.repeat(X.shape[0]),
                               reduction="none").reshape(X.shape[0], -1).mean(-1)


class _MLP(_Data):
    """A one-hidden-layer tanh network over the rows of ``a``; ``x`` holds its weights."""

    def _build(self, g: torch.Generator, inputs: int, hidden: int, outputs: int) -> None:
        self.shapes = [(hidden, inputs), (hidden,), (outputs, hidden), (outputs,)]
        w1 = torch.randn(hidden, inputs, generator=g) / math.sqrt(inputs)
        w2 = torch.randn(outputs, hidden, generator=g) / math.sqrt(hidden)
        self.x0 = torch.cat([w1.flatten(), torch.zeros(hidden), w2.flatten(), torch.zeros(outputs)])

    def forward(self, X: Tensor, a: Tensor) -> Tensor:
        """Outputs (B, n, outputs) of the network of each row of ``X`` on inputs ``a``."""
        pieces, start = [], 0
        for shape in self.shapes:
            size = math.prod(shape)
            pieces.append(X[:, start:start + size].reshape(X.shape[0], *shape))
            start += size
        w1, b1, w2, b2 = pieces
        h = torch.tanh(torch.einsum("bhi,ni->bnh", w1, a) + b1[:, None, :])
        return torch.einsum("boh,bnh->bno", w2, h) + b2[:, None, :]


class MLPClassifier(_MLP):
    """Cross-entropy of a small MLP on Gaussian blobs (d ~ 50 to 1000)."""

    f_min = 0.0

    def __init__(self, g: torch.Generator) -> None:
        inputs, hidden, k = randint(g, 2, 16), randint(g, 4, 32), randint(g, 2, 5)
        n = 40 * k
        centres = 2 * torch.randn(k, inputs, generator=g)
        self.y = torch.arange(n) % k
        self.a = centres[self.y] + torch.randn(n, inputs, generator=g)
        self.k = k
        self._build(g, inputs, hidden, k)
        self._minibatch(g)

    def loss(self, X: Tensor, batch: Tensor | None = None) -> Tensor:
        a, y = self._data(batch)
        logits = self.forward(X, a)
        return F.cross_entropy(logits.reshape(-1, self.k), y.repeat(X.shape[0]),
                               reduction="none").reshape(X.shape[0], -1).mean(-1)


class MLPRegression(_MLP):
    """Mean squared error of a small MLP fitting a random smooth function of 1-4 inputs."""

    f_min = 0.0

    def __init__(self, g: torch.Generator) -> None:
        inputs, hidden = randint(g, 1, 4), randint(g, 8, 32)
        n = 200
        self.a = torch.rand(n, inputs, generator=g) * 4 - 2
        freq = torch.randn(inputs, 3, generator=g)
        self.y = torch.sin(self.a @ freq).sum(-1, keepdim=True)
        self._build(g, inputs, hidden, 1)
        self._minibatch(g)

    def loss(self, X: Tensor, batch: Tensor | None = None) -> Tensor:
        a, y = self._data(batch)
        return 0.5 * ((self.forward(X, a) - y) ** 2).mean((-1, -2))


class MatrixFactorization(Problem):
    """Fit a rank-r matrix ``M ~ U V^T`` from ``U`` and ``V`` (non-convex, symmetric)."""

    f_min = 0.0

    def __init__(self, g: torch.Generator) -> None:
        m, n, r = randint(g, 5, 30), randint(g, 5, 30), randint(g, 1, 4)
        self.M = torch.randn(m, r, generator=g) @ torch.randn(r, n, generator=g) / math.sqrt(r)
        self.m, self.n, self.r = m, n, r
        self.x0 = 0.3 * torch.randn((m + n) * r, generator=g)

    def loss(self, X: Tensor, batch: object = None) -> Tensor:
        U = X[:, : self.m * self.r].reshape(-1, self.m, self.r)
        V = X[:, self.m * self.r:].reshape(-1, self.n, self.r)
        return 0.5 * ((U @ V.mT - self.M) ** 2).mean((-1, -2))
