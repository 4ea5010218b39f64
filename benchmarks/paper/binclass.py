"""Binary classification: tuned ZO baselines against ZO-LSTM (paper Fig. 3a, 3b-d and 4c).

    python -m benchmarks.paper.binclass [--weights NAME=PATH ...] [--out docs/benchmarks]
                                  [--quick] [--trials N] [--sweep-trials N]
                                  [--no-sweeps] [--no-plots]

The task is :class:`torchzo.tasks.BinaryClassification` (d = 100, b = 64, q = 20, 500 steps,
non-convex least squares on a sigmoid).

Baselines (ZO-SGD, ZO-signSGD, ZO-Adam) are tuned by the paper's protocol, on training datasets
only: ``lr = delta / d`` with delta on a decade grid, then on a quarter-decade grid around the
best decade; a grid whose best value is on its edge is extended until the best is interior.
ZO-Adam also searches beta1 and beta2 (extended in steps of a factor 2 in ``1 - beta``), by
coordinate descent from the best point of the joint coarse grid. The criterion is the mean final
full-data loss over the tuning datasets, one run each, with the same data and query seeds for
every candidate.

Every method then runs on the test datasets from the datasets' own start points. All methods
share the data seed of a dataset and the optimizer seed of a trial, so paired comparisons see the
same minibatch sequence. ZO-LSTM runs for every weights file given, with the paper's ablations:
no-query (Gaussian queries), no-update (learned queries with a ZO-SGD step at the tuned lr),
GuidedES (the UpdateRNN with GuidedES directions), and ``query_prob = 1`` (the learned covariance
at every step instead of half of them). Fig. 3b-d vary q, the minibatch b or the dimension d for
ZO-SGD (tuned delta, ``lr = delta / d``) and the first ZO-LSTM given.

Outputs under ``--out``: ``binclass.json`` (config, machine, every tuning candidate, curves,
tables), ``binclass.md`` and PNG plots (these need matplotlib, the ``plot`` extra). The full run
takes about 10 minutes on one core; ``--quick`` (tiny grids, 2 + 2 datasets, 30 steps) a few
seconds.
"""
from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from torchzo.learned.nets import LearnedZO
from torchzo.optim.zolstm import ZOLSTM
from torchzo.oracle import KINDS, Batched
from torchzo.tasks.base import Problem
from torchzo.tasks.binclass import BinaryClassification

from .._common import OUT, machine, pyplot, save_figure, write_results
from .._common import band as _band
from .._report import bullets, figures, md_table, paragraphs, section
from ._protocol import (
    ABLATIONS,
    BASELINES,
    FULL,
    Runner,
    Spec,
    compare,
    curve_steps,
    fmt_mean_std,
    jsonable,
    load_weights,
    method_specs,
    paired_verdict,
    summarize,
    transfer_specs,
    tune,
    tune_alpha,
)

log = logging.getLogger("benchmarks.paper.binclass")

QUICK = replace(FULL, steps=30, tune_datasets=2, test_datasets=2, trials=1,
                coarse=(1.0, 10.0, 100.0), fine_per_decade=2, beta2=(0.99, 0.999), max_extend=2,
                adam_rounds=1, sweep_q=(5, 20), sweep_batch=(16, 64), sweep_dim=(50, 100),
                sweep_trials=1)


# -- Fig. 3b-d sweeps, and how far the learned query covariance moves ----------------------


def sweeps(runner: Runner, specs: dict[str, Spec]) -> dict[str, Any]:
    """Fig. 3b-d: final loss while one of q, b, d moves away from the paper's setting."""
    cfg = runner.cfg
    tasks: dict[tuple[int, int], BinaryClassification] = {}
    out: dict[str, Any] = {}
    axes = {"q": cfg.sweep_q, "batch": cfg.sweep_batch, "dim": cfg.sweep_dim}
    for axis, values in axes.items():
        out[axis] = []
        for v in values:
            setting = {"q": cfg.q, "batch": cfg.batch, "dim": cfg.dim, axis: v}
            key = (setting["dim"], setting["batch"])
            if key not in tasks:
                tasks[key] = BinaryClassification(dim=key[0], batch=key[1])
            problems = tasks[key].problems("test")[: cfg.test_datasets]
            row: dict[str, Any] = {"setting": setting, "methods": {}}
            for label, spec in specs.items():
                curves = runner.curves(spec, problems, setting["q"], cfg.sweep_trials)
                s = summarize(curves)
                row["methods"][label] = {k: s[k] for k in
                                         ("final_mean", "final_std", "per_dataset_final")}
            if len(specs) == 2:
                a, b = (torch.tensor(m["per_dataset_final"]) for m in row["methods"].values())
                row["second_wins"] = int((b < a).sum())
            log.info("sweep %s=%s: %s", axis, v, ", ".join(
                f"{k} {m['final_mean']:.4f}" for k, m in row["methods"].items()))
            out[axis].append(row)
    return out


