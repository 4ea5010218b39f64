"""Meta-training ZO-LSTM on a task: two stages, truncated BPTT, best-on-validation weights.

Stage ``update`` trains the UpdateRNN with standard Gaussian queries; stage ``query`` freezes it
and trains the QueryRNN through the reparameterised directions u = |s| z. Each stage runs
``epochs`` epochs of ``problems`` training problems under one :class:`~torchzo.meta.loop.MetaLoop`:
:class:`~torchzo.meta.tbptt.TruncatedGradient` gives each truncation's clipped meta-gradient,
which Adam applies. After every epoch the actual ``ZOLSTM`` optimizer is run on the validation
problems; the weights with the lowest mean final loss are kept.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..learned.nets import LearnedZO
from ..optim.zolstm import ZOLSTM
from ..progress import Progress
from ..tasks import Problem, Task
from .loop import LoopConfig, MetaLoop, Validation
from .run import run_optimizer
from .seeding import build_seeded
from .tbptt import MetaConfig, StageConfig, TruncatedGradient, meta_loss_term

__all__ = ["MetaConfig", "StageConfig", "evaluate", "meta_loss_term", "meta_train"]

log = logging.getLogger(__name__)


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
                          covariance="learned" if use_query else "identity",
                          query_prob=cfg.val_query_prob, seed=seed + k)
        curve = run_optimizer(problem, make, cfg.horizon or task.horizon, data_seed=seed + k)
        scores.append(float(curve[-1] if metric == "final" else curve[1:].mean()))
    return sum(scores) / len(scores)


def meta_train(task: Task, cfg: MetaConfig, nets: LearnedZO | None = None,
               stages: tuple[str, ...] = ("update", "query"),
               checkpoint: Path | None = None, progress: bool = True,
               on_epoch: Callable[[dict[str, Any]], None] | None = None) -> tuple[LearnedZO, dict]:
    """Run the requested stages; returns the best weights and the training history.

    With ``checkpoint``, the full trainer state is saved there after every epoch and a run
    started with an existing checkpoint resumes from it (bit-identically: same seeds).
    ``on_epoch`` sees each epoch's history row. The networks' initial weights (when ``nets``
    is not given) are drawn from a generator seeded with ``cfg.seed``, not the global one.
    """
    if nets is None:
        nets = build_seeded(lambda: LearnedZO(arch=cfg.arch),
                            torch.Generator().manual_seed(cfg.seed))
    run = _Run(task, list(task.problems("train")), cfg, nets,
               {"config": {**_plain(asdict(cfg)), "arch": cfg.arch.to_dict()},
                "epochs": []}, checkpoint, progress, on_epoch)
    resume = _load_checkpoint(checkpoint) if checkpoint and checkpoint.is_file() else None
    if resume:
        nets.load_state_dict(resume["nets"])
        run.history = resume["history"]
    for stage in stages:
        if resume and stages.index(stage) < stages.index(resume["stage"]):
            continue
        run.stage(stage, resume if resume and resume["stage"] == stage else None)
        resume = None
    for p in nets.parameters():
        p.requires_grad_(False)
    return nets, run.history


@dataclass
class _Run:
    """What the stages of one :func:`meta_train` call share."""

    task: Task
    train: list[Problem]
    cfg: MetaConfig
    nets: LearnedZO
    history: dict[str, Any]
    checkpoint: Path | None
    progress: bool
    on_epoch: Callable[[dict[str, Any]], None] | None

    def stage(self, stage: str, resume: dict[str, Any] | None) -> None:
        """Train stage ``stage`` (from ``resume``, a checkpoint of it) and keep its best."""
        task, cfg, nets = self.task, self.cfg, self.nets
        use_query = stage == "query"
        scfg = cfg.query_stage if use_query else cfg.update_stage
        if use_query and nets.query is None:
            raise ValueError("the query stage needs networks with a query net")
        chosen = list(nets.query.parameters()) if nets.query is not None and use_query \
            else nets.update_parameters()
        names = {id(p): name for name, p in nets.named_parameters()}
        params = {names[id(p)]: p for p in chosen}
        for p in nets.parameters():
            p.requires_grad_(False)
        for p in chosen:
            p.requires_grad_(True)
        estimator = TruncatedGradient(nets, self.train, cfg, stage,
                                      cfg.horizon or task.horizon, cfg.unroll or task.unroll)
        per_epoch = estimator.per_epoch
        metric = "final" if cfg.weighting == "linear" else "mean"

        def validate(weights: dict[str, torch.Tensor], start: torch.Tensor | None) -> Validation:
            # the loop keeps no average here, so ``weights`` are the networks' own
            val = evaluate(nets, task, "val", cfg, use_query, cfg.val_problems, metric=metric)
            return Validation(val, torch.tensor(val, dtype=torch.float64), {"val": val})

        epoch_started = time.time()
        bar = None

        def record(row: dict[str, Any]) -> None:
            nonlocal epoch_started, bar
            epoch = (row["iteration"] - 1) // per_epoch + 1
            if "meta_loss" in row:
                if bar is None:
                    bar = _bar(estimator.batches, f"{stage} {epoch}/{scfg.epochs}",
                               self.progress)
                bar(float(row["meta_loss"]))
            if "val" not in row:
                return
            assert loop.best is not None
            out = {"stage": stage, "epoch": epoch, "train_loss": row["train_loss"],
                   "val": row["val"], "best_val": loop.best.score,
                   "seconds": time.time() - epoch_started}
            epoch_started, bar = time.time(), None
            self.history["epochs"].append(out)
            log.info("%s epoch %d: train %.4f val %.4f (best %.4f)", stage, epoch,
                     out["train_loss"], out["val"], out["best_val"])
            if self.on_epoch:
                self.on_epoch(out)

        loop = MetaLoop(params, torch.optim.Adam(chosen, lr=scfg.lr), estimator, validate,
                        LoopConfig(scfg.epochs * per_epoch, per_epoch, cfg.seed,
                                   checkpoint_s=math.inf, checkpoint_every=per_epoch),
                        checkpoint=self.checkpoint, record=record,
                        log=lambda line: log.debug("%s %s", stage, line),
                        extra=lambda: {"stage": stage, "nets": nets.state_dict(),
                                       "history": self.history})
        best = loop.run(resume)
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(best[name])
        assert loop.best is not None
        self.history[f"{stage}_best_val"] = loop.best.score
        self.history[f"{stage}_best_epoch"] = loop.best.iteration // per_epoch


def _load_checkpoint(path: Path) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "meta_opt" in state:
        raise ValueError(f"{path} is a checkpoint of the trainer before its outer loop was "
                         "rewritten; finish that run with the torchzo that wrote it, or start "
                         "afresh")
    return state  # type: ignore[no-any-return]


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain(v) if isinstance(v, dict) else v for k, v in d.items()}


def _bar(total: int, desc: str, enabled: bool) -> Callable[[float], None]:
    """Progress through an epoch's ``total`` batches (:class:`torchzo.progress.Progress`: a bar
    on a terminal, plain lines in a file or pipe); returns a function advancing it by one
    batch and showing that batch's meta-loss."""
    if not enabled:
        return lambda _loss: None
    progress = Progress(total=total, desc=desc, unit="batch")

    def advance(meta_loss: float) -> None:
        progress.update(meta_loss=meta_loss)
        if progress.n >= total:
            progress.close()
    return advance
