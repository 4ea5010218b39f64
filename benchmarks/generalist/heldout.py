"""The generalist on problem families it never saw: ZOLSTM at its defaults against tuned ZO-Adam.

    python -m benchmarks.generalist [--weights NAME_OR_PATH] [--instances 20] [--steps 500]
                                    [--families a,b,...] [--out docs/benchmarks] [--quick]

Families: the ``test`` split of :mod:`torchzo.tasks.families`, none of which the generalist
was meta-trained on or had its checkpoint chosen on. Each family gets ``--tune-instances``
tuning instances and ``--instances`` fresh evaluation instances, at their natural scale (not
augmented). Every method runs on the same instances with the same direction and minibatch
seeds, at the same query budget (q = 20, ``--steps`` steps), from the instance's start; mu is
the optimizers' default except on the piecewise-constant families, which give theirs to every
method.

Methods: ``ZOLSTM`` (``--weights``, default: the shipped default) at lr 1, its no-query-net
ablation (Gaussian directions) and the untrained architecture (its hand-set step-size rule),
the paper's ``mnist-attack`` ZOLSTM at lr 1, ZO-Adam at its default lr 1e-3, and ZO-Adam and
ZO-SGD tuned per family on the tuning instances: lr on a half-decade grid, extended while the
best is on an edge; ZO-Adam also over beta1 in {0.9, 0.5}. Where the weights name other than
Gaussian directions (their architecture's ``directions_kind``), ZO-Adam tuned the same way
with that kind of directions and the ZOLSTM with Gaussian ones run too, so that the
oracle's share of a lead shows. The tuning criterion is the mean
over tuning instances of ``log((f_T - f_min) / (f_0 - f_min))`` (a run that diverges scores
infinity).

Scores: per instance, the final full-objective gap ``f_T - f_min`` (``f_min`` a known lower
bound, the optimum where known) as a fraction of the start gap, floored at ``FLOOR`` (solved),
divided by tuned ZO-Adam's; per family the geometric mean of that ratio over instances, the
instances won (strictly lower), and how many runs ended above their start.
Outputs: ``generalist.json``, ``generalist.md`` and ``generalist.png`` under ``--out``.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import torchzo
from torchzo.learned import Architecture, GeneralConfig, LearnedZO
from torchzo.optim import ZOOptimizer
from torchzo.oracle import KINDS, ClosureError
from torchzo.tasks import Problem
from torchzo.tasks.families import FAMILIES, FAMILY_SPLITS

from .._common import OUT, finish, machine, pyplot, save_figure
from .._report import md_table, paragraphs, section
from .._tuning import Grid, tune_adam, tune_step
from ..weights import learned, resolve

MakeOpt = Callable[[list[Tensor], int, float | None], ZOOptimizer]
_TUNE_SEED, _TEST_SEED = 3_000_000, 2_000_000
#: Gaps below this fraction of the start gap count as solved: where one method reaches the
#: optimum exactly (a balanced pole, a separable dataset), raw gap ratios are meaningless.
FLOOR = 1e-4


def kind_adam(kind: str) -> str:
    """The row of ZO-Adam tuned with ``kind`` directions: run beside a learned optimizer whose
    weights name that kind, so that what its oracle buys is not read as its update rule's."""
    return f"ZOAdam tuned ({kind})"


ORTHOGONAL_ADAM = kind_adam("orthogonal")


def instances(family: str, count: int, base: int) -> list[Problem]:
    """``count`` instances of ``family`` from seeds that meta-training never used."""
    k = list(FAMILIES).index(family)
    out = []
    for i in range(count):
        out.append(FAMILIES[family].instance(torch.Generator().manual_seed(base + 1000 * k + i)))
    return out


