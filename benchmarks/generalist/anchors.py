"""Anchors from outside the ZO family: CMA-ES (pycma) and nevergrad's NGOpt, run on a problem
with the query budget of a ZO run, recorded on the same step grid.

Optional: ``pip install "torchzo[anchors]"`` (``cma``, ``nevergrad``); :func:`missing` names
what is not installed. A ZO run of ``steps`` steps with the forward estimator spends
``steps * (q + 1)`` evaluations; an anchor gets as many, in batches of its own size, with a
fresh minibatch per generation (CMA-ES) or per ``q + 1`` evaluations (NGOpt). What is recorded
is the full objective at the point each would return (CMA-ES's mean, NGOpt's
recommendation), every ``every`` steps' worth of evaluations, so that its curve lines up with
a ZO run's. CMA-ES runs without restarts: once it stops (its own criteria), its mean stays.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from torchzo.tasks import Problem

__all__ = ["default_sigma0", "missing", "run_cma", "run_ngopt"]

#: What a non-finite loss is told as (pycma and nevergrad want finite numbers).
_BAD = 1e30


def missing() -> str | None:
    """The install command for the anchors if either is missing, else ``None``."""
    try:
        import cma  # noqa: F401
        import nevergrad  # noqa: F401
    except ImportError:
        return 'pip install "torchzo[anchors]" (cma, nevergrad)'
    return None


def default_sigma0(problem: Problem) -> float:
    """A user's first guess at CMA-ES's step: half the start's RMS, or 1 at a start at zero."""
    rms = float(problem.x0.double().pow(2).mean().sqrt())
    return 0.5 * rms if rms > 0 else 1.0


def _losses(problem: Problem, points: np.ndarray, batch: Any) -> list[float]:
    with torch.no_grad():
        values = problem.loss(torch.as_tensor(points, dtype=torch.float32), batch).double()
    return [float(v) if math.isfinite(v) else _BAD for v in values.tolist()]


def _objective(problem: Problem, x: np.ndarray) -> float:
    with torch.no_grad():
        return float(problem.objective(torch.as_tensor(x, dtype=torch.float32)))


class _Curve:
    """The objective at the current answer every ``every`` steps' worth of evaluations."""

    def __init__(self, problem: Problem, steps: int, q: int, every: int) -> None:
        self.problem, self.per_step, self.every = problem, q + 1, every
        self.points = steps // every + 1
        self.values = [float(problem.objective(problem.x0))]

    def advance(self, evaluations: int, answer: np.ndarray) -> None:
        while (len(self.values) < self.points
               and evaluations >= len(self.values) * self.every * self.per_step):
            self.values.append(_objective(self.problem, answer))

    def finish(self, answer: np.ndarray) -> list[float]:
        value = _objective(self.problem, answer)
        return self.values + [value] * (self.points - len(self.values))


def run_cma(problem: Problem, sigma0: float, steps: int, q: int, seed: int, every: int
            ) -> list[float]:
    """CMA-ES from ``x0`` with step ``sigma0`` for the budget of ``steps`` ZO steps."""
    import cma

    budget = steps * (q + 1)
    x0 = problem.x0.double().numpy()
    es = cma.CMAEvolutionStrategy(x0, sigma0, {"seed": seed + 1, "verbose": -9,
                                               "maxfevals": budget})
    data = torch.Generator().manual_seed(seed + 1)
    curve, used = _Curve(problem, steps, q, every), 0
    while used < budget and not es.stop():
        points = np.asarray(es.ask()[:budget - used])
        values = _losses(problem, points, problem.sample_batch(data))
        if len(values) < es.popsize:  # the last, partial generation is not told
            used = budget
            break
        es.tell(list(points), values)
        used += len(values)
        curve.advance(used, es.mean)
    return curve.finish(es.mean)


@contextlib.contextmanager
def _metamodel_failures_as_nevergrad_means_them() -> Iterator[None]:
    """nevergrad's metamodel proposals (which NGOpt picks for small d) convert a 1-element
    array with ``float()``, which numpy 2 refuses with a ``TypeError``; nevergrad treats a
    failed proposal (``MetaModelFailure``) by asking its base optimizer instead, so a
    ``TypeError`` there is turned into one for the duration of a run."""
    from nevergrad.optimization import optimizerlib
    from nevergrad.optimization.metamodel import MetaModelFailure

    original = optimizerlib.learn_on_k_best

    def learn(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        except TypeError as err:
            raise MetaModelFailure(str(err)) from err

    optimizerlib.learn_on_k_best = learn
    try:
        yield
    finally:
        optimizerlib.learn_on_k_best = original


def run_ngopt(problem: Problem, steps: int, q: int, seed: int, every: int) -> list[float]:
    """nevergrad's NGOpt (its algorithm chosen by dimension and budget) from ``x0``."""
    with _metamodel_failures_as_nevergrad_means_them():
        return _ngopt(problem, steps, q, seed, every)


def _ngopt(problem: Problem, steps: int, q: int, seed: int, every: int) -> list[float]:
    import nevergrad as ng

    budget = steps * (q + 1)
    param = ng.p.Array(init=problem.x0.double().numpy())
    param.random_state = np.random.RandomState(seed + 1)
    opt = ng.optimizers.NGOpt(parametrization=param, budget=budget, num_workers=1)
    data = torch.Generator().manual_seed(seed + 1)
    curve = _Curve(problem, steps, q, every)
    for step in range(steps):
        asked = [opt.ask() for _ in range(q + 1)]
        values = _losses(problem, np.stack([c.value for c in asked]),
                         problem.sample_batch(data))
        for candidate, value in zip(asked, values):
            opt.tell(candidate, value)
        if (step + 1) % every == 0:
            curve.advance((step + 1) * (q + 1), opt.recommend().value)
    return curve.finish(opt.recommend().value)
