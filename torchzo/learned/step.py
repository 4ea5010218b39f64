"""The learned ZO step: the one place that fixes the order of a ZO-LSTM step.

``ZOLSTM.step``, the meta-training rollout and a population of weight sets evaluated in one
call all run :func:`step`, so the optimizer that is trained is the one that ships. The order:

1. the oracle draws each estimate's query seeds and asks for its query distribution: the
   QueryRNN's scales (computed ahead by the previous step, or now), then the mix draw that
   picks them or the identity covariance, or a GuidedES subspace, or plain Gaussian directions;
2. the oracle estimates the gradient;
3. per group: the UpdateRNN's update (or, without it, a ZO-SGD step), applied to the
   parameters, and the new per-coordinate state;
4. optimizer mode (``in_place``) only: the QueryRNN's outputs for the next step, over the same
   sets of tensors that shared an estimate (the next step can then fail at any query and leave
   the state as it is). Same values as computing them at the next step's start.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..oracle import Distribution, Guide
from . import core
from .nets import Arch

__all__ = ["DIRECTIONS", "EstimateFn", "Group", "StepResult", "step"]

DIRECTIONS = ("learned", "gaussian", "guided_es")

#: Runs the oracle with the step's query distribution (see :data:`torchzo.oracle.Distribution`);
#: returns whatever the caller wants back (:attr:`StepResult.estimate`), the estimate for
#: each tensor, and the loss the oracle measured at the current point (population-shaped, a
#: number, or ``None`` when there is none: the ``general`` architecture's loss features).
EstimateFn = Callable[[Distribution], tuple[Any, Sequence[Tensor], Any]]


@dataclass(frozen=True)
class Group:
    """The settings of a set of tensors (a param group): positions in the step's tensor list.

    Tensors that share an estimate must agree on ``directions``, ``query_prob`` and
    ``guide_alpha`` (the optimizer partitions its groups so).
    """

    index: tuple[int, ...]
    lr: float = 1.0
    maximize: bool = False
    use_update: bool = True
    directions: str = "learned"
    query_prob: float = 0.5
    guide_alpha: float = 0.5
    #: Directions per estimate (the ``general`` architecture's step-size signal needs it).
    q: int = 20


@dataclass
class StepResult:
    """What a step returns. ``params`` and ``states`` are new objects unless ``in_place``."""

    estimate: Any
    params: list[Tensor]
    states: list[core.State]
    #: Per tensor, the QueryRNN outputs that shaped this step's directions (``None`` where
    #: it did not run): meta-training regularises them.
    query_outputs: list[Tensor | None] = field(default_factory=list)


def step(weights: core.Weights, arch: Arch, params: Sequence[Tensor],
         states: Sequence[core.State], groups: Sequence[Group], estimate: EstimateFn,
         generator: torch.Generator, *, in_place: bool = False) -> StepResult:
    """One ZO-LSTM step for ``params`` (each with its state in ``states``).

    ``in_place``: the optimizer's mode (no autograd): parameters and LSTM states are
    overwritten and the next step's QueryRNN outputs are computed. Otherwise nothing is
    modified and autograd flows through everything (meta-training). With population weights,
    params, states and estimates carry the weights' leading dimensions; every member shares
    the generator, so the same directions and mix draws.
    """
    group_of = {i: g for g in groups for i in g.index}
    shared: list[Sequence[int]] = []
    outs: list[Tensor | None] = [None] * len(params)
    query_states: dict[int, core.State] = {}

    def distribution(index: Sequence[int]) -> tuple[list[Tensor] | None, Guide | None]:
        g = group_of[index[0]]
        shared.append(index)
        sts = [states[i] for i in index]
        if g.directions == "gaussian" or (g.directions == "learned"
                                           and not core.has_query(arch)):
            return None, None
        if g.directions == "guided_es":
            history = [[st["prev_estimate"] for st in sts], [st["prev_update"] for st in sts]]
            return None, Guide.orthonormal(history, g.guide_alpha)
        found, new = core.next_query_outputs(weights, arch, sts)
        query_states.update(zip(index, new))
        for i, o in zip(index, found):
            outs[i] = o
        scales = core.scales_from_outputs(arch, found)
        if not core.mix_draw(generator, g.query_prob):
            return None, None
        return [s.view((*s.shape[:-1], *params[i].shape[s.dim() - 1:]))
                for s, i in zip(scales, index)], None

    result, estimates, loss = estimate(distribution)
    if loss is not None:
        loss = torch.as_tensor(loss).detach().float()
    new_params, new_states = list(params), [dict(st) for st in states]
    for g in groups:
        ests = [-estimates[i] if g.maximize else estimates[i] for i in g.index]
        sts = [states[i] for i in g.index]
        if g.use_update:
            signed = None if loss is None else (-loss if g.maximize else loss)
            updates, fresh = core.learned_update(weights, arch, ests, sts, g.lr, in_place,
                                                 params=[params[i] for i in g.index],
                                                 loss=signed, q=g.q)
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
            new_states[i].update(query_states.get(i, {}), **new)
            new_states[i].pop("query_out", None)
    if in_place:
        for index in shared:
            if group_of[index[0]].directions != "learned" or not core.has_query(arch):
                continue
            sts = [new_states[i] for i in index]
            ahead, _ = core.query_outputs(weights, arch, sts, in_place=True)
            for st, o in zip(sts, ahead):
                st["query_out"] = o
    return StepResult(result, new_params, new_states, outs)
