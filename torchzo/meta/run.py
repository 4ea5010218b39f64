"""Running any optimizer on a :class:`~torchzo.tasks.Problem`, the way a user would."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..optim import ZOOptimizer
from ..oracle import Batched
from ..tasks import Problem

__all__ = ["run_optimizer"]


def run_optimizer(problem: Problem, make_optimizer: Callable[[list[Tensor]], ZOOptimizer],
                  steps: int, data_seed: int = 0,
                  on_finish: Callable[[Tensor], None] | None = None) -> Tensor:
    """Optimize ``problem`` from ``x0`` for ``steps`` steps; the full objective after each.

    Each step draws one minibatch (from a generator seeded with ``data_seed``) and passes the
    q + 1 queries as one batched call. Returns a float64 tensor of ``steps + 1`` losses;
    ``on_finish``, if given, sees the final point (e.g. to check an attack's success).
    """
    x = problem.x0.clone()
    opt = make_optimizer([x])
    data = torch.Generator().manual_seed(data_seed)
    losses = torch.empty(steps + 1, dtype=torch.float64)
    with torch.no_grad():
        losses[0] = problem.objective(x)
        for t in range(steps):
            batch = problem.sample_batch(data)
            opt.step(Batched(lambda X, b=batch: problem.loss(X, b)))  # type: ignore[misc]
            losses[t + 1] = problem.objective(x)
        if on_finish is not None:
            on_finish(x)
    return losses
