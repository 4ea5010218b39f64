"""The lean learned step at inference memory: its update a piece at a time, from an estimate
held by its seeds (:class:`~torchzo.oracle.seeded.SeededEstimate`).

The stages of :mod:`torchzo.learned.arch.lean`'s update, over pieces instead of whole
tensors:

1. per group, the factor of each tensor's write, fixed before the estimate is read
   (:func:`~torchzo.learned.arch.lean.plan_step`; a group's first step reads its estimate
   once first, for the sums that start it);
2. one pass: each piece's estimate is rebuilt from the seeds, its sums
   (:func:`~torchzo.learned.arch.lean.sums`) taken, its momentum written and
   ``x += factor * momentum``;
3. per group, the controller sets the next step from the sums
   (:func:`~torchzo.learned.arch.lean.finish_step`).

So a step rebuilds its estimate once, as ZO-SGD's does. The pass writes only once a bound
proves that what it writes is finite, or a trial pass over copies has checked it: a failed
step leaves the parameters and the state as they were. Sums are added piece by piece, so a
tensor larger than one piece steps as the whole-tensor update does up to float32 rounding
(tested).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import Tensor

from ..oracle.seeded import Piece, SeededDirections, SeededEstimate
from .arch import Weights
from .arch.lean import LeanConfig, LeanState, Sums, finish_step, momentum, plan_step, sums
from .step import Group, LearnedState

__all__ = ["NonFiniteStepError", "update_seeded"]

_Source = tuple[SeededDirections, tuple[int, ...], tuple[float, ...], Piece]


class NonFiniteStepError(FloatingPointError):
    """The update would write a non-finite value; nothing was written."""


@torch.no_grad()
def update_seeded(weights: Weights, arch: LeanConfig, params: Sequence[Tensor],
                  state: LearnedState, groups: Sequence[Group], found: SeededEstimate,
                  largest: Callable[[Tensor], float] = lambda t: float(t.abs().max())
                  ) -> LearnedState:
    """The lean step's update of ``params`` from ``found``, in place: the parameters and each
    tensor's momentum are written; the returned state holds the new per-tensor second moments
    and group states (and the same momentum tensors). Raises :class:`NonFiniteStepError`,
    having written nothing, where a value written would not be finite. ``largest``: the
    largest magnitude in a tensor (NaN if it holds one), e.g. the optimizer's compiled one."""
    sources: dict[int, list[_Source]] = {}
    bound: dict[int, float] = {}  # the largest possible estimate entry, per tensor
    for query, dirs, coeffs in zip(found.plan, found.directions, found.coeffs):
        most = dirs.largest * math.fsum(abs(c) for c in coeffs)
        for piece in dirs.pieces:
            i = query.index[piece.tensor]
            sources.setdefault(i, []).append((dirs, query.seeds, coeffs, piece))
            bound[i] = max(bound.get(i, 0.0), most)
    loss = torch.as_tensor(float(found.loss))
    lean = [cast(list[LeanState], [state.tensors[i] for i in g.index]) for g in groups]
    plans = []
    for g, sts, g0 in zip(groups, lean, state.groups):
        first = None
        if bool((g0.t == 0).any()):  # a first step reads its estimate once more
            first = [_sums(arch, params[i], st.momentum, sources.get(i, []), g.maximize)
                     for i, st in zip(g.index, sts)]
        plans.append(plan_step(weights, arch, g0, [st.second for st in sts],
                               [params[i].numel() for i in g.index], g.lr, g.q, first))
    factors = {i: f for g, planned in zip(groups, plans) for i, f in zip(g.index, planned.factors)}
    momenta = {i: st.momentum for g, sts in zip(groups, lean) for i, st in zip(g.index, sts)}
    maximize = {i: g.maximize for g in groups for i in g.index}
    sure = all(_finite_for_sure(arch, params[i], momenta[i], f, bound.get(i, 0.0), largest)
               for i, f in factors.items())
    if not sure:
        for i, f in factors.items():
            for source in sources.get(i, []):
                _write(arch, params[i], momenta[i], source, f, maximize[i], write=False)
    tensors: list[Any] = list(state.tensors)
    new_groups = list(state.groups)
    for k, (g, sts, planned) in enumerate(zip(groups, lean, plans)):
        found_sums = [_zero(params[i]) for i in g.index]
        for j, i in enumerate(g.index):
            for source in sources.get(i, []):
                found_sums[j] = found_sums[j] + _write(arch, params[i], momenta[i], source,
                                                       factors[i], maximize[i], write=True)
        seconds, new_groups[k] = finish_step(
            weights, arch, state.groups[k], planned, [st.second for st in sts], found_sums,
            [params[i].numel() for i in g.index], -loss if g.maximize else loss, g.q)
        for i, st, v in zip(g.index, sts, seconds):
            tensors[i] = LeanState(st.momentum, v)
    return LearnedState(tensors, new_groups)


def _estimate(source: _Source, p: Tensor, maximize: bool) -> Tensor:
    """The piece's estimate, flat float32, rounded to the parameter's dtype first (as the
    exact memory mode hands it to the update). In the directions' scratch buffer for the
    piece's block (the next piece's estimate overwrites it)."""
    dirs, seeds, coeffs, piece = source
    g = dirs.combine(piece, seeds, coeffs, dirs.scratch(piece)).to(p.dtype).float()
    return g.neg_() if maximize else g


def _zero(p: Tensor) -> Sums:
    zero = torch.zeros((), device=p.device)
    return Sums(*[zero] * len(Sums._fields))


def _sums(arch: LeanConfig, p: Tensor, m: Tensor, sources: Sequence[_Source], maximize: bool
          ) -> Sums:
    """A tensor's sums, read piece by piece (a tensor without coordinates: zeros)."""
    total = _zero(p)
    for source in sources:
        piece = source[3]
        total = total + sums(_estimate(source, p, maximize), piece.of(m),
                             piece.of(p).reshape(-1))
    return total


def _finite_for_sure(arch: LeanConfig, p: Tensor, m: Tensor, f: Tensor, estimate: float,
                     largest: Callable[[Tensor], float]) -> bool:
    """Whether the momentum and parameters written are finite, with a margin of 4 below
    their dtypes' largest values for the rounding of the bound's arithmetic."""
    if m.numel() == 0:
        return True
    new = arch.beta1 * largest(m) + (1 - arch.beta1) * estimate
    step = largest(p) + abs(float(f)) * new
    return (new < torch.finfo(m.dtype).max / 4) and (step < torch.finfo(p.dtype).max / 4)


def _write(arch: LeanConfig, p: Tensor, m: Tensor, source: _Source, f: Tensor,
           maximize: bool, write: bool) -> Sums:
    """The write over one piece, returning the piece's sums (taken before it writes); with
    ``write=False``, on copies, raising where a value would not be finite."""
    piece = source[3]
    g, mp, x = _estimate(source, p, maximize), piece.of(m), piece.of(p)
    old = mp.float()  # converted once, for the sums and the new momentum
    found = sums(g, old, x.reshape(-1))
    new = momentum(arch, old, g)
    update = new.float().view(x.shape)
    if write:
        mp.copy_(new)
        x.add_(update, alpha=float(f))
        return found
    if not (bool(torch.isfinite(new).all())
            and bool(torch.isfinite(x.add(update, alpha=float(f))).all())):
        raise NonFiniteStepError("the update would make a parameter or its momentum "
                                 "non-finite; nothing was written")
    return found
