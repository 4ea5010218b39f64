"""Guided ES directions: a layout's directions pulled towards a few guiding vectors."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Guide"]

# Separates the stream of a guided direction's subspace coefficients from its own seed's.
_GUIDE_SALT = 0x5DEECE66D


@dataclass(frozen=True)
class Guide:
    """Guided ES directions (Maheswaranathan et al., 2019) around a few guiding vectors.

    ``u = sqrt(alpha) z + sqrt(1 - alpha) Q z_k``, rescaled to the norm of ``z``, where ``z`` is
    the layout's direction (Gaussian or Rademacher), ``Q`` an orthonormal basis (``basis``: k
    vectors, each a list of tensors shaped like the layout) and ``z_k ~ N(0, I_k)`` is drawn
    from the query's seed (Gaussian whatever the layout's kind).
    """

    basis: list[list[Tensor]]
    alpha: float = 0.5

    @staticmethod
    def orthonormal(vectors: Sequence[Sequence[Tensor]], alpha: float = 0.5) -> Guide:
        """A Guide over the span of ``vectors`` (Gram-Schmidt; negligible ones are dropped)."""
        basis: list[list[Tensor]] = []
        for v in vectors:
            w = [t.detach().to(torch.float64).reshape(-1) for t in v]
            for q in basis:
                proj = sum(float((a * b).sum()) for a, b in zip(w, q))
                w = [a - proj * b for a, b in zip(w, q)]
            norm = math.sqrt(sum(float((a * a).sum()) for a in w))
            scale = math.sqrt(sum(float((t.double() ** 2).sum()) for t in v))
            if norm > 1e-6 * max(scale, 1e-30):
                basis.append([a / norm for a in w])
        return Guide(basis, alpha)

    def flat(self) -> Guide:
        """The same guide over the concatenation of the layout's tensors."""
        return Guide([[torch.cat([t.reshape(-1) for t in q])] for q in self.basis], self.alpha)

    def apply(self, u: list[Tensor], seed: int) -> None:
        """Turn the direction ``u`` (flat or shaped pieces) into the guided direction, in place."""
        zk = torch.randn(len(self.basis), dtype=torch.float64,
                         generator=torch.Generator().manual_seed(seed ^ _GUIDE_SALT))
        # The rescaling is a constant to autograd (GuidedES is an ablation, never meta-trained).
        z_norm = math.sqrt(sum(float((t.detach().double() ** 2).sum()) for t in u))
        for t in u:
            t.mul_(math.sqrt(self.alpha))
        for coeff, q in zip(zk.tolist(), self.basis):
            for t, piece in zip(u, q):
                t.add_(piece.view(t.shape).to(t.dtype), alpha=math.sqrt(1 - self.alpha) * coeff)
        u_norm = math.sqrt(sum(float((t.detach().double() ** 2).sum()) for t in u))
        for t in u:
            t.mul_(z_norm / u_norm)
