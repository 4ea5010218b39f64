"""The lean generalist: a learned controller of the step size and the query radius over a
normalised momentum, with two bytes of state a parameter.

The first generalist (``general``) keeps per coordinate three momenta, a second moment and the
last estimate and update (24-28 bytes a parameter). Here a coordinate keeps one momentum of the
estimate, stored in bfloat16; everything else is one number per tensor or per param group:

- **direction**: the momentum over the RMS of the estimate, that RMS one running number per
  tensor (Adam's normalisation with one second moment a block, as Adam-mini). At large d / q
  a per-coordinate second moment of a ZO estimate is the same noise on every coordinate, so
  little is lost; at small d the step-size controller has to make up for it;
- **step**: ``sigma = lr * s * sqrt(q / (d + q))`` per coordinate. For an isotropic quadratic
  whose minimum is ``r`` away per coordinate, a normalised estimate from ``q`` Gaussian
  directions makes the most progress at a step of ``r * sqrt(q / (d + q))`` (derived in
  docs/generalist.md); so the group's scale ``s`` is an estimate of how far the minimum is, and
  the dimension enters by design, not by training;
- ``s`` starts at ``max(exp(log_lr) * rms(x0), exp(log_floor))`` and is moved by a controller
  (a one-row LSTM per group) over signals that do not change when the loss or the parameters
  are rescaled: the cosine of the new estimate with the last direction (the sign of the
  step size's hypergradient, corrected for the inflated norm of a q-direction estimate), the
  agreement of successive directions, the loss change over its running magnitude, whether the
  estimate is exactly zero, how steady the momentum is (near 1 for a steady gradient, near
  ``(1 - beta1) / (1 + beta1)`` for noise), ``log(q / (d + q))``, the radius factor, log s
  against its start and log step count. Its read-out starts at zero: untrained, it is the hand
  rule ``log s += gain * clip(cos * sqrt((d + q + 1) / q), -1, 1)``, times ``sigma_rate``;
  ``max_scale`` caps ``s`` relative to the parameters' RMS;
- **radius**: without a user ``mu`` the queries use ``mu = rho * s``: the radius follows the
  distance scale, as CMA-ES's sigma is both its sampling radius and its step. ``log rho`` is a
  learned start plus an offset in the group's state that grows by log 2 on every exactly-zero
  estimate (a plateau of a piecewise-constant objective), decays otherwise and is pushed by
  the controller's second output (noise-dominated differences want a larger radius). With a
  user ``mu``, the offset's factor multiplies it.

A tensor's state is a :class:`LeanState`; a param group's, a :class:`LeanControl`. The update
reads each tensor in passes that a chunked, in-place step can make: per-tensor sums first,
the group's scalars from them, then one elementwise write. Population dimensions lead
everywhere.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from ...oracle.directions import check_kind
from ..blocks import CoordLSTM, coord_lstm
from ._signals import TINY, loss_signals, zeros
from .base import Architecture, Weights

__all__ = ["LeanConfig", "LeanControl", "LeanState", "Planned", "Sums", "finish_step", "momentum",
           "plan_step", "sums"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_INPUTS = 11
_MAX_LOG_RHO = math.log(1e6)
_MIN_LOG_RHO = -math.log(1e3)


class LeanState(NamedTuple):
    """A tensor's state under the lean networks."""

    #: The estimate's momentum, ``(*population, n)``, in the architecture's ``momentum_dtype``.
    momentum: Tensor
    #: The running mean square of the tensor's estimate, ``(*population)``.
    second: Tensor
    #: Unused: the lean architecture has no query network.
    query_out: Tensor | None = None

    @property
    def coordinates(self) -> torch.Size:
        """``(*population, n)``."""
        return self.momentum.shape


class LeanControl(NamedTuple):
    """A param group's state (each field ``(*population)``, the LSTM's
    ``(*population, hidden)``)."""

    #: The controller's LSTM state.
    ctrl_h: Tensor
    ctrl_c: Tensor
    #: log s, the distance scale, and its value at the first step.
    log_scale: Tensor
    log_scale0: Tensor
    #: The adapted offset of log rho (the radius factor).
    log_rho: Tensor
    #: The last loss and the running magnitude of its change.
    prev_loss: Tensor
    loss_scale: Tensor
    #: Steps taken.
    t: Tensor


class _Nets(nn.Module):
    def __init__(self, cfg: LeanConfig) -> None:
        super().__init__()
        self.control = CoordLSTM(_INPUTS, cfg.hidden, 2, 0.0)
        self.log_lr = nn.Parameter(torch.tensor(math.log(cfg.init_lr)))
        self.log_floor = nn.Parameter(torch.tensor(math.log(cfg.floor)))
        self.gain = nn.Parameter(torch.tensor(float(cfg.gain)))
        self.log_rho = nn.Parameter(torch.tensor(math.log(cfg.rho)))


