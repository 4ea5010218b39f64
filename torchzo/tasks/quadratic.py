"""A seeded convex quadratic: the smallest problem on which every optimizer can be checked."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Problem

__all__ = ["Quadratic"]


class Quadratic(Problem):
    """``f(x) = 0.5 (x - x*)^T H (x - x*)`` with a random SPD ``H`` of condition ``cond``.

    The eigenvalues of ``H`` are log-spaced in ``[1/cond, 1]``, so the minimum is 0 at ``x*``.
    Everything is drawn from ``seed``; ``x0`` is a fixed start at unit distance scale. The
    problem is deterministic; calling it is :meth:`loss` on one point or a batch.
    """

    def __init__(self, dim: int = 50, cond: float = 10.0, seed: int = 0,
                 dtype: torch.dtype = torch.float64) -> None:
        g = torch.Generator().manual_seed(seed)
        basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=dtype))
        eig = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), dim, dtype=dtype)
        self.H = basis @ torch.diag(eig) @ basis.T
        self.x_star = torch.randn(dim, generator=g, dtype=dtype)
        self.x0 = torch.randn(dim, generator=g, dtype=dtype) + self.x_star

    def loss(self, X: Tensor, batch: object = None) -> Tensor:
        """The loss of each row of ``X`` (B, d), or at one point ``X`` (d,), in ``H``'s dtype."""
        r = X.to(self.H.dtype) - self.x_star
        return 0.5 * ((r @ self.H) * r).sum(-1)

    def __call__(self, x: Tensor) -> Tensor:
        """The loss at ``x``; ``x`` of shape ``(d,)`` or a batch ``(B, d)``."""
        return self.loss(x)

    def grad(self, x: Tensor) -> Tensor:
        """The exact gradient at ``x`` (for tests of the estimators)."""
        return (x.to(self.H.dtype) - self.x_star) @ self.H
