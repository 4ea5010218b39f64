"""The parts of a ZO-LSTM step that every architecture shares, as pure functions.

A step, for the coordinates of a list of tensors, is

1. ``query_scale``: the query network reads the coordinate's history and gives the
   per-coordinate standard deviation of the query directions, normalised so that
   trace(Sigma) = d;
2. the oracle estimates the gradient with directions ``u = scale * z`` (or ``z`` when the step
   uses the identity covariance);
3. ``learned_update``: the update network turns the estimate into the update.

The functions never modify their inputs and keep autograd intact, so meta-training can
backpropagate through them; the optimizer calls them under ``no_grad``. Per-coordinate state is
a dict of float32 tensors per parameter (the optimizer's ``state[p]``). What the networks read
and how their outputs become a step is the architecture's (:mod:`torchzo.learned.arch`). The
networks enter as their weights (:data:`Weights`), which may carry leading population
dimensions; the order in which a step calls these functions is :mod:`torchzo.learned.step`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .arch import Architecture, State, Weights

__all__ = ["State", "Weights", "has_query", "init_state", "learned_update", "mix_draw",
           "next_query_outputs", "query_outputs", "query_scale", "scales_from_outputs"]


def has_query(arch: Architecture) -> bool:
    """Whether ``arch`` has a query network; without one, learned directions are standard
    Gaussian ones."""
    return arch.has_query


def init_state(p: Tensor, arch: Architecture, population: tuple[int, ...] = ()) -> State:
    """Zero state for the coordinates of ``p`` (a new problem never inherits old state).

    ``population``: the leading dimensions of a population of weight sets, one state each.
    """
    return arch.init_state(p, population)


def query_scale(weights: Weights, arch: Architecture, states: Sequence[State]
                ) -> tuple[list[Tensor], list[Tensor], list[State]]:
    """The query network's direction scales for each tensor, its raw outputs ``o``, new states.

    The scales are normalised over all coordinates of ``states`` together.
    """
    outs, new = query_outputs(weights, arch, states)
    return scales_from_outputs(arch, outs), outs, new


def query_outputs(weights: Weights, arch: Architecture, states: Sequence[State],
                  in_place: bool = False) -> tuple[list[Tensor], list[State]]:
    """The query network's raw outputs ``o`` for each tensor (flat), and its new states.

    ``in_place``: the new states overwrite the old ones (no autograd).
    """
    return arch.query_outputs(weights, states, in_place)


def next_query_outputs(weights: Weights, arch: Architecture, states: Sequence[State]
                       ) -> tuple[list[Tensor], list[State]]:
    """The query outputs a step uses: those computed ahead (``query_out``) if every state
    has them, else :func:`query_outputs` now (a first step, or meta-training)."""
    if all("query_out" in st for st in states):
        return [st["query_out"] for st in states], []
    return query_outputs(weights, arch, states)


def scales_from_outputs(arch: Architecture, outs: Sequence[Tensor]) -> list[Tensor]:
    """Per-coordinate standard deviations from the query outputs, with mean square 1."""
    raw = [arch.raw_scale(o) for o in outs]
    d = sum(r.shape[-1] for r in raw)
    norm = torch.as_tensor(sum((r**2).sum(-1) for r in raw)).sqrt() / math.sqrt(d)
    return [(r / norm[..., None]).abs() for r in raw]


def learned_update(weights: Weights, arch: Architecture, estimates: Sequence[Tensor],
                   states: Sequence[State], lr: float | Tensor = 1.0, in_place: bool = False,
                   *, params: Sequence[Tensor], loss: Tensor | None = None,
                   q: int = 20) -> tuple[list[Tensor], list[State]]:
    """The update for each tensor (flat) of one param group from its estimate, new states.

    ``in_place``: the new recurrent states overwrite the old ones (no autograd; the
    optimizer, whose old states are dead once the step is taken). ``params``: the group's
    tensors (the ``general`` architecture's starting step size is relative to their scale);
    ``loss``: the objective the oracle measured at them (or ``None``); ``q``: the number of
    directions of the estimate.
    """
    flat = [g.reshape(st["prev_estimate"].shape).float() for g, st in zip(estimates, states)]
    return arch.update(weights, flat, states, params, lr, loss, q, in_place)


def mix_draw(generator: torch.Generator, p: float) -> bool:
    """Whether this iteration uses the learned covariance (probability ``p``).

    Always draws one number, whatever ``p``, so that the random stream (and hence every later
    direction) does not depend on the mix probability.
    """
    u = torch.rand((), generator=generator, device=generator.device)
    return bool(u < p)
