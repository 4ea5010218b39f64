"""Finite-difference schemes of the ZO gradient estimator.

With ``n`` directions ``u_i`` and smoothing ``mu`` (paper eq. 1 and its two-sided variants):

- ``forward``:    g = 1/(n mu)  sum_i [f(x + mu u_i) - f(x)] u_i,          n = q, q + 1 queries
- ``central``:    g = 1/(2n mu) sum_i [f(x + mu u_i) - f(x - mu u_i)] u_i, n = q, 2q + 1 queries
- ``antithetic``: the central formula over n = q/2 directions, each queried at +-mu: the same
  q + 1 queries as ``forward``, with the odd-order error terms cancelled.

``f(x)`` is always queried once (it is the loss the optimizer step returns); the two-sided
schemes do not otherwise use it. No factor ``d`` appears: directions have unit variance per
coordinate (Gaussian or Rademacher, see :mod:`torchzo.oracle.directions`), not unit norm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

__all__ = ["SCHEMES", "Scheme", "default_mu"]

SCHEMES = ("forward", "central", "antithetic")

T = TypeVar("T")


@dataclass(frozen=True)
class Scheme:
    """One estimator configuration: ``q`` queries per step in the chosen scheme."""

    name: str
    q: int

    def __post_init__(self) -> None:
        if self.name not in SCHEMES:
            raise ValueError(f"estimator must be one of {SCHEMES}, got {self.name!r}")
        if isinstance(self.q, bool) or not isinstance(self.q, int) or self.q < 1:
            raise ValueError(f"q must be a positive int, got {self.q!r}")
        if self.name == "antithetic" and self.q % 2:
            raise ValueError(f"the antithetic estimator needs an even q, got {self.q}")

    @property
    def directions(self) -> int:
        return self.q // 2 if self.name == "antithetic" else self.q

    @property
    def signs(self) -> tuple[int, ...]:
        """The perturbation signs queried along each direction."""
        return (1,) if self.name == "forward" else (1, -1)

    @property
    def queries(self) -> int:
        """Function evaluations per estimate, f(x) included."""
        return self.directions * len(self.signs) + 1

    def coefficient(self, f0: T, values: tuple[T, ...], mu: float | Tensor) -> T:
        """Weight of a direction in the estimate, from f(x) and its queries along it.

        ``values`` holds f(x + s mu u) for each s in ``signs``. Works on floats and tensors alike,
        so the same formula serves the optimizers and differentiable meta-training.
        """
        n = self.directions
        if self.name == "forward":
            return (values[0] - f0) / (n * mu)  # type: ignore[operator]
        return (values[0] - values[1]) / (2 * n * mu)  # type: ignore[operator]


def default_mu(dtype: torch.dtype) -> float:
    """The smallest power of ten not below ``sqrt(eps)`` of ``dtype``.

    ``sqrt(eps)`` balances truncation and rounding error of a forward difference on a function of
    unit scale. float32 gives 1e-3, float64 1e-7, bfloat16 and float16 1e-1.
    """
    eps = torch.finfo(dtype).eps
    return 10.0 ** math.ceil(math.log10(math.sqrt(eps)) - 1e-12)