@torch.no_grad()
def run(problem: Problem, make: MakeOpt, steps: int, seed: int, every: int
        ) -> tuple[list[float], bool]:
    """The full objective every ``every`` steps (start included) and whether it diverged."""
    x = problem.x0.detach().clone().float()
    opt = make([x], seed, problem.mu)
    data = torch.Generator().manual_seed(seed + 1)
    curve = [float(problem.objective(x))]
    for t in range(1, steps + 1):
        batch = problem.sample_batch(data)

        def fn(X: Tensor, b: Any = batch) -> Tensor:
            return problem.loss(X, b)
        try:
            opt.step(torchzo.Batched(fn))
        except ClosureError:
            return curve + [math.inf] * (steps // every + 1 - len(curve)), True
        if t % every == 0:
            value = float(problem.objective(x))
            if not math.isfinite(value):
                return curve + [math.inf] * (steps // every + 1 - len(curve)), True
            curve.append(value)
    return curve, False


def log_progress(curve: Sequence[float], f_min: float, floor: float = FLOOR) -> float:
    """``log`` of the final gap over the start gap, floored at ``floor``."""
    gap0, gap = curve[0] - f_min, curve[-1] - f_min
    if not math.isfinite(gap):
        return math.inf
    return math.log(max(gap / max(gap0, 1e-30), floor))


def _grid(exponents: Sequence[float], beta1: tuple[float, ...] = (0.9,)) -> Grid:
    """lr = 10 ** e: e on ``exponents``, extended by decades within [1e-12, 1e4], then the
    half-decades either side of the best decade; each beta1 tuned on its own, beta2 0.999."""
    return Grid(coarse=tuple(exponents), per_decade=2, max_extend=16, bounds=(-12.0, 4.0),
                exponents=True, beta1=beta1, beta2=(0.999,), rounds=0, refine=None)


class _Scores:
    """The tuning criterion of ``lr = 10 ** e`` for an optimizer family ``make(lr)``,
    memoised per family and e."""

    def __init__(self, problems: Sequence[Problem], steps: int) -> None:
        self.problems, self.steps = problems, steps
        self.tried: dict[tuple[Callable[[float], MakeOpt], float], float] = {}

    def __call__(self, make: Callable[[float], MakeOpt], e: float) -> float:
        if (make, e) not in self.tried:
            runs = [run(p, make(10 ** e), self.steps, i, self.steps)[0]
                    for i, p in enumerate(self.problems)]
            self.tried[make, e] = sum(log_progress(c, p.f_min)
                                      for c, p in zip(runs, self.problems)) / len(runs)
        return self.tried[make, e]

    def record(self, make: Callable[[float], MakeOpt]) -> dict[str, float]:
        """Every e tried with ``make``: its score, rounded."""
        return {f"{e:g}": round(s, 4) for (m, e), s in sorted(self.tried.items(),
                                                              key=lambda i: i[0][1])
                if m is make}


def _adam(beta1: float, kind: str) -> Callable[[float], MakeOpt]:
    def make(lr: float) -> MakeOpt:
        return lambda p, s, mu: torchzo.ZOAdam(p, lr=lr, mu=mu, betas=(beta1, 0.999), seed=s,
                                               directions_kind=kind)
    return make


def tune_family(problems: Sequence[Problem], steps: int, quick: bool,
                kind: str = "gaussian") -> dict[str, Any]:
    """Tuned ZO-Adam and ZO-SGD on ``problems``; for another ``kind`` than Gaussian, also
    ZO-Adam with ``kind`` directions (how much of a learned optimizer's lead its oracle buys).
    Beside each best setting, every candidate's score (per beta1 for ZO-Adam)."""
    adam_grid = [-4.0, -2.0] if quick else [-5.0, -4.0, -3.0, -2.0, -1.0, 0.0]
    sgd_grid = [-5.0, -3.0] if quick else [-7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0, 0.0]
    score = _Scores(problems, steps)
    out: dict[str, Any] = {}
    for directions in dict.fromkeys(("gaussian", kind)):
        adams = {b1: _adam(b1, directions) for b1 in (0.9, 0.5)}
        e, (b1, _), _ = tune_adam(lambda e, b, a=adams: score(a[b[0]], e),  # type: ignore[misc]
                                  _grid(adam_grid, tuple(adams)))
        name = "adam" if directions == "gaussian" else f"adam_{directions}"
        out[name] = {"lr": 10 ** e, "beta1": b1, "score": score(adams[b1], e)}
        out.update({f"{name}_beta1_{b}": score.record(make) for b, make in adams.items()})

    def sgd(lr: float) -> MakeOpt:
        return lambda p, s, mu: torchzo.ZOSGD(p, lr=lr, mu=mu, seed=s)
    e, _ = tune_step(lambda e: score(sgd, e), _grid(sgd_grid))
    out["sgd_grid"] = score.record(sgd)
    out["sgd"] = {"lr": 10 ** e, "score": score(sgd, e)}
    return out


def _zolstm(weights: Any) -> MakeOpt:
    return lambda p, s, mu: torchzo.ZOLSTM(p, pretrained=weights, mu=mu, seed=s)


def methods(weights: Any, tuned: dict[str, Any], candidates: Sequence[str] = ()
            ) -> dict[str, MakeOpt]:
    """The compared methods; with ``candidates`` (weights to choose between, e.g. ES
    checkpoints on the val families), only those and the tuned baselines."""
    adam, sgd = tuned["adam"], tuned["sgd"]
    baselines: dict[str, MakeOpt] = {
        "ZOAdam tuned": lambda p, s, mu: torchzo.ZOAdam(p, lr=adam["lr"], mu=mu, seed=s,
                                                        betas=(adam["beta1"], 0.999)),
        "ZOSGD tuned": lambda p, s, mu: torchzo.ZOSGD(p, lr=sgd["lr"], mu=mu, seed=s),
    }
    if candidates:
        return {**{name: _zolstm(resolve(name)) for name in candidates}, **baselines}
    untrained = LearnedZO(arch=GeneralConfig(hidden=8))
    out = {"ZOLSTM": _zolstm(weights)}
    arch = learned(weights).arch
    if arch.has_query:  # without a query net the ablation is the same run
        out["ZOLSTM no query net"] = lambda p, s, mu: torchzo.ZOLSTM(
            p, pretrained=weights, mu=mu, seed=s, covariance="identity")
    if arch.directions_kind != "gaussian":  # the oracle's share of the lead
        out["ZOLSTM Gaussian directions"] = lambda p, s, mu: torchzo.ZOLSTM(
            p, pretrained=weights, mu=mu, seed=s, directions_kind="gaussian")
    out.update({
        "untrained (hand rule)": lambda p, s, mu: torchzo.ZOLSTM(p, pretrained=untrained,
                                                                 mu=mu, seed=s),
        "ZOLSTM mnist-attack": lambda p, s, mu: torchzo.ZOLSTM(p, pretrained="mnist-attack",
                                                               mu=mu, seed=s),
        "ZOAdam lr 1e-3": lambda p, s, mu: torchzo.ZOAdam(p, mu=mu, seed=s),
    })
    kind = arch.directions_kind
    if f"adam_{kind}" in tuned and kind != "gaussian":
        own = tuned[f"adam_{kind}"]
        baselines[kind_adam(kind)] = lambda p, s, mu: torchzo.ZOAdam(
            p, lr=own["lr"], mu=mu, seed=s, betas=(own["beta1"], 0.999), directions_kind=kind)
    return {**out, **baselines}


def median_progress(curves: dict[str, list[list[float]]], f_mins: Sequence[float]
                    ) -> dict[str, list[float]]:
    """Per method, the median over instances of the gap as a fraction of the start gap at
    each recorded step (what the JSON keeps instead of every curve)."""
    out = {}
    for name, runs in curves.items():
        ratios = torch.tensor([[(v - lo) / max(c[0] - lo, 1e-30) for v in c]
                               for c, lo in zip(runs, f_mins)], dtype=torch.float64)
        out[name] = [float(f"{x:.4g}") for x in ratios.nan_to_num(math.inf).median(0).values]
    return out


def summarize(finals: dict[str, list[float]], starts: list[float], f_mins: list[float]
              ) -> dict[str, Any]:
    ref = finals["ZOAdam tuned"]
    out = {}
    for name, values in finals.items():
        logs, wins, above = [], 0, 0
        for v, r, s, lo in zip(values, ref, starts, f_mins):
            mine, theirs = log_progress([s, v], lo), log_progress([s, r], lo)
            logs.append(mine - theirs)
            wins += mine < theirs
            above += not v <= s
        out[name] = {"geomean_ratio_to_tuned_adam": math.exp(sum(logs) / len(logs)),
                     "wins_vs_tuned_adam": wins, "ended_above_start": above,
                     "instances": len(values)}
    return out


def _short(digest: str | dict[str, str]) -> str:
    if isinstance(digest, dict):
        return ", ".join(f"{name}: {d[:16]}" for name, d in digest.items())
    return digest[:16]


def _ratios_table(data: dict[str, Any]) -> str:
    names = list(next(iter(data["families"].values()))["summary"])
    rows = [[fam] + [f"{s['geomean_ratio_to_tuned_adam']:.3g} ({s['wins_vs_tuned_adam']}/"
                     f"{s['instances']}, {s['ended_above_start']}↑)"
                     for s in (entry["summary"][n] for n in names)]
            for fam, entry in data["families"].items()]
    rows.append(["**geometric mean**"] + [f"**{data['overall'][n]:.3g}**" for n in names])
    return md_table(["family"] + names, rows)


def _tuned_table(families: dict[str, Any]) -> str:
    kinds = [k for k in KINDS if k != "gaussian"
             and all(f"adam_{k}" in e["tuned"] for e in families.values())]
    return md_table(
        ["family", "ZO-Adam lr", "beta1", "ZO-SGD lr"]
        + [h for k in kinds for h in (f"ZO-Adam ({k}) lr", "beta1")],
        [[fam, f"{e['tuned']['adam']['lr']:.3g}", e["tuned"]["adam"]["beta1"],
          f"{e['tuned']['sgd']['lr']:.3g}"]
         + [c for k in kinds for c in (f"{e['tuned'][f'adam_{k}']['lr']:.3g}",
                                       e["tuned"][f"adam_{k}"]["beta1"])]
         for fam, e in families.items()])


def render(data: dict[str, Any]) -> str:
    cfg, figure = data["config"], data.get("figure")
    return "\n".join([
        *section("The generalist ZOLSTM on held-out families",
                 f"`{data['command']}`; weights: `{data['weights']}`. Machine: "
                 f"{data['machine']['cpu']}, one torch thread per family ({cfg['jobs']} in "
                 f"parallel). {cfg['instances']} instances per family, {cfg['steps']} steps, "
                 f"q = 20. Weights digest `{_short(data.get('weights_digest', '?'))}` "
                 "(`weights_digest`: equal for any file holding the same architecture and "
                 "weights).",
                 "Geometric mean over instances of the final gap `f_T - f_min` (as a fraction "
                 f"of the start gap, floored at {FLOOR:g}) divided by tuned ZO-Adam's (lower is "
                 "better; 1 = tuned ZO-Adam), with instances won against tuned ZO-Adam and runs "
                 "that ended above their start (↑). Query directions are each method's default: "
                 "Gaussian, and for a ZOLSTM the kind its weights name "
                 "(`nets.arch.directions_kind`); where that is not Gaussian, ZO-Adam tuned with "
                 "that kind and `ZOLSTM Gaussian directions` show what the directions alone buy.",
                 _ratios_table(data), level=1),
        "Tuned settings per family (on separate tuning instances):", "",
        _tuned_table(data["families"]),
        *(["", *paragraphs(f"![ratios per family]({figure})")] if figure else [])])


def plot(data: dict[str, Any], path: Any) -> str | None:
    plt = pyplot()
    if plt is None:
        return None
    fams = list(data["families"])
    names = list(data["families"][fams[0]]["summary"])
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        values = [data["families"][f]["summary"][name]["geomean_ratio_to_tuned_adam"]
                  for f in fams]
        ax.bar([i + j * width for i in range(len(fams))], [min(v, 1e6) for v in values],
               width, label=name)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(fams))], fams, rotation=30,
                  ha="right")
    ax.set_ylabel("final gap / tuned ZO-Adam's (geo. mean)")
    ax.legend(fontsize=7, ncol=4)
    return save_figure(fig, path)


