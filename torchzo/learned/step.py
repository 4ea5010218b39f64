"""The learned ZO step, in the order it runs: plan the queries, (the caller estimates), update.

``ZOLSTM.step``, the meta-training rollout and a population of weight sets evaluated in one
call all run these two functions around the oracle, so the optimizer that is trained is the
one that ships::

    state = learned.init(arch, params, groups)  # or the last step's result.state
    plan = learned.plan(weights, arch, params, state, groups, parts, generator)
    found = oracle.estimate_gradient(objective, params, plan.queries)
    result = learned.update(weights, arch, params, state, groups, found.grads, found.loss,
                            plan)

1. :func:`plan`, per part (tensors sharing an estimate): draw its query seeds, then its query
   distribution: the QueryRNN's scales (computed ahead by the previous step, or now) and the
   mix draw that picks them or the identity covariance, or a GuidedES subspace, or plain
   directions. The generator's stream is consumed in that order, part by part;
2. the caller's oracle estimates the gradient along ``plan.queries``;
3. :func:`update`, per group: the UpdateRNN's update (or, without it, a ZO-SGD step), applied
   to the parameters, and the new per-coordinate state. In optimizer mode (``in_place``) also
   the QueryRNN's outputs for the next step, over the same sets of tensors that shared an
   estimate, so that the next step can fail at any query and leave the state as it is (same
   values as computing them at the next step's start).

The state (:class:`LearnedState`) is typed: per tensor the architecture's ``NamedTuple``
(:attr:`~torchzo.learned.arch.Architecture.state_type`), per group its group state, held once
(:attr:`~torchzo.learned.arch.Architecture.group_state_type`, or ``None``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor

from ..oracle import Guide, Part, Query, draw_seeds
from .arch import Architecture, HistoryState, TensorState, Weights, detached, replace

__all__ = ["COVARIANCES", "Group", "LearnedState", "Plan", "StepResult", "init",
           "next_query_outputs", "plan", "scales_from_outputs", "update"]

#: How a group's query directions are shaped: by the QueryRNN's learned covariance (mixed with
#: the identity, see ``query_prob``), the identity (the paper's no-query ablation: the
#: unscaled draws), or guided towards the span of the previous estimate and update (the
#: GuidedES ablation).
COVARIANCES = ("learned", "identity", "guided")


@dataclass(frozen=True)
class Group:
    """The settings of a set of tensors (a param group): positions in the step's tensor list.

    Tensors that share an estimate must agree on ``covariance``, ``query_prob`` and
    ``guide_alpha`` (the optimizer partitions its groups so).
    """

    index: tuple[int, ...]
    lr: float = 1.0
    maximize: bool = False
    use_update: bool = True
    covariance: str = "learned"
    query_prob: float = 0.5
    guide_alpha: float = 0.5
    #: Directions per estimate (the ``general`` architecture's step-size signal needs it).
    q: int = 20


class LearnedState(NamedTuple):
    """The learned step's state, in the order of the step's tensors and groups."""

    #: Per tensor: the architecture's ``state_type``.
    tensors: list[TensorState]
    #: Per group: the architecture's ``group_state_type`` (``None`` where it has none).
    groups: list[Any]

    def detached(self) -> LearnedState:
        """The same values, cut from the autograd graph (a truncation boundary)."""
        return LearnedState([detached(st) for st in self.tensors],
                            [None if g is None else detached(g) for g in self.groups])


def init(arch: Architecture, params: Sequence[Tensor], groups: Sequence[Group],
         population: tuple[int, ...] = ()) -> LearnedState:
    """The zero state of ``params`` and ``groups`` (``population``: leading dimensions of a
    population of weight sets, one state each)."""
    return LearnedState([arch.init_state(p, population) for p in params],
                        [arch.init_group_state(params[g.index[0]], population) for g in groups])


@dataclass(frozen=True)
class Plan:
    """A step's queries, and what the QueryRNN computed to shape them."""

    queries: list[Query]
    #: Per tensor, the QueryRNN outputs that shaped this step's directions (``None`` where
    #: it did not run): meta-training regularises them.
    query_outputs: list[Tensor | None]
    #: The tensors' new states after the QueryRNN, by tensor position, where it ran now (not
    #: ahead).
    query_states: dict[int, TensorState] = field(default_factory=dict)


@dataclass
class StepResult:
    """What :func:`update` returns: new objects unless ``in_place``."""

    params: list[Tensor]
    state: LearnedState


def next_query_outputs(weights: Weights, arch: Architecture, states: Sequence[TensorState],
                       group: Any) -> tuple[list[Tensor], list[TensorState]]:
    """The query outputs a step uses: those computed ahead (``query_out``) if every state
    has them, else the architecture's query network run now (a first step, or meta-training),
    with the new states. ``group``: the state of the group of the first of ``states``."""
    if all(st.query_out is not None for st in states):
        return [cast(Tensor, st.query_out) for st in states], []
    return arch.query_outputs(weights, states, group)


def scales_from_outputs(arch: Architecture, outs: Sequence[Tensor]) -> list[Tensor]:
    """Per-coordinate standard deviations of the query directions from the query outputs of
    the tensors that share an estimate, normalised together to mean square 1 (trace(Sigma) =
    d)."""
    raw = [arch.raw_scale(o) for o in outs]
    d = sum(r.shape[-1] for r in raw)
    norm = torch.as_tensor(sum((r**2).sum(-1) for r in raw)).sqrt() / math.sqrt(d)
    return [(r / norm[..., None]).abs() for r in raw]


