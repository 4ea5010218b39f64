"""One ZO-LSTM step as pure functions: the code that meta-training trains and ZOLSTM runs.

A step, for the coordinates of a list of tensors, is

1. ``query_scale``: the QueryRNN reads the coordinate's history and gives the per-coordinate
   standard deviation of the query directions, normalised so that trace(Sigma) = d;
2. the oracle estimates the gradient with directions ``u = scale * z`` (or ``z`` when the step
   uses the identity covariance);
3. ``learned_update``: the UpdateRNN turns the estimate into the update, scaled by ``lr``.

The functions never modify their inputs and keep autograd intact, so meta-training can
backpropagate through them; the optimizer calls them under ``no_grad``. Per-coordinate state is
a dict of float32 tensors per parameter (the optimizer's ``state[p]``), see :func:`init_state`.
What the networks read and how their outputs become a step depends on ``nets.arch`` (see
:mod:`torchzo.learned.nets`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .nets import LearnedZO

__all__ = ["STATE_KEYS", "init_state", "learned_update", "mix_draw", "query_outputs",
           "query_scale", "scales_from_outputs"]

# Every per-coordinate state entry; all float32 whatever the parameter dtype.
STATE_KEYS = ("update_h", "update_c", "query_h", "query_c", "prev_estimate", "prev_update",
              "momenta", "second", "t")

State = dict[str, Tensor]


def init_state(p: Tensor, nets: LearnedZO) -> State:
    """Zero state for the coordinates of ``p`` (a new problem never inherits old state)."""
    n = p.numel()
    hu, hq = nets.hidden

    def zeros(*shape: int) -> Tensor:
        return torch.zeros(shape, device=p.device, dtype=torch.float32)

    state = {
        "update_h": zeros(n, hu), "update_c": zeros(n, hu),
        "query_h": zeros(n, hq), "query_c": zeros(n, hq),
        "prev_estimate": zeros(n), "prev_update": zeros(n),
    }
    if nets.arch.kind == "adam":
        state.update(momenta=zeros(n, len(nets.arch.momenta)), second=zeros(n), t=zeros())
    return state


def _rms(nets: LearnedZO, second: Tensor, t: Tensor) -> Tensor:
    """Bias-corrected running RMS of the estimate (Adam's denominator)."""
    bias = 1 - torch.pow(torch.as_tensor(nets.arch.beta2), t.clamp(min=1))
    return (second / bias).sqrt() + nets.arch.eps


def _normalised_momenta(nets: LearnedZO, momenta: Tensor, t: Tensor, rms: Tensor) -> Tensor:
    betas = torch.tensor(nets.arch.momenta, device=momenta.device)
    return momenta / (1 - torch.pow(betas, t.clamp(min=1))) / rms[:, None]


def query_scale(nets: LearnedZO, states: Sequence[State]
                ) -> tuple[list[Tensor], list[Tensor], list[State]]:
    """The QueryRNN's direction scales for each tensor, its raw outputs ``o``, new states.

    The scales are normalised over all coordinates of ``states`` together.
    """
    outs, new = query_outputs(nets, states)
    return scales_from_outputs(nets, outs), outs, new


def query_outputs(nets: LearnedZO, states: Sequence[State], in_place: bool = False
                  ) -> tuple[list[Tensor], list[State]]:
    """The QueryRNN's raw outputs ``o`` for each tensor, and its new states.

    ``in_place``: the new states overwrite the old ones (no autograd).
    """
    arch = nets.arch
    if arch.kind == "paper":
        inputs = [torch.stack([st["prev_estimate"].detach(), st["prev_update"].detach()], -1)
                  for st in states]
    else:
        rms = [_rms(nets, st["second"], st["t"]).detach() for st in states]
        log_rms = [r.log() for r in rms]
        centre = sum(lr.sum() for lr in log_rms) / sum(lr.numel() for lr in log_rms)
        inputs = []
        for st, r, lr in zip(states, rms, log_rms):
            seen = (st["t"] > 0).float()
            m = _normalised_momenta(nets, st["momenta"], st["t"], r)[:, arch.base]
            frac = (st["t"] / arch.horizon).expand_as(r)
            inputs.append(torch.stack([(st["prev_estimate"] / r).abs() * seen,
                                       m.detach().abs() * seen, (lr - centre) * seen, frac], -1))
    outs, new = [], []
    for x, st in zip(inputs, states):
        buffers = (st["query_h"], st["query_c"]) if in_place else None
        o, h, c = nets.query(x, st["query_h"], st["query_c"], buffers)
        outs.append(o[:, 0])
        new.append({"query_h": h, "query_c": c})
    return outs, new


def scales_from_outputs(nets: LearnedZO, outs: Sequence[Tensor]) -> list[Tensor]:
    """Per-coordinate standard deviations from the QueryRNN's outputs, with mean square 1."""
    raw = [1 + o if nets.arch.kind == "paper" else o.exp() for o in outs]
    d = sum(r.numel() for r in raw)
    norm = torch.as_tensor(sum((r**2).sum() for r in raw)).sqrt() / math.sqrt(d)
    return [(r / norm).abs() for r in raw]


def learned_update(nets: LearnedZO, estimates: Sequence[Tensor], states: Sequence[State],
                   lr: float | Tensor = 1.0, in_place: bool = False
                   ) -> tuple[list[Tensor], list[State]]:
    """The update for each tensor (flat) from its estimate, and the new states.

    ``in_place``: the new UpdateRNN states overwrite the old ones (no autograd; the
    optimizer, whose old states are dead once the step is taken).
    """
    arch = nets.arch
    updates, new = [], []
    for g, st in zip(estimates, states):
        g = g.reshape(-1).float()
        buffers = (st["update_h"], st["update_c"]) if in_place else None
        if arch.kind == "paper":
            out, h, c = nets.update(g[:, None], st["update_h"], st["update_c"], buffers)
            step = lr * out[:, 0]
            fresh = {}
        else:
            t = st["t"] + 1
            betas = torch.tensor(arch.momenta, device=g.device)
            second = arch.beta2 * st["second"] + (1 - arch.beta2) * g * g
            momenta = betas * st["momenta"] + (1 - betas) * g[:, None]
            rms = _rms(nets, second, t)
            m = _normalised_momenta(nets, momenta, t, rms)
            frac = (t / arch.horizon).expand_as(g)[:, None]
            out, h, c = nets.update(torch.cat([(g / rms)[:, None], m, frac], -1),
                                    st["update_h"], st["update_c"], buffers)
            assert nets.log_lr is not None
            step = -lr * torch.exp(nets.log_lr + out[:, 1]) * (m[:, arch.base] + out[:, 0])
            fresh = {"momenta": momenta, "second": second, "t": t}
        updates.append(step)
        new.append({"update_h": h, "update_c": c, "prev_estimate": g, "prev_update": step,
                    **fresh})
    return updates, new


def mix_draw(generator: torch.Generator, p: float) -> bool:
    """Whether this iteration uses the learned covariance (probability ``p``).

    Always draws one number, whatever ``p``, so that the random stream (and hence every later
    direction) does not depend on the mix probability.
    """
    u = torch.rand((), generator=generator, device=generator.device)
    return bool(u < p)
