"""Meta-training the generalist with evolution strategies over whole runs, resumable.

Truncated backprop through rollouts lost to short-horizon bias here (research/log.md), so
the generalist is meta-trained with ES: :class:`~torchzo.meta.es_gradient.ESGradient` estimates
the search gradient of the flat weights from antithetic populations run on instances of the
training families, and :class:`~torchzo.meta.loop.MetaLoop` applies it with Adam, validates on
fixed instances of the validation families, and checkpoints the run folder every
``checkpoint_s`` seconds and at the end; a run resumes from its folder's checkpoint with the
same random streams, so an interrupted run continues the same trajectory.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..learned.arch import Architecture, GeneralConfig, from_dict
from ..learned.nets import LearnedZO
from ..tasks.families import FAMILIES, FAMILY_SPLITS, augment, families
from .es_gradient import WORST, ESGradient, score
from .export import export, load_best, load_check
from .flat import flatten, grown, unflatten, weights_of
from .loop import LoopConfig, MetaLoop, Validate, Validation
from .population import run_population
from .seeding import build_seeded

__all__ = ["ESConfig", "export", "flatten", "load_best", "load_check", "score", "train_es",
           "unflatten", "validate", "weights_of"]


@dataclass
class ESConfig:
    """An ES meta-training run (saved in its checkpoint)."""

    arch: dict[str, Any] = field(default_factory=lambda: GeneralConfig(hidden=8).to_dict())
    pairs: int = 16
    sigma: float = 0.02
    lr: float = 0.01
    instances: int = 4
    steps: tuple[int, int] = (50, 500)
    qs: tuple[int, ...] = (10, 20)
    seed: int = 0
    val_every: int = 25
    val_instances: int = 8
    val_steps: int = 300
    checkpoint_s: float = 300.0
    iterations: int = 100_000
    #: Start from the best weights of another run (its folder) or from one of its saved checks
    #: (``RUN/checks/N.pt``), not from the untrained nets.
    init: str | None = None
    #: The fraction of each run, at its end, that the score averages (1: the whole run).
    tail: float = 1.0
    #: Decay of an exponential moving average of the weights, which is what is validated and
    #: kept as best (0: the weights themselves): it averages out the random walk of noisy
    #: search steps.
    ema: float = 0.0
    #: The families validated on (``None``: the val split as it is now). A run records them,
    #: so that it resumes with the validation it started with when the split grows.
    val_families: tuple[str, ...] | None = None
    #: Progress below this fraction of the start gap counts no more, in training and
    #: validation. 1e-4 is the generalist benchmark's floor; at 1e-8 a run is paid for
    #: solving easy problems to many digits, which anneals the step on hard ones.
    progress_floor: float = 1e-8


def validate(theta: Tensor, like: dict[str, Tensor], arch: Architecture, cfg: ESConfig,
             split: str = "val") -> Tensor:
    """Final-loss log progress of one weight vector on fixed instances of ``split``:
    ``val_instances`` per family, seeded apart from training's."""
    weights = unflatten(theta[None], like)
    out = []
    chosen = families(split)
    if split == "val" and cfg.val_families is not None:
        chosen = [FAMILIES[name] for name in cfg.val_families]
    for k, family in enumerate(chosen):
        for i in range(cfg.val_instances):
            g = torch.Generator().manual_seed(10**6 + 1000 * k + i)
            problem = augment(family.instance(g), g)
            run = run_population(weights, arch, problem, cfg.val_steps, 20, seed=i)
            gap = run.losses[0].double() - problem.f_min
            final = (gap[-1] / gap[0].clamp(min=1e-30)).clamp(min=1e-30).log()
            out.append(final.clamp(math.log(cfg.progress_floor), WORST)
                       if torch.isfinite(final) else
                       torch.tensor(WORST, dtype=torch.float64))
    return torch.stack(out)


