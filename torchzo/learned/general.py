"""The generalist architecture (``Arch(kind="general")``): a scale-free learned ZO step.

The paper's networks read the raw estimate and add their output to the parameters, so their
step is tied to the gradient scale of their training family. Here nothing the networks read or
write carries a scale:

- per coordinate, the estimate and its momenta at several time scales are divided by the
  running RMS of the estimate (Adam's normalisation); a small MLP (the update net) reads them
  and corrects the base momentum's direction and its per-coordinate magnitude. With its
  read-out at zero (as initialised) the direction is ZO-Adam's;
- the step's size ``sigma`` is one number per param group, set by a recurrent controller
  (a one-row LSTM, the "UpdateRNN" of the group) from signals that do not change when the loss
  or the parameters are rescaled: the cosine of the new estimate with the last update (the
  sign of the hypergradient of the step size, corrected for the inflated norm of a
  q-direction estimate), the agreement of successive updates, the loss change divided by its
  running magnitude, whether the estimate is exactly zero, log sigma against its start, and
  log step count (never the horizon). Its read-out starts at zero too, so an untrained
  controller is the hand rule ``log sigma += gain * clip(cos * sqrt((d + q + 1) / q), -1, 1)``;
- sigma starts at ``max(exp(log_lr) * rms(x0), exp(log_floor))``, relative to the parameters'
  own scale, with an absolute floor for a start at zero; ``Arch(sigma_rate=r)`` scales each
  step's change of log sigma by ``r`` (fewer nats per step: less wandering under noise), and
  ``Arch(max_step=c)`` caps sigma at ``c * rms(x)``;
- the query radius: every step whose estimate is exactly zero (each query difference vanished:
  a plateau of a piecewise-constant objective at this mu) doubles the radius factor, up to
  ``1e6``; a step with signal shrinks it back towards 1 (``mu * radius`` is what the oracle
  uses, see :func:`radius`);
- with ``Arch(sgd_mix=True)``, the controller also sets a weight in [0, 1] that mixes
  ZO-SGD's direction (the base momentum over the group's RMS estimate) into the per-coordinate
  one; both are unit-free, so the mix is too. With ``mix_gain > 0`` the weight also follows
  its own hypergradient, as sigma does (see :func:`_mix_sgd`);
- the QueryRNN's counterpart is a per-coordinate MLP (the query net) over magnitudes (|fast
  momentum|, |base momentum| over RMS, log RMS against the mean) giving the log standard
  deviation of the coordinate's query directions; at zero read-out, isotropic.

Group-level entries (the controller's state, sigma, the radius, the last loss) are kept in
every tensor's state of the group with equal values; a step reads the first tensor's.
Population dimensions lead everywhere, as in :mod:`torchzo.learned.core`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .nets import Arch, coord_lstm

__all__ = ["CONTROL_INPUTS", "GROUP_KEYS", "MIX_KEYS", "QUERY_INPUTS", "control_inputs",
           "init_state", "mlp", "query_features", "radius", "update"]

#: Entries of a tensor's state that belong to its whole param group.
GROUP_KEYS = ("ctrl_h", "ctrl_c", "log_sigma", "log_sigma0", "log_radius", "prev_loss",
              "loss_scale", "t")
#: The state of an adapted SGD mix (``Arch(sgd_mix=True, mix_gain > 0)`` only): the last
#: difference of the two directions per coordinate, and the group's shift of the weight.
MIX_KEYS = ("prev_diff", "mix_shift")
CONTROL_INPUTS = 8  # without the noise inputs (see control_inputs)
QUERY_INPUTS = 3
_MAX_LOG_RADIUS = math.log(1e6)
_TINY = 1e-30

State = dict[str, Tensor]


def control_inputs(arch: Arch) -> int:
    """How many signals the controller reads."""
    return CONTROL_INPUTS + (2 if arch.noise_inputs else 0)


def init_state(p: Tensor, arch: Arch, population: tuple[int, ...] = ()) -> State:
    """Zero state for the coordinates of ``p``, plus its group's (zero) controller state."""
    n = p.numel()

    def zeros(*shape: int) -> Tensor:
        return torch.zeros((*population, *shape), device=p.device, dtype=torch.float32)

    state = {"prev_estimate": zeros(n), "prev_update": zeros(n),
             "momenta": zeros(n, len(arch.momenta)), "second": zeros(n)}
    state.update({k: zeros(arch.hidden) if k.startswith("ctrl") else zeros()
                  for k in GROUP_KEYS})
    if arch.sgd_mix and arch.mix_gain:
        state.update(prev_diff=zeros(n), mix_shift=zeros())
    return state


