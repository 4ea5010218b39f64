"""The comparison protocol shared by the task benchmarks (binary classification, attacks).

Methods are specs (plain dicts: an optimizer kind and its settings); a memoised
:class:`Runner` runs a spec on a task's problems with seeds shared by every method, so that
comparisons are paired. :func:`tune` tunes the baselines by the paper's protocol (``lr =
delta / d`` on a decade grid, then a finer grid around the best decade, every grid extended
while its best value sits on an edge; ZO-Adam's betas by coordinate descent in ``1 - beta``),
:func:`tune_alpha` a transferred learned optimizer's output scale the same way, and
:func:`compare` with :func:`paired_verdict` read the test runs against the best baseline.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from torchzo import pretrained
from torchzo.learned.nets import LearnedZO
from torchzo.meta import run_optimizer
from torchzo.optim import ZOSGD, ZOAdam, ZOSignSGD
from torchzo.optim.zolstm import ZOLSTM
from torchzo.progress import Progress
from torchzo.tasks.base import Problem

from .._tuning import Grid, canon, tune_adam, tune_step

log = logging.getLogger("benchmarks")

BASELINES = {"zosgd": "ZO-SGD", "zosignsgd": "ZO-signSGD", "zoadam": "ZO-Adam"}
ABLATIONS = {  # label suffix -> ZOLSTM settings; no-update steps with the tuned ZO-SGD lr
    "": dict(covariance="learned", use_update=True, query_prob=0.5),
    " no-query": dict(covariance="identity", use_update=True, query_prob=0.5),
    " no-update": dict(covariance="learned", use_update=False, query_prob=0.5),
    " GuidedES": dict(covariance="guided", use_update=True, query_prob=0.5),
    " p=1": dict(covariance="learned", use_update=True, query_prob=1.0),
}
UNTRAINED = "untrained"

Spec = dict[str, Any]


@dataclass(frozen=True)
class Config:
    steps: int = 500
    q: int = 20
    dim: int = 100
    batch: int = 64
    tune_datasets: int = 10
    test_datasets: int = 10
    trials: int = 3
    coarse: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
    fine_per_decade: int = 4
    beta1: tuple[float, ...] = (0.9, 0.99)
    beta2: tuple[float, ...] = (0.99, 0.996, 0.999)
    max_extend: int = 4
    adam_rounds: int = 3
    sweep_q: tuple[int, ...] = (5, 10, 20, 40)
    sweep_batch: tuple[int, ...] = (16, 32, 64, 128)
    sweep_dim: tuple[int, ...] = (50, 100, 150)
    sweep_trials: int = 3
    mu: float | None = None  # None: every optimizer's default for the dtype
    #: Every method's base draw. ``None``: each method's own default,
    #: Gaussian for the baselines and the kind a ZO-LSTM's weights name.
    directions_kind: str | None = None


FULL = Config()


def _finite_or_inf(x: float) -> float:
    return x if math.isfinite(x) else math.inf


def _seeds(problem: Problem, trial: int) -> tuple[int, int]:
    """(data seed, optimizer seed): shared by every method, so comparisons are paired."""
    seed = problem.seed  # type: ignore[attr-defined]
    return seed, 10_000 * (trial + 1) + seed


class Runner:
    """Runs a method spec on problems; memoised, so the sweeps reuse the default setting.

    Shows the runs done so far on stderr (:mod:`torchzo.progress`; the tuning decides how many
    there will be); ``close()`` writes the last line.
    """

    def __init__(self, cfg: Config, nets: dict[str, LearnedZO]) -> None:
        self.cfg, self.nets = cfg, nets
        self._memo: dict[tuple, Tensor] = {}
        self.measures: dict[tuple, dict[str, Any]] = {}
        self.runs, self.seconds = 0, 0.0
        self.progress = Progress(desc="benchmark", unit="run", interval=30.0)

    def close(self) -> None:
        self.progress.close()

    def _make(self, spec: Spec, q: int, dim: int, seed: int) -> Callable[[list[Tensor]], Any]:
        kind, mu, given = spec["kind"], self.cfg.mu, self.cfg.directions_kind
        draw = given or "gaussian"
        if kind == "zolstm":
            nets = self.nets[spec["weights"]]
            lr = spec["alpha"] if spec["use_update"] else spec["delta"] / dim
            return lambda ps: ZOLSTM(ps, pretrained=nets, lr=lr, q=q, mu=mu,
                                     query_prob=spec["query_prob"], covariance=spec["covariance"],
                                     use_update=spec["use_update"], seed=seed,
                                     directions_kind=given)
        lr = spec["delta"] / dim
        if kind == "zosgd":
            return lambda ps: ZOSGD(ps, lr=lr, q=q, mu=mu, seed=seed, directions_kind=draw)
        if kind == "zosignsgd":
            return lambda ps: ZOSignSGD(ps, lr=lr, q=q, mu=mu, seed=seed, directions_kind=draw)
        if kind == "zoadam":
            return lambda ps: ZOAdam(ps, lr=lr, q=q, mu=mu, betas=tuple(spec["betas"]),
                                     seed=seed, directions_kind=draw)
        raise ValueError(f"unknown method kind {kind!r}")

    def key(self, spec: Spec, problem: Problem, q: int, trial: int) -> tuple:
        return (json.dumps(spec, sort_keys=True), q, problem.dim,
                problem.batch_size, _seeds(problem, trial)[0], trial,  # type: ignore[attr-defined]
                self.cfg.steps, self.cfg.mu, self.cfg.directions_kind)

    def curve(self, spec: Spec, problem: Problem, q: int, trial: int) -> Tensor:
        data_seed, opt_seed = _seeds(problem, trial)
        key = self.key(spec, problem, q, trial)
        if key not in self._memo:
            t0 = time.perf_counter()

            def measure(x: Tensor) -> None:
                self.measures[key] = self.measure(problem, x)

            self._memo[key] = run_optimizer(problem, self._make(spec, q, problem.dim, opt_seed),
                                            self.cfg.steps, data_seed=data_seed,
                                            on_finish=measure)
            self.seconds += time.perf_counter() - t0
            self.runs += 1
            fields: dict[str, Any] = {"last": spec.get("weights", spec["kind"]),
                                      "s/run": self.seconds / self.runs}
            self.progress.update(1, **fields)
        return self._memo[key]

    def measure(self, problem: Problem, x: Tensor) -> dict[str, Any]:
        """Task-specific facts about a run's final point (see the attack benchmark)."""
        return {}

    def curves(self, spec: Spec, problems: Sequence[Problem], q: int, trials: int) -> Tensor:
        """Loss curves, shape (datasets, trials, steps + 1)."""
        return torch.stack([torch.stack([self.curve(spec, p, q, r) for r in range(trials)])
                            for p in problems])