def _family(fam: str, args: argparse.Namespace) -> dict[str, Any]:
    """Tune the baselines on ``fam``'s tuning instances, then run every method on its
    evaluation instances."""
    torch.set_num_threads(1)
    weights = resolve(args.weights)
    candidates = args.candidates.split(",") if args.candidates else ()
    kind = "gaussian" if candidates else learned(weights).arch.directions_kind
    tuned = tune_family(instances(fam, args.tune_instances, _TUNE_SEED), args.steps, args.quick,
                        kind)
    problems = instances(fam, args.instances, _TEST_SEED)
    curves: dict[str, list[list[float]]] = {}
    for name, make in methods(weights, tuned, candidates).items():
        curves[name] = [run(p, make, args.steps, i, args.every)[0]
                        for i, p in enumerate(problems)]
    finals = {n: [c[-1] for c in cs] for n, cs in curves.items()}
    starts = [c[0] for c in curves["ZOAdam tuned"]]
    f_mins = [p.f_min for p in problems]
    summary = summarize(finals, starts, f_mins)
    print(fam, {n: round(s["geomean_ratio_to_tuned_adam"], 3) for n, s in summary.items()},
          flush=True)
    entry = {"tuned": tuned, "f_min": f_mins, "starts": starts, "finals": finals,
             "median_progress": median_progress(curves, f_mins), "summary": summary}
    return entry


