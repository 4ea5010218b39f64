"""Functions of the BBOB noiseless suite (COCO), from their published definitions.

Hansen, Finck, Ros, Auger, "Real-parameter black-box optimization benchmarking 2009:
noiseless functions definitions" (INRIA RR-6829). Each instance draws its dimension (2 to 40),
its rotations ``R`` and ``Q`` (Haar-random: QR of a Gaussian matrix, signs fixed), its optimum
``x_opt`` uniform in ``[-4, 4]^d`` and its start ``x0`` uniform in ``[-5, 5]^d``, all from the
generator. The suite's ``f_opt`` offset is left out, so the optimum value is 0 (``f_min``),
attained exactly at ``x_opt``: every transformation maps 0 to 0 and every penalty is 0 inside
``[-5, 5]^d``, where ``x_opt`` lies. Rows of ``X`` are points: ``R (x - x_opt)`` is
``(X - x_opt) @ R.T``. Points and losses are float32; the losses are computed in float64
(rotations held so), so that a batch and a single row round alike: in float32, gemm and gemv
round differently, and weights of 1e6 and steep penalties make that 1e-5 of the value.

Kept from the definitions: the oscillation ``T_osz``, the asymmetry ``T_asy^beta``, the
conditioning ``Lambda^alpha`` and the boundary penalty ``f_pen``, where each function uses
them. Simplifications are said in each class.

Not here: the Weierstrass function (f16) and Lunacek's bi-Rastrigin (f24). Their ripples (terms
up to ``3^11``; a Rastrigin under ``Lambda^100``) make them change by 1e-5 to 1e-4 of their
value across one float32 ulp of ``x``, so that ``x`` and ``(s x) / s`` (an augmented
instance), or a batched and a one-row call, disagree beyond a rounding tolerance.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Problem
from .synthetic import randint

__all__ = ["AttractiveSector", "BentCigar", "DifferentPowers", "Discus", "SchaffersF7",
           "StepEllipsoid", "conditioning", "penalty", "rotation", "t_asy", "t_osz"]


def rotation(g: torch.Generator, d: int) -> Tensor:
    """A Haar-random ``d x d`` rotation: QR of a Gaussian matrix, with the column signs that
    QR's convention would otherwise bias fixed by the signs of ``R``'s diagonal."""
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g))
    return q * torch.sign(torch.diagonal(r))


def conditioning(alpha: float, d: int) -> Tensor:
    """The diagonal of BBOB's ``Lambda^alpha``: ``alpha ** (i / (2 (d - 1)))``, i = 0..d-1."""
    return alpha ** (0.5 * torch.arange(d, dtype=torch.float32) / max(d - 1, 1))


def t_osz(x: Tensor) -> Tensor:
    """BBOB's oscillation ``T_osz``, elementwise: ``sign(x) exp(h + 0.049 (sin(c1 h) +
    sin(c2 h)))`` with ``h = log|x|``; 0 at 0. Smooth, monotone, near the identity."""
    positive = x > 0
    # log of 1 where x == 0: the branch torch.where drops must not put nan into gradients.
    h = torch.where(x != 0, x.abs(), torch.ones_like(x)).log()
    c1 = torch.where(positive, 10.0, 5.5)
    c2 = torch.where(positive, 7.9, 3.1)
    return x.sign() * torch.exp(h + 0.049 * (torch.sin(c1 * h) + torch.sin(c2 * h)))


def t_asy(x: Tensor, beta: float) -> Tensor:
    """BBOB's asymmetry ``T_asy^beta``: ``x_i ** (1 + beta i / (d - 1) sqrt(x_i))`` where
    ``x_i > 0`` (i = 0..d-1 along the last axis), ``x_i`` elsewhere."""
    d = x.shape[-1]
    positive = x > 0
    safe = torch.where(positive, x, torch.ones_like(x))
    power = 1 + beta * torch.arange(d, dtype=x.dtype) / max(d - 1, 1) * safe.sqrt()
    return torch.where(positive, safe ** power, x)


def penalty(X: Tensor) -> Tensor:
    """BBOB's ``f_pen``: ``sum max(0, |x_i| - 5)^2`` per row, 0 inside ``[-5, 5]^d``."""
    return ((X.abs() - 5).clamp(min=0) ** 2).sum(-1)


def _powers(d: int, top: float) -> Tensor:
    """``top ** (i / (d - 1))``, i = 0..d-1: the per-coordinate weights of an ellipsoid."""
    return top ** (torch.arange(d, dtype=torch.float32) / max(d - 1, 1))


