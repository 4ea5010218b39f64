"""Antithetic evolution strategies over a learned optimizer's weights, resumable.

Truncated backprop through rollouts lost to short-horizon bias here (docs/research-log.md), so
the generalist is meta-trained with ES over whole runs: each iteration draws instances of the
training families (augmented, see :mod:`torchzo.tasks.families`), a random horizon and q, and
runs the current weights and ``pairs`` antithetic perturbations of them in one
:func:`~torchzo.meta.population.run_population` call per instance. A member's score on an
instance is the mean over the run of ``log((f_t - f_min) / (f_0 - f_min))`` (scale- and
offset-free, no horizon singled out); scores become centred ranks within the instance, and the
antithetic rank differences give the search gradient, applied with Adam. Checkpoints are
written atomically every ``checkpoint_s`` seconds and at the end; a run resumes from its
folder's checkpoint with the same random streams, so an interrupted run continues the same
trajectory.
"""
from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..learned.arch import Architecture, GeneralConfig, from_dict
from ..learned.nets import LearnedZO
from ..tasks.families import FAMILIES, FAMILY_SPLITS, augment, families, sample_instance
from .population import run_population

__all__ = ["ESConfig", "export", "flatten", "load_best", "load_check", "score", "train_es",
           "unflatten", "validate", "weights_of"]

_WORST = math.log(1e4)   # a diverged member's per-step score: 10^4 times the start loss


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


def flatten(weights: dict[str, Tensor]) -> Tensor:
    """The weights as one vector, in the order of the dict."""
    return torch.cat([w.detach().reshape(-1) for w in weights.values()])


