"""Train a classifier directly on its 0-1 error, a loss with no useful gradient.

The 0-1 error of a linear classifier is piecewise constant: its gradient is zero almost
everywhere, so backpropagation cannot train on it. A ZO optimizer only needs loss values; the
smoothing radius mu makes it see the error change. Run:

    python examples/nondifferentiable.py
    python examples/nondifferentiable.py --steps 20   # a smoke run
"""
from __future__ import annotations

import argparse

import torch

import torchzo


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    args = ap.parse_args(argv)

    g = torch.Generator().manual_seed(0)
    features = torch.randn(2000, 10, generator=g)
    labels = (features @ torch.randn(10, generator=g) > 0).float()
    w = torch.zeros(10)
    w[0] = 1.0

    def zero_one_error() -> torch.Tensor:
        return ((features @ w > 0).float() != labels).float().mean()

    # A large mu: the error only changes when a perturbation flips some predictions.
    opt = torchzo.ZOSGD([w], lr=0.5, q=20, mu=0.05, estimator="antithetic", seed=0)
    first = float(zero_one_error())
    for step in range(args.steps):
        err = opt.step(zero_one_error)
        if step % max(1, args.steps // 5) == 0:
            print(f"step {step:4d}  error {float(err):.3f}")
    last = float(zero_one_error())
    print(f"0-1 error {first:.3f} -> {last:.3f} after {opt.queries} queries")
    return {"first": first, "last": last}


if __name__ == "__main__":
    main()
