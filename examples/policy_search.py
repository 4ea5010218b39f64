"""Policy search on a simulator without gradients: balance a pole on a cart.

The simulator below is plain Python stepping of the cart-pole equations with a hard failure
condition (the episode ends when the pole falls), so the return is piecewise constant in the
policy's parameters and has no useful gradient. A linear policy is trained by maximising the
mean return over a few fixed start states with a ZO optimizer (``maximize=True``), until every
episode lasts the whole horizon (or ``--steps`` steps). Run:

    python examples/policy_search.py
    python examples/policy_search.py --steps 10   # a smoke run
"""
from __future__ import annotations

import argparse
import math

import torch

import torchzo

GRAVITY, CART_MASS, POLE_MASS, POLE_HALF_LENGTH, FORCE, DT = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02


def episode_returns(weights: torch.Tensor, starts: torch.Tensor,
                    horizon: int = 200) -> torch.Tensor:
    """Steps survived (pole within 12 degrees, cart within 2.4) for each start state."""
    state = starts.clone()  # (n, 4): position, velocity, angle, angular velocity
    alive = torch.ones(len(starts), dtype=torch.bool)
    survived = torch.zeros(len(starts))
    total_mass = CART_MASS + POLE_MASS
    for _ in range(horizon):
        x, v, th, om = state.unbind(-1)
        force = FORCE * torch.tanh(state @ weights[:4] + weights[4])
        sin, cos = torch.sin(th), torch.cos(th)
        tmp = (force + POLE_MASS * POLE_HALF_LENGTH * om**2 * sin) / total_mass
        alpha = (GRAVITY * sin - cos * tmp) / (
            POLE_HALF_LENGTH * (4 / 3 - POLE_MASS * cos**2 / total_mass))
        acc = tmp - POLE_MASS * POLE_HALF_LENGTH * alpha * cos / total_mass
        state = torch.stack([x + DT * v, v + DT * acc, th + DT * om, om + DT * alpha], -1)
        alive &= (state[:, 0].abs() < 2.4) & (state[:, 2].abs() < 12 * math.pi / 180)
        survived += alive.float()
    return survived


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    args = ap.parse_args(argv)

    g = torch.Generator().manual_seed(0)
    starts = 0.1 * (torch.rand(16, 4, generator=g) - 0.5)
    weights = torch.zeros(5)

    def mean_return() -> torch.Tensor:
        return episode_returns(weights, starts).mean()

    opt = torchzo.ZOAdam([weights], lr=0.1, q=10, mu=0.05, estimator="antithetic",
                         maximize=True, seed=0)
    first = last = float(mean_return())
    for step in range(args.steps):
        ret = opt.step(mean_return)
        if step % max(1, args.steps // 5) == 0:
            print(f"step {step:4d}  mean return {float(ret):6.1f} / 200")
        last = float(mean_return())
        if last == 200:  # every episode balances for the whole horizon: solved
            print(f"solved after step {step}")
            break
    print(f"mean return {first:.1f} -> {last:.1f} (of 200) after {opt.queries} queries "
          f"of {len(starts)} episodes each")
    return {"first": first, "last": last}


if __name__ == "__main__":
    main()
