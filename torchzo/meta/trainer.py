"""Meta-training ZO-LSTM on a task: two stages, truncated BPTT, best-on-validation checkpoints.

Stage ``update`` trains the UpdateRNN with standard Gaussian queries; stage ``query`` freezes it
and trains the QueryRNN through the reparameterised directions u = |s| z. Each stage runs
``epochs`` epochs of ``problems`` training problems; a problem is optimized for ``horizon``
steps, cut into truncations of ``unroll`` steps, after each of which the meta-loss (paper
eq. 4: sum_t w_t f(x_t) + lambda sum_t sum o_t^2, w_t = t, all divided by sum_t w_t over the
horizon so that its scale does not grow with the horizon) is backpropagated, its gradient
clipped and applied by Adam. After every epoch the actual ``ZOLSTM`` optimizer is run on the
validation problems; the weights with the lowest mean final loss are kept.
"""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..learned.arch import Architecture, PaperConfig
from ..learned.nets import LearnedZO
from ..optim.zolstm import ZOLSTM
from ..tasks import Task
from .rollout import Rollout, RolloutConfig
from .run import run_optimizer

__all__ = ["MetaConfig", "StageConfig", "evaluate", "meta_train"]

WEIGHTINGS = ("linear", "uniform")

log = logging.getLogger(__name__)


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


def evaluate(nets: LearnedZO, task: Task, split: str, cfg: MetaConfig, use_query: bool,
             limit: int | None = None, seed: int = 10_000, metric: str = "final") -> float:
    """Mean over ``split`` problems of the ``ZOLSTM`` optimizer's final objective
    (``metric="final"``) or of its objective averaged over the steps 1..horizon (``"mean"``)."""
    if metric not in ("final", "mean"):
        raise ValueError(f"metric must be 'final' or 'mean', got {metric!r}")
    problems = list(task.problems(split))[:limit]
    scores = []
    for k, problem in enumerate(problems):
        def make(params: list[torch.Tensor], k: int = k) -> ZOLSTM:
            return ZOLSTM(params, pretrained=nets, q=cfg.q, mu=cfg.mu, estimator=cfg.estimator,
                          directions="learned" if use_query else "gaussian",
                          query_prob=cfg.val_query_prob, seed=seed + k)
        curve = run_optimizer(problem, make, cfg.horizon or task.horizon, data_seed=seed + k)
        scores.append(float(curve[-1] if metric == "final" else curve[1:].mean()))
    return sum(scores) / len(scores)


def meta_loss_term(t: int, loss: torch.Tensor, reg: torch.Tensor,
                   total_weight: float, weighting: str = "linear") -> torch.Tensor:
    """Step ``t``'s share of the meta-loss: ``w_t f(x_t) + reg_t`` over ``sum_t w_t``.

    ``w_t = t`` (paper eq. 4) or 1 (``weighting="uniform"``). The division rescales the whole
    objective (both terms alike, so the regulariser keeps its weight relative to the loss) and
    keeps its size independent of the horizon.
    """
    return ((t if weighting == "linear" else 1) * loss + reg) / total_weight


def _train_batch(params: list[torch.nn.Parameter], meta_opt: torch.optim.Adam,
                 rollouts: list[Rollout], horizon: int, unroll: int, cfg: MetaConfig) -> float:
    """Meta-train on a batch of problems in lockstep over the horizon; their mean loss.

    Each truncation's meta-loss is averaged over the batch before one backward pass.
    """
    total_weight = horizon * (horizon + 1) / 2 if cfg.weighting == "linear" else horizon
    seen = 0.0
    t = 0
    while t < horizon:
        meta_loss = torch.zeros(())
        for _ in range(min(unroll, horizon - t)):
            t += 1
            for rollout in rollouts:
                loss, reg = rollout.step()
                meta_loss = meta_loss + meta_loss_term(t, loss, reg, total_weight,
                                                           cfg.weighting) / len(rollouts)
                seen += float(loss.detach()) / len(rollouts)
        meta_opt.zero_grad()
        meta_loss.backward()
        grads = [p.grad for p in params if p.grad is not None]
        if cfg.clip_mode == "elementwise":
            for g in grads:
                g.clamp_(-cfg.clip, cfg.clip)
        else:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        meta_opt.step()
        for rollout in rollouts:
            rollout.detach()
    return seen / horizon


