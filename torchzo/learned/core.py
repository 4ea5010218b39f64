"""One ZO-LSTM step as pure functions: the code that meta-training trains and ZOLSTM runs.

A step, for the coordinates of a list of tensors, is

1. ``query_scale``: the QueryRNN reads (previous estimate, previous update) and gives the
   per-coordinate standard deviation of the query directions, ``|s|`` with
   ``s = (1 + o) * sqrt(d) / ||1 + o||``;
2. the oracle estimates the gradient with directions ``u = |s| * z`` (or ``z`` when the step
   uses the identity covariance);
3. ``learned_update``: the UpdateRNN turns the estimate into the update, scaled by ``lr``.

The functions never modify their inputs and keep autograd intact, so meta-training can
backpropagate through them; the optimizer calls them under ``no_grad``. Per-coordinate state is
a dict of tensors per parameter (the optimizer's ``state[p]``), see :func:`init_state`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .nets import LearnedZO, QueryRNN, UpdateRNN

__all__ = ["STATE_KEYS", "init_state", "learned_update", "query_scale"]

# The per-coordinate state of ZO-LSTM, held in float32 whatever the parameter dtype.
STATE_KEYS = ("update_h", "update_c", "query_h", "query_c", "prev_estimate", "prev_update")

State = dict[str, Tensor]


def init_state(p: Tensor, nets: LearnedZO) -> State:
    """Zero state for the coordinates of ``p`` (a new problem never inherits old state)."""
    n = p.numel()
    hu, hq = nets.hidden

    def zeros(*shape: int) -> Tensor:
        return torch.zeros(shape, device=p.device, dtype=torch.float32)

    return {
        "update_h": zeros(n, hu), "update_c": zeros(n, hu),
        "query_h": zeros(n, hq), "query_c": zeros(n, hq),
        "prev_estimate": zeros(n), "prev_update": zeros(n),
    }


def query_scale(net: QueryRNN, states: Sequence[State]
                ) -> tuple[list[Tensor], list[Tensor], list[State]]:
    """The QueryRNN's direction scales for each tensor, its raw deviations ``o``, new states.

    The scales are normalised over all coordinates of ``states`` together.
    """
    outs, new = [], []
    for st in states:
        inputs = torch.stack([st["prev_estimate"].detach(), st["prev_update"].detach()], dim=-1)
        o, h, c = net(inputs, st["query_h"], st["query_c"])
        outs.append(o)
        new.append({"query_h": h, "query_c": c})
    d = sum(o.numel() for o in outs)
    sq = sum(((1 + o) ** 2).sum() for o in outs)
    norm = torch.as_tensor(sq).sqrt() / math.sqrt(d)
    scales = [((1 + o) / norm).abs() for o in outs]
    return scales, outs, new


def learned_update(net: UpdateRNN, estimates: Sequence[Tensor], states: Sequence[State],
                   lr: float | Tensor = 1.0) -> tuple[list[Tensor], list[State]]:
    """The UpdateRNN's update ``lr * out`` for each tensor (flat), and the new states."""
    updates, new = [], []
    for g, st in zip(estimates, states):
        out, h, c = net(g.reshape(-1, 1), st["update_h"], st["update_c"])
        step = lr * out
        updates.append(step)
        new.append({"update_h": h, "update_c": c, "prev_estimate": g.reshape(-1).float(),
                    "prev_update": step.float()})
    return updates, new


def mix_draw(generator: torch.Generator, p: float) -> bool:
    """Whether this iteration uses the learned covariance (probability ``p``).

    Always draws one number, whatever ``p``, so that the random stream (and hence every later
    direction) does not depend on the mix probability.
    """
    u = torch.rand((), generator=generator, device=generator.device)
    return bool(u < p)