class Tuner:
    """Scores candidates (mean final loss over the tuning datasets) and records every one."""

    def __init__(self, runner: Runner, problems: Sequence[Problem]) -> None:
        self.runner, self.problems = runner, problems
        self.records: dict[str, list[dict[str, Any]]] = {k: [] for k in BASELINES}
        self._scores: dict[str, float] = {}
        self.stage = ""

    def score(self, kind: str, delta: float, betas: tuple[float, float] | None = None) -> float:
        spec: Spec = {"kind": kind, "delta": canon(delta)}
        if betas is not None:
            spec["betas"] = [canon(b) for b in betas]
        key = json.dumps(spec, sort_keys=True)
        if key not in self._scores:
            finals = self.runner.curves(spec, self.problems, self.runner.cfg.q, 1)[:, 0, -1]
            s = _finite_or_inf(float(finals.mean()))
            self._scores[key] = s
            self.records[kind].append({**spec, "lr": spec["delta"] / self.problems[0].dim,
                                       "score": s, "stage": self.stage})
            log.info("tune %-10s delta=%-9.4g%s  score %.5f", BASELINES[kind], spec["delta"],
                     "" if betas is None else f" betas={tuple(spec['betas'])}", s)
        return self._scores[key]


def grid(cfg: Config) -> Grid:
    """The paper's grids: delta (``lr = delta / d``) on decades, then ``fine_per_decade``."""
    return Grid(coarse=cfg.coarse, per_decade=cfg.fine_per_decade, max_extend=cfg.max_extend,
                beta1=cfg.beta1, beta2=cfg.beta2, rounds=cfg.adam_rounds)