@dataclass(frozen=True)
class LeanConfig(Architecture[LeanState, LeanControl]):
    """The lean generalist's settings (saved with its weights)."""

    kind: ClassVar[str] = "lean"
    nonnegative_fields: ClassVar[tuple[str, ...]] = ("second", "loss_scale", "t")
    state_type: ClassVar[type] = LeanState
    group_state_type: ClassVar[type | None] = LeanControl

    #: Hidden units of the controller.
    hidden: int = 8
    #: Decay of the momentum and of each tensor's running mean square.
    beta1: float = 0.9
    beta2: float = 0.99
    #: The initial start of the distance scale, relative to the parameters' RMS.
    init_lr: float = 0.01
    #: The initial absolute floor of the start (for parameters that start at zero).
    floor: float = 1e-3
    #: The initial gain of the hand rule.
    gain: float = 0.15
    #: The initial radius relative to the distance scale.
    rho: float = 0.1
    #: The factor on each step's change of log s.
    sigma_rate: float = 0.25
    #: When positive, s is kept at most ``max_scale`` times the parameters' RMS (or the floor).
    max_scale: float = 1.0
    #: How the momentum is stored: ``"bfloat16"`` (2 bytes a parameter) or ``"float32"``.
    momentum_dtype: str = "bfloat16"
    #: The query directions the optimizer is meant to run with.
    directions_kind: str = "auto"

    def __post_init__(self) -> None:
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 < self.sigma_rate <= 1:
            raise ValueError(f"sigma_rate must be in (0, 1], got {self.sigma_rate}")
        if self.max_scale < 0:
            raise ValueError(f"max_scale must be >= 0, got {self.max_scale}")
        if self.momentum_dtype not in _DTYPES:
            raise ValueError(f"momentum_dtype must be one of {tuple(_DTYPES)}, "
                             f"got {self.momentum_dtype!r}")
        check_kind(self.directions_kind, "directions_kind")

    @property
    def has_query(self) -> bool:
        return False

    @property
    def has_history(self) -> bool:
        return False

    @property
    def coordinate_width(self) -> int:
        return 1

    @property
    def owns_radius(self) -> bool:
        return True

    @property
    def chunked(self) -> bool:
        return True

    def build(self) -> nn.Module:
        return _Nets(self)

    def init_state(self, p: Tensor, population: tuple[int, ...] = ()) -> LeanState:
        momentum = torch.zeros((*population, p.numel()), device=p.device,
                               dtype=_DTYPES[self.momentum_dtype])  # no float32 copy first
        return LeanState(momentum, *zeros(p, population, ()))

    def init_group_state(self, p: Tensor, population: tuple[int, ...] = ()) -> LeanControl:
        return LeanControl(*zeros(p, population, (self.hidden,), (self.hidden,), *[()] * 6))

    def query_outputs(self, weights: Weights, states: Sequence[LeanState],
                      group: LeanControl, in_place: bool = False
                      ) -> tuple[list[Tensor], list[LeanState]]:
        raise NotImplementedError("the lean architecture has no query network")

    def raw_scale(self, outputs: Tensor) -> Tensor:
        raise NotImplementedError("the lean architecture has no query network")

    def radius(self, weights: Weights, group: LeanControl, mu: float | None,
               params: Sequence[Tensor]) -> float | Tensor:
        """``mu`` times the adapted factor, or without one ``rho * s`` (at the first step,
        ``s``'s start from ``params``)."""
        if mu is not None:
            factor = group.log_rho.exp()
            # One group's radius as a Python float (the oracle's), multiplied in double.
            return mu * float(factor) if factor.dim() == 0 else mu * factor
        log_scale = group.log_scale
        if bool((group.t == 0).any()):
            start = _start(weights, _rms(params, [p.reshape(*group.t.shape, -1)
                                                  for p in params]))
            log_scale = torch.where(group.t == 0, start, log_scale)
        return (weights["log_rho"] + group.log_rho + log_scale).exp()

    def update(self, weights: Weights, estimates: Sequence[Tensor],
               states: Sequence[LeanState], group: LeanControl, params: Sequence[Tensor],
               lr: float | Tensor, loss: Tensor | None, q: int, in_place: bool = False
               ) -> tuple[list[Tensor], list[LeanState], LeanControl]:
        return _update(weights, self, estimates, states, group, params, lr, loss, q)


def _rms(params: Sequence[Tensor], like: Sequence[Tensor]) -> Tensor:
    """The RMS of a group's parameters (each reshaped as its flat estimate in ``like``)."""
    d = sum(g.shape[-1] for g in like)
    # A norm per tensor: no parameter-sized temporary (this runs before a first step).
    squares = [torch.linalg.vector_norm(p.reshape(g.shape), dim=-1, dtype=torch.promote_types(
        p.dtype, torch.float32)).float() ** 2 for p, g in zip(params, like)]
    return (sum_of(squares) / d).sqrt()


