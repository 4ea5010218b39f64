"""The oracle for a population: one estimate per row of ``X``, every query in one call.

Evolution-strategies meta-training runs many weight sets of a learned optimizer on the same
problem at once: each member has its own point (a row of ``X``), its own direction scales
and radius, but all share the step's seeds (common random numbers: members differ by their
weights, not by their luck). A member's estimate is the one :func:`estimate_batched` gives at
its row with the same seeds, up to float rounding (tested).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .closure import check_losses
from .directions import Layout
from .query import Query

__all__ = ["estimate_population"]


def estimate_population(fn: Callable[[Tensor], Tensor], X: Tensor, query: Query,
                        finite: bool = True) -> tuple[Tensor, Tensor]:
    """``(f(X), g)`` for the rows of ``X`` (P, d): shapes (P,) and (P, d).

    ``query``: a flat query over a row of ``X``, whose ``mu`` is one radius or one per member
    (P,) and whose ``scale`` is ``None`` (unscaled directions) or one ``(P, d)`` tensor of
    per-member direction scales; its directions are those of ``Layout([X[0]], query.kind)``.
    ``fn`` gets all ``P * queries`` rows at once. ``finite=False`` lets non-finite losses
    through (a diverged member of a population is the trainer's to score, not an error).
    """
    if X.dim() != 2:
        raise ValueError(f"X must be (members, d), got shape {tuple(X.shape)}")
    P, d = X.shape
    scheme, seeds = query.scheme, query.seeds
    z = Layout([X[0]], query.kind).rows(seeds, 0, len(seeds))      # (n, d)
    u = z if query.scale is None else query.scale[0][:, None, :].to(z.dtype) * z  # or (P, n, d)
    radius = torch.as_tensor(query.mu, dtype=X.dtype, device=X.device).reshape(-1, 1, 1)
    rows = [X[:, None, :]] + [X[:, None, :] + (sign * radius) * u for sign in scheme.signs]
    queries = torch.cat([r.expand(P, -1, d) for r in rows], 1)  # (P, 1 + S n, d)
    values = fn(queries.reshape(-1, d))
    check_losses(values, queries.shape[0] * queries.shape[1], 0, finite=finite)
    values = values.reshape(P, -1)
    f0, rest = values[:, 0], values[:, 1:].reshape(P, len(scheme.signs), len(seeds))
    coeff = scheme.coefficient(f0[:, None], tuple(rest.unbind(1)), radius.reshape(-1, 1))
    g = torch.einsum("pn,pnd->pd", coeff.to(u.dtype), u.expand(P, -1, d))
    return f0, g
