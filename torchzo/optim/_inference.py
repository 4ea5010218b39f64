"""A step at inference memory (``memory="inference"``): the oracle's seeded estimate, then the
update applied a chunk at a time.

The estimate (:func:`~torchzo.oracle.seeded.estimate_seeded`) perturbs the parameters in place
and holds the result as seeds and coefficients. For the update, each piece of the parameters
(:class:`~torchzo.oracle.seeded.Piece`) gets its estimate rebuilt from the seeds and the
optimizer's own update rule (``ZOOptimizer._apply``) on views of that piece of the parameter
and of its state. Nothing is written before the whole update is known to be finite. Usually a
bound proves it: the directions' entries are bounded (:attr:`Kind.largest`), so the
coefficients bound the estimate, and with the largest parameter and state entries (one read
pass each) the optimizer's ``_update_bound`` bounds all it computes. Where that bound is not
far below the dtypes' range, a first pass applies the rule to copies of each piece and checks
them, a second writes. A failed step leaves parameters and state tensors untouched (the guard
puts the state's counters back).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from ..oracle import Batched, Query
from ..oracle.distributed import ranks_for
from ..oracle.seeded import Piece, SeededDirections, SeededEstimate, estimate_seeded
from ._guard import NonFiniteUpdateError, all_finite, check_largest, max_abs, newly_nonfinite

__all__ = ["Stepped", "estimate_inference", "step_inference", "update_seeded"]


class Stepped(Protocol):
    """What a step at inference memory uses of ``ZOOptimizer`` (written out here, so that
    this module and ``base`` do not import each other)."""

    param_groups: list[dict[str, Any]]
    loss_at_x: bool
    _guard: Any
    _zero_signal_warned: bool

    def _may_warn_zero(self, loss: Any) -> bool: ...

    def _params(self) -> list[Tensor]: ...

    def _states(self, group: dict[str, Any], params: list[Tensor], complete: bool = False
                ) -> list[dict[str, Any]]: ...

    def _apply(self, group: dict[str, Any], params: list[Tensor], estimates: list[Tensor],
               states: list[dict[str, Any]]) -> None: ...

    def _update_bound(self, group: dict[str, Any], estimate: float, param: float,
                      state: dict[str, list[Tensor]]) -> float: ...


def step_inference(opt: Stepped, objective: Callable[[], Any] | Batched,
                   queries: list[Query]) -> SeededEstimate:
    """``opt``'s step along the planned ``queries`` at inference memory: estimate with the
    parameters perturbed in place, check the coefficients, update piece by piece."""
    found = estimate_inference(opt, objective, queries)
    update_seeded(opt, found)
    return found


def estimate_inference(opt: Stepped, objective: Callable[[], Any] | Batched,
                       queries: list[Query]) -> SeededEstimate:
    """The estimate of a step at inference memory, its coefficients checked (finite; the
    zero-signal warning), and the guard told that the update comes next."""
    if isinstance(objective, Batched):
        raise ValueError("memory='inference' queries a closure (a Batched objective holds "
                         "its query points in memory anyway: use memory='exact')")
    params = opt._params()
    found = estimate_seeded(objective, params, queries,
                            ranks_for(getattr(opt, "_distributed", None)), opt.loss_at_x)
    # A coefficient its directions' dtype cannot hold makes the estimate infinite, as the
    # exact memory mode's sum of c_k u_k is.
    largest = [_held(max((abs(c) for c in cs), default=0.0), dirs)
               for cs, dirs in zip(found.coeffs, found.directions)]
    sized = [any(params[i].numel() for i in q.index) for q in queries]
    if check_largest(largest, sized, queries, opt.param_groups, opt._may_warn_zero(found.loss)):
        opt._zero_signal_warned = True
    if opt._guard is not None:
        opt._guard.save_state(copy=False)
    return found


def _held(value: float, dirs: SeededDirections) -> float:
    """``value``, or infinity where the dtype of a piece of ``dirs`` cannot hold it."""
    limit = min((torch.finfo(piece.block.dtype).max for piece in dirs.pieces), default=math.inf)
    return value if value <= limit else math.inf


def _piece_state(state: dict[str, Any], p: Tensor, piece: Piece) -> dict[str, Any]:
    """``state`` with each tensor shaped like ``p`` cut to the piece (views)."""
    return {k: piece.of(v) if isinstance(v, Tensor) and v.shape == p.shape else v
            for k, v in state.items()}


def _copied(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.clone() if isinstance(v, Tensor) else v for k, v in state.items()}


@torch.no_grad()
def update_seeded(opt: Stepped, found: SeededEstimate) -> None:
    """Apply ``opt``'s update rule to its parameters from ``found``, piece by piece; raises
    :class:`NonFiniteUpdateError` (having written nothing) where the update would make a
    parameter or state tensor non-finite."""
    params = opt._params()
    group_of = {p: group for group in opt.param_groups for p in group["params"]}
    states: dict[Tensor, dict[str, Any]] = {}
    for group in opt.param_groups:
        states.update(zip(group["params"], opt._states(group, group["params"], complete=True)))
    position = {p: i for i, p in enumerate(params)}
    passes = (True,) if _finite_for_sure(opt, found, params, states) else (False, True)
    for write in passes:
        for query, dirs, coeffs in zip(found.plan, found.directions, found.coeffs):
            buffers: dict[int, Tensor] = {}
            for piece in dirs.pieces:
                p = params[query.index[piece.tensor]]
                x = piece.of(p)
                buf = buffers.get(piece.block.position)
                if buf is None or buf.numel() < x.numel():
                    buf = buffers[piece.block.position] = torch.empty(
                        x.numel(), dtype=piece.block.dtype, device=p.device)
                g = dirs.combine(piece, query.seeds, coeffs, buf[:x.numel()])
                g = g.view(x.shape).to(p.dtype)
                st = _piece_state(states[p], p, piece)
                if write:
                    opt._apply(group_of[p], [x], [g], [st])
                    continue
                trial, trial_st = x.clone(), _copied(st)
                opt._apply(group_of[p], [trial], [g], [trial_st])
                _check(trial, x, trial_st, st, position[p])


def _finite_for_sure(opt: Stepped, found: SeededEstimate, params: list[Tensor],
                     states: dict[Tensor, dict[str, Any]]) -> bool:
    """Whether the update provably computes finite values only, with a margin of 4 below the
    dtypes' largest finite value for the rounding of the bound's exact arithmetic."""
    estimate = [0.0] * len(params)
    for query, dirs, coeffs in zip(found.plan, found.directions, found.coeffs):
        largest = dirs.largest * math.fsum(abs(c) for c in coeffs)
        for i in query.index:
            estimate[i] = max(estimate[i], largest)
    for group in opt.param_groups:
        ids = {id(q) for q in group["params"]}
        mine = [i for i, p in enumerate(params) if id(p) in ids]
        if not mine:
            continue
        tensors = [params[i] for i in mine]
        keyed: dict[str, list[Tensor]] = {}
        for p in tensors:
            for k, v in states[p].items():
                if isinstance(v, Tensor) and v.is_floating_point():
                    keyed.setdefault(k, []).append(v)
        limit = min(torch.finfo(t.dtype).max
                    for t in [*tensors, *(v for vs in keyed.values() for v in vs)]) / 4
        bound = opt._update_bound(group, max(estimate[i] for i in mine), max_abs(tensors),
                                  keyed)
        if not bound < limit:  # NaN and inf included
            return False
    return True


def _check(x: Tensor, before: Tensor, state: dict[str, Any], state_before: dict[str, Any],
           i: int) -> None:
    floats = [v for v in state.values() if isinstance(v, Tensor) and v.is_floating_point()]
    if all_finite([x, *floats]):  # one read pass each (the compiled kernel where it runs)
        return
    if newly_nonfinite(x, before):
        raise NonFiniteUpdateError(
            f"the update would make parameter {i} (in param-group order) non-finite; nothing "
            "was written: parameters (to rounding), optimizer state, RNG and counters are as "
            "before. Check the hyperparameters (a smaller lr?) and the parameters' dtype range")
    for k, v in state.items():
        if isinstance(v, Tensor) and v.is_floating_point() and newly_nonfinite(v, state_before[k]):
            raise NonFiniteUpdateError(
                f"the update would make the state {k!r} of parameter {i} (in param-group "
                "order) non-finite; nothing was written")
