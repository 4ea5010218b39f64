"""The learned default at its pure defaults against baselines tuned as a careful user would,
and against CMA-ES and NGOpt.

    python -m benchmarks.generalist.judge [--weights W] [--split fresh] [--families a,b]
        [--instances 20] [--tune-instances 8] [--steps 500] [--q 20] [--jobs 1] [--quick]

Families: ``--split`` of :mod:`torchzo.tasks.families` (``fresh``: families no optimizer of
this project was trained, chosen or tuned on, for the final table only; ``val`` while
developing). Each family gets ``--tune-instances`` tuning instances and ``--instances``
evaluation instances at their natural scale, seeded apart from every other benchmark's.
Every method gets the same budget: ``--steps`` steps of ``q + 1`` evaluations (the forward
estimator), or as many evaluations for the anchors.

Methods:

- ``ZOLSTM``: ``--weights`` (default: the shipped default) with no argument but the
  parameters and a seed: lr 1, no mu, its own directions;
- ``ZOLSTM v1``: the shipped first generalist, the same way;
- ``ZOAdam tuned``: ZO-Adam tuned per family over lr (half-decade grid, extended while the best
  is on an edge) x beta1 in {0.5, 0.9, 0.99} x beta2 in {0.99, 0.999}, each pair's lr tuned;
  with the learned optimizer's kind of directions, and the family's mu where it names one;
- ``ZOSGD tuned``: lr x momentum in {0, 0.9}, the same way;
- ``CMA-ES tuned``: sigma0 tuned per family on a half-decade grid; ``CMA-ES default``: sigma0
  half the start's RMS; ``NGOpt``: nevergrad's default (see :mod:`.anchors`).

The tuning criterion is the mean over tuning instances of ``log((f_T - f_min) / (f_0 -
f_min))``, floored at ``--floor`` (1e-8: some fresh families start 1e9 above their optimum,
where the held-out table's 1e-4 would call a run solved far from it; a run that diverges
scores infinity). Scores: per instance, the
final gap as a fraction of the start gap, floored, over tuned ZO-Adam's and over tuned
CMA-ES's; per family their geometric means, the instances won, and the runs that ended above
their start. Outputs ``NAME.json`` and ``NAME.md`` under ``--out``.
"""
from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

import torchzo
from torchzo.tasks import Problem
from torchzo.tasks.families import FAMILY_SPLITS

from .._common import OUT, finish, machine
from .._report import md_table, section
from .._tuning import Grid, tune_adam, tune_step
from ..weights import learned, resolve
from . import anchors
from .heldout import MakeOpt, instances, log_progress, run, weights_digest

_TUNE_SEED, _TEST_SEED = 5_000_000, 6_000_000
BETA1, BETA2, MOMENTA = (0.5, 0.9, 0.99), (0.99, 0.999), (0.0, 0.9)
REFERENCES = ("ZOAdam tuned", "CMA-ES tuned")
Curve = list[float]
Runner = Callable[[Problem, int], Curve]  # (problem, seed) -> curve


class Tuning:
    """Mean log progress of a runner over the tuning instances, memoised by key."""

    def __init__(self, problems: Sequence[Problem], floor: float) -> None:
        self.problems, self.floor = problems, floor
        self.tried: dict[Any, float] = {}

    def __call__(self, key: Any, runner: Runner) -> float:
        if key not in self.tried:
            scores = [log_progress(runner(p, i), p.f_min, self.floor)
                      for i, p in enumerate(self.problems)]
            self.tried[key] = sum(scores) / len(scores)
        return self.tried[key]

    def record(self, prefix: str) -> dict[str, float]:
        return {str(k[1:]): round(v, 4) for k, v in self.tried.items() if k[0] == prefix}


def _zo(make: MakeOpt, steps: int, q: int, every: int) -> Runner:
    def go(problem: Problem, seed: int) -> Curve:
        return run(problem, make, steps, seed, every)[0]
    return go


def _grid(coarse: Sequence[float], beta1: Sequence[float] = (0.9,),
          beta2: Sequence[float] = (0.999,)) -> Grid:
    return Grid(coarse=tuple(coarse), per_decade=2, max_extend=16, bounds=(-12.0, 4.0),
                exponents=True, beta1=tuple(beta1), beta2=tuple(beta2), rounds=0, refine=None)


