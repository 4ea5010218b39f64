"""One tuning protocol for the baselines of every benchmark (paper reproductions, generalist).

A setting is searched along a line: every point of a grid is scored and, while the best sits on
the grid's edge, the next point beyond that edge is added (at most ``max_extend`` times, never
past ``bounds``). A step size is searched on a coarse grid (decades), then on a fine grid of
``per_decade`` points a decade between the best decade's neighbours. Adam's betas are searched
in ``1 - beta``, which sets its averaging horizon, extended by factors of 2. :func:`tune_adam`
scores the joint coarse grid of step size and betas, tunes the step size at the best ``refine``
pairs of betas, then runs ``rounds`` of coordinate descent over (step size, beta1, beta2)
until nothing moves.

Scores are lower-is-better (a diverged run scores infinity); of equal scores the larger step
size wins. A point is either the value itself, rounded to six significant digits so that
different products of one grid hit one cache entry (:attr:`Grid.exponents` false), or the
exponent of 10 that gives it.
"""
from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger("benchmarks")

__all__ = ["Grid", "canon", "line_search", "tune_adam", "tune_step"]

Betas = tuple[float, float]


def canon(x: float) -> float:
    """Grid values reached by different products (10 * 10**0.25 ...) must hit the same cache."""
    return float(f"{x:.6g}")


@dataclass(frozen=True)
class Grid:
    """Where the step size (and Adam's betas) are searched."""

    coarse: tuple[float, ...]
    per_decade: int = 4
    max_extend: int = 4
    #: The points a step size's grid may be extended to (inclusive).
    bounds: tuple[float, float] = (-math.inf, math.inf)
    #: Points are exponents of 10 (``lr = 10 ** point``), not values.
    exponents: bool = False
    beta1: tuple[float, ...] = (0.9,)
    beta2: tuple[float, ...] = (0.999,)
    #: Rounds of coordinate descent after the step size is tuned; 0 keeps the betas of the grid.
    rounds: int = 3
    #: How many of the coarse grid's best beta pairs get their step size tuned (None: all).
    refine: int | None = 1

    def shift(self, point: float, decades: float) -> float:
        return point + decades if self.exponents else canon(point * 10 ** decades)


def line_search(score: Callable[[float], float], points: Sequence[float],
                shift: Callable[[float, float], float], step: float, max_extend: int,
                bounds: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, bool]:
    """The best of ``points``; while it sits on an edge, add ``shift(edge, +-step)``.

    Returns the best point and whether it is still on an edge (extensions exhausted or bound).
    """
    vals = sorted(set(points))
    for extension in range(max_extend + 1):
        scores = [score(v) for v in vals]
        i = min(range(len(vals)), key=lambda j: (scores[j], -j))
        if 0 < i < len(vals) - 1:
            return vals[i], False
        beyond = shift(vals[0], -step) if i == 0 else shift(vals[-1], step)
        if extension == max_extend or not bounds[0] <= beyond <= bounds[1]:
            log.warning("best value %.4g is still on the edge of %s", vals[i], vals)
            return vals[i], True
        vals = sorted([*vals, beyond])
    raise AssertionError("unreachable")


def _fine(score: Callable[[float], float], grid: Grid, center: float) -> tuple[float, bool]:
    """The fine grid between ``center``'s decade neighbours, edges extended."""
    p = grid.per_decade
    return line_search(score, [grid.shift(center, k / p) for k in range(-p, p + 1)],
                       grid.shift, 1 / p, grid.max_extend, grid.bounds)


def tune_step(score: Callable[[float], float], grid: Grid, unit: str = "lr", suffix: str = "",
              stage: Callable[[str], None] = lambda name: None) -> tuple[float, list[str]]:
    """A step size: the coarse grid, then the fine grid; with the stages left on an edge."""
    edges = []
    stage("coarse")
    point, stuck = line_search(score, grid.coarse, grid.shift, 1.0, grid.max_extend,
                               grid.bounds)
    if stuck:
        edges.append(f"coarse {unit}")
    stage("fine")
    point, stuck = _fine(score, grid, point)
    if stuck:
        edges.append(f"fine {unit}{suffix}")
    return point, edges


def _beta(score: Callable[[float], float], grid_betas: Sequence[float], current: float,
          max_extend: int) -> tuple[float, bool]:
    """A beta searched in ``1 - beta``, extended by factors of 2 up to 1 - beta = 1."""
    gaps = [canon(1 - b) for b in (*grid_betas, current)]
    gap, stuck = line_search(lambda g: score(canon(1 - g)), gaps,
                             lambda g, d: canon(g * 2.0 ** d), 1.0, max_extend, (0.0, 1.0))
    return canon(1 - gap), stuck


def tune_adam(score: Callable[[float, Betas], float], grid: Grid, unit: str = "lr",
              stage: Callable[[str], None] = lambda name: None
              ) -> tuple[float, Betas, list[str]]:
    """Adam's step size and betas: the best point, betas, and the searches left on an edge.

    ``stage`` is told which search runs (for a record of every candidate).
    """
    def at(b: Betas) -> Callable[[float], float]:
        return lambda p: score(p, b)

    stage("coarse")
    pairs = list(itertools.product(grid.beta1, grid.beta2))
    coarse = {(p, b): score(p, b) for p in grid.coarse for b in pairs}
    first = min(coarse, key=coarse.__getitem__)
    best_pairs = sorted(pairs, key=lambda b: min(coarse[p, b] for p in grid.coarse))
    chosen = [b for b in pairs if b in best_pairs[:grid.refine]]
    edges: list[str] = []
    stage("round 1: " + unit)
    tuned = []
    for b in chosen:
        point, missed = tune_step(at(b), grid, unit, " (round 1)")
        tuned.append((score(point, b), point, b))
        edges += missed
    _, point, (b1, b2) = min(tuned, key=lambda t: t[0])
    before = (first[0], *first[1])
    for rnd in range(1, grid.rounds + 1):
        if rnd > 1:
            stage(f"round {rnd}: {unit}")
            point, stuck = _fine(at((b1, b2)), grid, point)
            if stuck:
                edges.append(f"fine {unit} (round {rnd})")
        stage(f"round {rnd}: beta1")
        b1, stuck = _beta(lambda b, p=point, b2=b2: score(p, (b, b2)),  # type: ignore[misc]
                          grid.beta1, b1, grid.max_extend)
        if stuck:
            edges.append(f"beta1 (round {rnd})")
        stage(f"round {rnd}: beta2")
        b2, stuck = _beta(lambda b, p=point, b1=b1: score(p, (b1, b)),  # type: ignore[misc]
                          grid.beta2, b2, grid.max_extend)
        if stuck:
            edges.append(f"beta2 (round {rnd})")
        if (point, b1, b2) == before:
            break
        before = (point, b1, b2)
    return point, (b1, b2), edges