def query_spread(nets: LearnedZO, problem: Problem, steps: int, q: int) -> dict[str, Any]:
    """How far the QueryRNN's per-coordinate query std moves from 1 along a ZO-LSTM run."""
    x = problem.x0.clone()
    opt = ZOLSTM([x], pretrained=nets, q=q, query_prob=1.0, seed=0)
    data = torch.Generator().manual_seed(0)
    devs, spreads = [], []
    with torch.no_grad():
        for _ in range(steps):
            batch = problem.sample_batch(data)
            opt.step(Batched(lambda X, b=batch: problem.loss(X, b)))  # type: ignore[misc]
            scale = opt.next_query_scales()[0]
            devs.append(float((scale - 1).abs().max()))
            spreads.append(float(scale.std()))
    return {"dataset": problem.seed, "steps": steps,  # type: ignore[attr-defined]
            "max_abs_dev": max(devs), "mean_std": sum(spreads) / len(spreads)}


# -- output ------------------------------------------------------------------------------------


def _intro(data: dict[str, Any]) -> list[str]:
    cfg, tuned, m = data["config"], data["tuning"], data["machine"]
    return section(
        "Binary classification: tuned ZO baselines vs ZO-LSTM",
        "Reproduces Fig. 3a, 3b-d and the binary-classification ablation of Fig. 4c of Ruan et "
        "al., *Learning to Learn by Zeroth-Order Oracle* (ICLR 2020), with "
        "`python -m benchmarks.paper.binclass`"
        + (" (**--quick smoke run: tiny grids, not results**)" if data["quick"] else "") + ".",
        f"Task: non-convex least squares `mean (y - sigmoid(theta.x))^2`, d = {cfg['dim']}, "
        f"minibatch b = {cfg['batch']}, q = {cfg['q']} queries per step (forward differences, "
        f"q + 1 function values), {cfg['steps']} steps; loss is the full-data loss. "
        f"Test: {cfg['test_datasets']} test datasets x {cfg['trials']} trial(s) (optimizer "
        "seeds); every method starts from each dataset's own `x0` and sees the same minibatch "
        "sequence and, per trial, the same query seeds. Query directions: "
        + (f"{cfg['directions_kind']}, for every method (tuning included)."
           if cfg.get("directions_kind") else
           "each method's default (Gaussian; for a ZO-LSTM, the kind its weights name, "
           "`Arch.directions_kind`)."),
        "Baselines are tuned on training datasets only "
        f"({len(tuned['datasets'])} datasets, one run each, the same seeds for every candidate; "
        "criterion: mean final loss): lr = delta / d, delta over the decades "
        f"{list(cfg['coarse'])}, then a {cfg['fine_per_decade']}-per-decade log grid between "
        "the best decade's neighbours; any grid whose best value is on its edge is extended until "
        f"it is interior. ZO-Adam: joint coarse grid with beta1 in {list(cfg['beta1'])} and "
        f"beta2 in {list(cfg['beta2'])}, then coordinate descent on (delta, beta1, beta2), beta "
        "grids extended by factors of 2 in 1 - beta. Every candidate's score is in the JSON.",
        f"Machine: {m['cpu']}, torch {m['torch']}, {m['torch_threads']} thread(s). "
        f"Wall time: {data['wall_seconds'] / 60:.1f} min ({data['runs']} optimizer runs).",
        level=1)


def _tuned(data: dict[str, Any]) -> list[str]:
    tuned, rows = data["tuning"], []
    for kind, label in BASELINES.items():
        hp = tuned["best"][kind]
        betas = f"({hp['betas'][0]}, {hp['betas'][1]})" if "betas" in hp else "—"
        rows.append([label, f"{hp['delta']:.4g}", f"{hp['lr']:.4g}", betas,
                     f"{hp['score']:.4f}", hp["candidates"]])
    edges = tuned["unresolved_edges"]
    note = [f"Still on a grid edge after {data['config']['max_extend']} extensions: "
            + ", ".join(edges) + "."] if edges else []
    return [*section("Tuned hyperparameters"),
            md_table(["method", "delta", "lr = delta/d", "betas", "tuning loss", "candidates"],
                     rows),
            *paragraphs(*note)]