def tune(problems: Sequence[Problem], steps: int, q: int, kind: str, quick: bool,
         floor: float) -> dict[str, Any]:
    """The tuned baselines' settings on ``problems``, with every candidate's score."""
    score = Tuning(problems, floor)
    lrs = [-4.0, -2.0] if quick else [-5.0, -4.0, -3.0, -2.0, -1.0, 0.0]

    def adam(e: float, betas: tuple[float, float]) -> float:
        def make(p: Any, s: int, mu: float | None) -> torchzo.ZOOptimizer:
            return torchzo.ZOAdam(p, lr=10 ** e, betas=betas, mu=mu, q=q, seed=s,
                                  directions_kind=kind)
        return score(("adam", e, *betas), _zo(make, steps, q, steps))

    e, betas, _ = tune_adam(adam, _grid(lrs, BETA1[1:] if quick else BETA1,
                                        BETA2[1:] if quick else BETA2))
    out: dict[str, Any] = {"adam": {"lr": 10 ** e, "betas": list(betas),
                                    "score": adam(e, betas)}}

    def sgd(e: float, momentum: float) -> float:
        def make(p: Any, s: int, mu: float | None) -> torchzo.ZOOptimizer:
            return torchzo.ZOSGD(p, lr=10 ** e, momentum=momentum, mu=mu, q=q, seed=s,
                                 directions_kind=kind)
        return score(("sgd", e, momentum), _zo(make, steps, q, steps))

    best = []
    sgd_lrs = [-5.0, -3.0] if quick else [-7.0, -5.0, -3.0, -1.0]
    for m in MOMENTA[:1] if quick else MOMENTA:
        e, _ = tune_step(functools.partial(lambda m, e: sgd(e, m), m), _grid(sgd_lrs))
        best.append((sgd(e, m), e, m))
    s, e, m = min(best)
    out["sgd"] = {"lr": 10 ** e, "momentum": m, "score": s}

    def cma(e: float) -> float:
        return score(("cma", e), lambda p, i: anchors.run_cma(p, 10 ** e, steps, q, i, steps))
    e, _ = tune_step(cma, _grid([-2.0, 0.0] if quick else [-3.0, -2.0, -1.0, 0.0, 1.0]))
    out["cma"] = {"sigma0": 10 ** e, "score": cma(e)}
    out["candidates"] = {name: score.record(name) for name in ("adam", "sgd", "cma")}
    return out


def methods(weights: Any, tuned: dict[str, Any], steps: int, q: int, every: int, kind: str
            ) -> dict[str, Runner]:
    adam, sgd, cma = tuned["adam"], tuned["sgd"], tuned["cma"]

    def zolstm(w: Any) -> Runner:
        return _zo(lambda p, s, mu: torchzo.ZOLSTM(p, pretrained=w, q=q, seed=s),
                   steps, q, every)
    return {
        "ZOLSTM": zolstm(weights),
        "ZOLSTM v1": zolstm("generalist"),
        "ZOAdam tuned": _zo(lambda p, s, mu: torchzo.ZOAdam(
            p, lr=adam["lr"], betas=tuple(adam["betas"]), mu=mu, q=q, seed=s,
            directions_kind=kind), steps, q, every),
        "ZOSGD tuned": _zo(lambda p, s, mu: torchzo.ZOSGD(
            p, lr=sgd["lr"], momentum=sgd["momentum"], mu=mu, q=q, seed=s,
            directions_kind=kind), steps, q, every),
        "CMA-ES tuned": lambda p, i: anchors.run_cma(p, cma["sigma0"], steps, q, i, every),
        "CMA-ES default": lambda p, i: anchors.run_cma(p, anchors.default_sigma0(p), steps,
                                                       q, i, every),
        "NGOpt": lambda p, i: anchors.run_ngopt(p, steps, q, i, every),
    }


def summarize(finals: dict[str, list[float]], starts: list[float], f_mins: list[float],
              floor: float) -> dict[str, Any]:
    """Per method: geometric-mean ratio of final gaps to each reference's, wins, above start."""
    out = {}
    for name, values in finals.items():
        mine = [log_progress([s, v], lo, floor) for v, s, lo in zip(values, starts, f_mins)]
        entry: dict[str, Any] = {"instances": len(values),
                                 "ended_above_start": sum(not v <= s
                                                          for v, s in zip(values, starts))}
        for ref in REFERENCES:
            theirs = [log_progress([s, v], lo, floor)
                      for v, s, lo in zip(finals[ref], starts, f_mins)]
            logs = [a - b for a, b in zip(mine, theirs)]
            entry[f"ratio_to_{ref}"] = math.exp(sum(logs) / len(logs)) if all(
                math.isfinite(x) for x in logs) else math.inf
            entry[f"wins_vs_{ref}"] = sum(a < b for a, b in zip(mine, theirs))
        out[name] = entry
    return out


