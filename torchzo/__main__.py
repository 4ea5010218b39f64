"""``python -m torchzo``: every optimizer on a built-in problem, loss against queries."""
from __future__ import annotations

import argparse

import torch

from . import ZOSGD, ZOAdam, ZOSignSGD
from .tasks import Quadratic

# Step sizes: the best of a coarse grid on this problem (dim 50, cond 10, 3 seeds, 300 steps).
_OPTIMIZERS = {
    "ZOSGD": (ZOSGD, {"lr": 0.2}),
    "ZOSignSGD": (ZOSignSGD, {"lr": 0.02}),
    "ZOAdam": (ZOAdam, {"lr": 0.05}),
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m torchzo", description=__doc__)
    ap.add_argument("--dim", type=int, default=50)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--q", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    problem = Quadratic(args.dim, seed=args.seed, dtype=torch.float32)
    marks = sorted({0, args.steps // 10, args.steps // 3, args.steps})
    print(f"convex quadratic, d={args.dim}, q={args.q}; loss after a number of queries")
    rows = {}
    for name, (cls, kw) in _OPTIMIZERS.items():
        x = problem.x0.clone()
        opt = cls([x], q=args.q, seed=args.seed, **kw)
        losses, queries = [float(problem(x))], [0]
        for _ in range(args.steps):
            opt.step(lambda: problem(x))  # noqa: B023 (called at once)
            losses.append(float(problem(x)))
            queries.append(opt.queries)
        rows[name] = [(queries[t], losses[t]) for t in marks]
    header = "optimizer  " + "".join(f"{q:>14}" for q, _ in next(iter(rows.values())))
    print(header.replace("optimizer  ", "queries    "))
    for name, row in rows.items():
        print(f"{name:<11}" + "".join(f"{loss:>14.4e}" for _, loss in row))


if __name__ == "__main__":
    main()