def _comparison(data: dict[str, Any]) -> list[str]:
    cfg, cmp_ = data["config"], data["comparison"]
    best, n, rows = cmp_["best_baseline"], cfg["test_datasets"], []
    for name, r in cmp_["rows"].items():
        reach = "never" if r["iters_to_best_baseline"] is None else r["iters_to_best_baseline"]
        se = "—" if r["seed_se"] is None or math.isnan(r["seed_se"]) else f"{r['seed_se']:.4f}"
        rows.append([name, fmt_mean_std(r["final_mean"], r["final_std"]), se,
                     f"{r['ratio']:.2f}", "—" if r["wins"] is None else f"{r['wins']}/{n}",
                     reach])
    return [*section(
        "Fig. 3a and Fig. 4c: final loss on the test datasets",
        f"Mean ± std over the {n} test datasets (each averaged over "
        f"{cfg['trials']} trial(s)). Ratio, wins and iterations are against the best tuned "
        f"baseline on the test datasets, **{best}** ({cmp_['target']:.4f}): wins = "
        "datasets where the method's mean final loss is lower; iterations = first step at "
        "which the method's mean curve reaches the best baseline's mean final loss. The "
        "JSON holds the mean and std curves (over all runs) at "
        f"{len(data['curve_steps'])} iterations and every run's final loss."),
        md_table(["method", "final loss", "seed s.e.", "ratio to best baseline",
                  f"wins vs {best}", "iterations to reach it"], rows),
        *paragraphs("Seed s.e.: the standard error of the mean final loss that comes from the "
                    "optimizer seeds alone (trial-to-trial variance within a dataset); "
                    "differences of a few s.e. between methods are within run-to-run noise.",
                    *_weights(data))]


def _weights(data: dict[str, Any]) -> list[str]:
    """Where the ZO-LSTM weights come from, and what the ablations and transfers are."""
    out = []
    if data["weights"]:
        out.append("ZO-LSTM weights: " + "; ".join(
            f"`{k}` = {v['source']}" for k, v in data["weights"].items())
            + ". `no-query`: standard Gaussian queries with the UpdateRNN; `no-update`: learned "
            "queries with a ZO-SGD step at the tuned lr; `GuidedES`: the UpdateRNN with "
            "GuidedES directions (alpha = 0.5, guided by the previous estimate and update); "
            "`p=1`: the learned covariance at every step (the default mixes it with the "
            "identity with probability 0.5).")
    if data.get("transfer"):
        out.append("Transfer (the paper's generalisation test): weights trained on another "
                   "task, their output scale alpha tuned on the training datasets like a "
                   "learning rate: " + "; ".join(
                       f"`{w}` = {data['weights'][w]['source']}, alpha {t['alpha']:.3g} "
                       f"({len(t['candidates'])} candidates)"
                       for w, t in data["transfer"].items()) + ".")
    return out


def _sweeps(data: dict[str, Any]) -> list[str]:
    if not data["sweeps"]:
        return []
    cfg, n = data["config"], data["config"]["test_datasets"]
    labels = list(next(iter(data["sweeps"].values()))[0]["methods"])
    out = section(
        "Fig. 3b-d: varying q, b and d",
        f"Final loss, mean ± std over {n} test datasets x {cfg['sweep_trials']} trial(s); the "
        f"other two settings at q = {cfg['q']}, b = {cfg['batch']}, d = {cfg['dim']}. ZO-SGD "
        "keeps the tuned delta (lr = delta / d), ZO-LSTM its output scale 1.")
    for axis, name in (("q", "q"), ("batch", "b"), ("dim", "d")):
        rows = [[row["setting"][axis]]
                + [fmt_mean_std(row["methods"][lb]["final_mean"], row["methods"][lb]["final_std"])
                   for lb in labels]
                + ([f"{row['second_wins']}/{n}"] if "second_wins" in row else [])
                for row in data["sweeps"][axis]]
        out.append(md_table([name, *labels] + ([f"{labels[-1]} wins"] if len(labels) == 2 else []),
                            rows))
    return out


def render(data: dict[str, Any]) -> str:
    return "\n".join([*_intro(data), *_tuned(data), *_comparison(data), *_sweeps(data),
                      *bullets("Notes", data["notes"]), *figures(data["plots"])])


