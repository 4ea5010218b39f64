"""The learned ZO step, in the order it runs: plan the queries, (the caller estimates), update.

``ZOLSTM.step``, the meta-training rollout and a population of weight sets evaluated in one
call all run these two functions around the oracle, so the optimizer that is trained is the
one that ships::

    plan = learned.plan(weights, arch, params, states, groups, parts, generator)
    found = oracle.estimate_gradient(objective, params, plan.queries)
    result = learned.update(weights, arch, params, states, groups, found.grads, found.loss,
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
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..oracle import Guide, Part, Query, draw_seeds
from .arch import Architecture, State, Weights

__all__ = ["COVARIANCES", "Group", "Plan", "StepResult", "next_query_outputs", "plan",
           "scales_from_outputs", "update"]

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


@dataclass(frozen=True)
class Plan:
    """A step's queries, and what the QueryRNN computed to shape them."""

    queries: list[Query]
    #: Per tensor, the QueryRNN outputs that shaped this step's directions (``None`` where
    #: it did not run): meta-training regularises them.
    query_outputs: list[Tensor | None]
    #: The QueryRNN's new states, by tensor position, where it ran now (not ahead).
    query_states: dict[int, State] = field(default_factory=dict)


@dataclass
class StepResult:
    """What :func:`update` returns: new objects unless ``in_place``."""

    params: list[Tensor]
    states: list[State]


def next_query_outputs(weights: Weights, arch: Architecture, states: Sequence[State]
                       ) -> tuple[list[Tensor], list[State]]:
    """The query outputs a step uses: those computed ahead (``query_out``) if every state
    has them, else the architecture's query network run now (a first step, or meta-training),
    with its new states."""
    if all("query_out" in st for st in states):
        return [st["query_out"] for st in states], []
    return arch.query_outputs(weights, states)


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


def plan(weights: Weights, arch: Architecture, params: Sequence[Tensor],
         states: Sequence[State], groups: Sequence[Group], parts: Sequence[Part],
         generator: torch.Generator) -> Plan:
    """The step's queries for ``params``, one per part (each part's tensors in one group's
    settings).

    Draws from ``generator`` in a fixed order: per part, its seeds, then (learned directions
    only) one mix draw. With population weights the states carry the weights' leading
    dimensions, and so do the scales; every member shares the seeds and the mix draws.
    """
    group_of = {i: g for g in groups for i in g.index}
    outputs: list[Tensor | None] = [None] * len(states)
    query_states: dict[int, State] = {}
    queries = []
    for part in parts:
        seeds = draw_seeds(generator, part.scheme.directions)
        g = group_of[part.index[0]]
        sts = [states[i] for i in part.index]
        if g.covariance == "guided":
            history = [[st["prev_estimate"] for st in sts], [st["prev_update"] for st in sts]]
            queries.append(part.query(seeds, guide=Guide.orthonormal(history, g.guide_alpha)))
            continue
        if not _learned(arch, g):
            queries.append(part.query(seeds))
            continue
        found, new = next_query_outputs(weights, arch, sts)
        query_states.update(zip(part.index, new))
        for i, o in zip(part.index, found):
            outputs[i] = o
        scales = scales_from_outputs(arch, found)
        shaped = [s.view((*s.shape[:-1], *params[i].shape[s.dim() - 1:]))
                  for s, i in zip(scales, part.index)]
        queries.append(part.query(seeds, shaped if _mix_draw(generator, g.query_prob)
                                  else None))
    return Plan(queries, outputs, query_states)


def update(weights: Weights, arch: Architecture, params: Sequence[Tensor],
           states: Sequence[State], groups: Sequence[Group], estimates: Sequence[Tensor],
           loss: Any, planned: Plan, *, in_place: bool = False) -> StepResult:
    """Every group's update from the step's ``estimates`` (one per tensor, in ``params``'
    dtype) and the ``loss`` the oracle measured at the current point (population-shaped, a
    number, or ``None``: the ``general`` architecture's loss features are then zero).

    ``in_place``: the optimizer's mode (no autograd): parameters and LSTM states are
    overwritten and the next step's QueryRNN outputs are computed. Otherwise nothing is
    modified and autograd flows through everything (meta-training).
    """
    if loss is not None:
        loss = torch.as_tensor(loss).detach().float()
    new_params, new_states = list(params), [dict(st) for st in states]
    for g in groups:
        ests = [-estimates[i] if g.maximize else estimates[i] for i in g.index]
        sts = [states[i] for i in g.index]
        if g.use_update:
            signed = None if loss is None else (-loss if g.maximize else loss)
            flat = [e.reshape(st["prev_estimate"].shape).float() for e, st in zip(ests, sts)]
            updates, fresh = arch.update(weights, flat, sts, [params[i] for i in g.index],
                                         g.lr, signed, g.q, in_place)
            alpha = 1.0
        else:  # the no-update ablation: ZO-SGD along the estimate
            updates, alpha = ests, -g.lr
            fresh = [{"prev_estimate": e.reshape(st["prev_estimate"].shape).float(),
                      "prev_update": (-g.lr * e).reshape(st["prev_update"].shape).float()}
                     for e, st in zip(ests, sts)]
        for i, u, new in zip(g.index, updates, fresh):
            p = params[i]
            u = u.reshape(p.shape).to(p.dtype)
            new_params[i] = p.add_(u, alpha=alpha) if in_place else p.add(u, alpha=alpha)
            new_states[i].update(planned.query_states.get(i, {}), **new)
            new_states[i].pop("query_out", None)
    if in_place:
        group_of = {i: g for g in groups for i in g.index}
        for query in planned.queries:
            if not _learned(arch, group_of[query.index[0]]):
                continue
            sts = [new_states[i] for i in query.index]
            ahead, _ = arch.query_outputs(weights, sts, in_place=True)
            for st, o in zip(sts, ahead):
                st["query_out"] = o
    return StepResult(new_params, new_states)
