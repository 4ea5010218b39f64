"""Truncated backprop through rollouts: a meta-gradient estimator (the paper's).

A batch of ``meta_batch`` training problems is run in lockstep for ``horizon`` steps, cut
into truncations of ``unroll`` steps; each estimate is one truncation's meta-loss (paper eq. 4:
sum_t w_t f(x_t) + lambda sum_t sum o_t^2, w_t = t, all divided by sum_t w_t over the horizon so
that its scale does not grow with the horizon) backpropagated and clipped. States carry over
to the next truncation, detached. An epoch is ``problems`` training problems, picked and
seeded from the run's seed, the stage and the epoch; what to do with the gradients, and when
to validate, is the outer loop's (:mod:`torchzo.meta.loop`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..learned.arch import Architecture, PaperConfig
from ..learned.nets import LearnedZO
from ..tasks import Problem
from .loop import Estimate
from .rollout import Rollout, RolloutConfig

__all__ = ["MetaConfig", "StageConfig", "TruncatedGradient", "meta_loss_term"]

WEIGHTINGS = ("linear", "uniform")


@dataclass
class StageConfig:
    epochs: int
    problems: int
    lr: float


@dataclass
class MetaConfig:
    """Everything that determines a meta-training run (the paper's recipe by default)."""

    arch: Architecture = field(default_factory=PaperConfig)
    q: int = 20
    mu: float | None = None
    estimator: str = "forward"
    horizon: int | None = None  # None: the task's
    unroll: int | None = None  # None: the task's
    update_stage: StageConfig = field(default_factory=lambda: StageConfig(20, 10, 1e-3))
    query_stage: StageConfig = field(default_factory=lambda: StageConfig(40, 10, 5e-3))
    clip: float = 1.0
    clip_mode: str = "elementwise"
    meta_batch: int = 1
    reg: float = 0.005
    query_grad: str = "full"
    grad_mode: str = "true"
    val_problems: int = 10
    val_query_prob: float = 0.5
    seed: int = 0
    #: How the meta-loss weights step t's objective: ``"linear"`` (paper eq. 4, weight t: the
    #: final loss counts most) or ``"uniform"`` (the area under the loss curve, which rewards
    #: getting low early). Validation follows it: the final loss, or the curve's mean.
    weighting: str = "linear"

    def __post_init__(self) -> None:
        if self.clip_mode not in ("elementwise", "norm"):
            raise ValueError(f"clip_mode must be 'elementwise' or 'norm', got {self.clip_mode!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.meta_batch < 1:
            raise ValueError(f"meta_batch must be >= 1, got {self.meta_batch}")

    def rollout(self, use_query: bool) -> RolloutConfig:
        """The per-problem rollout settings of a stage (with or without the QueryRNN)."""
        return RolloutConfig(q=self.q, mu=self.mu, estimator=self.estimator,
                             use_query=use_query, query_grad=self.query_grad,
                             grad_mode=self.grad_mode, reg=self.reg)


def meta_loss_term(t: int, loss: torch.Tensor, reg: torch.Tensor,
                   total_weight: float, weighting: str = "linear") -> torch.Tensor:
    """Step ``t``'s share of the meta-loss: ``w_t f(x_t) + reg_t`` over ``sum_t w_t``.

    ``w_t = t`` (paper eq. 4) or 1 (``weighting="uniform"``). The division rescales the whole
    objective (both terms alike, so the regulariser keeps its weight relative to the loss) and
    keeps its size independent of the horizon.
    """
    return ((t if weighting == "linear" else 1) * loss + reg) / total_weight


class TruncatedGradient:
    """The meta-gradient of one truncation of stage ``stage`` (``"update"``: the UpdateRNN
    with Gaussian queries; ``"query"``: the QueryRNN) of networks ``nets`` on ``problems``.

    Its position in the stage (epoch, batch, truncation) is the number of estimates made; it
    is idle (a checkpoint resumes it exactly) between batches. It draws nothing from the
    loop's stream: its picks and rollout seeds are functions of ``cfg.seed`` and the position.
    """

    def __init__(self, nets: LearnedZO, problems: list[Problem], cfg: MetaConfig, stage: str,
                 horizon: int, unroll: int) -> None:
        self.nets, self.problems, self.cfg = nets, problems, cfg
        self.use_query = stage == "query"
        self.stage = cfg.query_stage if self.use_query else cfg.update_stage
        self.horizon, self.unroll = horizon, unroll
        self.truncations = -(-horizon // unroll)
        self.batches = -(-min(self.stage.problems, len(problems)) // cfg.meta_batch)
        self.position = 0
        self.losses: list[float] = []  # the mean loss of each of the epoch's batches so far
        self.rollouts: list[Rollout] = []
        self.t, self.seen = 0, 0.0

    @property
    def per_epoch(self) -> int:
        """Estimates in an epoch."""
        return self.batches * self.truncations

    @property
    def idle(self) -> bool:
        return not self.rollouts

    def state_dict(self) -> dict[str, Any]:
        """Where in the epoch the estimator is and the losses so far (between batches only)."""
        if not self.idle:
            raise RuntimeError("a truncated rollout is under way: checkpoint between batches")
        return {"position": self.position, "losses": list(self.losses)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`, with no rollout under way."""
        self.position, self.losses = int(state["position"]), list(state["losses"])
        self.rollouts = []

    def _start_batch(self) -> None:
        cfg, query = self.cfg, self.use_query
        epoch, batch = divmod(self.position // self.truncations, self.batches)
        picks = torch.randperm(len(self.problems), generator=torch.Generator().manual_seed(
            cfg.seed * 7919 + epoch + (10_000 if query else 0)))[: self.stage.problems].tolist()
        first = batch * cfg.meta_batch
        for i, k in enumerate(picks[first:first + cfg.meta_batch], start=first):
            seed = cfg.seed * 1_000_003 + epoch * 1009 + i * 31 + (7 if query else 0)
            self.rollouts.append(Rollout(self.problems[k], self.nets, cfg.rollout(query), seed,
                                         seed + 1))
        self.t, self.seen = 0, 0.0

    def estimate(self, params: list[Tensor], rng: torch.Generator) -> Estimate:
        """The clipped gradient of the next truncation's meta-loss, averaged over the batch.
        Stats: at a batch's end its mean loss (``meta_loss``), at an epoch's end the mean over
        its batches (``train_loss``)."""
        cfg, horizon = self.cfg, self.horizon
        if not self.rollouts:
            self._start_batch()
        rollouts = self.rollouts
        total_weight = horizon * (horizon + 1) / 2 if cfg.weighting == "linear" else horizon
        meta_loss = torch.zeros(())
        for _ in range(min(self.unroll, horizon - self.t)):
            self.t += 1
            for rollout in rollouts:
                loss, reg = rollout.step()
                meta_loss = meta_loss + meta_loss_term(self.t, loss, reg, total_weight,
                                                       cfg.weighting) / len(rollouts)
                self.seen += float(loss.detach()) / len(rollouts)
        for p in params:
            p.grad = None
        meta_loss.backward()
        if cfg.clip_mode == "elementwise":
            for p in params:
                if p.grad is not None:
                    p.grad.clamp_(-cfg.clip, cfg.clip)
        else:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        for rollout in rollouts:
            rollout.detach()
        self.position += 1
        stats: dict[str, Any] = {}
        if self.t >= horizon:
            self.rollouts = []
            self.losses.append(self.seen / horizon)
            stats["meta_loss"] = self.losses[-1]
            if self.position % self.per_epoch == 0:
                stats["train_loss"] = sum(self.losses) / len(self.losses)
                self.losses = []
        return Estimate([p.grad for p in params], stats)