def unflatten(theta: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
    """Vectors ``theta`` (..., n) as weights shaped like ``like`` with the leading dims."""
    out, start = {}, 0
    lead = theta.shape[:-1]
    for name, w in like.items():
        out[name] = theta[..., start:start + w.numel()].reshape((*lead, *w.shape))
        start += w.numel()
    return out


def score(losses: Tensor, f_min: float, tail: float = 1.0, floor: float = 1e-8) -> Tensor:
    """Each member's mean of the clipped log progress over the last ``tail`` of the run
    (1: the whole run; lower is better), progress below ``floor`` counting as ``floor``.
    A member that went non-finite keeps the worst score from then on."""
    gap = losses.double() - f_min
    ratio = gap / gap[:, :1].clamp(min=1e-30)
    logs = ratio.clamp(min=1e-30).log().clamp(math.log(floor), _WORST)
    bad = (~torch.isfinite(losses)).cummax(1).values
    logs = torch.where(bad, torch.full_like(logs, _WORST), logs)
    first = min(int(round((1 - tail) * logs.shape[1])), logs.shape[1] - 1)
    return logs[:, first:].mean(1)


def _centred_ranks(x: Tensor) -> Tensor:
    """Ranks scaled to [-0.5, 0.5]; tied values share their mean rank, so that members
    that all reached the floor give the search no direction (argsort would order them by
    index, antithetic halves apart)."""
    ranks = torch.empty_like(x)
    ranks[x.argsort()] = torch.arange(x.numel(), dtype=x.dtype)
    values, inverse = x.unique(return_inverse=True)
    mean = torch.zeros_like(values).index_add_(0, inverse, ranks) / torch.zeros_like(
        values).index_add_(0, inverse, torch.ones_like(ranks))
    return mean[inverse] / max(x.numel() - 1, 1) - 0.5


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
            out.append(final.clamp(math.log(cfg.progress_floor), _WORST)
                       if torch.isfinite(final) else
                       torch.tensor(_WORST, dtype=torch.float64))
    return torch.stack(out)


def _init_theta(start: Path, like: dict[str, Tensor]) -> Tensor:
    """The best weights of run folder ``start`` (or its saved check, ``checks/N.pt``) laid
    out as ``like`` (see :func:`_grown`)."""
    old = (load_check(start) if start.is_file() else load_best(start)).weights()
    return flatten(_grown(old, like, str(start)))


def _grown(old: dict[str, Tensor], like: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """``old`` in another architecture's layout ``like``. Weights ``like`` lacks are dropped
    (the query net, for an export without it); weights that grew (the controller's input
    columns for the noise inputs) keep the old entries and start at zero in the new ones;
    weights new to the architecture start as ``like``'s. So the new architecture steps as
    the old optimizer did."""
    out = {}
    for name, w in like.items():
        if name not in old:
            out[name] = w.detach().clone()
            continue
        src = old[name].detach()
        if src.shape == w.shape:
            out[name] = src
        elif src.dim() == 2 and all(a <= b for a, b in zip(src.shape, w.shape)):
            out[name] = src.new_zeros(w.shape)
            out[name][:src.shape[0], :src.shape[1]] = src
        else:
            raise ValueError(f"cannot start {name} {tuple(w.shape)} from {source}'s "
                             f"{tuple(src.shape)}")
    return out


def _truncate_history(path: Path, iteration: int) -> None:
    """Drop the rows of iterations after ``iteration`` (run again after a resume)."""
    if path.exists():
        rows = [r for r in path.read_text().splitlines()
                if r and json.loads(r)["iteration"] <= iteration]
        path.write_text("".join(r + "\n" for r in rows))


def _save(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def train_es(cfg: ESConfig, out: Path, log: Callable[[str], None] = print,
             deadline: float | None = None) -> LearnedZO:
    """Run (or resume) ES in folder ``out``; returns the best-on-validation weights.

    ``out`` holds ``checkpoint.pt`` (everything to resume), ``best.pt`` (the best weights so
    far, with their validation scores) and ``history.jsonl`` (one line per iteration).
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
    with torch.random.fork_rng():  # the initial weights from the run's seed, not the caller's
        torch.manual_seed(cfg.seed)
        nets = LearnedZO(arch=arch)
    like = {k: v.detach() for k, v in nets.weights().items()}
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        st = torch.load(ckpt, weights_only=True)
        theta, m, v, it = st["theta"], st["m"], st["v"], int(st["iteration"])
        average = st.get("average", theta.clone())
        rng = torch.Generator()
        rng.set_state(st["rng"])
        best, base_val = float(st["best"]), st["base_val"]
        _truncate_history(out / "history.jsonl", it)
        log(f"resumed at iteration {it} from {ckpt}")
    else:
        theta = flatten(like)
        if cfg.init:
            theta = _init_theta(Path(cfg.init), like)
        m, v, it = torch.zeros_like(theta), torch.zeros_like(theta), 0
        average = theta.clone()
        rng = torch.Generator().manual_seed(cfg.seed)
        base_val = validate(theta, like, arch, cfg)
        best = 0.0
        _save(out / "best.pt", {"theta": theta, "iteration": 0, "val": base_val})
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
        log(f"start: validation mean final log-progress {float(base_val.mean()):.3f}")
    last_save = time.time()

    def checkpoint() -> None:
        _save(ckpt, {"theta": theta, "m": m, "v": v, "iteration": it, "rng": rng.get_state(),
                     "best": best, "base_val": base_val, "average": average})

    with (out / "history.jsonl").open("a") as history:
        while it < cfg.iterations and (deadline is None or time.time() < deadline):
            started = time.time()
            eps = torch.randn(cfg.pairs, theta.numel(), generator=rng)
            population = torch.cat([theta[None], theta + cfg.sigma * eps,
                                    theta - cfg.sigma * eps])
            weights = unflatten(population, like)
            grad = torch.zeros_like(theta)
            centre_scores, names = [], []
            for _ in range(cfg.instances):
                family, problem = sample_instance("train", rng)
                lo, hi = cfg.steps
                steps = int(math.exp(math.log(lo) + float(torch.rand((), generator=rng))
                                     * (math.log(hi) - math.log(lo))))
                q = cfg.qs[int(torch.randint(len(cfg.qs), (), generator=rng))]
                seed = int(torch.randint(0, 2**31 - 1, (), generator=rng))
                run = run_population(weights, arch, problem, steps, q, seed)
                s = score(run.losses, problem.f_min, cfg.tail, cfg.progress_floor)
                ranks = _centred_ranks(s[1:])
                plus, minus = ranks[:cfg.pairs], ranks[cfg.pairs:]
                grad += ((plus - minus).float()[:, None] * eps).sum(0) / (
                    2 * cfg.pairs * cfg.sigma * cfg.instances)
                centre_scores.append(float(s[0]))
                names.append(family.name)
            it += 1
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad * grad
            theta = theta - cfg.lr * (m / (1 - 0.9 ** it)) / (
                (v / (1 - 0.999 ** it)).sqrt() + 1e-8)
            average = cfg.ema * average + (1 - cfg.ema) * theta
            record: dict[str, Any] = {"iteration": it, "families": names,
                                      "scores": [round(x, 4) for x in centre_scores],
                                      "seconds": round(time.time() - started, 2)}
            if it % cfg.val_every == 0:
                val = validate(average, like, arch, cfg)
                gain = float((val - base_val).mean())
                record["val"] = round(float(val.mean()), 4)
                record["val_by_family"] = [round(float(x), 3) for x in
                                           val.view(-1, cfg.val_instances).mean(1)]
                record["val_vs_start"] = round(gain, 4)
                # every check's weights, so that a checkpoint can be chosen afterwards on
                # more instances than one check affords (benchmarks.generalist on val)
                (out / "checks").mkdir(exist_ok=True)
                _save(out / "checks" / f"{it}.pt", {"theta": average, "iteration": it,
                                                    "val": val})
                if gain < best:
                    best = gain
                    _save(out / "best.pt", {"theta": average, "iteration": it, "val": val})
                log(f"iteration {it}: validation {float(val.mean()):.3f} "
                    f"({gain:+.3f} against the start; best {best:+.3f})")
            history.write(json.dumps(record) + "\n")
            history.flush()
            if time.time() - last_save > cfg.checkpoint_s:
                checkpoint()
                last_save = time.time()
    checkpoint()
    return weights_of(torch.load(out / "best.pt", weights_only=True)["theta"], arch)


def export(out: Path, path: Path, command: str, overrides: dict[str, Any] | None = None,
           check: int | None = None) -> dict[str, Any]:
    """Write the best weights of run ``out`` to ``path`` (a weights file) and ``path.json``
    (what ``python -m tools.ship`` records: the commands that made it, its validation scores,
    the seconds of ES iterations up to it, and for a run started from another, that run's).
    ``overrides``: settings of the run's architecture to export with, e.g.
    ``{"query_net": False, "max_step": 0.5}`` (see
    :class:`~torchzo.learned.arch.GeneralConfig`); weights the new settings drop are left
    out (the query net: its directions become the Gaussian ones) and weights that grow
    start at zero in their new entries, so every other weight is the run's. ``check``: write
    the run's saved check at this iteration (``checks/N.pt``, chosen afterwards on more
    instances) instead of its best."""
    from ..pretrained import save, sha256

    config = json.loads((out / "config.json").read_text())
    arch = from_dict(config["arch"])
    if overrides:
        arch = replace(arch, **overrides)  # type: ignore[type-var]  # checks them first
    source = out / "best.pt" if check is None else out / "checks" / f"{check}.pt"
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such check of run {out}")
    best = torch.load(source, weights_only=True)
    it = int(best["iteration"])
    runs = [(out, it)]  # each run that led here, and its iteration the next one took
    if config.get("init"):
        init = Path(config["init"])
        start = init if init.is_file() else init / "best.pt"  # a check, or a run's best
        runs.insert(0, (init.parent.parent if init.is_file() else init,
                        int(torch.load(start, weights_only=True)["iteration"])))
    commands, seconds = [], 0.0
    for run, limit in runs:
        listed = run / "commands.txt"
        commands += listed.read_text().split("\n") if listed.exists() else []
        history = run / "history.jsonl"
        rows = [json.loads(r) for r in history.read_text().splitlines() if r] \
            if history.exists() else []
        seconds += sum(r["seconds"] for r in rows if r["iteration"] <= limit)
    nets = weights_of(best["theta"], from_dict(config["arch"]))
    if overrides:  # the run's weights in the exported architecture (dropped, grown or as they are)
        target = LearnedZO(arch=arch)
        target.load_state_dict(_grown(nets.weights(), target.weights(), str(out)), strict=True)
        nets = target
    meta: dict[str, Any] = {
        "task": "generalist", "preset": "es", "arch": nets.arch.kind,
        "command": " && ".join([c for c in commands if c] + [command]),
        "es_iteration": it, "config": config, "val_final_loss": None,
        "val_final_log_progress": round(float(best["val"].mean()), 4),
        "train_seconds": round(seconds, 1), "torch": str(torch.__version__),
        "machine": f"{platform.machine()}, 1 torch thread",
        # the exported architecture's settings, as its file stores them
        **nets.arch.to_dict()["config"],
    }
    save(nets, path, meta)
    meta["sha256"] = sha256(path)
    Path(f"{path}.json").write_text(json.dumps(meta, indent=1))
    return meta


def load_best(out: Path) -> LearnedZO:
    """The best-on-validation weights of the ES run in folder ``out``."""
    return load_check(out / "best.pt", out)


def load_check(path: Path, out: Path | None = None) -> LearnedZO:
    """The weights of a saved check of an ES run (``best.pt``, or ``checks/N.pt``), laid
    out by the architecture in the run's ``config.json``; ``out``: the run folder (default:
    the one ``checks/N.pt`` sits in)."""
    out = Path(path).parent.parent if out is None else out
    config = json.loads((out / "config.json").read_text())
    theta = torch.load(path, weights_only=True)["theta"]
    return weights_of(theta, from_dict(config["arch"]))


def weights_of(theta: Tensor, arch: Architecture) -> LearnedZO:
    """A :class:`LearnedZO` of ``arch`` holding the flat weights ``theta``."""
    nets = LearnedZO(arch=arch)
    like = {k: v.detach() for k, v in nets.weights().items()}
    nets.load_state_dict(unflatten(theta, like), strict=True)
    return nets