def notes(data: dict[str, Any]) -> list[str]:
    """Plain statements read off the numbers, including where a baseline wins."""
    cmp_ = data["comparison"]
    best, rows, n = cmp_["best_baseline"], cmp_["rows"], data["config"]["test_datasets"]
    out = [f"The best tuned baseline on the test datasets is {best} "
           f"({fmt_mean_std(rows[best]['final_mean'], rows[best]['final_std'])})."]
    for name, r in rows.items():
        if name != best:
            out.append(f"{name} vs {best}: {paired_verdict(r['ratio'], r['wins'], n)}.")
    curves = data["curves"]
    for w in data["weights"]:
        full = f"ZO-LSTM ({w})"
        for suffix in list(ABLATIONS)[1:]:
            abl = f"ZO-LSTM{suffix} ({w})"
            if full in curves and abl in curves:
                a, b = (torch.tensor(curves[k]["per_dataset_final"]) for k in (abl, full))
                out.append(f"Ablation{suffix} vs ZO-LSTM ({w}): "
                           f"{paired_verdict(float(a.mean() / b.mean()), int((a < b).sum()), n)}.")
    for w, q in data["query_spread"].items():
        line = (f"QueryRNN of `{w}` ({q['steps']}-step run, query_prob 1, test dataset "
                f"{q['dataset']}): the learned per-coordinate query std stays within "
                f"{q['max_abs_dev']:.1e} of 1 (mean spread over coordinates {q['mean_std']:.1e})")
        if q["max_abs_dev"] < 0.01:
            line += (": the learned covariance is the identity for practical purposes, so "
                     "ZO-LSTM, its p=1 variant and no-query differ only by their random streams, "
                     "and their gaps measure run-to-run noise, not the QueryRNN")
        out.append(line + ".")
    for axis, rows_ in data["sweeps"].items():
        labels = list(rows_[0]["methods"])
        if len(labels) != 2:
            continue
        lost = [str(r["setting"][axis]) for r in rows_
                if r["methods"][labels[0]]["final_mean"] < r["methods"][labels[1]]["final_mean"]]
        if lost:
            out.append(f"{labels[0]} has the lower mean final loss at {axis} = "
                       f"{', '.join(lost)}.")
    if data["tuning"]["unresolved_edges"]:
        out.append("Some tuned values stayed on a grid edge (see above): the tuning may be "
                   "incomplete there.")
    return out