#: The architecture's settings when the digest first hashed it. Any setting added since is
#: hashed only away from its default, so that committed digests stay valid and a new
#: setting needs no change here; settings of a kind the flat form never held are hashed.
_DIGEST_FIELDS = ("kind", "hidden", "horizon", "momenta", "base", "beta2", "eps", "init_lr",
                  "coord_hidden", "floor", "gain", "noise_inputs", "query_net", "sgd_mix",
                  "mix_gain", "max_step")
#: The flat form the digest hashes, with the values of settings an architecture lacks as
#: the flat form held them before each architecture had its own settings.
_FLAT_DEFAULTS = {"kind": "paper", "hidden": 10, "horizon": 500, "momenta": [0.5, 0.9, 0.99],
                  "base": 2, "beta2": 0.999, "eps": 1e-8, "init_lr": 0.03, "coord_hidden": 8,
                  "floor": 1e-3, "gain": 0.15, "noise_inputs": False, "query_net": True,
                  "sgd_mix": False, "mix_gain": 0.0, "max_step": 0.0, "sigma_rate": 1.0,
                  "directions_kind": "gaussian"}


def flat_arch(arch: Architecture) -> dict[str, Any]:
    """``arch`` in the flat form that the digest hashes."""
    stored = arch.to_dict()
    return {**_FLAT_DEFAULTS, "kind": stored["kind"], **stored["config"]}