def tune(runner: Runner, problems: Sequence[Problem]) -> dict[str, Any]:
    cfg = runner.cfg
    tuner = Tuner(runner, problems)
    t0 = time.perf_counter()
    best: dict[str, dict[str, Any]] = {}
    edges: list[str] = []

    def stage(name: str) -> None:
        tuner.stage = name
    for kind in ("zosgd", "zosignsgd"):
        delta, stuck = tune_step(lambda d, k=kind: tuner.score(k, d),  # type: ignore[misc]
                                 grid(cfg), "delta", stage=stage)
        best[kind] = {"delta": delta}
        edges += [f"{BASELINES[kind]} {e}" for e in stuck]
    delta, betas, stuck = tune_adam(lambda d, b: tuner.score("zoadam", d, b), grid(cfg),
                                    "delta", stage)
    best["zoadam"] = {"delta": delta, "betas": list(betas)}
    edges += [f"ZO-Adam {e}" for e in stuck]
    for kind, hp in best.items():
        hp["lr"] = hp["delta"] / problems[0].dim
        hp["score"] = tuner.score(kind, hp["delta"], betas if kind == "zoadam" else None)
        hp["candidates"] = len(tuner.records[kind])
    return {"datasets": [p.seed for p in problems], "best": best,  # type: ignore[attr-defined]
            "candidates": tuner.records, "unresolved_edges": edges,
            "seconds": time.perf_counter() - t0}


def tune_alpha(runner: Runner, problems: Sequence[Problem], weights: str) -> dict[str, Any]:
    """The output scale alpha for a ZO-LSTM trained on another task (the paper's transfer).

    Same protocol as the baselines' lr: decades, then a fine grid, edges extended; the score is
    the mean final loss on the tuning problems, learned queries mixed in with p = 0.5.
    """
    cfg = runner.cfg
    records: list[dict[str, float]] = []

    def score(alpha: float) -> float:
        spec: Spec = {"kind": "zolstm", "weights": weights, "alpha": canon(alpha),
                      "covariance": "learned", "use_update": True, "query_prob": 0.5}
        s = _finite_or_inf(float(runner.curves(spec, problems, cfg.q, 1)[:, 0, -1].mean()))
        if all(r["alpha"] != spec["alpha"] for r in records):
            records.append({"alpha": spec["alpha"], "score": s})
            log.info("tune alpha of %s: %.4g  score %.5f", weights, spec["alpha"], s)
        return s

    alpha, stuck = tune_step(score, replace(grid(cfg), coarse=(0.1, 1.0, 10.0)), "alpha")
    return {"alpha": alpha, "score": score(alpha), "candidates": records, "on_edge": bool(stuck)}


def transfer_specs(tuned: dict[str, dict[str, Any]]) -> dict[str, Spec]:
    """Methods for transferred weights, each with its tuned alpha."""
    return {f"ZO-LSTM transfer ({w}, alpha {t['alpha']:.3g})": {
        "kind": "zolstm", "weights": w, "alpha": canon(t["alpha"]), "covariance": "learned",
        "use_update": True, "query_prob": 0.5} for w, t in tuned.items()}


# -- evaluation --------------------------------------------------------------------------------


def mean_std(x: Tensor) -> tuple[float, float]:
    return float(x.mean()), float(x.std()) if x.numel() > 1 else 0.0