def _mix_draw(generator: torch.Generator, p: float) -> bool:
    """Whether this step uses the learned covariance (probability ``p``). Always draws one
    number, whatever ``p``, so that the random stream (and every later direction) does not
    depend on the mix probability."""
    u = torch.rand((), generator=generator, device=generator.device)
    return bool(u < p)


def _learned(arch: Architecture, g: Group) -> bool:
    """Whether ``g``'s directions come from the QueryRNN."""
    return g.covariance == "learned" and arch.has_query


def _positions(groups: Sequence[Group]) -> dict[int, int]:
    """Each tensor's group, by position."""
    return {i: k for k, g in enumerate(groups) for i in g.index}


def plan(weights: Weights, arch: Architecture, params: Sequence[Tensor], state: LearnedState,
         groups: Sequence[Group], parts: Sequence[Part], generator: torch.Generator) -> Plan:
    """The step's queries for ``params``, one per part (each part's tensors in one group's
    settings).

    Draws from ``generator`` in a fixed order: per part, its seeds, then (learned directions
    only) one mix draw. With population weights the states carry the weights' leading
    dimensions, and so do the scales; every member shares the seeds and the mix draws.
    """
    where = _positions(groups)
    outputs: list[Tensor | None] = [None] * len(state.tensors)
    query_states: dict[int, TensorState] = {}
    queries = []
    for part in parts:
        seeds = draw_seeds(generator, part.scheme.directions)
        k = where[part.index[0]]
        g = groups[k]
        sts = [state.tensors[i] for i in part.index]
        if g.covariance == "guided":
            past = cast(list[HistoryState], sts)
            history = [[st.prev_estimate for st in past], [st.prev_update for st in past]]
            queries.append(part.query(seeds, guide=Guide.orthonormal(history, g.guide_alpha)))
            continue
        if not _learned(arch, g):
            queries.append(part.query(seeds))
            continue
        found, new = next_query_outputs(weights, arch, sts, state.groups[k])
        query_states.update(zip(part.index, new))
        for i, o in zip(part.index, found):
            outputs[i] = o
        scales = scales_from_outputs(arch, found)
        shaped = [s.view((*s.shape[:-1], *params[i].shape[s.dim() - 1:]))
                  for s, i in zip(scales, part.index)]
        queries.append(part.query(seeds, shaped if _mix_draw(generator, g.query_prob)
                                  else None))
    return Plan(queries, outputs, query_states)


def update(weights: Weights, arch: Architecture, params: Sequence[Tensor], state: LearnedState,
           groups: Sequence[Group], estimates: Sequence[Tensor], loss: Any, planned: Plan, *,
           in_place: bool = False) -> StepResult:
    """Every group's update from the step's ``estimates`` (one per tensor, in ``params``'
    dtype) and the ``loss`` the oracle measured at the current point (population-shaped, a
    number, or ``None``: the ``general`` architecture's loss features are then zero).

    ``in_place``: the optimizer's mode (no autograd): parameters and LSTM states are
    overwritten and the next step's QueryRNN outputs are computed. Otherwise nothing is
    modified and autograd flows through everything (meta-training).
    """
    if loss is not None:
        loss = torch.as_tensor(loss).detach().float()
    new_params = list(params)
    # The states after the QueryRNN where it ran in this step's plan.
    tensors = [planned.query_states.get(i, st) for i, st in enumerate(state.tensors)]
    new_groups = list(state.groups)
    for k, g in enumerate(groups):
        ests = [-estimates[i] if g.maximize else estimates[i] for i in g.index]
        sts = [tensors[i] for i in g.index]
        if g.use_update:
            signed = None if loss is None else (-loss if g.maximize else loss)
            flat = [e.reshape(st.coordinates).float() for e, st in zip(ests, sts)]
            updates, fresh, new_groups[k] = arch.update(
                weights, flat, sts, state.groups[k], [params[i] for i in g.index], g.lr,
                signed, g.q, in_place)
            alpha = 1.0
        else:  # the no-update ablation: ZO-SGD along the estimate
            updates, alpha = ests, -g.lr
            fresh = [replace(st, prev_estimate=e.reshape(st.coordinates).float(),
                             prev_update=(-g.lr * e).reshape(st.coordinates).float())
                     for e, st in zip(ests, sts)]
        for i, u, new in zip(g.index, updates, fresh):
            p = params[i]
            u = u.reshape(p.shape).to(p.dtype)
            new_params[i] = p.add_(u, alpha=alpha) if in_place else p.add(u, alpha=alpha)
            tensors[i] = replace(new, query_out=None)
    if in_place:
        where = _positions(groups)
        for query in planned.queries:
            k = where[query.index[0]]
            if not _learned(arch, groups[k]):
                continue
            sts = [tensors[i] for i in query.index]
            ahead, _ = arch.query_outputs(weights, sts, new_groups[k], in_place=True)
            for i, o in zip(query.index, ahead):
                tensors[i] = replace(tensors[i], query_out=o)
    return StepResult(new_params, LearnedState(tensors, new_groups))