def weights_digest(nets: LearnedZO) -> str:
    """sha256 of the architecture and of the weights' values in name order: the same for any
    file holding them. The architecture counts because some of its settings change the step
    with the same weights (``max_step``, ``sigma_rate``)."""
    import hashlib
    import json

    arch = {k: v for k, v in flat_arch(nets.arch).items()
            if k in _DIGEST_FIELDS or k not in _FLAT_DEFAULTS or v != _FLAT_DEFAULTS[k]}
    digest = hashlib.sha256(json.dumps(arch, sort_keys=True).encode())
    for name, w in sorted(nets.state_dict().items()):
        digest.update(name.encode())
        digest.update(w.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=None, help="ZOLSTM pretrained name or path")
    ap.add_argument("--families", default=",".join(FAMILY_SPLITS["test"]))
    ap.add_argument("--candidates", default=None,
                    help="comma-separated weights to choose between (run folders, their "
                         "checks/N.pt, files): runs only these and the tuned baselines")
    ap.add_argument("--instances", type=int, default=20)
    ap.add_argument("--tune-instances", type=int, default=4)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--name", default="generalist",
                    help="output file stem (e.g. generalist-val for a run on the val families)")
    ap.add_argument("--jobs", type=int, default=1, help="families run in parallel processes")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.instances, args.tune_instances, args.steps, args.every = 2, 1, 20, 10
    start = time.perf_counter()
    torch.set_num_threads(1)
    raw = sys.argv[1:] if argv is None else argv
    data: dict[str, Any] = {"command": "python -m benchmarks.generalist " + " ".join(raw),
                            "weights": args.weights or torchzo.pretrained.default_name(),
                            "weights_digest": weights_digest(learned(args.weights)),
                            "machine": machine(), "config": vars(args), "families": {}}
    if args.candidates:  # then the main weights are not run: name what was
        names = args.candidates.split(",")
        data["weights"] = ", ".join(names)
        data["weights_digest"] = {n: weights_digest(learned(n)) for n in names}
    jobs = [(fam, args) for fam in args.families.split(",")]
    if args.jobs > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            results = pool.starmap(_family, jobs)
    else:
        results = [_family(*job) for job in jobs]
    for fam, entry in zip(args.families.split(","), results):
        data["families"][fam] = entry
    names = list(next(iter(data["families"].values()))["summary"])
    data["overall"] = {n: math.exp(sum(math.log(e["summary"][n]["geomean_ratio_to_tuned_adam"])
                                       for e in data["families"].values())
                                   / len(data["families"])) for n in names}
    if args.out:
        data["figure"] = plot(data, Path(args.out) / f"{args.name}.png")
    return finish(data, start, args.name, args.out, render)


if __name__ == "__main__":
    main()
