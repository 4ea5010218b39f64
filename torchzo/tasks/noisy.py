"""Objectives whose every query sees its own noise, keyed by the step and by the point.

Unlike a minibatch (one per step, shared by all of the step's queries), the noise here differs
from query to query. ``sample_batch`` draws the step's seed (a 0-dim int64 tensor: a tensor,
as every family's batch is); ``loss(X, seed)`` gives each row of ``X`` a noise value that is a
function of that seed and of the row's float32 bits, and of nothing else:

- distinct rows of one step see independent noise (4-wise, :func:`row_uniforms`);
- the same seed and the same row give the same value, so a step is reproducible, and a row's
  value does not depend on the other rows of its call: the closure path (one row a call), the
  batched path (a step's rows in one call) and a population (all members' rows in one call)
  see the same noise. A counter of calls, or noise drawn in row order, would not: the noise
  would then depend on how the optimizer groups its queries;
- two queries of one step at bit-identical points see the same value (a repeated evaluation
  is not a fresh sample); the next step's seed redraws everything.

With ``batch=None`` (the reported objective) the loss is noiseless. The noise is a constant
factor or term of each row's loss, so autograd gradients are those of the noiseless function
times (or plus) it; finite differences of a noisy loss (``grad_mode="fd"``) see the noise.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Problem
from .bbob import rotation
from .synthetic import log_uniform, randint

__all__ = ["NoisyEllipsoid", "NoisyRosenbrock", "row_normals", "row_uniforms"]

_PRIME = 2**31 - 1


def row_uniforms(X: Tensor, seed: Tensor | int, count: int) -> Tensor:
    """``count`` uniforms in ``(0, 1)`` per row of ``X`` (B, d) for the step ``seed``:
    shape (B, count), float64.

    A generator seeded with ``seed`` draws, per uniform, a random affine hash ``h(v) = (a . v
    + b) mod p``, ``p = 2^31 - 1``, of the row's float32 bits as ``2 d`` 16-bit limbs ``v``
    (distinct rows, distinct ``v``), and a random cubic ``c(t) mod p`` applied to it. Random
    cubics over ``Z_p`` are a 4-wise independent family: the uniforms of any four rows whose
    hashes differ are independent (on a grid of ``2^-31``), and two distinct rows' hashes
    collide with probability ``1 / p``. The affine stage alone would be only pairwise
    independent, and within one step it maps a fixed change of the bits (one ulp of one
    coordinate, a sign flip) to a fixed shift of every row's uniform; the cubic breaks that
    up. All in exact int64 arithmetic (no product exceeds ``2^62``), one vectorised pass for
    all rows (a population queries hundreds a step).
    """
    d = X.shape[-1]
    g = torch.Generator().manual_seed(int(seed))
    a = torch.randint(0, _PRIME, (count, 2 * d), generator=g).to(X.device)
    c = torch.randint(0, _PRIME, (5, count), generator=g).to(X.device)
    bits = X.detach().to(torch.float32).contiguous().view(torch.int32).to(torch.int64)
    bits = bits & 0xFFFFFFFF
    limbs = torch.cat([bits >> 16, bits & 0xFFFF], -1)
    t = (((limbs[:, None, :] * a) % _PRIME).sum(-1) + c[0]) % _PRIME  # (B, count)
    h = c[1].expand_as(t)
    for coefficient in c[2:]:  # Horner: ((c1 t + c2) t + c3) t + c4
        h = (h * t + coefficient) % _PRIME
    return (h.to(torch.float64) + 0.5) / _PRIME


def row_normals(X: Tensor, seed: Tensor | int) -> Tensor:
    """One standard normal per row of ``X`` for the step ``seed`` (Box-Muller of two of
    :func:`row_uniforms`): shape (B,), float64."""
    u = row_uniforms(X, seed, 2)
    return torch.sqrt(-2 * torch.log(u[:, 0])) * torch.cos(2 * math.pi * u[:, 1])


class _RowNoise(Problem):
    """A problem whose batch is the step's noise seed."""

    def sample_batch(self, generator: torch.Generator) -> Tensor:
        return torch.randint(0, 2**62, (), generator=generator)


class NoisyEllipsoid(_RowNoise):
    """A rotated ellipsoid ``sum cond^(i / (d - 1)) z_i^2``, ``z = R (x - x_opt)``, each query
    multiplied by BBOB's Gaussian noise ``exp(beta N(0, 1))`` (the noisy suite's f_GN, without
    its 1e-8 floor): a relative noise, the same signal-to-noise ratio at every distance.

    d from 2 to 40, ``cond`` log-uniform in ``[1, 1e4]`` (a sphere at one end), ``beta``
    log-uniform in ``[0.01, 1]`` (the suite's moderate and severe levels), ``x_opt`` uniform
    in ``[-4, 4]^d``, ``x0`` in ``[-5, 5]^d``. The optimum is 0 at ``x_opt``, noisy or not.
    """

    f_min = 0.0

    def __init__(self, g: torch.Generator) -> None:
        d = randint(g, 2, 40)
        self.cond = log_uniform(g, 1.0, 1e4)
        self.beta = log_uniform(g, 0.01, 1.0)
        # float64, as the BBOB functions' (a batch and a row round alike): see torchzo.tasks.bbob.
        self.R = rotation(g, d).double()
        self.x_opt = 8 * torch.rand(d, generator=g) - 4
        self.x0 = 10 * torch.rand(d, generator=g) - 5
        self.weights = self.cond ** (torch.arange(d, dtype=torch.float32) / (d - 1))

    def loss(self, X: Tensor, batch: Tensor | None = None) -> Tensor:
        z = (X.double() - self.x_opt) @ self.R.T
        f = (self.weights * z ** 2).sum(-1).to(X.dtype)
        if batch is None:
            return f
        return f * torch.exp(self.beta * row_normals(X, batch)).to(f.dtype)


class NoisyRosenbrock(_RowNoise):
    """BBOB's shifted Rosenbrock (f8), ``sum 100 (z_i^2 - z_{i+1})^2 + (z_i - 1)^2`` with
    ``z = max(1, sqrt(d) / 8) (x - x_opt) + 1``, plus ``sigma U`` on each query, ``U`` uniform
    in ``[0, 1)``: an absolute noise, which swamps the differences a radius sees as the
    optimum nears (where a ZO method must average or stall).

    d from 2 to 40, ``sigma`` log-uniform in ``[0.01, 10]``, ``x_opt`` uniform in ``[-3, 3]^d``
    (the suite's range for f8), ``x0`` in ``[-5, 5]^d``. The noise is never negative, so
    ``f_min = 0`` (the optimum, at ``x_opt``) bounds the noisy losses too; its mean
    ``sigma / 2`` lifts the level, not the minimiser.
    """

    f_min = 0.0

    def __init__(self, g: torch.Generator) -> None:
        d = randint(g, 2, 40)
        self.sigma = log_uniform(g, 0.01, 10.0)
        self.x_opt = 6 * torch.rand(d, generator=g) - 3
        self.x0 = 10 * torch.rand(d, generator=g) - 5
        self.scale = max(1.0, math.sqrt(d) / 8)

    def loss(self, X: Tensor, batch: Tensor | None = None) -> Tensor:
        z = self.scale * (X - self.x_opt) + 1
        a, b = z[..., :-1], z[..., 1:]
        f = (100 * (a * a - b) ** 2 + (a - 1) ** 2).sum(-1)
        if batch is None:
            return f
        return f + (self.sigma * row_uniforms(X, batch, 1)[:, 0]).to(f.dtype)
