"""Paper eq. 5: a loss whose backward pass is a coordinatewise central difference.

For meta-training on objectives with no gradients at all: the forward pass only queries the
loss, and the backward pass estimates d loss / d X with ``2d`` queries per row of ``X``, all in
one batched call.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["fd_loss"]


class _CentralDifference(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, X: Tensor, fn: Callable[[Tensor], Tensor], mu: float) -> Tensor:
        ctx.save_for_backward(X)
        ctx.fn, ctx.mu = fn, mu
        with torch.no_grad():
            return fn(X.detach())

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None, None]:
        (X,) = ctx.saved_tensors
        B, d = X.shape
        step = ctx.mu * torch.eye(d, dtype=X.dtype, device=X.device)
        with torch.no_grad():
            rows = torch.cat([X[:, None, :] + step, X[:, None, :] - step], dim=1)
            values = ctx.fn(rows.reshape(B * 2 * d, d)).view(B, 2, d)
            grad = (values[:, 0] - values[:, 1]) / (2 * ctx.mu)
        return grad_out[:, None] * grad, None, None


def fd_loss(fn: Callable[[Tensor], Tensor], mu: float = 1e-3) -> Callable[[Tensor], Tensor]:
    """``fn`` (batched, ``(B, d) -> (B,)``) with its gradient replaced by eq. 5."""
    def wrapped(X: Tensor) -> Tensor:
        return _CentralDifference.apply(X, fn, mu)  # type: ignore[no-any-return]
    return wrapped
