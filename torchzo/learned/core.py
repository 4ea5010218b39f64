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
What the networks read and how their outputs become a step depends on the architecture (see
:mod:`torchzo.learned.nets`). The networks enter as their weights (:data:`Weights`), which may
carry leading population dimensions; the order in which a step calls these functions is
:func:`torchzo.learned.plan` and :func:`torchzo.learned.update`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from . import general
from .nets import Arch, coord_lstm

__all__ = ["STATE_KEYS", "Weights", "has_query", "init_state", "learned_update", "mix_draw",
           "next_query_outputs", "query_outputs", "query_scale", "scales_from_outputs"]

# Every per-coordinate state entry; all float32 whatever the parameter dtype.
STATE_KEYS = tuple(dict.fromkeys((
    "update_h", "update_c", "query_h", "query_c", "prev_estimate", "prev_update", "momenta",
    "second", "t", *general.GROUP_KEYS, *general.MIX_KEYS)))

State = dict[str, Tensor]
#: The networks' weights by parameter name (``LearnedZO.weights()``); a population carries
#: leading dimensions on every weight, and its states and estimates carry the same ones.
Weights = Mapping[str, Tensor]


def has_query(arch: Arch) -> bool:
    """Whether ``arch`` has a QueryRNN (or query net); without one, learned directions are
    standard Gaussian ones."""
    return arch.kind != "general" or arch.query_net


def init_state(p: Tensor, arch: Arch, population: tuple[int, ...] = ()) -> State:
    """Zero state for the coordinates of ``p`` (a new problem never inherits old state).

    ``population``: the leading dimensions of a population of weight sets, one state each.
    """
    if arch.kind == "general":
        return general.init_state(p, arch, population)
    n, k = p.numel(), arch.hidden

    def zeros(*shape: int) -> Tensor:
        return torch.zeros((*population, *shape), device=p.device, dtype=torch.float32)

    state = {
        "update_h": zeros(n, k), "update_c": zeros(n, k),
        "query_h": zeros(n, k), "query_c": zeros(n, k),
        "prev_estimate": zeros(n), "prev_update": zeros(n),
    }
    if arch.kind == "adam":
        state.update(momenta=zeros(n, len(arch.momenta)), second=zeros(n), t=zeros())
    return state


def _lstm(weights: Weights, net: str, x: Tensor, h: Tensor, c: Tensor, in_place: bool
          ) -> tuple[Tensor, Tensor, Tensor]:
    return coord_lstm(weights[f"{net}.cell.weight_ih"], weights[f"{net}.cell.weight_hh"],
                      weights[f"{net}.head.weight"], x, h, c, (h, c) if in_place else None)


def _rms(arch: Arch, second: Tensor, t: Tensor) -> Tensor:
    """Bias-corrected running RMS of the estimate (Adam's denominator)."""
    bias = 1 - torch.pow(torch.as_tensor(arch.beta2), t.clamp(min=1)[..., None])
    return (second / bias).sqrt() + arch.eps


def _normalised_momenta(arch: Arch, momenta: Tensor, t: Tensor, rms: Tensor) -> Tensor:
    betas = torch.tensor(arch.momenta, device=momenta.device)
    return momenta / (1 - torch.pow(betas, t.clamp(min=1)[..., None, None])) / rms[..., None]


def _horizon_fraction(arch: Arch, t: Tensor, like: Tensor) -> Tensor:
    return (t / arch.horizon)[..., None].expand_as(like)


def query_scale(weights: Weights, arch: Arch, states: Sequence[State]
                ) -> tuple[list[Tensor], list[Tensor], list[State]]:
    """The QueryRNN's direction scales for each tensor, its raw outputs ``o``, new states.

    The scales are normalised over all coordinates of ``states`` together.
    """
    outs, new = query_outputs(weights, arch, states)
    return scales_from_outputs(arch, outs), outs, new


