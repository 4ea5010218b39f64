"""A population of learned optimizers run on one problem in lockstep, for ES meta-training.

Every member's step is :func:`torchzo.learned.plan` and :func:`torchzo.learned.update` over
weights with a leading population dimension, and the oracle's
:func:`~torchzo.oracle.estimate_population` queries all members in one call; all members share
the step's seeds and minibatch (common random numbers), so they differ only by their weights.
The random streams are seeded as ``ZOLSTM(seed=seed)``'s, so a population of one takes the
optimizer's steps on the same batched objective (tested).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from ..learned import Architecture, Group, init, plan, update
from ..learned.arch import Weights
from ..oracle import Part, Scheme, estimate_population
from ..tasks import Problem

__all__ = ["PopulationRun", "run_population"]


@dataclass
class PopulationRun:
    """What a population run gives: the full objective after each step (P, steps + 1), the
    start included, and how many members ended non-finite."""

    losses: Tensor
    diverged: int


@torch.no_grad()
def run_population(weights: Weights, arch: Architecture, problem: Problem, steps: int,
                   q: int = 20, seed: int = 0, lr: float = 1.0, estimator: str = "forward",
                   covariance: str = "learned", query_prob: float = 0.5,
                   mu: float | None = None) -> PopulationRun:
    """Run every member of ``weights`` (leading dimension P) for ``steps`` on ``problem``.

    ``mu``: the radius (default: the architecture's own where it sets one, else the problem's,
    else float32's default). A member whose
    point or loss stops being finite is frozen at non-finite losses (counted in
    ``diverged``), never an error: scoring it is the trainer's job.
    """
    if covariance not in ("learned", "identity"):
        raise ValueError(f"a population runs the 'learned' or 'identity' covariance, got "
                         f"{covariance!r}")
    members = next(iter(weights.values())).shape[0]
    x = problem.x0.detach().float().expand(members, -1).clone()
    generator = torch.Generator().manual_seed(seed)
    data = torch.Generator().manual_seed(seed + 1)
    scheme = Scheme(estimator, q)
    if mu is None and not arch.owns_radius:
        mu = problem.mu
    group = Group((0,), lr, covariance=covariance, query_prob=query_prob, q=scheme.directions)
    state = init(arch, [problem.x0], [group], (members,))
    curve = [problem.loss(x)]
    for _ in range(steps):
        batch = problem.sample_batch(data)
        radius = arch.radius(weights, state.groups[0], mu, [x])
        part = Part((0,), scheme, radius, arch.directions_kind)  # type: ignore[arg-type]
        planned = plan(weights, arch, [x], state, [group], [part], generator)
        f0, g = estimate_population(functools.partial(problem.loss, batch=batch), x,
                                    planned.queries[0], finite=False)
        result = update(weights, arch, [x], state, [group], [g], f0, planned)
        (x,), state = result.params, result.state
        curve.append(problem.loss(x))
    losses = torch.stack(curve, 1)
    bad = ~torch.isfinite(losses).all(1)
    return PopulationRun(losses, int(bad.sum()))
