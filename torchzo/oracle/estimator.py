"""The ZO gradient estimator, over live parameters (closure) or a batched function ``f(X)``.

Both paths sample the same directions from the same seeds, so for the same seeds they estimate
the same vector (up to summation order). Neither ever holds more than a bounded number of
directions at once: the closure path one, the batched path one chunk (with ``"orthogonal"``
directions and short ``"auto"`` groups, also the group of directions orthogonalised together,
see :mod:`torchzo.oracle.directions`).

Each path is one loop over directions (or chunks of them) that regenerates the directions and
adds ``c_i u_i`` in index order, asking a callback for the queried values: the single-process
estimators answer by querying, the sharded estimators of :mod:`torchzo.oracle.distributed` by
looking up values exchanged between ranks. Sharing the loop is what makes both bit-identical.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import kernels
from .backup import ParameterBackup
from .closure import call_batched, call_closure, check_losses, mean_loss
from .directions import Direction, Layout, Signs
from .query import Query, check_at_x
from .schemes import Scheme
from .scratch import Scratch

__all__ = ["Batched", "assemble_batched", "assemble_closure", "chunk_plan",
           "chunk_rows", "estimate_batched", "estimate_closure", "query_closure"]


@dataclass(frozen=True)
class Batched:
    """A batched objective: ``fn(X)`` maps ``X`` of shape ``(B, d)`` to ``B`` losses.

    ``d`` is the number of elements of all optimized parameters, concatenated in order.
    ``chunk_size`` bounds ``B`` (and so memory), except that a call always holds every row of
    at least one direction (two with a two-sided estimator, plus f(x) in the first call);
    ``None`` evaluates all queries of a step in one call. With the optimizer's ``distributed``
    option the calls are spread over the ranks, and ``None`` means calls of ``ceil(queries /
    world_size)`` rows (see :func:`torchzo.oracle.distributed.estimate_batched_sharded`).
    :func:`torchzo.oracle.module_objective` builds one from an ``nn.Module`` and a loss.
    """

    fn: Callable[[Tensor], Tensor]
    chunk_size: int | None = None
    #: The tensors that ``X``'s columns stand for, in order (optional). When given, the optimizer
    #: checks that they are its parameters in its own order before querying.
    params: tuple[Tensor, ...] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.chunk_size is not None and (isinstance(self.chunk_size, bool) or
                                            not isinstance(self.chunk_size, int) or
                                            self.chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {self.chunk_size!r}")
        if self.params is not None:
            object.__setattr__(self, "params", tuple(self.params))


def estimate_closure(closure: Callable[[], Any], backup: ParameterBackup, query: Query,
                     f0: float, scratch: Scratch | None = None,
                     seen: list[float] | None = None) -> list[Tensor]:
    """Estimate the gradient w.r.t. ``backup.params[i] for i in query.index`` by perturbing in
    place.

    The parameters of the query are left perturbed by the last query; the caller restores them
    before anything else is queried (another estimate of the step) and after the step. ``f0``
    is the loss at the unperturbed point (unused by two-sided schemes). The estimate's memory
    comes from ``scratch`` where that has some; the queried losses are appended to ``seen``.
    """
    def values(k: int, u: Direction) -> tuple[float, ...]:
        found = tuple(query_closure(closure, backup, query, u, k, sign)
                      for sign in query.scheme.signs)
        if seen is not None:
            seen.extend(found)
        return found

    layout = Layout([backup.params[i] for i in query.index], query.kind)
    return assemble_closure(layout, query, f0, values, scratch)


def query_closure(closure: Callable[[], Any], backup: ParameterBackup, query: Query,
                  u: Direction, k: int, sign: int) -> float:
    """The loss at ``x + sign * mu * u`` (``u``: the query's direction ``k``, counted from 0),
    set in place."""
    backup.perturb(query.index, u, sign * float(query.mu))
    where = f"direction {k + 1} ({'+' if sign > 0 else '-'}mu)"
    return call_closure(closure, backup.params, where)[1]


def assemble_closure(layout: Layout, query: Query, f0: float,
                     values: Callable[[int, Direction], tuple[float, ...]],
                     scratch: Scratch | None = None) -> list[Tensor]:
    """``g = sum_k c_k u_k`` in index order over ``layout`` (the query's tensors);
    ``values(k, u_k)`` gives direction k's queries (``g``'s memory from ``scratch`` where that
    has some).

    Every closure-path estimate, single-process or sharded, goes through this loop, so that
    the same seeds and values give the same bits.
    """
    seeds, scheme, mu, scale, guide = query.seeds, query.scheme, query.mu, query.scale, query.guide
    if not layout.packed(scale, guide):
        g = layout.zeros(scratch)
        # torch refuses an alpha that g's dtype cannot hold: an estimate that overflows, which
        # is then infinite, for the optimizer's finiteness check to report as for every kind.
        limit = min(torch.finfo(t.dtype).max for t in g) if g else math.inf
        for k in range(len(seeds)):
            u = layout.direction(seeds, k, scale, guide)
            assert not isinstance(u, Signs)
            c = scheme.coefficient(f0, values(k, u), mu)
            torch._foreach_add_(g, u, alpha=c if abs(c) <= limit else math.copysign(math.inf, c))
        return g
    # Packed signs are added a group at a time, one pass over g per group (the same bits as
    # adding them one by one: each entry of g gets its terms in the same order).
    g, terms, init = layout.empty(scratch), [], True
    for k in range(len(seeds)):
        u = layout.direction(seeds, k, scale, guide)
        assert isinstance(u, Signs)
        terms.append((u, scheme.coefficient(f0, values(k, u), mu)))
        if len(terms) == kernels.GROUP:
            Signs.accumulate(g, terms, init)
            terms, init = [], False
    Signs.accumulate(g, terms, init)
    return g


def estimate_batched(fn: Callable[[Tensor], Tensor], x: Tensor, query: Query,
                     chunk_size: int | None = None, at_x: bool = True) -> tuple[Tensor, Tensor]:
    """Estimate the gradient of ``fn`` at the flat point ``x`` with batched queries.

    Returns ``(f(x), g)``; without ``at_x`` (two-sided schemes only), ``f(x)`` is not queried
    and the first is the mean of the queried losses. ``query``: over ``x`` (a flat query, see
    :meth:`Query.flat`); its directions are those of ``Layout([x], query.kind)``, whatever the
    chunk size. Differentiable: with ``x`` or the query's scale requiring grad and ``fn``
    differentiable, autograd flows through the queried values and the directions alike (this
    is what meta-training backpropagates through).
    """
    if x.dim() != 1:
        raise ValueError(f"x must be a flat vector, got shape {tuple(x.shape)}")
    check_at_x([query], at_x)
    scheme = query.scheme
    plan = chunk_plan(len(query.seeds), len(scheme.signs), chunk_size or scheme.queries, at_x)
    seen: list[Tensor] = []

    def values(c: int, u: Tensor) -> Tensor:
        start, _, base = plan[c]
        X = chunk_rows(x, u, scheme, query.mu, base)
        found = call_batched(fn, X, f"call {c + 1}")
        check_losses(found, X.shape[0], 1 + start * len(scheme.signs) - int(base))
        seen.append(found)
        return found

    f0, g = assemble_batched(x, query, plan, values)
    if not at_x:
        return mean_loss(torch.cat(seen).detach().tolist()), g
    if f0 is None:
        f0 = call_batched(fn, x.unsqueeze(0), "f(x)")
        check_losses(f0, 1, 0)
        f0 = f0[0]
    return f0, g


def chunk_plan(directions: int, signs: int, rows_per_call: int,
               at_x: bool = True) -> list[tuple[int, int, bool]]:
    """How the batched path splits a step: ``(first direction, directions, holds f(x))`` per call.

    A call holds at most ``rows_per_call`` rows (f(x) in the first call where ``at_x``, then
    every sign of each of its directions), but always at least one direction.
    """
    plan: list[tuple[int, int, bool]] = []
    start = 0
    while start < directions:
        base = at_x and not plan
        n = min(max(1, (rows_per_call - int(base)) // signs), directions - start)
        plan.append((start, n, base))
        start += n
    return plan


def chunk_rows(x: Tensor, u: Tensor, scheme: Scheme, mu: float | Tensor, base: bool) -> Tensor:
    """The query points of one call: ``x`` (if ``base``), then ``x + s mu u`` for each sign."""
    rows = [x + (sign * mu) * u for sign in scheme.signs]
    if base:
        rows.insert(0, x.unsqueeze(0))
    return torch.cat(rows)


def assemble_batched(x: Tensor, query: Query, plan: Sequence[tuple[int, int, bool]],
                     values: Callable[[int, Tensor], Tensor]) -> tuple[Tensor | None, Tensor]:
    """``(f(x), g)`` over the calls of ``plan``; ``values(c, u_c)`` gives call ``c``'s losses.

    ``f(x)`` is ``None`` when there are no directions or no call holds it (two-sided schemes
    need it only as the loss). Every batched estimate, single-process or sharded, goes through
    this loop.
    """
    scheme, mu = query.scheme, query.mu
    layout = Layout([x], query.kind)
    scale = None if query.scale is None else query.scale[0]
    g: Tensor | None = None
    f0: Tensor | None = None
    for c, (start, n, base) in enumerate(plan):
        u = layout.rows(query.seeds, start, n, scale, query.guide)
        v = values(c, u)
        if base:
            f0, v = v[0], v[1:]
        per_sign = v.view(len(scheme.signs), n)
        coeff = scheme.coefficient(v.new_zeros(()) if f0 is None else f0, tuple(per_sign), mu)
        term = coeff.to(u.dtype) @ u
        g = term if g is None else g + term
    if g is None:
        g = torch.zeros_like(x, dtype=layout.blocks[0].dtype)
    return f0, g