def _family(fam: str, args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    weights = resolve(args.weights)
    kind = learned(weights).arch.directions_kind
    tuned = tune(instances(fam, args.tune_instances, _TUNE_SEED), args.steps, args.q, kind,
                 args.quick, args.floor)
    problems = instances(fam, args.instances, _TEST_SEED)
    curves = {name: [go(p, i) for i, p in enumerate(problems)]
              for name, go in methods(weights, tuned, args.steps, args.q, args.every,
                                      kind).items()}
    finals = {n: [c[-1] for c in cs] for n, cs in curves.items()}
    starts, f_mins = [c[0] for c in curves["ZOAdam tuned"]], [p.f_min for p in problems]
    summary = summarize(finals, starts, f_mins, args.floor)
    print(fam, {n: round(s["ratio_to_ZOAdam tuned"], 3) for n, s in summary.items()},
          flush=True)
    return {"tuned": tuned, "f_min": f_mins, "starts": starts, "finals": finals,
            "summary": summary}


def _cell(s: dict[str, Any], ref: str) -> str:
    return f"{s[f'ratio_to_{ref}']:.3g} ({s[f'wins_vs_{ref}']}/{s['instances']}, " \
           f"{s['ended_above_start']}↑)"


def render(data: dict[str, Any]) -> str:
    cfg, fams = data["config"], data["families"]
    names = list(next(iter(fams.values()))["summary"])
    tables = []
    for ref in REFERENCES:
        rows = [[fam] + [_cell(e["summary"][n], ref) for n in names] for fam, e in fams.items()]
        rows.append(["**geometric mean**"] + [f"**{data['overall'][ref][n]:.3g}**"
                                             for n in names])
        tables += [f"Against {ref}:", "", md_table(["family"] + names, rows), ""]
    tuned = md_table(["family", "ZO-Adam lr", "betas", "ZO-SGD lr", "momentum",
                      "CMA-ES sigma0"],
                     [[fam, f"{e['tuned']['adam']['lr']:.3g}", str(e["tuned"]["adam"]["betas"]),
                       f"{e['tuned']['sgd']['lr']:.3g}", e["tuned"]["sgd"]["momentum"],
                       f"{e['tuned']['cma']['sigma0']:.3g}"] for fam, e in fams.items()])
    return "\n".join([
        *section(f"The learned default at its pure defaults on the {cfg['split']} families",
                 f"`{data['command']}`; weights `{data['weights']}` (digest "
                 f"`{data['weights_digest'][:16]}`). Machine: {data['machine']['cpu']}, one "
                 f"torch thread per family. {cfg['instances']} instances per family, "
                 f"{cfg['tune_instances']} tuning instances, {cfg['steps']} steps of q = "
                 f"{cfg['q']} (+1), or as many evaluations.",
                 "Each cell: the geometric mean over instances of the final gap (a fraction of "
                 f"the start gap, floored at {cfg['floor']:g}) over the reference's (lower is "
                 "better), instances won against it, runs that ended above their start (↑).",
                 level=1),
        *tables, "Tuned settings per family (on the tuning instances):", "", tuned])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=None, help="ZOLSTM pretrained name, file or run")
    ap.add_argument("--split", default="fresh", choices=sorted(FAMILY_SPLITS))
    ap.add_argument("--families", default=None, help="comma-separated (default: the split's)")
    ap.add_argument("--instances", type=int, default=20)
    ap.add_argument("--tune-instances", type=int, default=8)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--q", type=int, default=20)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--floor", type=float, default=1e-8,
                    help="progress below this fraction of the start gap counts as solved")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--name", default=None, help="output stem (default: judge-SPLIT)")
    ap.add_argument("--jobs", type=int, default=1, help="families run in parallel processes")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if anchors.missing():
        raise SystemExit(f"the judge runs CMA-ES and NGOpt: {anchors.missing()}")
    if args.quick:
        args.instances, args.tune_instances, args.steps, args.every = 2, 1, 10, 5
    args.name = args.name or f"judge-{args.split}"
    families = args.families.split(",") if args.families else list(FAMILY_SPLITS[args.split])
    start = time.perf_counter()
    raw = sys.argv[1:] if argv is None else argv
    data: dict[str, Any] = {
        "command": "python -m benchmarks.generalist.judge " + " ".join(raw),
        "weights": str(args.weights or torchzo.pretrained.default_name()),
        "weights_digest": weights_digest(learned(resolve(args.weights))),
        "machine": machine(), "config": vars(args), "families": {}}
    jobs = [(fam, args) for fam in families]
    if args.jobs > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            results = pool.starmap(_family, jobs)
    else:
        results = [_family(*job) for job in jobs]
    data["families"] = dict(zip(families, results))
    names = list(results[0]["summary"])
    data["overall"] = {ref: {n: math.exp(sum(math.log(e["summary"][n][f"ratio_to_{ref}"])
                                             for e in results) / len(results))
                             for n in names} for ref in REFERENCES}
    return finish(data, start, args.name, args.out, render)


if __name__ == "__main__":
    main()