class _BBOB(Problem):
    """A BBOB instance: dimension, rotations ``R`` and ``Q``, ``x_opt`` and ``x0``."""

    f_min = 0.0

    def __init__(self, g: torch.Generator, dim: int | None = None) -> None:
        d = dim or randint(g, 2, 40)
        self.R = rotation(g, d).double()
        self.Q = rotation(g, d).double()
        self.x_opt = 8 * torch.rand(d, generator=g) - 4
        self.x0 = 10 * torch.rand(d, generator=g) - 5

    def loss(self, X: Tensor, batch: object = None) -> Tensor:
        return self._value(X.double()).to(X.dtype)

    def _value(self, X: Tensor) -> Tensor:
        """The losses of the rows of ``X`` (float64)."""
        raise NotImplementedError

    def _shifted(self, X: Tensor) -> Tensor:
        """``R (x - x_opt)`` for every row."""
        return (X - self.x_opt) @ self.R.T


class BentCigar(_BBOB):
    """f12, bent cigar: ``z_1^2 + 1e6 sum_{i>1} z_i^2``, ``z = R T_asy^0.5(R (x - x_opt))``.
    A ridge: one direction a million times flatter than the others, bent by the asymmetry."""

    def _value(self, X: Tensor) -> Tensor:
        z = t_asy(self._shifted(X), 0.5) @ self.R.T
        return z[..., 0] ** 2 + 1e6 * (z[..., 1:] ** 2).sum(-1)


class Discus(_BBOB):
    """f11, discus: ``1e6 z_1^2 + sum_{i>1} z_i^2``, ``z = T_osz(R (x - x_opt))``. One
    direction a million times steeper than the others, with small local oscillations."""

    def _value(self, X: Tensor) -> Tensor:
        z = t_osz(self._shifted(X))
        return 1e6 * z[..., 0] ** 2 + (z[..., 1:] ** 2).sum(-1)


class DifferentPowers(_BBOB):
    """f14, different powers: ``sqrt(sum |z_i|^(2 + 4 i / (d - 1)))``, ``z = R (x - x_opt)``.
    Sensitivities that differ by the power of each (rotated) coordinate, flatter and flatter
    as the optimum nears."""

    def _value(self, X: Tensor) -> Tensor:
        z = self._shifted(X)
        half = 1 + 2 * torch.arange(z.shape[-1], dtype=z.dtype) / max(z.shape[-1] - 1, 1)
        # The norm of |z|^(p/2), not sqrt of the sum: the same value, and no nan gradient at 0.
        return torch.linalg.vector_norm(z.abs() ** half, dim=-1)


class AttractiveSector(_BBOB):
    """f6, attractive sector: ``T_osz(sum (s_i z_i)^2)^0.9``, ``z = Q Lambda^10 R (x - x_opt)``,
    ``s_i = 100`` where ``z_i`` and ``x_opt_i`` have the same sign, else 1. Highly asymmetric:
    only one orthant around the optimum is shallow (its 'sector')."""

    def _value(self, X: Tensor) -> Tensor:
        z = (self._shifted(X) * conditioning(10.0, X.shape[-1])) @ self.Q.T
        s = torch.where(z * self.x_opt > 0, 100.0, 1.0)
        return t_osz(((s * z) ** 2).sum(-1)) ** 0.9


class StepEllipsoid(_BBOB):
    """f7, step ellipsoid: ``0.1 max(|z^_1| / 1e4, sum 100^(i / (d - 1)) z_i^2) + f_pen(x)``,
    ``z^ = Lambda^10 R (x - x_opt)``, ``z = Q round(z^)`` with ``z^`` rounded to integers where
    ``|z^_i| > 0.5`` and to tenths elsewhere. Piecewise constant (plateaus 0.3 to 1 wide in
    ``x``) but for the small ``|z^_1|`` term that tilts the plateau around the optimum: a radius
    ``mu`` well above float rounding is needed (the family gives one)."""

    def _value(self, X: Tensor) -> Tensor:
        d = X.shape[-1]
        zh = self._shifted(X) * conditioning(10.0, d)
        rounded = torch.where(zh.abs() > 0.5, torch.floor(0.5 + zh),
                              torch.floor(0.5 + 10 * zh) / 10)
        z = rounded @ self.Q.T
        value = torch.maximum(zh[..., 0].abs() / 1e4, (_powers(d, 100.0) * z ** 2).sum(-1))
        return 0.1 * value + penalty(X)


class SchaffersF7(_BBOB):
    """f17, Schaffers F7: ``(mean_i sqrt(s_i) (1 + sin^2(50 s_i^0.2)))^2 + 10 f_pen(x)`` over
    ``s_i = sqrt(z_i^2 + z_{i+1}^2)``, ``z = Lambda^10 Q T_asy^0.5(R (x - x_opt))``. Many
    local minima on rings around the optimum, whose depth and spacing change with distance."""

    def _value(self, X: Tensor) -> Tensor:
        z = (t_asy(self._shifted(X), 0.5) @ self.Q.T) * conditioning(10.0, X.shape[-1])
        s = torch.hypot(z[..., :-1], z[..., 1:])
        root = s.sqrt()
        inner = (root + root * torch.sin(50 * s ** 0.2) ** 2).mean(-1)
        return inner ** 2 + 10 * penalty(X)
