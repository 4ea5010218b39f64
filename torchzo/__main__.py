"""``python -m torchzo``: every optimizer on a built-in problem, loss against queries.

The default problem is the first test dataset of the binary-classification task (the task
the shipped ZO-LSTM was trained on), with the baselines' step sizes tuned by
the repository's binary-classification benchmark (``python -m benchmarks.binclass`` in a
checkout). ``--problem quadratic`` runs a convex quadratic.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from . import ZOLSTM, ZOSGD, ZOAdam, ZOSignSGD
from .oracle import Batched
from .tasks import BinaryClassification, Quadratic

# Tuned by docs/benchmarks/binclass.md (binclass) and a coarse grid (quadratic, d=50, cond 10).
_SETTINGS: dict[str, dict[str, tuple[type, dict]]] = {
    "binclass": {
        "ZOSGD": (ZOSGD, {"lr": 3.16}),
        "ZOSignSGD": (ZOSignSGD, {"lr": 0.056}),
        "ZOAdam": (ZOAdam, {"lr": 0.056, "betas": (0.6, 0.999)}),
        "ZOLSTM": (ZOLSTM, {}),
    },
    "quadratic": {
        "ZOSGD": (ZOSGD, {"lr": 0.2}),
        "ZOSignSGD": (ZOSignSGD, {"lr": 0.02}),
        "ZOAdam": (ZOAdam, {"lr": 0.05}),
    },
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m torchzo", description=__doc__)
    ap.add_argument("--problem", choices=sorted(_SETTINGS), default="binclass")
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
        title = "binary classification (test dataset 90), d=100, b=64"
    else:
        quad = Quadratic(args.dim or 50, seed=args.seed, dtype=torch.float32)
        x0 = quad.x0

        def objective() -> Callable[[torch.Tensor], torch.Tensor]:
            return quad

        def full(x: torch.Tensor) -> float:
            return float(quad(x))
        title = f"convex quadratic, d={quad.dim}"

    marks = sorted({0, args.steps // 10, args.steps // 3, args.steps})
    print(f"{title}, q={args.q}: full loss after a number of queries")
    rows = {}
    for name, (cls, kw) in _SETTINGS[args.problem].items():
        x = x0.clone()
        opt = cls([x], q=args.q, seed=args.seed, **kw)
        if args.problem == "binclass":
            data.manual_seed(args.seed)  # every optimizer sees the same minibatches
        losses, queries = [full(x)], [0]
        for _ in range(args.steps):
            opt.step(Batched(objective()))
            losses.append(full(x))
            queries.append(opt.queries)
        rows[name] = [(queries[t], losses[t]) for t in marks]
    print("queries    " + "".join(f"{q:>14}" for q, _ in next(iter(rows.values()))))
    for name, row in rows.items():
        print(f"{name:<11}" + "".join(f"{loss:>14.4e}" for _, loss in row))


if __name__ == "__main__":
    main()