def jsonable(x: Any) -> Any:
    """Strict JSON: a diverged run's infinite score becomes null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


def round_list(xs: Tensor | Sequence[float], digits: int = 5) -> list[float | None]:
    return [float(f"{float(x):.{digits}g}") if math.isfinite(float(x)) else None for x in xs]


def curve_steps(steps: int) -> list[int]:
    """The iterations at which curves are stored: about 100 points keep the JSON small."""
    stride = max(1, steps // 100)
    return sorted({*range(0, steps + 1, stride), steps})


def summarize(curves: Tensor) -> dict[str, Any]:
    """Final loss over datasets (each averaged over trials), and mean/std curves over all runs."""
    per_dataset = curves[:, :, -1].mean(1)
    mean, std = mean_std(per_dataset)
    runs = curves.flatten(0, 1)[:, curve_steps(curves.shape[-1] - 1)]
    return {"final_mean": mean, "final_std": std, "per_dataset_final": round_list(per_dataset, 6),
            "finals": [round_list(row, 6) for row in curves[:, :, -1]],
            "curve_mean": round_list(runs.mean(0), 4),
            "curve_std": round_list(
                runs.std(0) if runs.shape[0] > 1 else torch.zeros(runs.shape[1]), 3)}


def compare(curves: dict[str, Tensor], baselines: Sequence[str]) -> dict[str, Any]:
    """Ratio, paired wins and iterations-to-reach against the best baseline on the test set."""
    finals = {name: c[:, :, -1].mean(1) for name, c in curves.items()}
    best = min(baselines, key=lambda m: float(finals[m].mean()))
    target = float(finals[best].mean())
    rows = {}
    for name, c in curves.items():
        mean_curve = c.flatten(0, 1).mean(0)
        reached = (mean_curve <= target * (1 + 1e-9)).nonzero()
        mean, std = mean_std(finals[name])
        # How much of the mean is optimizer-seed noise: the trial variance within datasets.
        seed_var = c[:, :, -1].var(1).mean() if c.shape[1] > 1 else torch.tensor(math.nan)
        rows[name] = {"final_mean": mean, "final_std": std, "ratio": mean / target,
                      "seed_se": float((seed_var / c[:, :, -1].numel()).sqrt()),
                      "wins": None if name == best else int((finals[name] < finals[best]).sum()),
                      "iters_to_best_baseline": int(reached[0]) if len(reached) else None}
    return {"best_baseline": best, "target": target, "rows": rows}


def method_specs(tuned: dict[str, Any], weights: Sequence[str]) -> dict[str, Spec]:
    specs: dict[str, Spec] = {}
    for kind, label in BASELINES.items():
        spec: Spec = {"kind": kind, "delta": canon(tuned[kind]["delta"])}
        if kind == "zoadam":
            spec["betas"] = [canon(b) for b in tuned[kind]["betas"]]
        specs[label] = spec
    for name in weights:
        for suffix, flags in ABLATIONS.items():
            specs[f"ZO-LSTM{suffix} ({name})"] = {
                "kind": "zolstm", "weights": name, "alpha": 1.0,
                "delta": canon(tuned["zosgd"]["delta"]), **flags}
    return specs


# -- weights -----------------------------------------------------------------------------------


def load_weights(pairs: Sequence[str], quick: bool) -> tuple[dict[str, LearnedZO], dict]:
    """``NAME=PATH`` (a file, a shipped name, or ``untrained``) -> nets and their provenance."""
    nets: dict[str, LearnedZO] = {}
    info: dict[str, Any] = {}
    for pair in pairs:
        name, sep, where = pair.partition("=")
        if not sep or not name or not where:
            raise SystemExit(f"--weights wants NAME=PATH, got {pair!r}")
        if where == UNTRAINED:
            torch.manual_seed(0)
            nets[name], info[name] = LearnedZO(), {"source": "untrained (torch.manual_seed(0))"}
        elif Path(where).is_file():
            nets[name] = pretrained.load_file(Path(where))
            digest = hashlib.sha256(Path(where).read_bytes()).hexdigest()
            info[name] = {"source": where, "sha256": digest}
        else:
            nets[name] = pretrained.load(where)
            info[name] = {"source": f"shipped:{where}", **pretrained.info(where)}
    if pairs:
        return nets, info
    try:
        default = pretrained.default_name()
        shipped = default in pretrained.available()
    except pretrained.PretrainedError:
        shipped = False
    if shipped:
        return load_weights([f"{default}={default}"], quick)
    if quick:  # a smoke run should still exercise the ZO-LSTM paths
        log.warning("no weights given and none shipped: --quick uses untrained weights")
        return load_weights([f"{UNTRAINED}={UNTRAINED}"], quick)
    log.warning("no weights given and none shipped: only the baselines run")
    return nets, info


# -- statistics and formatting ---------------------------------------------------------------


def fmt_mean_std(mean: float, std: float) -> str:
    return f"{mean:.4f} ± {std:.4f}"


def sign_test(wins: int, n: int) -> float:
    """Two-sided exact sign test of ``wins`` out of ``n`` paired comparisons (ties as losses)."""
    tail = sum(math.comb(n, k) for k in range(min(wins, n - wins) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_verdict(ratio: float, wins: int, n: int, unit: str = "datasets") -> str:
    # The verdict is the paired one; a heavy tail can put the mean ratio on the other side.
    p = sign_test(wins, n)
    if p < 0.05:
        verdict = f"lower on most {unit}" if 2 * wins > n else f"higher on most {unit}"
    else:
        verdict = "no significant difference"
    return (f"{verdict} (lower on {wins}/{n} {unit}, two-sided sign test p = {p:.2g}; "
            f"mean final loss ratio {ratio:.2f})")