def radius(state: Mapping[str, Tensor]) -> Tensor:
    """The factor on the user's ``mu`` that the group's next estimate uses (1 at the start)."""
    return state["log_radius"].exp()


def _sum(xs: Sequence[Tensor]) -> Tensor:
    """The sum over every coordinate of a group: population-shaped."""
    total = xs[0].sum(-1)
    for x in xs[1:]:
        total = total + x.sum(-1)
    return total


def _cos(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    dot = _sum([x * y for x, y in zip(a, b)])
    norms = (_sum([x * x for x in a]) * _sum([y * y for y in b])).sqrt()
    return torch.where(norms > 0, dot / norms.clamp(min=_TINY), torch.zeros_like(dot))


def mlp(weights: Mapping[str, Tensor], net: str, x: Tensor) -> Tensor:
    """``fc2(tanh(fc1(x)))`` per coordinate; ``x`` (..., n, inputs)."""
    w1, b1, w2 = (weights[f"{net}.fc1.weight"], weights[f"{net}.fc1.bias"],
                  weights[f"{net}.fc2.weight"])
    hidden = torch.tanh(torch.matmul(x, w1.mT) + b1[..., None, :])
    return torch.matmul(hidden, w2.mT)


def _denominators(arch: Arch, seconds: Sequence[Tensor], t: Tensor) -> list[Tensor]:
    """Bias-corrected RMS of each coordinate's estimate, with an eps relative to the group's
    mean RMS (an absolute eps would put a scale back in)."""
    bias = (1 - torch.pow(torch.as_tensor(arch.beta2), t.clamp(min=1)))[..., None]
    rms = [(v / bias).sqrt() for v in seconds]
    mean = _sum(rms) / sum(r.shape[-1] for r in rms)
    return [r + (arch.eps * mean + _TINY)[..., None] for r in rms]


def _unbiased(arch: Arch, momenta: Tensor, t: Tensor, denom: Tensor) -> Tensor:
    betas = torch.tensor(arch.momenta, device=momenta.device)
    bias = 1 - torch.pow(betas, t.clamp(min=1)[..., None, None])
    return momenta / bias / denom[..., None]


def query_features(arch: Arch, states: Sequence[State]) -> list[Tensor]:
    """The query net's inputs for each tensor of a group that shares one estimate."""
    t = states[0]["t"]
    denoms = _denominators(arch, [st["second"] for st in states], t)
    logs = [d.log() for d in denoms]
    centre = _sum(logs) / sum(x.shape[-1] for x in logs)
    seen = (t > 0).float()[..., None]
    out = []
    for st, denom, log in zip(states, denoms, logs):
        m = _unbiased(arch, st["momenta"], t, denom)
        out.append(torch.stack([m[..., 0].abs() * seen, m[..., arch.base].abs() * seen,
                                (log - centre[..., None]) * seen], -1).clamp(-10, 10))
    return out


def _sgd_directions(arch: Arch, momenta: Sequence[Tensor], seconds: Sequence[Tensor],
                    t: Tensor) -> list[Tensor]:
    """ZO-SGD's direction: the bias-corrected base momentum over the group's RMS estimate, so
    that coordinates keep their relative sizes (where per-coordinate normalisation amplifies
    the noise of the weak ones) and no scale enters."""
    bias2 = 1 - torch.pow(torch.as_tensor(arch.beta2), t.clamp(min=1))
    d = sum(v.shape[-1] for v in seconds)
    rms = (_sum(seconds) / d / bias2).sqrt()
    bias = 1 - torch.pow(torch.as_tensor(arch.momenta[arch.base]), t.clamp(min=1))
    scale = (1 / (bias * rms.clamp(min=_TINY)))[..., None]
    return [m[..., arch.base] * scale for m in momenta]


def _mix_sgd(weights: Mapping[str, Tensor], arch: Arch, directions: Sequence[Tensor],
             momenta: Sequence[Tensor], seconds: Sequence[Tensor], states: Sequence[State],
             estimates: Sequence[Tensor], t: Tensor, read_out: Tensor, q: int
             ) -> tuple[list[Tensor], State, list[State]]:
    """``(1 - w) * directions + w * ZO-SGD's`` with ``w = clip(mix + shift + read_out, 0, 1)``,
    and the new group and per-tensor state entries of the mix.

    With ``arch.mix_gain``, ``shift`` follows the mix weight's hypergradient: the step moved
    ``x`` by ``-sigma w (sgd - adam)`` along the weight, so a new estimate that still points
    along the last difference ``sgd - adam`` says more weight would have gone further
    (``shift += gain * clip(cos * sqrt((d + q + 1) / q), -1, 1)``, the step size's rule)."""
    sgd = _sgd_directions(arch, momenta, seconds, t)
    diffs = [b - a for a, b in zip(directions, sgd)]
    group: State = {}
    per_tensor: list[State] = [{} for _ in directions]
    shift = torch.zeros_like(t)
    if arch.mix_gain:
        d = sum(g.shape[-1] for g in estimates)
        pull = (_cos(estimates, [st["prev_diff"] for st in states])
                * math.sqrt((d + q + 1) / q)).clamp(-1, 1)
        mix = weights["mix"].expand_as(t)
        shift = torch.minimum(torch.maximum(states[0]["mix_shift"] + arch.mix_gain * pull, -mix),
                              1 - mix)
        group = {"mix_shift": shift}
        per_tensor = [{"prev_diff": df} for df in diffs]
    w = (weights["mix"] + shift + read_out).clamp(0, 1)[..., None]
    return [a + w * df for a, df in zip(directions, diffs)], group, per_tensor


def update(weights: Mapping[str, Tensor], arch: Arch, estimates: Sequence[Tensor],
           states: Sequence[State], params: Sequence[Tensor], lr: float | Tensor,
           loss: Tensor | None, q: int) -> tuple[list[Tensor], list[State]]:
    """The group's updates (flat, per tensor) and new states; see the module docstring.

    ``loss``: the objective at the current point as the oracle measured it (population
    shaped), or ``None`` (the loss features are then zero); ``q``: directions per estimate.
    """
    g0 = states[0]
    t = g0["t"] + 1
    betas = torch.tensor(arch.momenta, device=estimates[0].device)
    seconds = [arch.beta2 * st["second"] + (1 - arch.beta2) * g * g
               for g, st in zip(estimates, states)]
    momenta = [betas * st["momenta"] + (1 - betas) * g[..., None]
               for g, st in zip(estimates, states)]
    denoms = _denominators(arch, seconds, t)
    directions, steadiness = [], []
    for g, m, denom in zip(estimates, momenta, denoms):
        mh = _unbiased(arch, m, t, denom)
        steadiness.append(mh[..., [0, arch.base]] ** 2)
        out = mlp(weights, "update", torch.cat([(g / denom)[..., None], mh], -1).clamp(-10, 10))
        directions.append((mh[..., arch.base] + out[..., 0]) * out[..., 1].clamp(-3, 3).exp())

    d = sum(g.shape[-1] for g in estimates)
    last = [-st["prev_update"] for st in states]
    hyper = (_cos(estimates, last) * math.sqrt((d + q + 1) / q)).clamp(-1, 1)
    agree = _cos(directions, last)
    zero = (_sum([g * g for g in estimates]) == 0).float()

    first = g0["t"] == 0
    if loss is None:
        loss_now = g0["prev_loss"]
    else:
        loss_now = torch.as_tensor(loss, dtype=torch.float32, device=t.device).expand_as(t)
    change = torch.where(first, torch.zeros_like(t), loss_now - g0["prev_loss"])
    magnitude = torch.where(g0["loss_scale"] > 0, 0.9 * g0["loss_scale"] + 0.1 * change.abs(),
                            change.abs())
    scaled = torch.where(magnitude > 0, change / magnitude.clamp(min=_TINY),
                         torch.zeros_like(change)).clamp(-5, 5)

    rms_x = None  # the parameters' RMS, computed only where a rule needs it
    if bool(first.any()) or arch.max_step:
        rms_x = (_sum([p.reshape(g.shape).float() ** 2 for p, g in zip(params, estimates)])
                 / d).sqrt()
    if bool(first.any()):  # the start step, relative to the parameters' scale
        assert rms_x is not None
        start = torch.maximum(weights["log_lr"].exp() * rms_x, weights["log_floor"].exp()).log()
        log_sigma0 = torch.where(first, start, g0["log_sigma0"])
        log_sigma = torch.where(first, start, g0["log_sigma"])
    else:
        log_sigma0, log_sigma = g0["log_sigma0"], g0["log_sigma"]
    signals = [hyper, agree, scaled, change.sign(), zero,
               torch.tanh((log_sigma - log_sigma0) / 5), torch.log1p(t) / 7, torch.ones_like(t)]
    if arch.noise_inputs:
        total = steadiness[0].sum(-2)
        for s in steadiness[1:]:
            total = total + s.sum(-2)
        signals += list((total / d + 1e-8).log().clamp(-20, 1).div(5).unbind(-1))
    inputs = torch.stack(signals, -1)
    out, h, c = coord_lstm(weights["control.cell.weight_ih"], weights["control.cell.weight_hh"],
                           weights["control.head.weight"], inputs[..., None, :],
                           g0["ctrl_h"][..., None, :], g0["ctrl_c"][..., None, :])
    mix_group: State = {}
    mix_tensors: list[State] = [{} for _ in estimates]
    if arch.sgd_mix:
        directions, mix_group, mix_tensors = _mix_sgd(weights, arch, directions, momenta,
                                                      seconds, states, estimates, t,
                                                      out[..., 0, 1], q)
    move = (weights["gain"] * hyper + out[..., 0, 0]).clamp(-1, 1)
    log_sigma = log_sigma + arch.sigma_rate * move  # x * 1.0 == x: rate 1 is the old step
    if rms_x is not None and arch.max_step:  # a trust region relative to the point's scale
        cap = torch.maximum(arch.max_step * rms_x, weights["log_floor"].exp()).log()
        log_sigma = torch.minimum(log_sigma, cap)
    sigma = lr * log_sigma.exp()
    log_radius = torch.where(zero > 0, (g0["log_radius"] + math.log(2)).clamp(max=_MAX_LOG_RADIUS),
                             0.8 * g0["log_radius"])

    group = {"ctrl_h": h[..., 0, :], "ctrl_c": c[..., 0, :], "log_sigma": log_sigma,
             "log_sigma0": log_sigma0, "log_radius": log_radius, "prev_loss": loss_now,
             "loss_scale": magnitude, "t": t, **mix_group}
    updates, new = [], []
    for g, m, v, u, extra in zip(estimates, momenta, seconds, directions, mix_tensors):
        step = -sigma[..., None] * u
        updates.append(step)
        new.append({"prev_estimate": g, "prev_update": step, "momenta": m, "second": v,
                    **extra, **group})
    return updates, new