def query_outputs(weights: Weights, arch: Arch, states: Sequence[State], in_place: bool = False
                  ) -> tuple[list[Tensor], list[State]]:
    """The QueryRNN's raw outputs ``o`` for each tensor (flat), and its new states.

    ``in_place``: the new states overwrite the old ones (no autograd).
    """
    if arch.kind == "general":
        features = general.query_features(arch, [{k: v.detach() for k, v in st.items()}
                                                 for st in states])
        return [general.mlp(weights, "query", x)[..., 0] for x in features], [{} for _ in states]
    if arch.kind == "paper":
        inputs = [torch.stack([st["prev_estimate"].detach(), st["prev_update"].detach()], -1)
                  for st in states]
    else:
        rms = [_rms(arch, st["second"], st["t"]).detach() for st in states]
        log_rms = [r.log() for r in rms]
        count = sum(lr.shape[-1] for lr in log_rms)
        centre = torch.as_tensor(sum(lr.sum(-1) for lr in log_rms)) / count
        inputs = []
        for st, r, lr in zip(states, rms, log_rms):
            seen = (st["t"] > 0).float()[..., None]
            m = _normalised_momenta(arch, st["momenta"], st["t"], r)[..., arch.base]
            inputs.append(torch.stack([(st["prev_estimate"] / r).abs() * seen,
                                       m.detach().abs() * seen,
                                       (lr - centre[..., None]) * seen,
                                       _horizon_fraction(arch, st["t"], r)], -1))
    outs, new = [], []
    for x, st in zip(inputs, states):
        o, h, c = _lstm(weights, "query", x, st["query_h"], st["query_c"], in_place)
        outs.append(o[..., 0])
        new.append({"query_h": h, "query_c": c})
    return outs, new


def next_query_outputs(weights: Weights, arch: Arch, states: Sequence[State]
                       ) -> tuple[list[Tensor], list[State]]:
    """The QueryRNN outputs a step uses: those computed ahead (``query_out``) if every state
    has them, else :func:`query_outputs` now (a first step, or meta-training)."""
    if all("query_out" in st for st in states):
        return [st["query_out"] for st in states], []
    return query_outputs(weights, arch, states)


def scales_from_outputs(arch: Arch, outs: Sequence[Tensor]) -> list[Tensor]:
    """Per-coordinate standard deviations from the QueryRNN's outputs, with mean square 1."""
    raw = [1 + o if arch.kind == "paper" else o.exp() for o in outs]
    d = sum(r.shape[-1] for r in raw)
    norm = torch.as_tensor(sum((r**2).sum(-1) for r in raw)).sqrt() / math.sqrt(d)
    return [(r / norm[..., None]).abs() for r in raw]


def learned_update(weights: Weights, arch: Arch, estimates: Sequence[Tensor],
                   states: Sequence[State], lr: float | Tensor = 1.0, in_place: bool = False,
                   *, params: Sequence[Tensor] | None = None, loss: Tensor | None = None,
                   q: int = 20) -> tuple[list[Tensor], list[State]]:
    """The update for each tensor (flat) of one param group from its estimate, new states.

    ``in_place``: the new UpdateRNN states overwrite the old ones (no autograd; the
    optimizer, whose old states are dead once the step is taken). The ``general``
    architecture also reads the group's ``params`` (its starting step size is relative to
    their scale), the ``loss`` the oracle measured at them (or ``None``) and ``q``, the number
    of directions of the estimate.
    """
    if arch.kind == "general":
        if params is None:
            raise ValueError("the general architecture needs the group's params")
        flat = [g.reshape(st["prev_estimate"].shape).float() for g, st in zip(estimates, states)]
        return general.update(weights, arch, flat, states, params, lr, loss, q)
    updates, new = [], []
    for g, st in zip(estimates, states):
        g = g.reshape(st["prev_estimate"].shape).float()
        if arch.kind == "paper":
            out, h, c = _lstm(weights, "update", g[..., None], st["update_h"], st["update_c"],
                              in_place)
            step = lr * out[..., 0]
            fresh = {}
        else:
            t = st["t"] + 1
            betas = torch.tensor(arch.momenta, device=g.device)
            second = arch.beta2 * st["second"] + (1 - arch.beta2) * g * g
            momenta = betas * st["momenta"] + (1 - betas) * g[..., None]
            rms = _rms(arch, second, t)
            m = _normalised_momenta(arch, momenta, t, rms)
            frac = _horizon_fraction(arch, t, g)[..., None]
            out, h, c = _lstm(weights, "update", torch.cat([(g / rms)[..., None], m, frac], -1),
                              st["update_h"], st["update_c"], in_place)
            log_lr = weights["log_lr"][..., None]
            step = -lr * torch.exp(log_lr + out[..., 1]) * (m[..., arch.base] + out[..., 0])
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
