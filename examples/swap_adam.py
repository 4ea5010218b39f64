"""Swap torch.optim.Adam for a zeroth-order optimizer in an ordinary training loop.

The model is trained without gradients: the closure only evaluates the loss. Run:

    python examples/swap_adam.py            # about a minute on a laptop CPU
    python examples/swap_adam.py --steps 20 # a smoke run
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

import torchzo


def make_data(n: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    w = torch.randn(8, 1, generator=g)
    return x, torch.tanh(x @ w) + 0.05 * torch.randn(n, 1, generator=g)


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--optimizer", choices=["ZOAdam", "ZOLSTM", "ZOSGD"], default="ZOAdam")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    x, y = make_data()
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    loss_fn = nn.MSELoss()

    # Before: opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    if args.optimizer == "ZOAdam":
        opt: torchzo.ZOOptimizer = torchzo.ZOAdam(model.parameters(), lr=1e-2, q=20, seed=0)
    elif args.optimizer == "ZOSGD":
        opt = torchzo.ZOSGD(model.parameters(), lr=0.05, q=20, seed=0)
    else:
        opt = torchzo.ZOLSTM(model.parameters(), seed=0)

    def closure() -> torch.Tensor:  # no zero_grad(), no backward()
        return loss_fn(model(x), y)

    with torch.no_grad():
        first = float(closure())
    for step in range(args.steps):
        loss = opt.step(closure)
        if step % max(1, args.steps // 5) == 0:
            print(f"step {step:5d}  queries {opt.queries:7d}  loss {float(loss):.4f}")
    with torch.no_grad():
        last = float(closure())
    print(f"{args.optimizer}: loss {first:.4f} -> {last:.4f} with {opt.queries} loss queries")
    return {"first": first, "last": last}


if __name__ == "__main__":
    main()
