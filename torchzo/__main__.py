"""``python -m torchzo``: every optimizer on a built-in problem, loss against queries.

The default problem is the first test dataset of the binary-classification task
(``torchzo.tasks.BinaryClassification``), the problem class the shipped ``binclass`` ZO-LSTM
was trained on. The baselines run with the step sizes that the repository's benchmark tuned on
the task's training datasets (``python -m benchmarks.binclass`` in a checkout). The ZO-LSTM
runs twice: with ``binclass``, on its own problem class, and with the weights ``ZOLSTM()``
loads by default, whose training task the demo reads from the shipped manifest. After the
table, one line per row says what the row is and why. ``--problem quadratic`` runs the
hand-designed optimizers on a convex quadratic.
"""
from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable

import torch

from . import ZOLSTM, ZOSGD, ZOAdam, ZOSignSGD, pretrained
from .oracle import Batched
from .tasks import BinaryClassification, Quadratic

# The best settings of the binary-classification benchmark's tuning
# (docs/benchmarks/binclass.json, "tuning" -> "best"; tests/repo/test_demo.py keeps them equal).
BINCLASS_TUNED: dict[str, dict] = {
    "ZOSGD": {"lr": 1.77828},
    "ZOSignSGD": {"lr": 0.0562341},
    "ZOAdam": {"lr": 0.0562341, "betas": (0.2, 0.999)},
}
# Output scales the same benchmark tuned for shipped ZO-LSTMs trained on other tasks
# (docs/benchmarks/binclass.json, "transfer").
BINCLASS_TUNED_LR = {"mnist-attack": 3162.28}
# A coarse grid search on the quadratic (d=50, condition number 10).
QUADRATIC_LR = {"ZOSGD": (ZOSGD, {"lr": 0.2}), "ZOSignSGD": (ZOSignSGD, {"lr": 0.02}),
                "ZOAdam": (ZOAdam, {"lr": 0.05})}
_BASELINES = {"ZOSGD": ZOSGD, "ZOSignSGD": ZOSignSGD, "ZOAdam": ZOAdam}


def _trained_on(name: str) -> list[str]:
    entry = pretrained.info(name)
    trained = entry.get("trained_on") or entry.get("task")
    return [str(t) for t in trained] if isinstance(trained, list) else [str(trained)]


def binclass_runs() -> list[tuple[str, type, dict, str]]:
    """(row label, optimizer class, settings, why the row is what it is) on binclass."""
    runs = [(name, cls, BINCLASS_TUNED[name],
             f"step size tuned on the task's training datasets ({_fmt(BINCLASS_TUNED[name])})")
            for name, cls in _BASELINES.items()]
    runs.append(("ZOLSTM:binclass", ZOLSTM, {"pretrained": "binclass"},
                 "the shipped ZO-LSTM trained on this problem class, at its trained scale"))
    default = pretrained.default_name()
    if default == "binclass":
        return runs
    trained = _trained_on(default)
    if pretrained.info(default).get("arch") == "general":
        why = ("the default ZOLSTM() weights: the generalist, meta-trained on other problem "
               "families (never this one), at its defaults (lr=1)")
    elif "binclass" in trained:
        why = f"the default ZOLSTM() weights; binclass is among its training tasks ({trained})"
    else:
        why = (f"the default ZOLSTM() weights, trained on {', '.join(trained)}: another problem "
               "family, run at that family's scale (lr=1)")
    runs.append((f"ZOLSTM:{default}", ZOLSTM, {"pretrained": default}, why))
    if default in BINCLASS_TUNED_LR:
        lr = BINCLASS_TUNED_LR[default]
        runs.append((f"ZOLSTM:{default}@lr={lr:.0f}", ZOLSTM, {"pretrained": default, "lr": lr},
                     "the same weights with lr (its output scale) tuned on this task's "
                     "training datasets"))
    return runs


def _fmt(settings: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in settings.items())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m torchzo", description=__doc__)
    ap.add_argument("--problem", choices=["binclass", "quadratic"], default="binclass")
    ap.add_argument("--dim", type=int, default=None, help="quadratic only (default 50)")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--q", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    if args.problem == "binclass":
        problem = BinaryClassification().problems("test")[0]
        x0 = problem.x0
        data = torch.Generator()

        def objective() -> Callable[[torch.Tensor], torch.Tensor]:
            batch = problem.sample_batch(data)
            return lambda X: problem.loss(X, batch)

        def full(x: torch.Tensor) -> float:
            return float(problem.objective(x))
        title = (f"binary classification (test dataset {problem.seed} of "
                 "torchzo.tasks.BinaryClassification), d=100, minibatch 64")
        runs = binclass_runs()
    else:
        quad = Quadratic(args.dim or 50, seed=args.seed, dtype=torch.float32)
        x0 = quad.x0

        def objective() -> Callable[[torch.Tensor], torch.Tensor]:
            return quad

        def full(x: torch.Tensor) -> float:
            return float(quad(x))
        title = f"convex quadratic, d={quad.dim}"
        runs = [(name, cls, kw, f"step size from a coarse grid search ({_fmt(kw)})")
                for name, (cls, kw) in QUADRATIC_LR.items()]

    marks = sorted({0, args.steps // 10, args.steps // 3, args.steps})
    print(f"{title}, q={args.q}\nloss on the whole dataset after a number of queries "
          "(every optimizer sees the same minibatches):\n")
    rows = {}
    for name, cls, kw, _ in runs:
        x = x0.clone()
        opt = cls([x], q=args.q, seed=args.seed, **kw)
        if args.problem == "binclass":
            data.manual_seed(args.seed)
        losses, queries = [full(x)], [0]
        for _ in range(args.steps):
            opt.step(Batched(objective()))
            losses.append(full(x))
            queries.append(opt.queries)
        rows[name] = [(queries[t], losses[t]) for t in marks]
    width = max(11, *(len(name) + 2 for name in rows))
    print(f"{'queries':<{width}}" + "".join(f"{q:>12}" for q, _ in next(iter(rows.values()))))
    for name, row in rows.items():
        print(f"{name:<{width}}" + "".join(f"{loss:>12.4e}" for _, loss in row))
    print()
    for name, cls, _, why in runs:
        first, last = rows[name][0][1], rows[name][-1][1]
        stuck = last > 0.9 * first
        print(_wrap(f"{name}: {why}" + (
            "; the loss barely moved: expected off its training family, where a learned "
            "optimizer's steps follow the gradient scale it was trained on (set lr, or use "
            "pretrained='binclass'; docs/pretrained.md in the repository)"
            if stuck and cls is ZOLSTM else "")))
    if args.problem == "binclass":
        print("\nHow these compare over the task's 10 test datasets: "
              "docs/benchmarks/binclass.md in the repository (the generalist: "
              "docs/benchmarks/binclass-generalist/).")


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=96, subsequent_indent="    ")


if __name__ == "__main__":
    main()
