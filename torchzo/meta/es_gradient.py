"""Antithetic evolution strategies over whole runs: a meta-gradient estimator.

Each estimate draws ``pairs`` antithetic perturbations of the flat weights and ``instances``
problems of the training families (augmented, see :mod:`torchzo.tasks.families`), each with a
random horizon and q, and runs the weights and their perturbations on each problem in one
:func:`~torchzo.meta.population.run_population` call. A member's score on a problem is the mean
over the run of ``log((f_t - f_min) / (f_0 - f_min))`` (scale- and offset-free, no horizon
singled out); scores become centred ranks within the problem, and the antithetic rank
differences give the search gradient. What to do with it is the outer loop's
(:mod:`torchzo.meta.loop`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..learned.arch import Architecture
from ..tasks.families import sample_instance
from .flat import unflatten
from .loop import Estimate
from .population import run_population

__all__ = ["ESGradient", "WORST", "centred_ranks", "score"]

#: A diverged member's per-step score: 10^4 times the start loss.
WORST = math.log(1e4)


def score(losses: Tensor, f_min: float, tail: float = 1.0, floor: float = 1e-8) -> Tensor:
    """Each member's mean of the clipped log progress over the last ``tail`` of the run
    (1: the whole run; lower is better), progress below ``floor`` counting as ``floor``.
    A member that went non-finite keeps the worst score from then on."""
    gap = losses.double() - f_min
    ratio = gap / gap[:, :1].clamp(min=1e-30)
    logs = ratio.clamp(min=1e-30).log().clamp(math.log(floor), WORST)
    bad = (~torch.isfinite(losses)).cummax(1).values
    logs = torch.where(bad, torch.full_like(logs, WORST), logs)
    first = min(int(round((1 - tail) * logs.shape[1])), logs.shape[1] - 1)
    return logs[:, first:].mean(1)


def centred_ranks(x: Tensor) -> Tensor:
    """Ranks scaled to [-0.5, 0.5]; tied values share their mean rank, so that members
    that all reached the floor give the search no direction (argsort would order them by
    index, antithetic halves apart)."""
    ranks = torch.empty_like(x)
    ranks[x.argsort()] = torch.arange(x.numel(), dtype=x.dtype)
    values, inverse = x.unique(return_inverse=True)
    mean = torch.zeros_like(values).index_add_(0, inverse, ranks) / torch.zeros_like(
        values).index_add_(0, inverse, torch.ones_like(ranks))
    return mean[inverse] / max(x.numel() - 1, 1) - 0.5


@dataclass(frozen=True)
class ESGradient:
    """The search gradient of the flat weights of architecture ``arch`` laid out as ``like``.

    ``steps``: horizons, log-uniform between the two; ``qs``: the queries per step, one drawn
    per problem; ``tail`` and ``floor``: see :func:`score`.
    """

    like: dict[str, Tensor]
    arch: Architecture
    pairs: int = 16
    sigma: float = 0.02
    instances: int = 4
    steps: tuple[int, int] = (50, 500)
    qs: tuple[int, ...] = (10, 20)
    tail: float = 1.0
    floor: float = 1e-8

    @property
    def idle(self) -> bool:
        return True  # nothing carries over between estimates

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def estimate(self, params: list[Tensor], rng: torch.Generator) -> Estimate:
        """The gradient at ``params`` (one flat vector); stats: each problem's family and the
        unperturbed weights' score on it. Draws the noise, then per problem its family,
        instance, horizon, q and seed, from ``rng`` in that order."""
        (theta,) = params
        eps = torch.randn(self.pairs, theta.numel(), generator=rng)
        population = torch.cat([theta[None], theta + self.sigma * eps, theta - self.sigma * eps])
        weights = unflatten(population, self.like)
        grad = torch.zeros_like(theta)
        centre_scores, names = [], []
        for _ in range(self.instances):
            family, problem = sample_instance("train", rng)
            lo, hi = self.steps
            steps = int(math.exp(math.log(lo) + float(torch.rand((), generator=rng))
                                 * (math.log(hi) - math.log(lo))))
            q = self.qs[int(torch.randint(len(self.qs), (), generator=rng))]
            seed = int(torch.randint(0, 2**31 - 1, (), generator=rng))
            run = run_population(weights, self.arch, problem, steps, q, seed)
            s = score(run.losses, problem.f_min, self.tail, self.floor)
            ranks = centred_ranks(s[1:])
            plus, minus = ranks[:self.pairs], ranks[self.pairs:]
            grad += ((plus - minus).float()[:, None] * eps).sum(0) / (
                2 * self.pairs * self.sigma * self.instances)
            centre_scores.append(float(s[0]))
            names.append(family.name)
        return Estimate([grad], {"families": names,
                                 "scores": [round(x, 4) for x in centre_scores]})