def _start(weights: Weights, rms_x: Tensor) -> Tensor:
    """log s at the first step: relative to the parameters' RMS, above the floor."""
    return torch.maximum(weights["log_lr"].exp() * rms_x, weights["log_floor"].exp()).log()


class Sums(NamedTuple):
    """One tensor's sums over its coordinates (or a piece's: pieces' sums add up), each
    population-shaped: everything the group's controller reads of the tensor."""

    #: sum g^2, sum g m, sum m^2 and sum x^2, for the estimate g, the momentum m before the
    #: step and the parameters x. The new momentum's follow from them (see
    #: :func:`finish_step`).
    gg: Tensor
    gm: Tensor
    mm: Tensor
    xx: Tensor

    def __add__(self, other: object) -> Sums:  # type: ignore[override]
        assert isinstance(other, Sums)
        return Sums(*(a + b for a, b in zip(self, other)))


def momentum(cfg: LeanConfig, m: Tensor, g: Tensor) -> Tensor:
    """The momentum after estimate ``g`` (float32), rounded as stored: what meta-training, the
    optimizer and a chunked step all keep."""
    return torch.lerp(g, m.float(), cfg.beta1).to(_DTYPES[cfg.momentum_dtype])


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Sums of products over the last dimension (one pass, no temporary, for one vector)."""
    return torch.dot(a, b) if a.dim() == 1 else (a * b).sum(-1)


def sums(g: Tensor, m: Tensor, x: Tensor) -> Sums:
    """The sums of estimate ``g`` (float32), momentum ``m`` (before the step) and parameters
    ``x``, over the last dimension."""
    mp, xf = m.float(), x.float()
    return Sums(_dot(g, g), _dot(g, mp), _dot(mp, mp), _dot(xf, xf))


def _inverse_rms(v: Tensor) -> Tensor:
    """1 / sqrt(v), and 0 where v is 0 (no estimate yet: the momentum is 0 there too)."""
    return torch.where(v > 0, v.clamp(min=TINY).rsqrt(), torch.zeros_like(v))


class Planned(NamedTuple):
    """What a step writes with, fixed before it reads its estimate (population-shaped)."""

    #: Per tensor, ``f`` in ``x += f * m`` (``m``: the new momentum as stored).
    factors: list[Tensor]
    #: Per tensor, the normalisation of the momentum into this step's direction.
    scales: list[Tensor]
    #: log s for this step, and its value at the first step.
    log_scale: Tensor
    log_scale0: Tensor


def plan_step(weights: Weights, cfg: LeanConfig, g0: LeanControl, seconds: Sequence[Tensor],
              sizes: Sequence[int], lr: float | Tensor, q: int,
              first: Sequence[Sums] | None) -> Planned:
    """A group's step, before its estimate is read: the step size the controller set at the
    end of the last step, and the momentum normalised by the last step's second moment
    (AdaShift's delay: the new estimate's own magnitude is not needed before the write).

    ``first``: the tensors' sums of this step's estimate, needed only at a group's first
    step, which has no history to normalise by or to start the scale from.
    """
    t = g0.t + 1
    is_first = g0.t == 0
    c1 = 1 - torch.pow(torch.as_tensor(cfg.beta1), t)
    c2 = 1 - torch.pow(torch.as_tensor(cfg.beta2), g0.t.clamp(min=1))
    if bool(is_first.any()):
        if first is None:
            raise ValueError("a group's first step needs the sums of its estimate")
        d = sum(sizes)
        start = _start(weights, (sum_of([s.xx for s in first]) / d).sqrt())
        log_scale = torch.where(is_first, start, g0.log_scale)
        log_scale0 = torch.where(is_first, start, g0.log_scale0)
        # At the first step the estimate's own mean square, unbiased: m = (1 - b1) g.
        seconds = [torch.where(is_first, s.gg / n, v) for s, n, v in zip(first, sizes, seconds)]
        c2 = torch.where(is_first, torch.ones_like(c2), c2)
    else:
        log_scale, log_scale0 = g0.log_scale, g0.log_scale0
    sigma = lr * log_scale.exp() * math.sqrt(q / (sum(sizes) + q))
    scales = [_inverse_rms(v / c2) / c1 for v in seconds]
    return Planned([-sigma * a for a in scales], scales, log_scale, log_scale0)


def finish_step(weights: Weights, cfg: LeanConfig, g0: LeanControl, planned: Planned,
                seconds: Sequence[Tensor], found: Sequence[Sums], sizes: Sequence[int],
                loss: Tensor | None, q: int) -> tuple[list[Tensor], LeanControl]:
    """After the write: each tensor's new second moment, and the group's new state, with the
    step size and radius the controller sets for the next step from this step's sums
    (``seconds`` and ``g0``: the old; ``found``: the sums taken as the step wrote)."""
    t = g0.t + 1
    d = sum(sizes)
    new_seconds = [cfg.beta2 * v + (1 - cfg.beta2) * s.gg / n
                   for v, s, n in zip(seconds, found, sizes)]
    # The last direction is m * w and this step's m' * a, per tensor, up to one factor for
    # the group (what cosines ignore); m' = b m + (1 - b) g before its rounding to storage,
    # its sums from the old ones.
    w = [_inverse_rms(v) for v in seconds]
    a = planned.scales
    b = cfg.beta1
    nn = [b * b * s.mm + 2 * b * (1 - b) * s.gm + (1 - b) ** 2 * s.gg for s in found]
    nm = [b * s.mm + (1 - b) * s.gm for s in found]
    gg = sum_of([s.gg for s in found])
    last = sum_of([s.mm * wk * wk for s, wk in zip(found, w)])
    now = sum_of([n * ak * ak for n, ak in zip(nn, a)]).clamp(min=0)
    hyper = (_ratio(sum_of([s.gm * wk for s, wk in zip(found, w)]), gg * last)
             * math.sqrt((d + q + 1) / q)).clamp(-1, 1)
    agree = _ratio(sum_of([n * ak * wk for n, ak, wk in zip(nm, a, w)]), now * last)
    zero = (gg == 0).float()
    steady = now / d
    loss_now, change, magnitude, scaled = loss_signals(g0, t, loss)
    log_scale, log_scale0 = planned.log_scale, planned.log_scale0
    ones = torch.ones_like(t)
    signals = [hyper, agree, scaled, change.sign(), zero,
               torch.tanh((log_scale - log_scale0) / 5), torch.log1p(t) / 7, ones,
               (steady + 1e-8).log().clamp(-20, 1) / 5, ones * math.log(q / (d + q)) / 10,
               torch.tanh(g0.log_rho / 3)]
    out, h, c = coord_lstm(weights["control.cell.weight_ih"], weights["control.cell.weight_hh"],
                           weights["control.head.weight"], torch.stack(signals, -1)[..., None, :],
                           g0.ctrl_h[..., None, :], g0.ctrl_c[..., None, :])
    move = (weights["gain"] * hyper + out[..., 0, 0]).clamp(-1, 1)
    log_scale = log_scale + cfg.sigma_rate * move
    if cfg.max_scale:  # the minimum is not farther than the point's scale
        rms_x = (sum_of([s.xx for s in found]) / d).sqrt()
        cap = torch.maximum(cfg.max_scale * rms_x, weights["log_floor"].exp()).log()
        log_scale = torch.minimum(log_scale, cap)
    log_rho = torch.where(zero > 0, g0.log_rho + math.log(2),
                          0.8 * g0.log_rho + 0.5 * torch.tanh(out[..., 0, 1]))
    log_rho = log_rho.clamp(_MIN_LOG_RHO, _MAX_LOG_RHO)
    return new_seconds, LeanControl(h[..., 0, :], c[..., 0, :], log_scale, log_scale0, log_rho,
                                    loss_now, magnitude, t)


def sum_of(xs: Sequence[Tensor]) -> Tensor:
    """The sum of population-shaped values, in order."""
    total = xs[0]
    for x in xs[1:]:
        total = total + x
    return total


def _ratio(dot: Tensor, squares: Tensor) -> Tensor:
    """``dot / sqrt(squares)``: a cosine from its parts, 0 where a vector is zero."""
    return torch.where(squares > 0, dot / squares.clamp(min=TINY).sqrt(),
                       torch.zeros_like(dot))


def _update(weights: Weights, cfg: LeanConfig, estimates: Sequence[Tensor],
            states: Sequence[LeanState], g0: LeanControl, params: Sequence[Tensor],
            lr: float | Tensor, loss: Tensor | None, q: int
            ) -> tuple[list[Tensor], list[LeanState], LeanControl]:
    """The group's updates (flat, per tensor), the new states of its tensors and its own new
    state (``g0``: the old): the stages on whole tensors."""
    found = [sums(g, st.momentum, p.reshape(g.shape))
             for g, st, p in zip(estimates, states, params)]
    sizes = [g.shape[-1] for g in estimates]
    seconds = [st.second for st in states]
    planned = plan_step(weights, cfg, g0, seconds, sizes, lr, q, found)
    momenta = [momentum(cfg, st.momentum, g) for g, st in zip(estimates, states)]
    updates = [f[..., None] * m.float() for f, m in zip(planned.factors, momenta)]
    new_seconds, group = finish_step(weights, cfg, g0, planned, seconds, found, sizes, loss, q)
    return updates, [LeanState(m, v) for m, v in zip(momenta, new_seconds)], group
