"""The generalist's task distribution: families of problems, split by family, and augmentation.

A :class:`Family` draws random instances (a :class:`~torchzo.tasks.Problem` each) from a
generator. Families are split as wholes: the learned optimizer is meta-trained on ``train``
families, its checkpoints are chosen on ``val`` families, and ``test`` families are used only
for the final comparison (``benchmarks.generalist``), so that its table measures problems the
optimizer never saw. The ``fresh`` families (BBOB functions, per-query noise, a quantised
regression, a pendulum) were added for the next learned optimizer's final table, after the
``test`` families had been looked at too often; that table runs the learned optimizer at its
pure defaults, while the radius ``mu`` of a piecewise-constant family goes to the baselines,
as in the other splits.

:func:`augment` rescales an instance's parameters (``x = s x'``), its loss (``a f + b``) and
keeps its start and optimum where they were in ``x'``: what a scale-free optimizer must not
notice.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import bbob, control, learning, noisy, quantised, synthetic, wide
from .base import Problem
from .binclass import BinaryClassificationProblem
from .synthetic import log_uniform

__all__ = ["FAMILIES", "FAMILY_SPLITS", "Augmented", "Family", "augment", "families",
           "sample_instance"]


@dataclass(frozen=True)
class Family:
    """A problem family: ``make(generator)`` draws one instance; ``mu``: the radius its
    piecewise-constant instances need (``None``: smooth enough for the default)."""

    name: str
    make: Callable[[torch.Generator], Problem]
    mu: float | None = None

    def instance(self, g: torch.Generator) -> Problem:
        """One instance drawn from ``g``, carrying the family's ``mu``."""
        problem = self.make(g)
        problem.mu = self.mu
        return problem


class _SparseLogistic(learning.Logistic):
    def __init__(self, g: torch.Generator) -> None:
        super().__init__(g)
        self.lam = log_uniform(g, 1e-3, 3e-2)

    def loss(self, X: Tensor, batch: Tensor | None = None) -> Tensor:
        return super().loss(X, batch) + self.lam * X.abs().sum(-1)


def _binclass(g: torch.Generator) -> Problem:
    # Seeds far from the paper task's 0-99, so that no instance is one of its datasets.
    return BinaryClassificationProblem(10_000 + int(torch.randint(0, 2**30, (), generator=g)))


