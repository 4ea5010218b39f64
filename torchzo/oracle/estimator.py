"""The ZO gradient estimator, over live parameters (closure) or a batched function ``f(X)``.

Both paths sample the same directions from the same seeds, so for the same seeds they estimate
the same vector (up to summation order). Neither ever holds more than a bounded number of
directions at once: the closure path one, the batched path one chunk.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .closure import ClosureError, ParameterBackup, call_closure
from .directions import Guide, Layout
from .schemes import Scheme

__all__ = ["Batched", "estimate_batched", "estimate_closure"]


@dataclass(frozen=True)
class Batched:
    """A batched objective: ``fn(X)`` maps ``X`` of shape ``(B, d)`` to ``B`` losses.

    ``d`` is the number of elements of all optimized parameters, concatenated in order.
    ``chunk_size`` bounds ``B`` (and so memory), except that a call always holds every row of
    at least one direction (two with a two-sided estimator, plus f(x) in the first call);
    ``None`` evaluates all queries of a step in one call.
    """

    fn: Callable[[Tensor], Tensor]
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        if self.chunk_size is not None and (isinstance(self.chunk_size, bool) or
                                            not isinstance(self.chunk_size, int) or
                                            self.chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {self.chunk_size!r}")


def estimate_closure(
    closure: Callable[[], Any],
    backup: ParameterBackup,
    index: Sequence[int],
    layout: Layout,
    seeds: Sequence[int],
    scheme: Scheme,
    mu: float,
    f0: float,
    scale: Sequence[Tensor] | None = None,
    guide: Guide | None = None,
) -> list[Tensor]:
    """Estimate the gradient w.r.t. ``backup.params[i] for i in index`` by perturbing in place.

    The parameters are left perturbed by the last query; the caller restores them (once, after
    all estimates of a step). ``f0`` is the loss at the unperturbed point.
    """
    params = backup.params
    g = layout.zeros()
    for k, seed in enumerate(seeds):
        u = layout.sample(seed, scale, guide)
        values = []
        for sign in scheme.signs:
            backup.perturb(index, u, sign * mu)
            where = f"direction {k + 1} ({'+' if sign > 0 else '-'}mu)"
            values.append(call_closure(closure, params, where)[1])
        torch._foreach_add_(g, u, alpha=scheme.coefficient(f0, tuple(values), mu))
    return g


def _check_values(values: Tensor, rows: int, first_query: int) -> None:
    if not isinstance(values, Tensor) or values.shape != (rows,):
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ClosureError(f"the batched objective must return shape ({rows},), got {shape}")
    bad = ~torch.isfinite(values.detach())
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ClosureError(
            f"the batched objective returned a non-finite loss at query {first_query + row}")


def estimate_batched(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    seeds: Sequence[int],
    scheme: Scheme,
    mu: float,
    scale: Tensor | None = None,
    chunk_size: int | None = None,
    guide: Guide | None = None,
) -> tuple[Tensor, Tensor]:
    """Estimate the gradient of ``fn`` at the flat point ``x`` with batched queries.

    Returns ``(f(x), g)``. Differentiable: with ``x``/``scale`` requiring grad and ``fn``
    differentiable, autograd flows through the queried values and the directions alike (this is
    what meta-training backpropagates through).
    """
    if x.dim() != 1:
        raise ValueError(f"x must be a flat vector, got shape {tuple(x.shape)}")
    layout = Layout([x])
    signs = scheme.signs
    rows_per_call = chunk_size or scheme.queries
    g = torch.zeros_like(x, dtype=layout.blocks[0].dtype)
    f0: Tensor | None = None
    scale_rows = None if scale is None else [scale]
    flat_guide = None if guide is None else guide.flat()
    start = 0
    while start < len(seeds):
        base = f0 is None
        n = max(1, (rows_per_call - int(base)) // len(signs))
        chunk = seeds[start:start + n]
        u = torch.stack([layout.sample(s, scale_rows, flat_guide)[0].clone() for s in chunk])
        rows = [x + (sign * mu) * u for sign in signs]
        if base:
            rows.insert(0, x.unsqueeze(0))
        X = torch.cat(rows)
        values = fn(X)
        _check_values(values, X.shape[0], 1 + start * len(signs) - int(base))
        if base:
            f0, values = values[0], values[1:]
        assert f0 is not None
        per_sign = values.view(len(signs), len(chunk))
        coeff = scheme.coefficient(f0, tuple(per_sign), mu)
        g = g + coeff.to(u.dtype) @ u
        start += len(chunk)
    if f0 is None:
        f0 = fn(x.unsqueeze(0))
        _check_values(f0, 1, 0)
        f0 = f0[0]
    return f0, g