def meta_train(task: Task, cfg: MetaConfig, nets: LearnedZO | None = None,
               stages: tuple[str, ...] = ("update", "query"),
               checkpoint: Path | None = None, progress: bool = True,
               on_epoch: Callable[[dict[str, Any]], None] | None = None) -> tuple[LearnedZO, dict]:
    """Run the requested stages; returns the best weights and the training history.

    With ``checkpoint``, the full trainer state is saved there after every epoch and a run
    started with an existing checkpoint resumes from it (bit-identically: same seeds).
    """
    horizon, unroll = cfg.horizon or task.horizon, cfg.unroll or task.unroll
    torch.manual_seed(cfg.seed)
    nets = nets if nets is not None else LearnedZO(arch=cfg.arch)
    history: dict[str, Any] = {"config": {**_plain(asdict(cfg)), "arch": cfg.arch.to_dict()},
                               "epochs": []}
    resume = _load_checkpoint(checkpoint) if checkpoint and checkpoint.is_file() else None
    if resume:
        nets.load_state_dict(resume["nets"])
        history = resume["history"]
    train = list(task.problems("train"))
    for stage in stages:
        use_query = stage == "query"
        scfg = cfg.query_stage if use_query else cfg.update_stage
        if use_query and nets.query is None:
            raise ValueError("the query stage needs networks with a query net")
        params = list(nets.query.parameters()) if nets.query is not None and use_query \
            else nets.update_parameters()
        for p in nets.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        meta_opt = torch.optim.Adam(params, lr=scfg.lr)
        metric = "final" if cfg.weighting == "linear" else "mean"
        best = (evaluate(nets, task, "val", cfg, use_query, cfg.val_problems, metric=metric), 0)
        best_state = copy.deepcopy(nets.state_dict())
        first_epoch = 0
        if resume and resume["stage"] == stage:
            meta_opt.load_state_dict(resume["meta_opt"])
            best, best_state = tuple(resume["best"]), resume["best_state"]  # type: ignore[assignment]
            first_epoch = resume["epoch"] + 1
        elif resume and stages.index(stage) < stages.index(resume["stage"]):
            continue
        resume = None
        for epoch in range(first_epoch, scfg.epochs):
            start = time.time()
            picks = torch.randperm(len(train), generator=torch.Generator().manual_seed(
                cfg.seed * 7919 + epoch + (10_000 if use_query else 0)))[: scfg.problems]
            batches = -(-len(picks) // cfg.meta_batch)
            bar = _bar(batches, f"{stage} {epoch + 1}/{scfg.epochs}", progress)
            losses = []
            chosen = picks.tolist()
            for b in range(0, len(chosen), cfg.meta_batch):
                rollouts = []
                for i, k in enumerate(chosen[b:b + cfg.meta_batch], start=b):
                    seed = cfg.seed * 1_000_003 + epoch * 1009 + i * 31 + (7 if use_query else 0)
                    rollouts.append(Rollout(train[k], nets, cfg.rollout(use_query), seed,
                                            seed + 1))
                losses.append(_train_batch(params, meta_opt, rollouts, horizon, unroll, cfg))
                bar(f"meta-loss {losses[-1]:.4f}")
            val = evaluate(nets, task, "val", cfg, use_query, cfg.val_problems, metric=metric)
            if val < best[0]:
                best, best_state = (val, epoch + 1), copy.deepcopy(nets.state_dict())
            row = {"stage": stage, "epoch": epoch + 1, "train_loss": sum(losses) / len(losses),
                   "val": val, "best_val": best[0], "seconds": time.time() - start}
            history["epochs"].append(row)
            log.info("%s epoch %d: train %.4f val %.4f (best %.4f)", stage, epoch + 1,
                     row["train_loss"], val, best[0])
            if checkpoint:
                torch.save({"nets": nets.state_dict(), "meta_opt": meta_opt.state_dict(),
                            "stage": stage, "epoch": epoch, "best": list(best),
                            "best_state": best_state, "history": history}, checkpoint)
            if on_epoch:
                on_epoch(row)
        nets.load_state_dict(best_state)
        history[f"{stage}_best_val"] = best[0]
        history[f"{stage}_best_epoch"] = best[1]
    for p in nets.parameters():
        p.requires_grad_(False)
    return nets, history


def _load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)  # type: ignore[no-any-return]


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain(v) if isinstance(v, dict) else v for k, v in d.items()}


def _bar(total: int, desc: str, enabled: bool) -> Callable[[str], None]:
    """A progress bar (tqdm when installed); returns a function advancing it by one."""
    if not enabled:
        return lambda _msg: None
    try:
        from tqdm import tqdm
    except ImportError:
        count = [0]

        def plain(msg: str) -> None:
            count[0] += 1
            log.info("%s [%d/%d] %s", desc, count[0], total, msg)
        return plain
    bar = tqdm(total=total, desc=desc, leave=False)

    def advance(msg: str) -> None:
        bar.set_postfix_str(msg)
        bar.update()
        if bar.n >= total:
            bar.close()
    return advance
