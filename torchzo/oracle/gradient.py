"""The oracle's one entry point: a step's gradient estimate, whatever the objective and ranks.

:func:`estimate_gradient` picks the path: a :class:`~torchzo.oracle.Batched` objective is
queried in batched calls, a closure with the parameters perturbed in place (and restored
bit-exactly afterwards, or on any error), and either may share its queries among the ranks of
a process group. Tensors are estimated in :class:`Part` s: those of a part are perturbed
together and share one estimate; ``f(x)`` is queried once per step. For each part the seeds
are drawn first, then its query distribution is asked for: the order every path (and
meta-training) uses.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .closure import ParameterBackup, Scratch, call_closure
from .directions import Guide, Layout, check_kind, draw_seeds
from .distributed import (
    ClosureEstimate,
    Ranks,
    estimate_batched_sharded,
    estimate_closure_sharded,
    ranks_for,
)
from .estimator import Batched, estimate_batched, estimate_closure
from .schemes import Scheme

__all__ = ["Distribution", "Estimate", "Part", "estimate_gradient"]

#: ``distribution(index)``: per-coordinate direction scales for the tensors at ``index``
#: (``None``: all ones) and a GuidedES subspace (``None``: none). Called once per part, right
#: after its seeds are drawn.
Distribution = Callable[[Sequence[int]], tuple[Sequence[Tensor] | None, Guide | None]]


@dataclass(frozen=True)
class Part:
    """Tensors (positions in the parameter list) perturbed together, with their estimator and
    the kind of their directions (one of :data:`~torchzo.oracle.KINDS`)."""

    index: tuple[int, ...]
    scheme: Scheme
    mu: float
    kind: str = "gaussian"

    def __post_init__(self) -> None:
        check_kind(self.kind)


@dataclass(frozen=True)
class Estimate:
    """A step's estimate: the objective's value at x as it returned it (the closure's result,
    or a 0-dim tensor from a batched objective), one estimate per parameter (shaped like it),
    and the queries spent."""

    loss: Any
    grads: list[Tensor]
    queries: int
    #: The closure paths' exact copy of the parameters at x, which they are restored to on
    #: return: a caller that needs one too (to undo an update) can keep it instead of copying.
    backup: ParameterBackup | None = None


def _isotropic(index: Sequence[int]) -> tuple[None, None]:
    return None, None


def estimate_gradient(objective: Callable[[], Any] | Batched, params: Sequence[Tensor],
                      parts: Sequence[Part], generator: torch.Generator,
                      distribution: Distribution | None = None, distributed: Any = None,
                      scratch: Scratch | None = None) -> Estimate:
    """Estimate the gradient of ``objective`` w.r.t. ``params`` part by part.

    ``objective``: a closure returning the loss at the live parameters, or a ``Batched``
    objective. ``distributed``: as ``ZOOptimizer.distributed`` (``None``: this process makes
    every query). ``scratch``: where the closure paths' copy of the parameters (the returned
    estimate's ``backup``) and the single-process closure path's estimates get their memory
    (``None``: new tensors). Runs in the
    caller's grad mode: optimizers call it under ``no_grad``.
    """
    params = list(params)
    distribution = distribution or _isotropic
    ranks = ranks_for(distributed)
    if isinstance(objective, Batched):
        return _batched(objective, params, parts, generator, distribution, ranks)
    if ranks is not None:
        return _closure_sharded(objective, params, parts, generator, distribution, ranks,
                                scratch)
    return _closure(objective, params, parts, generator, distribution, scratch)


def _batched(objective: Batched, params: list[Tensor], parts: Sequence[Part],
             generator: torch.Generator, distribution: Distribution, ranks: Ranks | None
             ) -> Estimate:
    if len(parts) != 1:
        raise ValueError("a Batched objective needs every param group to share one estimate "
                         "(the same estimator, q, mu and directions_kind)")
    if objective.params is not None and (
            len(objective.params) != len(params)
            or any(a is not b for a, b in zip(objective.params, params))):
        raise ValueError("the Batched objective's columns stand for other tensors, or the "
                         "same in another order, than the optimizer's parameters (in "
                         "param-group order)")
    part = parts[0]
    layout = Layout(params)
    if len(layout.blocks) != 1:
        raise ValueError("a Batched objective needs all parameters on one device")
    dtype = layout.blocks[0].dtype
    with torch.no_grad():
        x = torch.cat([p.detach().reshape(-1).to(dtype) for p in params])
    seeds = draw_seeds(generator, part.scheme.directions)
    scale, guide = distribution(part.index)
    flat_scale = None if scale is None else torch.cat([s.reshape(-1).to(dtype) for s in scale])
    if ranks is None:
        f0, g = estimate_batched(objective.fn, x, seeds, part.scheme, part.mu, flat_scale,
                                 objective.chunk_size, guide, kind=part.kind)
    else:
        f0, g = estimate_batched_sharded(ranks, objective.fn, x, seeds, part.scheme, part.mu,
                                         flat_scale, objective.chunk_size, guide,
                                         kind=part.kind)
    pieces = g.split([p.numel() for p in params])
    return Estimate(f0, [gp.view_as(p) for p, gp in zip(params, pieces)], part.scheme.queries)


def _closure(closure: Callable[[], Any], params: list[Tensor], parts: Sequence[Part],
             generator: torch.Generator, distribution: Distribution, scratch: Scratch | None
             ) -> Estimate:
    grads: list[Tensor | None] = [None] * len(params)
    backup = ParameterBackup(params, scratch)
    try:
        loss, f0 = call_closure(closure, params, "f(x)")
        for k, part in enumerate(parts):
            seeds = draw_seeds(generator, part.scheme.directions)
            scale, guide = distribution(part.index)
            layout = Layout([params[i] for i in part.index], part.kind)
            g = estimate_closure(closure, backup, part.index, layout, seeds, part.scheme, part.mu,
                                 f0, scale, guide, scratch)
            for i, gi in zip(part.index, g):
                grads[i] = gi
            if k + 1 < len(parts):  # the next estimate queries around x, not around here
                backup.restore(part.index)
    finally:
        backup.restore()
    return Estimate(loss, grads, _queries(parts), backup)  # type: ignore[arg-type]


def _closure_sharded(closure: Callable[[], Any], params: list[Tensor], parts: Sequence[Part],
                     generator: torch.Generator, distribution: Distribution, ranks: Ranks,
                     scratch: Scratch | None) -> Estimate:
    """:func:`_closure` with the queries shared among ``ranks``; the same bits."""
    def plan() -> list[ClosureEstimate]:
        out = []
        for part in parts:
            seeds = draw_seeds(generator, part.scheme.directions)
            scale, guide = distribution(part.index)
            layout = Layout([params[i] for i in part.index], part.kind)
            out.append(ClosureEstimate(list(part.index), layout, seeds, part.scheme, part.mu,
                                       scale, guide))
        return out

    backup = ParameterBackup(params, scratch)
    try:
        loss, found = estimate_closure_sharded(ranks, closure, backup, _queries(parts) - 1, plan,
                                               scratch)
    finally:
        backup.restore()
    grads: list[Tensor | None] = [None] * len(params)
    for part, gs in zip(parts, found):
        for i, gi in zip(part.index, gs):
            grads[i] = gi
    return Estimate(loss, grads, _queries(parts), backup)  # type: ignore[arg-type]


def _queries(parts: Sequence[Part]) -> int:
    """Queries of a step: f(x) once, then each part's queries along its directions."""
    return 1 + sum(p.scheme.queries - 1 for p in parts)