def plot(data: dict[str, Any], out: Path) -> list[str]:
    """PNG figures; an empty list when matplotlib (the ``plot`` extra) is missing."""
    plt = pyplot()
    if plt is None:
        return []
    curves = data["curves"]

    def band(ax: Any, label: str, alpha: float = 0.15, **kw: Any) -> None:
        _band(ax, data["curve_steps"], curves[label], label, alpha, floor=1e-4, **kw)

    def finish(ax: Any, title: str) -> None:
        ax.set(xlabel="iteration", ylabel="full-data loss", yscale="log", title=title)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)

    files = []
    lstm = [k for k in curves if k.startswith("ZO-LSTM (")]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label in [*BASELINES.values(), *lstm]:
        band(ax, label)
    finish(ax, "Fig. 3a: binary classification, mean ± std over runs")
    files.append(save_figure(fig, out / "binclass-fig3a.png"))

    names = [w for w in data["weights"] if f"ZO-LSTM ({w})" in curves]
    if names:
        fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.0), squeeze=False)
        for ax, w in zip(axes[0], names):
            band(ax, "ZO-SGD", alpha=0.06, color="0.5", ls="--")
            for suffix in ABLATIONS:
                band(ax, f"ZO-LSTM{suffix} ({w})", alpha=0.06)
            finish(ax, f"Ablation (Fig. 4c): {w}")
        files.append(save_figure(fig, out / "binclass-fig4c.png"))

    if data["sweeps"]:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
        for ax, (axis, name) in zip(axes, (("q", "q"), ("batch", "minibatch b"),
                                           ("dim", "dimension d"))):
            rows = data["sweeps"][axis]
            xs = [r["setting"][axis] for r in rows]
            for label in rows[0]["methods"]:
                ax.errorbar(xs, [r["methods"][label]["final_mean"] for r in rows],
                            yerr=[r["methods"][label]["final_std"] for r in rows], marker="o",
                            capsize=3, label=label)
            ax.set(xlabel=name, ylabel="final loss", xticks=xs)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle("Fig. 3b-d: final loss when varying q, b, d", fontsize=10)
        files.append(save_figure(fig, out / "binclass-fig3bcd.png"))
    plt.close("all")
    return files


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.paper.binclass",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--weights", action="append", default=[], metavar="NAME=PATH",
                    help="a ZO-LSTM weights file (or shipped name, or 'untrained'); repeatable. "
                         "Default: the shipped default, if any.")
    ap.add_argument("--transfer", action="append", default=[], metavar="NAME=PATH",
                    help="weights trained on another task: alpha is tuned, then tested")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: tiny grids, 2+2 datasets, 30 steps, 1 trial")
    ap.add_argument("--trials", type=int, default=None, help="trials per test dataset")
    ap.add_argument("--sweep-trials", type=int, default=None)
    ap.add_argument("--no-sweeps", action="store_true", help="skip Fig. 3b-d")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--directions-kind", choices=KINDS, default=None,
                    help="every method's query directions (tuning included); default: each "
                         "method's own (Gaussian, or the kind a ZO-LSTM's weights name)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                            datefmt="%H:%M:%S")
    # These problems are tiny: extra threads only contend with whatever else runs.
    torch.set_num_threads(1)
    cfg = QUICK if args.quick else FULL
    if args.trials is not None:
        cfg = replace(cfg, trials=args.trials)
    if args.sweep_trials is not None:
        cfg = replace(cfg, sweep_trials=args.sweep_trials)
    cfg = replace(cfg, directions_kind=args.directions_kind)
    t0 = time.perf_counter()
    nets, weights_info = load_weights(args.weights, args.quick)
    runner = Runner(cfg, nets)
    task = BinaryClassification(dim=cfg.dim, batch=cfg.batch)

    log.info("tuning on %d training datasets, %d steps", cfg.tune_datasets, cfg.steps)
    tuned = tune(runner, task.problems("train")[: cfg.tune_datasets])
    for kind, hp in tuned["best"].items():
        log.info("tuned %s: %s", BASELINES[kind], {k: v for k, v in hp.items()})

    t1 = time.perf_counter()
    specs = method_specs(tuned["best"], list(nets))
    transfer = {}
    if args.transfer:
        moved, moved_info = load_weights(args.transfer, args.quick)
        runner.nets.update(moved)
        weights_info.update(moved_info)
        tune_on = task.problems("train")[: cfg.tune_datasets]
        transfer = {w: tune_alpha(runner, tune_on, w) for w in moved}
        specs.update(transfer_specs(transfer))
    test = task.problems("test")[: cfg.test_datasets]
    raw, results = {}, {}
    for label, spec in specs.items():
        raw[label] = runner.curves(spec, test, cfg.q, cfg.trials)
        results[label] = summarize(raw[label])
        log.info("test %-32s %s", label,
                 fmt_mean_std(results[label]["final_mean"], results[label]["final_std"]))
    comparison = compare(raw, list(BASELINES.values()))
    test_seconds = time.perf_counter() - t1

    t2 = time.perf_counter()
    sweep = {}
    if not args.no_sweeps:
        first = [f"ZO-LSTM ({w})" for w in nets if f"ZO-LSTM ({w})" in specs][:1]
        sweep = sweeps(runner, {k: specs[k] for k in ["ZO-SGD", *first]})
    sweep_seconds = time.perf_counter() - t2

    spread = {w: query_spread(n, test[0], cfg.steps, cfg.q) for w, n in nets.items()}
    data: dict[str, Any] = {
        "benchmark": "binclass", "quick": args.quick, "config": asdict(cfg),
        "machine": machine(), "weights": weights_info,
        "seeds": "data seed = dataset seed; optimizer seed = 10000 * (trial + 1) + dataset seed",
        "test_datasets": [p.seed for p in test],  # type: ignore[attr-defined]
        "curve_steps": curve_steps(cfg.steps),
        "tuning": tuned, "transfer": transfer, "methods": specs, "comparison": comparison,
        "curves": results, "sweeps": sweep, "query_spread": spread, "runs": runner.runs,
        "seconds": {"tuning": tuned["seconds"], "test": test_seconds, "sweeps": sweep_seconds,
                    "in_runs": runner.seconds},
    }
    runner.close()
    data["notes"] = notes(data)
    data["plots"] = [] if args.no_plots else plot(data, args.out)
    data["wall_seconds"] = time.perf_counter() - t0
    js, md = write_results(args.out, "binclass", jsonable(data), render(data))
    log.info("wrote %s and %s in %.1f min", js, md, data["wall_seconds"] / 60)
    return data


if __name__ == "__main__":
    main()