def _validation(like: dict[str, Tensor], arch: Architecture, cfg: ESConfig) -> Validate:
    """Validation for the loop: its score is the mean change of the final log progress
    against the start weights'."""
    def run(weights: dict[str, Tensor], start: Tensor | None) -> Validation:
        val = validate(weights["theta"], like, arch, cfg)
        gain = float((val - (val if start is None else start)).mean())
        return Validation(gain, val, {
            "val": round(float(val.mean()), 4),
            "val_by_family": [round(float(x), 3) for x in val.view(-1, cfg.val_instances).mean(1)],
            "val_vs_start": round(gain, 4)})
    return run


def _init_theta(start: Path, like: dict[str, Tensor]) -> Tensor:
    """The best weights of run folder ``start`` (or its saved check, ``checks/N.pt``) laid
    out as ``like`` (see :func:`~torchzo.meta.flat.grown`)."""
    old = (load_check(start) if start.is_file() else load_best(start)).weights()
    return flatten(grown(old, like, str(start)))


def _upgrade(old: dict[str, Any], opt: torch.optim.Optimizer, out: Path) -> dict[str, Any]:
    """A checkpoint from before the loop updated with ``torch.optim.Adam`` (``theta``, ``m``,
    ``v`` at its top level) in the loop's layout. Its moments are Adam's, so the run goes on
    (in bits of its own: the old update rounded differently)."""
    it = int(old["iteration"])
    best = torch.load(out / "best.pt", weights_only=True)
    return {"iteration": it, "params": {"theta": old["theta"]},
            "optimizer": {"state": {0: {"step": torch.tensor(float(it)), "exp_avg": old["m"],
                                        "exp_avg_sq": old["v"]}},
                          "param_groups": opt.state_dict()["param_groups"]},
            "rng": old["rng"], "average": {"theta": old.get("average", old["theta"])},
            "start": old["base_val"],
            "best": {"score": float(old["best"]), "iteration": int(best["iteration"]),
                     "weights": {"theta": best["theta"]}, "values": best["val"]},
            "estimator": {}}


def train_es(cfg: ESConfig, out: Path, log: Callable[[str], None] = print,
             deadline: float | None = None) -> LearnedZO:
    """Run (or resume) ES in folder ``out``; returns the best-on-validation weights.

    ``out`` holds ``checkpoint.pt`` (everything to resume), ``best.pt`` (the best weights so
    far, with their validation scores), ``checks/N.pt`` (the weights validated at iteration
    N), ``history.jsonl`` (one line per iteration) and ``config.json``.
    ``deadline``: a ``time.time()`` at which to checkpoint and stop.
    """
    if not 0 < cfg.progress_floor < 1:
        raise ValueError(f"progress_floor must be in (0, 1), got {cfg.progress_floor}")
    out.mkdir(parents=True, exist_ok=True)
    val_families = FAMILY_SPLITS["val"] if cfg.val_families is None else cfg.val_families
    cfg = replace(cfg, val_families=val_families)
    unknown = [name for name in val_families if name not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown validation families {unknown}; the families are "
                         f"{sorted(FAMILIES)}")
    arch = from_dict(cfg.arch)
    # the initial weights from the run's seed, not the caller's
    nets = build_seeded(lambda: LearnedZO(arch=arch), torch.Generator().manual_seed(cfg.seed))
    like = {k: v.detach() for k, v in nets.weights().items()}
    ckpt = out / "checkpoint.pt"
    resume = torch.load(ckpt, weights_only=True) if ckpt.exists() else None
    theta = _init_theta(Path(cfg.init), like) if cfg.init and resume is None else flatten(like)
    opt = torch.optim.Adam([theta], lr=cfg.lr)
    estimator = ESGradient(like, arch, cfg.pairs, cfg.sigma, cfg.instances, cfg.steps, cfg.qs,
                           cfg.tail, cfg.progress_floor)
    loop = MetaLoop({"theta": theta}, opt, estimator, _validation(like, arch, cfg),
                    LoopConfig(cfg.iterations, cfg.val_every, cfg.seed, cfg.checkpoint_s,
                               ema=cfg.ema, keep_checks=True),
                    checkpoint=ckpt, folder=out, log=log)
    if resume is not None and "m" in resume:
        resume = _upgrade(resume, opt, out)
    if resume is None:
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    best = loop.run(resume, deadline)
    return weights_of(best["theta"], arch)
