"""The oracle for a population: one estimate per row of ``X``, every query in one call.

Evolution-strategies meta-training runs many weight sets of a learned optimizer on the same
problem at once: each member has its own point (a row of ``X``), its own direction scales
and radius, but all share the step's seeds (common random numbers: members differ by their
weights, not by their luck). A member's estimate is the one :func:`estimate_batched` gives at
its row with the same seeds, up to float rounding (tested).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .closure import check_losses
from .directions import Layout
from .schemes import Scheme

__all__ = ["estimate_population"]


def estimate_population(fn: Callable[[Tensor], Tensor], X: Tensor, seeds: Sequence[int],
                        scheme: Scheme, mu: float | Tensor, scale: Tensor | None = None,
                        finite: bool = True, *, kind: str = "gaussian"
                        ) -> tuple[Tensor, Tensor]:
    """``(f(X), g)`` for the rows of ``X`` (P, d): shapes (P,) and (P, d).

    ``mu``: one radius, or one per member (P,); ``scale``: per-member direction scales (P, d),
    or ``None`` for unscaled directions; ``kind``: the directions' kind (one of
    :data:`~torchzo.oracle.KINDS`: those of ``Layout([X[0]], kind)``). ``fn`` gets all ``P *
    queries`` rows at once. ``finite=False`` lets non-finite losses through (a diverged member
    of a population is the trainer's to score, not an error).
    """
    if X.dim() != 2:
        raise ValueError(f"X must be (members, d), got shape {tuple(X.shape)}")
    P, d = X.shape
    z = Layout([X[0]], kind).rows(seeds, 0, len(seeds))           # (n, d)
    u = z if scale is None else scale[:, None, :].to(z.dtype) * z  # (n, d) or (P, n, d)
    radius = torch.as_tensor(mu, dtype=X.dtype, device=X.device).reshape(-1, 1, 1)
    rows = [X[:, None, :]] + [X[:, None, :] + (sign * radius) * u for sign in scheme.signs]
    queries = torch.cat([r.expand(P, -1, d) for r in rows], 1)  # (P, 1 + S n, d)
    values = fn(queries.reshape(-1, d))
    check_losses(values, queries.shape[0] * queries.shape[1], 0, finite=finite)
    values = values.reshape(P, -1)
    f0, rest = values[:, 0], values[:, 1:].reshape(P, len(scheme.signs), len(seeds))
    coeff = scheme.coefficient(f0[:, None], tuple(rest.unbind(1)), radius.reshape(-1, 1))
    g = torch.einsum("pn,pnd->pd", coeff.to(u.dtype), u.expand(P, -1, d))
    return f0, g