_ALL = [
    Family("rotated-quadratic", synthetic.RotatedQuadratic),
    Family("separable-quadratic", synthetic.SeparableQuadratic),
    Family("noisy-quadratic", synthetic.NoisyQuadratic),
    Family("rosenbrock", synthetic.Rosenbrock),
    Family("least-squares", learning.LeastSquares),
    Family("logistic", learning.Logistic),
    Family("mlp-classifier", learning.MLPClassifier),
    Family("lasso", learning.Lasso),
    Family("zero-one-linear", synthetic.ZeroOneLinear, mu=0.05),
    Family("point-mass", control.PointMass),
    Family("huber", learning.Huber),
    Family("quartic", synthetic.Quartic),
    Family("softmax", learning.Softmax),
    Family("robust-regression", learning.RobustRegression),
    Family("mlp-regression", learning.MLPRegression),
    Family("matrix-factorization", learning.MatrixFactorization),
    Family("cartpole", control.CartPole, mu=0.05),
    Family("binclass", _binclass),
    Family("rastrigin", synthetic.Rastrigin),
    Family("sparse-logistic", _SparseLogistic),
    Family("hinge", learning.Hinge),
    Family("poisson", learning.Poisson),
    # Added later, so last: a family's position seeds its benchmark instances.
    Family("student-t", learning.StudentT),
    Family("squared-hinge", learning.SquaredHinge),
    Family("sharp-ridge", synthetic.SharpRidge),
    Family("ackley", synthetic.Ackley),
    Family("wide-quadratic", wide.WideQuadratic),
    Family("near-optimum", wide.NearOptimum),
    Family("warm-rosenbrock", wide.WarmRosenbrock),
    # The fresh split (2026-12-07), for one final table only.
    Family("bent-cigar", bbob.BentCigar),
    Family("discus", bbob.Discus),
    Family("different-powers", bbob.DifferentPowers),
    Family("attractive-sector", bbob.AttractiveSector),
    # Plateaus 0.3 to 1 wide in x: a radius of a tenth crosses one in most directions.
    Family("step-ellipsoid", bbob.StepEllipsoid, mu=0.1),
    Family("schaffers-f7", bbob.SchaffersF7),
    Family("noisy-ellipsoid", noisy.NoisyEllipsoid),
    Family("noisy-rosenbrock", noisy.NoisyRosenbrock),
    Family("quantised-least-squares", quantised.QuantisedLeastSquares, mu=0.05),
    Family("pendulum", control.Pendulum),
    # Large d with a minibatch's noise (2026-12-08): fine-tuning's regime.
    Family("minibatch-near-optimum", wide.MinibatchNearOptimum),
    Family("minibatch-warm-rosenbrock", wide.MinibatchWarmRosenbrock),
]
FAMILIES: dict[str, Family] = {f.name: f for f in _ALL}
FAMILY_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("rotated-quadratic", "separable-quadratic", "noisy-quadratic", "rosenbrock",
              "least-squares", "logistic", "mlp-classifier", "lasso", "zero-one-linear",
              "point-mass", "wide-quadratic", "near-optimum", "minibatch-near-optimum"),
    # The four after the first three were added (2026-12-02) so that checkpoints are chosen
    # on more kinds of problem, and the last two (2026-12-07, 2026-12-08) for large d, the
    # second with a minibatch's noise; appended, so that the earlier ones keep their
    # validation seeds.
    "val": ("huber", "quartic", "softmax", "student-t", "squared-hinge", "sharp-ridge",
            "ackley", "warm-rosenbrock", "minibatch-warm-rosenbrock"),
    "test": ("robust-regression", "mlp-regression", "matrix-factorization", "cartpole",
             "binclass", "rastrigin", "sparse-logistic", "hinge", "poisson"),
    # New families for the next learned optimizer's final comparison only: never trained,
    # validated or tuned on.
    "fresh": ("bent-cigar", "discus", "different-powers", "attractive-sector",
              "step-ellipsoid", "schaffers-f7", "noisy-ellipsoid", "noisy-rosenbrock",
              "quantised-least-squares", "pendulum"),
}


def families(split: str) -> list[Family]:
    """The families of ``split`` (``train``, ``val``, ``test`` or ``fresh``)."""
    if split not in FAMILY_SPLITS:
        raise ValueError(f"split must be one of {tuple(FAMILY_SPLITS)}, got {split!r}")
    return [FAMILIES[name] for name in FAMILY_SPLITS[split]]


class Augmented(Problem):
    """``a f(x / s) + b`` over ``x = s x'``: the instance seen at another scale."""

    def __init__(self, base: Problem, x_scale: float, loss_scale: float, offset: float,
                 mu: float | None) -> None:
        self.base, self.s, self.a, self.b = base, x_scale, loss_scale, offset
        self.x0 = base.x0 * x_scale
        self.f_min = loss_scale * base.f_min + offset
        self.mu = None if mu is None else mu * x_scale

    def sample_batch(self, generator: torch.Generator) -> Any:
        return self.base.sample_batch(generator)

    def loss(self, X: Tensor, batch: Any = None) -> Tensor:
        return self.a * self.base.loss(X / self.s, batch) + self.b


def augment(problem: Problem, g: torch.Generator, mu: float | None = None,
            x_scales: tuple[float, float] = (1e-2, 1e2),
            loss_scales: tuple[float, float] = (1e-3, 1e3)) -> Augmented:
    """``problem`` with log-uniform parameter and loss scales and an offset of up to the
    scaled start loss either way; ``mu`` (default: the problem's) is scaled with it."""
    mu = problem.mu if mu is None else mu
    s, a = log_uniform(g, *x_scales), log_uniform(g, *loss_scales)
    with torch.no_grad():
        start = float(problem.objective(problem.x0)) - problem.f_min
    offset = a * (2 * float(torch.rand((), generator=g)) - 1) * abs(start)
    return Augmented(problem, s, a, offset, mu)


def sample_instance(split: str, g: torch.Generator, augmented: bool = True
                    ) -> tuple[Family, Problem]:
    """A random family of ``split`` and an instance of it (augmented, or as drawn)."""
    options = families(split)
    family = options[int(torch.randint(len(options), (), generator=g))]
    problem = family.instance(g)
    if augmented:
        problem = augment(problem, g)
    return family, problem
