"""The generalist architecture: a scale-free learned ZO step.

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
  own scale, with an absolute floor for a start at zero; ``sigma_rate=r`` scales each step's
  change of log sigma by ``r`` (fewer nats per step: less wandering under noise), and
  ``max_step=c`` caps sigma at ``c * rms(x)``;
- the query radius: every step whose estimate is exactly zero (each query difference vanished:
  a plateau of a piecewise-constant objective at this mu) doubles the radius factor, up to
  ``1e6``; a step with signal shrinks it back towards 1 (``mu * radius`` is what the oracle
  uses, see :meth:`GeneralConfig.radius`);
- the QueryRNN's counterpart is a per-coordinate MLP (the query net) over magnitudes (|fast
  momentum|, |base momentum| over RMS, log RMS against the mean) giving the log standard
  deviation of the coordinate's query directions; at zero read-out, isotropic.

A tensor's state is a :class:`GeneralState` (per coordinate); a param group's, held once per
group, a :class:`ControlState` (the controller's state, sigma, the radius, the last loss).
Population dimensions lead everywhere.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from ...oracle.directions import check_kind
from ..blocks import CoordLSTM, CoordMLP, coord_lstm, mlp
from ._signals import TINY, cosine, group_sum, loss_signals, zeros
from .base import Architecture, Weights, detached

__all__ = ["ControlState", "GeneralConfig", "GeneralState"]


class GeneralState(NamedTuple):
    """A tensor's state under the generalist's networks: per coordinate, float32."""

    #: The last estimate and update, ``(*population, n)``.
    prev_estimate: Tensor
    prev_update: Tensor
    #: The estimate's momenta, one per decay of ``momenta``: ``(*population, n, len(momenta))``.
    momenta: Tensor
    #: The running second moment of the estimate, ``(*population, n)``.
    second: Tensor
    #: The query net's outputs for the next step, computed ahead by an optimizer step.
    query_out: Tensor | None = None

    @property
    def coordinates(self) -> torch.Size:
        """``(*population, n)``."""
        return self.prev_estimate.shape


class ControlState(NamedTuple):
    """A param group's state: the step-size controller's, held once per group (each field
    ``(*population)``, the LSTM's ``(*population, hidden)``)."""

    #: The controller's LSTM state.
    ctrl_h: Tensor
    ctrl_c: Tensor
    #: log sigma, the step size before ``lr``, and its value at the first step.
    log_sigma: Tensor
    log_sigma0: Tensor
    #: log of the factor on the user's ``mu`` (see :meth:`GeneralConfig.radius`).
    log_radius: Tensor
    #: The last loss and the running magnitude of its change.
    prev_loss: Tensor
    loss_scale: Tensor
    #: Steps taken (a float, so that it can carry population dimensions).
    t: Tensor

_CONTROL_INPUTS = 8  # without the noise inputs
_QUERY_INPUTS = 3
_MAX_LOG_RADIUS = math.log(1e6)


class _Nets(nn.Module):
    def __init__(self, cfg: GeneralConfig) -> None:
        super().__init__()
        self.update = CoordMLP(1 + len(cfg.momenta), cfg.coord_hidden, 2)
        if cfg.query_net:
            self.query = CoordMLP(_QUERY_INPUTS, cfg.coord_hidden, 1)
        inputs = _CONTROL_INPUTS + (2 if cfg.noise_inputs else 0)
        self.control = CoordLSTM(inputs, cfg.hidden, 1, 0.0)
        self.log_lr = nn.Parameter(torch.tensor(math.log(cfg.init_lr)))
        self.log_floor = nn.Parameter(torch.tensor(math.log(cfg.floor)))
        self.gain = nn.Parameter(torch.tensor(float(cfg.gain)))


@dataclass(frozen=True)
class GeneralConfig(Architecture[GeneralState, ControlState]):
    """The generalist's settings (saved with its weights)."""

    kind: ClassVar[str] = "general"
    nonnegative_fields: ClassVar[tuple[str, ...]] = ("second", "t")
    state_type: ClassVar[type] = GeneralState
    group_state_type: ClassVar[type | None] = ControlState
    #: A mix of ZO-SGD's direction into the step, with an adapted weight (research flags).
    retired: ClassVar[dict[str, object]] = {"sgd_mix": False, "mix_gain": 0.0}

    #: Hidden units of the controller.
    hidden: int = 10
    #: The momenta's decays; the step follows the one at index ``base``.
    momenta: tuple[float, ...] = (0.5, 0.9, 0.99)
    base: int = 2
    #: Decay and relative eps of the running second moment of the estimate.
    beta2: float = 0.999
    eps: float = 1e-8
    #: The initial starting step size relative to the parameters' RMS.
    init_lr: float = 0.03
    #: Hidden units of the per-coordinate MLPs.
    coord_hidden: int = 8
    #: The initial absolute floor of the starting step size.
    floor: float = 1e-3
    #: The initial gain of the step-size rule.
    gain: float = 0.15
    #: The controller also reads how consistent the estimate is (the mean square of the
    #: RMS-normalised fast and base momenta: near 1 for a steady gradient, near
    #: (1 - beta) / (1 + beta) for noise).
    noise_inputs: bool = False
    #: ``False`` drops the query net; learned directions are then standard Gaussian ones (the
    #: query net's ablation measured no gain: docs/generalist.md).
    query_net: bool = True
    #: When positive, sigma is kept at most ``max_step`` times the RMS of the parameters (or
    #: the absolute floor, if larger): a step cannot outgrow the point.
    max_step: float = 0.0
    #: The factor on each step's change of log sigma (the hand rule plus the controller's
    #: read-out, clipped to [-1, 1] before it). Below 1, sigma moves more slowly and wanders
    #: less under noisy estimates (research/log.md).
    sigma_rate: float = 1.0
    #: The query directions the optimizer is meant to run with: one of
    #: :data:`torchzo.oracle.KINDS`.
    directions_kind: str = "gaussian"

    def __post_init__(self) -> None:
        if not 0 <= self.base < len(self.momenta):
            raise ValueError("base must index one of the momenta")
        if not 0 < self.sigma_rate <= 1:
            raise ValueError(f"sigma_rate must be in (0, 1], got {self.sigma_rate}")
        if self.max_step < 0:
            raise ValueError(f"max_step must be >= 0, got {self.max_step}")
        check_kind(self.directions_kind, "directions_kind")

    @property
    def has_query(self) -> bool:
        return self.query_net

    def build(self) -> nn.Module:
        return _Nets(self)

    def init_state(self, p: Tensor, population: tuple[int, ...] = ()) -> GeneralState:
        n = p.numel()
        return GeneralState(*zeros(p, population, (n,), (n,), (n, len(self.momenta)), (n,)))

    def init_group_state(self, p: Tensor, population: tuple[int, ...] = ()) -> ControlState:
        return ControlState(*zeros(p, population, (self.hidden,), (self.hidden,),
                                    *[()] * 6))

    @property
    def coordinate_width(self) -> int:
        # The controller's hidden units are the group's, not each coordinate's.
        return max(self.coord_hidden, 1 + len(self.momenta))

    def radius(self, weights: Weights, group: ControlState, mu: float | None,
               params: Sequence[Tensor]) -> float | Tensor:
        """The user's ``mu`` (or the dtype's default) times a factor: 1 at the start,
        doubled by every step whose estimate was exactly zero."""
        base, factor = super().radius(weights, group, mu, params), group.log_radius.exp()
        # One group's radius as a Python float (the oracle's), multiplied in double.
        return base * float(factor) if factor.dim() == 0 else base * factor

    def query_outputs(self, weights: Weights, states: Sequence[GeneralState],
                      group: ControlState, in_place: bool = False
                      ) -> tuple[list[Tensor], list[GeneralState]]:
        features = _query_features(self, [detached(st) for st in states], detached(group))
        return [mlp(weights, "query", x)[..., 0] for x in features], list(states)

    def raw_scale(self, outputs: Tensor) -> Tensor:
        return outputs.exp()

    def update(self, weights: Weights, estimates: Sequence[Tensor],
               states: Sequence[GeneralState], group: ControlState, params: Sequence[Tensor],
               lr: float | Tensor, loss: Tensor | None, q: int, in_place: bool = False
               ) -> tuple[list[Tensor], list[GeneralState], ControlState]:
        return _update(weights, self, estimates, states, group, params, lr, loss, q)








def _denominators(cfg: GeneralConfig, seconds: Sequence[Tensor], t: Tensor) -> list[Tensor]:
    """Bias-corrected RMS of each coordinate's estimate, with an eps relative to the group's
    mean RMS (an absolute eps would put a scale back in)."""
    bias = (1 - torch.pow(torch.as_tensor(cfg.beta2), t.clamp(min=1)))[..., None]
    rms = [(v / bias).sqrt() for v in seconds]
    mean = group_sum(rms) / sum(r.shape[-1] for r in rms)
    return [r + (cfg.eps * mean + TINY)[..., None] for r in rms]


def _unbiased(cfg: GeneralConfig, momenta: Tensor, t: Tensor, denom: Tensor) -> Tensor:
    betas = torch.tensor(cfg.momenta, device=momenta.device)
    bias = 1 - torch.pow(betas, t.clamp(min=1)[..., None, None])
    return momenta / bias / denom[..., None]


def _query_features(cfg: GeneralConfig, states: Sequence[GeneralState], group: ControlState
                    ) -> list[Tensor]:
    """The query net's inputs for each tensor of a set that shares one estimate."""
    t = group.t
    denoms = _denominators(cfg, [st.second for st in states], t)
    logs = [d.log() for d in denoms]
    centre = group_sum(logs) / sum(x.shape[-1] for x in logs)
    seen = (t > 0).float()[..., None]
    out = []
    for st, denom, log in zip(states, denoms, logs):
        m = _unbiased(cfg, st.momenta, t, denom)
        out.append(torch.stack([m[..., 0].abs() * seen, m[..., cfg.base].abs() * seen,
                                (log - centre[..., None]) * seen], -1).clamp(-10, 10))
    return out




def _update(weights: Weights, cfg: GeneralConfig, estimates: Sequence[Tensor],
            states: Sequence[GeneralState], g0: ControlState, params: Sequence[Tensor],
            lr: float | Tensor, loss: Tensor | None, q: int
            ) -> tuple[list[Tensor], list[GeneralState], ControlState]:
    """The group's updates (flat, per tensor), the new states of its tensors and its own new
    state (``g0``: the old); see the module docstring."""
    t = g0.t + 1
    betas = torch.tensor(cfg.momenta, device=estimates[0].device)
    seconds = [cfg.beta2 * st.second + (1 - cfg.beta2) * g * g
               for g, st in zip(estimates, states)]
    momenta = [betas * st.momenta + (1 - betas) * g[..., None]
               for g, st in zip(estimates, states)]
    denoms = _denominators(cfg, seconds, t)
    directions, steadiness = [], []
    for g, m, denom in zip(estimates, momenta, denoms):
        mh = _unbiased(cfg, m, t, denom)
        steadiness.append(mh[..., [0, cfg.base]] ** 2)
        out = mlp(weights, "update", torch.cat([(g / denom)[..., None], mh], -1).clamp(-10, 10))
        directions.append((mh[..., cfg.base] + out[..., 0]) * out[..., 1].clamp(-3, 3).exp())

    d = sum(g.shape[-1] for g in estimates)
    last = [-st.prev_update for st in states]
    hyper = (cosine(estimates, last) * math.sqrt((d + q + 1) / q)).clamp(-1, 1)
    agree = cosine(directions, last)
    zero = (group_sum([g * g for g in estimates]) == 0).float()
    loss_now, change, magnitude, scaled = loss_signals(g0, t, loss)

    first = g0.t == 0
    rms_x = None  # the parameters' RMS, computed only where a rule needs it
    if bool(first.any()) or cfg.max_step:
        rms_x = (group_sum([p.reshape(g.shape).float() ** 2 for p, g in zip(params, estimates)])
                 / d).sqrt()
    if bool(first.any()):  # the start step, relative to the parameters' scale
        assert rms_x is not None
        start = torch.maximum(weights["log_lr"].exp() * rms_x, weights["log_floor"].exp()).log()
        log_sigma0 = torch.where(first, start, g0.log_sigma0)
        log_sigma = torch.where(first, start, g0.log_sigma)
    else:
        log_sigma0, log_sigma = g0.log_sigma0, g0.log_sigma
    signals = [hyper, agree, scaled, change.sign(), zero,
               torch.tanh((log_sigma - log_sigma0) / 5), torch.log1p(t) / 7, torch.ones_like(t)]
    if cfg.noise_inputs:
        total = steadiness[0].sum(-2)
        for s in steadiness[1:]:
            total = total + s.sum(-2)
        signals += list((total / d + 1e-8).log().clamp(-20, 1).div(5).unbind(-1))
    inputs = torch.stack(signals, -1)
    out, h, c = coord_lstm(weights["control.cell.weight_ih"], weights["control.cell.weight_hh"],
                           weights["control.head.weight"], inputs[..., None, :],
                           g0.ctrl_h[..., None, :], g0.ctrl_c[..., None, :])
    move = (weights["gain"] * hyper + out[..., 0, 0]).clamp(-1, 1)
    log_sigma = log_sigma + cfg.sigma_rate * move  # x * 1.0 == x: rate 1 is the old step
    if rms_x is not None and cfg.max_step:  # a trust region relative to the point's scale
        cap = torch.maximum(cfg.max_step * rms_x, weights["log_floor"].exp()).log()
        log_sigma = torch.minimum(log_sigma, cap)
    sigma = lr * log_sigma.exp()
    log_radius = torch.where(zero > 0, (g0.log_radius + math.log(2)).clamp(max=_MAX_LOG_RADIUS),
                             0.8 * g0.log_radius)

    group = ControlState(h[..., 0, :], c[..., 0, :], log_sigma, log_sigma0, log_radius,
                         loss_now, magnitude, t)
    updates, new = [], []
    for g, m, v, u, st in zip(estimates, momenta, seconds, directions, states):
        step = -sigma[..., None] * u
        updates.append(step)
        new.append(st._replace(prev_estimate=g, prev_update=step, momenta=m, second=v))
    return updates, new, group
