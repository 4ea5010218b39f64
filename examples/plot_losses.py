"""Compare optimizers by loss against queries, with ``torchzo.Recorder`` and a plot.

Four runs (ZO-SGD, ZO-Adam with the forward and the antithetic estimator, the `binclass`
ZO-LSTM) on the README's small least-squares classification problem (d = 20): each
run is recorded, then ``torchzo.plot_recorders`` draws loss against queries, on a log scale,
into a PNG. The step sizes are reasonable picks for this problem, not tuned: the picture shows
what the plot looks like, not which optimizer is better (``docs/benchmarks/`` measures that).
Needs the plot extra (``pip install 'torchzo[plot]'``). Run:

    python examples/plot_losses.py --out loss-vs-queries.png
    python examples/plot_losses.py --steps 20 --progress   # a smoke run, with progress lines
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import torchzo


def problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(500, 20, generator=g)
    return A, (A @ torch.randn(20, generator=g) > 0).float()


def main(argv: list[str] | None = None) -> dict[str, torchzo.Recorder]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--q", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("loss-vs-queries.png"))
    ap.add_argument("--progress", action="store_true", help="show each run's progress")
    args = ap.parse_args(argv)

    A, y = problem()
    makers = {
        "ZO-SGD (lr 2)": lambda w: torchzo.ZOSGD([w], lr=2.0, q=args.q, seed=0),
        "ZO-Adam (lr 0.05)": lambda w: torchzo.ZOAdam([w], lr=0.05, q=args.q, seed=0),
        "ZO-LSTM (binclass)": lambda w: torchzo.ZOLSTM([w], pretrained="binclass", q=args.q,
                                                        seed=0),
        "ZO-Adam, antithetic": lambda w: torchzo.ZOAdam([w], lr=0.05, q=args.q, seed=0,
                                                         estimator="antithetic"),
    }
    recorders = {}
    for name, make in makers.items():
        w = torch.zeros(20)
        opt = make(w)
        recorders[name] = torchzo.Recorder(opt, progress=args.progress)
        for _ in range(args.steps):
            opt.step(lambda w=w: ((y - torch.sigmoid(A @ w)) ** 2).mean())
        recorders[name].remove()
    torchzo.plot_recorders(recorders, args.out, title=f"least-squares classification, d=20, "
                           f"q={args.q}: loss before each step")
    print(f"wrote {args.out}")
    return recorders


if __name__ == "__main__":
    main()
