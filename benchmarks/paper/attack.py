"""Black-box attacks: tuned ZO baselines against ZO-LSTM (paper Fig. 2, 4a-b and 4d).

    python -m benchmarks.paper.attack --data mnist|cifar10 [--weights NAME=PATH ...]
                                [--test-images N] [--trials N] [--tune-images N]
                                [--quick] [--no-cosine] [--no-plots] [--out DIR]

The task is :class:`torchzo.tasks.AttackTask` (untargeted, c = 0.1, l1 distortion, 200 steps;
q = 20 on MNIST, 50 on CIFAR-10) against the target trained by
``python -m torchzo.tasks.targets``. Baselines are tuned by the paper's protocol on training
images only (the tuner of :mod:`benchmarks.paper.binclass`: ``lr = delta / d``, decade grid
then a fine grid, edges extended; ZO-Adam's betas too). Every method then attacks the same test
images from the same start points with the same query seeds per trial; reported: final loss,
paired wins against the best baseline, iterations to reach its final loss, success rate and the
l1 distortion of successful attacks. ZO-LSTM runs with the paper's ablations (no-query,
no-update, GuidedES: Fig. 4a-b). Fig. 4d: the cosine similarity between the ZO estimate and the
true gradient along ZO-LSTM's own trajectory, with the learned query covariance and with
standard Gaussian queries from the same seeds, for q in {5, 10, 20, 40}.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from torchzo import pretrained
from torchzo.learned.nets import LearnedZO
from torchzo.optim.zolstm import ZOLSTM
from torchzo.oracle import Batched, Part
from torchzo.oracle.directions import draw_seeds
from torchzo.oracle.estimator import estimate_batched
from torchzo.oracle.schemes import Scheme
from torchzo.tasks.attack import AttackProblem, AttackTask

from .._common import OUT, machine, pyplot, save_figure, write_results
from .._common import band as _band
from .._report import bullets, figures, md_table, section
from ._protocol import (
    BASELINES,
    FULL,
    Config,
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

log = logging.getLogger("benchmarks.paper.attack")

VARIANTS = ("", " no-query", " no-update", " GuidedES")  # Fig. 4a-b
DIMS = {"mnist": 784, "cifar10": 3072}


@dataclass(frozen=True)
class Sizes:
    tune_images: int = 8
    test_images: int = 50
    trials: int = 2
    cosine_images: int = 10
    cosine_q: tuple[int, ...] = (5, 10, 20, 40)


class AttackRunner(Runner):
    def measure(self, problem: AttackProblem, x: Tensor  # type: ignore[override]
                ) -> dict[str, Any]:
        return {"success": problem.success(x), "distortion": problem.distortion(x)}

    def outcomes(self, spec: Spec, problems: Sequence[AttackProblem], q: int,
                 trials: int) -> dict[str, Any]:
        runs = [self.measures[self.key(spec, p, q, r)] for p in problems for r in range(trials)]
        hits = [r["distortion"] for r in runs if r["success"]]
        return {"success_rate": len(hits) / len(runs),
                "distortion_mean": sum(hits) / len(hits) if hits else None}


def cosine(nets: LearnedZO, problems: Sequence[AttackProblem], qs: Sequence[int], steps: int,
           mu: float | None = None) -> list[dict[str, Any]]:
    """Mean cos(estimate, true gradient) along ZO-LSTM's trajectory, learned vs Gaussian queries.

    At every step both estimates use the same seeds (the same z); only the learned per-coordinate
    scale differs. The trajectory is ZO-LSTM's with the learned covariance at every step.
    """
    rows = []
    for q in qs:
        learned: list[float] = []
        gaussian: list[float] = []
        for k, problem in enumerate(problems):
            x = problem.x0.clone()
            opt = ZOLSTM([x], pretrained=nets, q=q, mu=mu, query_prob=1.0, seed=k)
            step_mu = opt.resolved_mu(opt.param_groups[0])
            fn = Batched(problem.loss)
            probe = torch.Generator().manual_seed(50_000 + k)
            for _ in range(steps):
                with torch.enable_grad():
                    xg = x.detach().requires_grad_(True)
                    true = torch.autograd.grad(problem.objective(xg), xg)[0]
                with torch.no_grad():
                    scale = opt.next_query_scales()[0]
                    seeds = draw_seeds(probe, q)
                    part = Part((0,), Scheme("forward", q), step_mu)
                    for out, s in ((learned, scale), (gaussian, None)):
                        query = part.query(seeds, None if s is None else [s])
                        g = estimate_batched(problem.loss, x, query)[1]
                        out.append(float(torch.nn.functional.cosine_similarity(g, true, 0)))
                    opt.step(fn)
        lm, gm = sum(learned) / len(learned), sum(gaussian) / len(gaussian)
        rows.append({"q": q, "learned": lm, "gaussian": gm, "ratio": lm / gm if gm else None,
                     "points": len(learned)})
        log.info("cosine q=%d: learned %.4f gaussian %.4f", q, lm, gm)
    return rows


# -- output ------------------------------------------------------------------------------------


def _intro(data: dict[str, Any]) -> list[str]:
    cfg, sizes, m = data["config"], data["sizes"], data["machine"]
    return section(
        f"Black-box attack on {data['data_name']}: tuned ZO baselines vs ZO-LSTM",
        "Reproduces Fig. 2, 4a-b and 4d of Ruan et al., *Learning to Learn by Zeroth-Order "
        f"Oracle* (ICLR 2020), with `python -m benchmarks.paper.attack --data {data['data']}`"
        + (" (**--quick smoke run: not results**)" if data["quick"] else "") + ".",
        f"Target: {data['target']}. Loss: untargeted margin on log-probabilities (kappa = 0) + "
        f"0.1 * l1 distortion, d = {cfg['dim']}, q = {cfg['q']} (q + 1 queries per step, one "
        f"batched forward pass), mu = {cfg.get('mu') or '1e-3 (the float32 default)'}, "
        f"{cfg['steps']} steps, start delta = 1e-4 N(0, I). "
        f"Test: {sizes['test_images']} held-out correctly classified test images x "
        f"{sizes['trials']} trial(s) (query seeds), every method from the same start point and, "
        "per trial, the same seeds (the paper used 100 images x 10 trials). Baselines tuned on "
        f"{sizes['tune_images']} training images (paper protocol, see "
        "`docs/benchmarks/binclass.md`; every candidate is in the JSON).",
        f"Machine: {m['cpu']}, torch {m['torch']}, {m['torch_threads']} thread(s). "
        f"Wall time: {data['wall_seconds'] / 60:.1f} min ({data['runs']} attack runs).",
        level=1)


def _results(data: dict[str, Any]) -> list[str]:
    cmp_, n = data["comparison"], data["sizes"]["test_images"]
    best = cmp_["best_baseline"]
    rows = []
    for label, r in cmp_["rows"].items():
        o, reach = data["outcomes"][label], r["iters_to_best_baseline"]
        dist = o["distortion_mean"]
        rows.append([label, data["hyper"].get(label, ""),
                     fmt_mean_std(r["final_mean"], r["final_std"]), f"{r['ratio']:.3f}",
                     "best" if label == best else f"{r['wins']}/{n}",
                     "never" if reach is None else reach,
                     f"{100 * o['success_rate']:.0f}%", "-" if dist is None else f"{dist:.2f}"])
    return section("Results on the test images", md_table(
        ["method", "hyperparameters", "final loss (mean ± std over images)", f"ratio to {best}",
         f"lower than {best}", "iters to its final loss", "success",
         "l1 distortion (successes)"], rows))


def _cosine(data: dict[str, Any]) -> list[str]:
    if not data["cosine"]:
        return []
    return section(
        "Fig. 4d: cosine similarity of the estimate with the true gradient",
        f"Along ZO-LSTM's trajectory on {data['sizes']['cosine_images']} test images, "
        f"{data['config']['steps']} steps each; both estimates from the same seeds at every step.",
        md_table(["q", "learned covariance (QueryRNN)", "standard Gaussian", "ratio"],
                 [[r["q"], f"{r['learned']:.4f}", f"{r['gaussian']:.4f}", f"{r['ratio']:.3f}"]
                  for r in data["cosine"]]))


def render(data: dict[str, Any]) -> str:
    return "\n".join([*_intro(data), *_results(data), *_cosine(data),
                      *bullets("Notes", data["notes"]), *figures(data["plots"])])


def notes(data: dict[str, Any]) -> list[str]:
    cmp_, n = data["comparison"], data["sizes"]["test_images"]
    best, rows = cmp_["best_baseline"], cmp_["rows"]
    out = [f"The best tuned baseline on the test images is {best} "
           f"({fmt_mean_std(rows[best]['final_mean'], rows[best]['final_std'])})."]
    out += [f"{name} vs {best}: {paired_verdict(r['ratio'], r['wins'], n, 'images')}."
            for name, r in rows.items() if name != best]
    ratios = [r["ratio"] for r in data["cosine"] if r["ratio"] is not None]
    if ratios:
        lo, hi = min(ratios), max(ratios)
        verdict = ("no measurable gain from the QueryRNN" if hi < 1.02 and lo > 0.98 else
                   "the QueryRNN raises it" if lo >= 1.02 else
                   "the QueryRNN lowers it" if hi <= 0.98 else "mixed")
        out.append(f"Cosine similarity with the learned covariance / with Gaussian queries: "
                   f"{lo:.3f} to {hi:.3f} over q in {[r['q'] for r in data['cosine']]}: "
                   f"{verdict}.")
    return out


def plot(data: dict[str, Any], out: Path) -> list[str]:
    plt = pyplot()
    if plt is None:
        return []
    curves, t, name = data["curves"], data["curve_steps"], data["data"]

    def band(ax: Any, label: str, **kw: Any) -> None:
        _band(ax, t, curves[label], label, alpha=0.12, **kw)

    def finish(ax: Any, title: str) -> None:
        ax.set(xlabel="iteration", ylabel="attack loss", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)

    files = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label in [*BASELINES.values(), *[k for k in curves if k.startswith("ZO-LSTM (")],
                  *[k for k in curves if k.startswith("ZO-LSTM transfer")]]:
        band(ax, label)
    finish(ax, f"Fig. 2: {data['data_name']} attack, mean ± std over runs")
    files.append(save_figure(fig, out / f"attack-{name}-fig2.png"))
    for w in [w for w in data["weights"] if f"ZO-LSTM ({w})" in curves]:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        band(ax, "ZO-SGD", color="0.5", ls="--")
        for suffix in VARIANTS:
            band(ax, f"ZO-LSTM{suffix} ({w})")
        finish(ax, f"Fig. 4a-b: ablations of {w} on {data['data_name']}")
        files.append(save_figure(fig, out / f"attack-{name}-ablations.png"))
        break
    if data["cosine"]:
        fig, ax = plt.subplots(figsize=(4.8, 3.6))
        qs = [r["q"] for r in data["cosine"]]
        ax.plot(qs, [r["learned"] for r in data["cosine"]], "o-", label="learned (QueryRNN)")
        ax.plot(qs, [r["gaussian"] for r in data["cosine"]], "s--", label="standard Gaussian")
        ax.set(xlabel="q", ylabel="mean cosine similarity", xticks=qs,
               title=f"Fig. 4d: {data['data_name']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        files.append(save_figure(fig, out / f"attack-{name}-fig4d.png"))
    plt.close("all")
    return files


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.paper.attack",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=sorted(DIMS), default="mnist")
    ap.add_argument("--weights", action="append", default=[], metavar="NAME=PATH",
                    help="ZO-LSTM weights (file, shipped name or 'untrained'); repeatable. "
                         "Default: the shipped '<data>-attack' weights, else the default.")
    ap.add_argument("--transfer", action="append", default=[], metavar="NAME=PATH",
                    help="weights trained on another task: alpha is tuned on the training "
                         "images, then tested")
    ap.add_argument("--root", help="data folder (default: TORCHZO_DATA or ../shared/data)")
    ap.add_argument("--target", type=Path, help="target weights (default: the cache)")
    ap.add_argument("--tune-images", type=int)
    ap.add_argument("--test-images", type=int)
    ap.add_argument("--trials", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--mu", type=float, help="smoothing radius of every optimizer (default: the "
                    "task's: 1e-5 on CIFAR-10, float32's 1e-3 on MNIST)")
    ap.add_argument("--tuning-from", type=Path, metavar="JSON",
                    help="reuse the baselines' tuning of an earlier run with the same settings")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2+2 images, 20 steps")
    ap.add_argument("--no-cosine", action="store_true", help="skip Fig. 4d")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    return ap.parse_args(argv)


def default_weights(data: str) -> list[str]:
    name = {"mnist": "mnist-attack", "cifar10": "cifar-attack"}[data]
    return [f"{name}={name}"] if name in pretrained.available() else []


def reuse_tuning(path: Path, cfg: Config) -> dict[str, Any] | None:
    """The tuning recorded in an earlier output, if it was made with the same task settings."""
    old = json.loads(path.read_text())
    same = ("steps", "q", "dim", "tune_datasets", "coarse", "fine_per_decade", "beta1", "beta2")
    if any(old["config"][k] != json.loads(json.dumps(asdict(cfg)[k])) for k in same):
        log.warning("%s was tuned with other settings: tuning again", path)
        return None
    log.info("reusing the tuning in %s", path)
    return {**old["tuning"], "reused_from": str(path)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                            datefmt="%H:%M:%S")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    sizes = Sizes(tune_images=2, test_images=2, trials=1, cosine_images=1, cosine_q=(5, 20)) \
        if args.quick else Sizes()
    sizes = replace(sizes, **{k: v for k, v in (("tune_images", args.tune_images),
                                                ("test_images", args.test_images),
                                                ("trials", args.trials)) if v is not None})
    grid: dict[str, Any] = {}
    if args.quick:
        grid = dict(coarse=(0.1, 1.0, 10.0), fine_per_decade=2, beta2=(0.99, 0.999),
                    max_extend=2, adam_rounds=1)
    from torchzo.tasks.targets import load_target, target_info

    model = load_target(args.data, args.target)
    task = AttackTask(args.data, model=model, root=args.root, mu=args.mu,
                      sizes={"train": sizes.tune_images, "val": 0, "test": sizes.test_images})
    q = task.q
    cfg = replace(FULL, steps=args.steps or (20 if args.quick else 200), q=q, mu=task.mu,
                  dim=DIMS[args.data], tune_datasets=sizes.tune_images,
                  test_datasets=sizes.test_images, trials=sizes.trials, **grid)
    nets, weights_info = load_weights(args.weights or default_weights(args.data), args.quick)
    runner = AttackRunner(cfg, nets)

    tuned = reuse_tuning(args.tuning_from, cfg) if args.tuning_from else None
    if tuned is None:
        log.info("tuning on %d training images", sizes.tune_images)
        tuned = tune(runner, task.problems("train"))
    all_specs = method_specs(tuned["best"], list(nets))
    keep = {*BASELINES.values(), *[f"ZO-LSTM{s} ({w})" for w in nets for s in VARIANTS]}
    specs = {k: v for k, v in all_specs.items() if k in keep}
    transfer = {}
    if args.transfer:
        moved, moved_info = load_weights(args.transfer, args.quick)
        runner.nets.update(moved)
        weights_info.update(moved_info)
        transfer = {w: tune_alpha(runner, task.problems("train"), w) for w in moved}
        specs.update(transfer_specs(transfer))
    test = task.problems("test")
    raw, results, outcomes = {}, {}, {}
    for label, spec in specs.items():
        raw[label] = runner.curves(spec, test, q, sizes.trials)
        results[label] = summarize(raw[label])
        outcomes[label] = runner.outcomes(spec, test, q, sizes.trials)
        log.info("test %-30s %s  success %.0f%%", label,
                 fmt_mean_std(results[label]["final_mean"], results[label]["final_std"]),
                 100 * outcomes[label]["success_rate"])
    hyper = {BASELINES[k]: f"lr {hp['lr']:.3g}" + (f", betas {tuple(hp['betas'])}"
                                                   if k == "zoadam" else "")
             for k, hp in tuned["best"].items()}
    own = [w for w in nets if w not in transfer]
    cos = [] if args.no_cosine or not own else cosine(
        nets[own[0]], test[: sizes.cosine_images], sizes.cosine_q, cfg.steps, cfg.mu)
    info = target_info(args.data, args.target)
    data: dict[str, Any] = {
        "benchmark": f"attack-{args.data}", "data": args.data, "quick": args.quick,
        "data_name": {"mnist": "MNIST", "cifar10": "CIFAR-10"}[args.data],
        "target": (f"the {info.get('arch', args.data)} target from `python -m "
                   f"torchzo.tasks.targets --data {args.data}`, test accuracy "
                   f"{100 * info['test_accuracy']:.2f}% on {info['test_images']} test images"
                   if info else f"the {args.data} target at {args.target}"),
        "target_info": info,
        "config": asdict(cfg), "sizes": asdict(sizes), "machine": machine(),
        "weights": weights_info, "curve_steps": curve_steps(cfg.steps), "tuning": tuned,
        "methods": specs, "hyper": hyper, "transfer": transfer,
        "comparison": compare(raw, list(BASELINES.values())),
        "curves": results, "outcomes": outcomes, "cosine": cos, "runs": runner.runs,
    }
    runner.close()
    data["notes"] = notes(data)
    data["plots"] = [] if args.no_plots else plot(data, args.out)
    data["wall_seconds"] = time.perf_counter() - t0
    js, md = write_results(args.out, f"attack-{args.data}", jsonable(data), render(data))
    log.info("wrote %s and %s in %.1f min", js, md, data["wall_seconds"] / 60)
    return data


if __name__ == "__main__":
    main()
