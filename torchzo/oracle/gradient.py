"""The oracle's one entry point: a step's gradient estimate, whatever the objective and ranks.

:func:`estimate_gradient` takes the step's planned :class:`~torchzo.oracle.Query` s (one per
set of tensors perturbed together, each sharing one estimate) and picks the path: a
:class:`~torchzo.oracle.Batched` objective is queried in batched calls, a closure with the
parameters perturbed in place (and restored bit-exactly afterwards, or on any error), and
either may share its queries among the ranks of a process group. ``f(x)`` is queried once per
step, unless the caller asks otherwise for two-sided schemes, which use it only as the loss.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .backup import ParameterBackup
from .closure import call_closure, mean_loss
from .directions import Layout
from .distributed import Ranks, estimate_batched_sharded, estimate_closure_sharded, ranks_for
from .estimator import Batched, estimate_batched, estimate_closure
from .query import Query, check_at_x
from .scratch import Scratch

__all__ = ["Estimate", "estimate_gradient"]


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


def estimate_gradient(objective: Callable[[], Any] | Batched, params: Sequence[Tensor],
                      queries: Sequence[Query], distributed: Any = None,
                      scratch: Scratch | None = None, at_x: bool = True) -> Estimate:
    """Estimate the gradient of ``objective`` w.r.t. ``params``, one estimate per query.

    ``objective``: a closure returning the loss at the live parameters, or a ``Batched``
    objective. ``queries``: the step's plan (:meth:`Part.draw`, or a learned optimizer's),
    indexing ``params``. ``distributed``: as ``ZOOptimizer.distributed`` (``None``: this
    process makes every query). ``scratch``: where the closure paths' copy of the parameters
    (the returned estimate's ``backup``) and the single-process closure path's estimates get
    their memory (``None``: new tensors). ``at_x``: query f(x); two-sided schemes may leave it
    out, and the loss is then the mean of the queried ones. Runs in the caller's grad mode:
    optimizers call it under ``no_grad``.
    """
    params = list(params)
    ranks = ranks_for(distributed)
    check_at_x(queries, at_x)
    if isinstance(objective, Batched):
        return _batched(objective, params, queries, ranks, at_x)
    if ranks is not None:
        return _closure_sharded(objective, params, queries, ranks, scratch, at_x)
    return _closure(objective, params, queries, scratch, at_x)



def _batched(objective: Batched, params: list[Tensor], queries: Sequence[Query],
             ranks: Ranks | None, at_x: bool) -> Estimate:
    if len(queries) != 1:
        raise ValueError("a Batched objective needs every param group to share one estimate "
                         "(the same estimator, q, mu and directions_kind)")
    if objective.params is not None and (
            len(objective.params) != len(params)
            or any(a is not b for a, b in zip(objective.params, params))):
        raise ValueError("the Batched objective's columns stand for other tensors, or the "
                         "same in another order, than the optimizer's parameters (in "
                         "param-group order)")
    layout = Layout(params)
    if len(layout.blocks) != 1:
        raise ValueError("a Batched objective needs all parameters on one device")
    dtype = layout.blocks[0].dtype
    with torch.no_grad():
        x = torch.cat([p.detach().reshape(-1).to(dtype) for p in params])
    query = queries[0].flat(dtype)
    if ranks is None:
        f0, g = estimate_batched(objective.fn, x, query, objective.chunk_size, at_x)
    else:
        f0, g = estimate_batched_sharded(ranks, objective.fn, x, query, objective.chunk_size,
                                         at_x)
    pieces = g.split([p.numel() for p in params])
    return Estimate(f0, [gp.view_as(p) for p, gp in zip(params, pieces)],
                    _queries(queries, at_x))


def _closure(closure: Callable[[], Any], params: list[Tensor], queries: Sequence[Query],
             scratch: Scratch | None, at_x: bool) -> Estimate:
    grads: list[Tensor | None] = [None] * len(params)
    backup = ParameterBackup(params, scratch)
    seen: list[float] | None = None if at_x else []
    loss: Any = None
    f0 = 0.0
    try:
        if at_x:
            loss, f0 = call_closure(closure, params, "f(x)")
        for k, query in enumerate(queries):
            g = estimate_closure(closure, backup, query, f0, scratch, seen)
            for i, gi in zip(query.index, g):
                grads[i] = gi
            if k + 1 < len(queries):  # the next estimate queries around x, not around here
                backup.restore(query.index)
    finally:
        backup.restore()
    if seen is not None:
        loss = mean_loss(seen)
    return Estimate(loss, grads, _queries(queries, at_x), backup)  # type: ignore[arg-type]


def _closure_sharded(closure: Callable[[], Any], params: list[Tensor], queries: Sequence[Query],
                     ranks: Ranks, scratch: Scratch | None, at_x: bool) -> Estimate:
    """:func:`_closure` with the queries shared among ``ranks``; the same bits."""
    backup = ParameterBackup(params, scratch)
    try:
        loss, found = estimate_closure_sharded(ranks, closure, backup, queries, scratch, at_x)
    finally:
        backup.restore()
    grads: list[Tensor | None] = [None] * len(params)
    for query, gs in zip(queries, found):
        for i, gi in zip(query.index, gs):
            grads[i] = gi
    return Estimate(loss, grads, _queries(queries, at_x), backup)  # type: ignore[arg-type]


def _queries(queries: Sequence[Query], at_x: bool = True) -> int:
    """Queries of a step: f(x) once (where queried), then each estimate's queries along its
    directions."""
    return int(at_x) + sum(q.queries for q in queries)
