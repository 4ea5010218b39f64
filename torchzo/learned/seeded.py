"""The lean learned step at inference memory: its update a piece at a time, from an estimate
held by its seeds (:class:`~torchzo.oracle.seeded.SeededEstimate`).

The three stages of :mod:`torchzo.learned.arch.lean`'s update, over pieces instead of whole
tensors:

1. a read pass: each piece's estimate is rebuilt from the seeds and its sums
   (:func:`~torchzo.learned.arch.lean.sums`) are added to its tensor's;
2. per group, the controller turns the sums into one factor per tensor
   (:func:`~torchzo.learned.arch.lean.control`);
3. a write pass: each piece's estimate is rebuilt again, its momentum written and
   ``x += factor * momentum``.

Nothing is written before the last pass, and that pass starts only once a bound proves that
what it writes is finite, or a trial pass over copies has checked it: a failed step leaves the
parameters and the state as they were. Sums are added piece by piece, so a tensor larger than
one piece steps as the whole-tensor update does up to float32 rounding (tested).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor

from ..oracle.seeded import Piece, SeededDirections, SeededEstimate
from .arch import Weights
from .arch.lean import LeanConfig, LeanState, Sums, control, momentum, sums
from .step import Group, LearnedState

__all__ = ["NonFiniteStepError", "update_seeded"]

_Source = tuple[SeededDirections, tuple[int, ...], tuple[float, ...], Piece]


class NonFiniteStepError(FloatingPointError):
    """The update would write a non-finite value; nothing was written."""


@torch.no_grad()
def update_seeded(weights: Weights, arch: LeanConfig, params: Sequence[Tensor],
                  state: LearnedState, groups: Sequence[Group], found: SeededEstimate
                  ) -> LearnedState:
    """The lean step's update of ``params`` from ``found``, in place: the parameters and each
    tensor's momentum are written; the returned state holds the new per-tensor second moments
    and group states (and the same momentum tensors). Raises :class:`NonFiniteStepError`,
    having written nothing, where a value written would not be finite."""
    sources: dict[int, list[_Source]] = {}
    bound: dict[int, float] = {}  # the largest possible estimate entry, per tensor
    for query, dirs, coeffs in zip(found.plan, found.directions, found.coeffs):
        largest = dirs.largest * math.fsum(abs(c) for c in coeffs)
        for piece in dirs.pieces:
            i = query.index[piece.tensor]
            sources.setdefault(i, []).append((dirs, query.seeds, coeffs, piece))
            bound[i] = max(bound.get(i, 0.0), largest)
    loss = torch.as_tensor(float(found.loss))
    tensors: list[Any] = list(state.tensors)
    new_groups = list(state.groups)
    factors: dict[int, Tensor] = {}
    for k, g in enumerate(groups):
        sts = [cast(LeanState, state.tensors[i]) for i in g.index]
        totals = [_sums(arch, params[i], st.momentum, sources.get(i, []), g.maximize)
                  for i, st in zip(g.index, sts)]
        fs, seconds, new_groups[k] = control(
            weights, arch, totals, [params[i].numel() for i in g.index],
            [st.second for st in sts], state.groups[k], g.lr, -loss if g.maximize else loss,
            g.q)
        for i, st, f, v in zip(g.index, sts, fs, seconds):
            factors[i] = f
            tensors[i] = LeanState(st.momentum, v)
    maximize = {i: g.maximize for g in groups for i in g.index}
    sure = all(_finite_for_sure(arch, params[i], tensors[i].momentum, factors[i],
                                bound.get(i, 0.0)) for i in factors)
    for write in (True,) if sure else (False, True):
        for i, f in factors.items():
            for source in sources.get(i, []):
                _write(arch, params[i], tensors[i].momentum, source, f, maximize[i], write)
    return LearnedState(tensors, new_groups)


def _estimate(source: _Source, p: Tensor, maximize: bool) -> Tensor:
    """The piece's estimate, flat float32, rounded to the parameter's dtype first (as the
    exact memory mode hands it to the update). In the directions' scratch buffer for the
    piece's block (the next piece's estimate overwrites it)."""
    dirs, seeds, coeffs, piece = source
    g = dirs.combine(piece, seeds, coeffs, dirs.scratch(piece)).to(p.dtype).float()
    return g.neg_() if maximize else g


def _sums(arch: LeanConfig, p: Tensor, m: Tensor, sources: Sequence[_Source], maximize: bool
          ) -> Sums:
    """A tensor's sums, added piece by piece (a tensor without coordinates: zeros)."""
    total = None
    for source in sources:
        piece = source[3]
        part = sums(_estimate(source, p, maximize), piece.of(m), piece.of(p).reshape(-1))
        total = part if total is None else total + part
    if total is None:
        zero = torch.zeros((), device=p.device)
        return Sums(*[zero] * len(Sums._fields))
    return total


def _finite_for_sure(arch: LeanConfig, p: Tensor, m: Tensor, f: Tensor, estimate: float
                     ) -> bool:
    """Whether the momentum and parameters written are finite, with a margin of 4 below
    their dtypes' largest values for the rounding of the bound's arithmetic."""
    if m.numel() == 0:
        return True
    new = arch.beta1 * float(m.abs().max()) + (1 - arch.beta1) * estimate
    step = float(p.abs().max()) + abs(float(f)) * new
    return (new < torch.finfo(m.dtype).max / 4) and (step < torch.finfo(p.dtype).max / 4)


def _write(arch: LeanConfig, p: Tensor, m: Tensor, source: _Source, f: Tensor,
           maximize: bool, write: bool) -> None:
    """Pass 3 over one piece; with ``write=False``, on copies, raising where a value would
    not be finite."""
    piece = source[3]
    g, mp, x = _estimate(source, p, maximize), piece.of(m), piece.of(p)
    new = momentum(arch, mp, g)
    update = new.float().view(x.shape)
    if write:
        mp.copy_(new)
        x.add_(update, alpha=float(f))
        return
    if not (bool(torch.isfinite(new).all())
            and bool(torch.isfinite(x.add(update, alpha=float(f))).all())):
        raise NonFiniteStepError("the update would make a parameter or its momentum "
                                 "non-finite; nothing was written")
