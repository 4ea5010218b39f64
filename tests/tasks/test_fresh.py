"""The fresh split: BBOB functions, per-query noise, piecewise-constant losses, a pendulum."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from zo_testing import FEW

from torchzo.tasks import bbob
from torchzo.tasks.control import Pendulum, _policy_size
from torchzo.tasks.families import FAMILIES, FAMILY_SPLITS, families
from torchzo.tasks.noisy import row_normals, row_uniforms

FRESH = FAMILY_SPLITS["fresh"]
BBOB = ("bent-cigar", "discus", "different-powers", "attractive-sector", "step-ellipsoid",
        "schaffers-f7")
NOISY = ("noisy-ellipsoid", "noisy-rosenbrock")
PIECEWISE = ("step-ellipsoid", "quantised-least-squares")
# Where the optimum is known: the attribute that holds it (its value is f_min, exactly).
OPTIMA = {**{name: "x_opt" for name in BBOB + NOISY}, "quantised-least-squares": "x_star"}
PER_FAMILY = settings(max_examples=6, deadline=None, database=None)
SEEDS = st.integers(0, 2**31 - 1)


def _instance(name: str, seed: int):
    return FAMILIES[name].instance(torch.Generator().manual_seed(seed))


def _points(problem, seed: int) -> torch.Tensor:
    """x0, rows around it at a few scales, and rows uniform in the start box [-5, 5]^d."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([0.0, 1e-3, 0.3, 3.0])[:, None]
    near = problem.x0 + scales * torch.randn(4, problem.dim, generator=g)
    return torch.cat([near, 10 * torch.rand(4, problem.dim, generator=g) - 5])


def test_the_fresh_split_holds_about_ten_families_appended_after_the_others():
    assert [f.name for f in families("fresh")] == list(FRESH)
    assert 10 <= len(FRESH) <= 12
    assert set(BBOB + NOISY + PIECEWISE + ("pendulum",)) == set(FRESH)
    order = list(FAMILIES)
    start = order.index(FRESH[0])  # appended: earlier positions (seeds) unchanged
    assert order[start:start + len(FRESH)] == list(FRESH) and start > order.index("poisson")


@pytest.mark.parametrize("name", FRESH)
@PER_FAMILY
@given(seed=SEEDS)
def test_fresh_instances_are_seeded_float32_and_bounded_below_by_f_min(name, seed):
    a, b = _instance(name, seed), _instance(name, seed)
    assert a.x0.dtype == torch.float32 and torch.equal(a.x0, b.x0)
    X = _points(a, seed)
    loss = a.loss(X)
    assert loss.shape == (X.shape[0],) and loss.dtype == torch.float32
    assert torch.equal(loss, b.loss(X))
    assert torch.isfinite(loss[0])
    assert (loss >= a.f_min).all()
    assert float(a.objective(a.x0)) - a.f_min > 0  # the start is not already solved
    if name in OPTIMA:
        assert float(a.objective(getattr(a, OPTIMA[name]))) == a.f_min == 0.0
    batch = a.sample_batch(torch.Generator().manual_seed(seed))
    if batch is not None:  # noisy queries stay above f_min too
        assert (a.loss(X, batch) >= a.f_min).all()


@pytest.mark.parametrize("name", BBOB + NOISY)
def test_bbob_style_instances_draw_d_from_2_to_40_and_points_in_their_boxes(name):
    problems = [_instance(name, seed) for seed in range(40)]
    dims = [p.dim for p in problems]
    assert min(dims) >= 2 and max(dims) <= 40
    assert min(dims) <= 4 and max(dims) >= 20  # log-uniform: both ends are drawn
    for p in problems:
        assert p.x0.abs().max() <= 5 and p.x_opt.abs().max() <= 4


@pytest.mark.parametrize("name", BBOB)
@FEW
@given(seed=SEEDS, scale=st.sampled_from([1e-6, 1e-3, 0.1, 1.0, 10.0]))
def test_nothing_falls_below_a_bbob_optimum(name, seed, scale):
    problem = _instance(name, seed)
    g = torch.Generator().manual_seed(seed)
    X = problem.x_opt + scale * torch.randn(16, problem.dim, generator=g)
    assert (problem.loss(X) >= 0).all()  # rounding included


def _aligned(cls, d: int, x_opt: list[float]):
    """An instance of ``cls`` in ``d`` dimensions with no rotation and the given optimum."""
    problem = cls(torch.Generator().manual_seed(0), dim=d)
    problem.R = problem.Q = torch.eye(d, dtype=torch.float64)
    problem.x_opt = torch.tensor(x_opt)
    return problem


def _values(problem, rows: list[list[float]]) -> list[float]:
    return problem.loss(problem.x_opt + torch.tensor(rows)).tolist()


def test_bbob_functions_take_their_published_values_on_the_axes():
    assert _values(_aligned(bbob.Discus, 2, [0.0, 0.0]), [[1, 0], [0, 1]]) == [1e6, 1.0]
    # T_asy^0.5 lifts the last coordinate's 4 to 4^(1 + 0.5 sqrt(4)) = 16; negatives stay.
    cigar = _aligned(bbob.BentCigar, 2, [0.0, 0.0])
    assert _values(cigar, [[1, 0], [0, 4], [0, -4]]) == [1.0, 1e6 * 16 ** 2, 1e6 * 16]
    powers = _aligned(bbob.DifferentPowers, 3, [0.0, 0.0, 0.0])
    assert _values(powers, [[2, 0, 0], [0, 2, 0], [0, 0, 2]]) == pytest.approx([2, 4, 8])
    # Lambda^10 in 2-d is diag(1, sqrt(10)); |z^| <= 0.5 rounds to tenths, above to integers.
    steps = _aligned(bbob.StepEllipsoid, 2, [0.0, 0.0])
    assert _values(steps, [[0.3, 0], [1.6, 0], [2.4, 0]]) == pytest.approx([0.009, 0.4, 0.4])
    # The attractive sector: the orthant of x_opt's signs is 100^2 times steeper.
    sector = _aligned(bbob.AttractiveSector, 2, [1.0, 1.0])
    away, toward = _values(sector, [[-1, 0], [1, 0]])
    assert away == pytest.approx(1.0)
    assert toward == pytest.approx(float(bbob.t_osz(torch.tensor(1e4))) ** 0.9)


def test_bbob_transformations_keep_zero_and_sign_and_order():
    x = torch.linspace(-30, 30, 1201)
    y = bbob.t_osz(x)
    assert float(bbob.t_osz(torch.tensor(0.0))) == 0.0
    assert torch.equal(y.sign(), x.sign()) and (y.diff() > 0).all()
    torch.testing.assert_close(bbob.t_osz(torch.tensor([1.0, -1.0])), torch.tensor([1.0, -1.0]))
    rows = torch.tensor([[-2.0, -3.0, 0.0], [4.0, 4.0, 4.0]])
    asy = bbob.t_asy(rows, 0.5)
    assert torch.equal(asy[0], rows[0]) and float(asy[1, 0]) == 4.0  # x <= 0 and i = 0: kept
    torch.testing.assert_close(asy[1, 1:], torch.tensor([4 ** 1.5, 4.0 ** 2]))
    torch.testing.assert_close(bbob.conditioning(100.0, 3), torch.tensor([1.0, math.sqrt(10), 10]))
    assert float(bbob.penalty(torch.tensor([[5.0, -5.0, 6.0, -7.0]]))) == 1 + 4


def test_rotations_are_orthogonal_and_unbiased_in_sign():
    g = torch.Generator().manual_seed(0)
    draws = [bbob.rotation(g, 3) for _ in range(400)]
    torch.testing.assert_close(draws[0] @ draws[0].T, torch.eye(3), atol=1e-6, rtol=0)
    # QR alone returns a first entry of one sign always (LAPACK's convention); Haar does not.
    positive = sum(float(r[0, 0]) > 0 for r in draws) / len(draws)
    assert 0.4 < positive < 0.6


def _double(problem):
    for name in ("R", "Q", "x_opt"):
        setattr(problem, name, getattr(problem, name).double())
    return problem


@pytest.mark.parametrize("name", ["discus", "different-powers", "attractive-sector"])
@FEW
@given(seed=SEEDS)
def test_a_rotated_instance_is_the_aligned_one_at_rotated_points(name, seed):
    # In float64, and with R's inverse, which the R drawn in float32 has as R^T only to 1e-7:
    # a rotation there and back must not move a small z_1 that a 1e6 weight (the discus's)
    # makes large.
    rotated = _double(_instance(name, seed))
    aligned = _double(_instance(name, seed))
    aligned.R = torch.eye(rotated.dim, dtype=torch.float64)
    y = torch.randn(8, rotated.dim, generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64)
    # R (x - x_opt) = y at x = x_opt + R^-1 y (R^T y for the exact rotation).
    back = y @ torch.linalg.inv(rotated.R).T
    torch.testing.assert_close(rotated.loss(rotated.x_opt + back),
                               aligned.loss(aligned.x_opt + y), rtol=1e-9, atol=0)


# -- per-query noise ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", NOISY)
def test_noisy_queries_are_keyed_by_the_step_seed_and_the_row_alone(name):
    problem = _instance(name, 1)
    # Near the optimum, where an absolute noise is not lost in the loss's float32 rounding.
    g = torch.Generator().manual_seed(1)
    X = problem.x_opt + torch.logspace(-3, -1, 8)[:, None] * torch.randn(8, problem.dim,
                                                                         generator=g)
    seed = problem.sample_batch(torch.Generator().manual_seed(7))
    assert seed.dtype == torch.int64 and seed.dim() == 0
    noisy = problem.loss(X, seed)
    assert torch.equal(noisy, problem.loss(X, seed.clone()))
    assert not torch.equal(noisy, problem.loss(X, seed + 1))
    # The noise of a row is the same in any order and alone (the closure path's one-row
    # calls): only the noiseless part may round differently with the batch's shape.
    perm = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(0))
    assert torch.equal(problem.loss(X[perm], seed), noisy[perm])
    alone = torch.cat([problem.loss(X[i:i + 1], seed) for i in range(X.shape[0])])
    torch.testing.assert_close(alone, noisy, rtol=1e-6, atol=0)
    # A repeated point repeats its value within the step.
    twice = problem.loss(torch.cat([X[:1], X[:1]]), seed)
    assert float(twice[0]) == float(twice[1])
    # The reported objective is noiseless, and the noise is not shared by a step's rows.
    clean = problem.loss(X)
    assert torch.equal(clean, problem.loss(X, None))
    assert float(problem.objective(X[0])) == pytest.approx(float(clean[0]), rel=1e-6)
    if name == "noisy-ellipsoid":
        expected = clean * torch.exp(problem.beta * row_normals(X, seed)).float()
        ratio = noisy / clean
    else:
        expected = clean + (problem.sigma * row_uniforms(X, seed, 1)[:, 0]).float()
        ratio = noisy - clean
    torch.testing.assert_close(noisy, expected, rtol=1e-6, atol=0)
    assert len(set(ratio.tolist())) == X.shape[0]


def test_row_noise_is_uniform_and_normal_and_unrelated_across_rows():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(4000, 7, generator=g)
    u = row_uniforms(X, 123, 2)
    assert u.shape == (4000, 2) and ((u > 0) & (u < 1)).all()
    assert abs(float(u.mean()) - 0.5) < 0.02
    assert abs(float((u < 0.25).double().mean()) - 0.25) < 0.03
    n = row_normals(X, 123)
    assert abs(float(n.mean())) < 0.08 and abs(float(n.var()) - 1) < 0.1
    assert abs(float((n.abs() < 1).double().mean()) - 0.6827) < 0.03

    def corr(a, b):
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    assert abs(corr(n[:-1], n[1:])) < 0.08  # neighbouring rows
    # Rows one ulp apart in one coordinate, antithetic rows, and two steps' seeds: unrelated.
    ulp = X.clone()
    ulp[:, 3] = torch.nextafter(ulp[:, 3], torch.tensor(math.inf))
    assert abs(corr(n, row_normals(ulp, 123))) < 0.08
    # Not a fixed shift of the uniform either (an affine hash alone would give one).
    shift = (row_uniforms(ulp, 123, 1) - u[:, :1]) % 1
    assert abs(float(shift.std()) - math.sqrt(1 / 12)) < 0.02
    assert abs(corr(n, row_normals(-X, 123))) < 0.08
    assert abs(corr(n, row_normals(X, 124))) < 0.08


# -- piecewise constant -------------------------------------------------------------------------

@pytest.mark.parametrize("name", PIECEWISE)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_piecewise_constant_losses_ignore_tiny_steps_and_see_their_radius(name, seed):
    problem = _instance(name, seed)
    assert FAMILIES[name].mu is not None and problem.mu == FAMILIES[name].mu
    g = torch.Generator().manual_seed(seed)
    X = problem.x0 + 0.3 * torch.randn(200, problem.dim, generator=g)
    base = problem.loss(X)
    tiny = problem.loss(X + 1e-5 * torch.randn(X.shape, generator=g))
    assert float((tiny == base).double().mean()) > 0.9
    moved = problem.loss(X + problem.mu * torch.randn(X.shape, generator=g))
    assert float((moved != base).double().mean()) > 0.5


def test_the_quantised_regression_reads_its_start_on_a_grid_of_levels():
    problem = _instance("quantised-least-squares", 3)
    smooth = float(problem._smooth(problem.x0[None])[0])
    start = float(problem.objective(problem.x0))
    assert smooth - problem.step < start <= smooth
    assert 1e2 <= smooth / problem.step <= 1e4
    near = problem.x_star + 1e-4 * torch.randn(problem.dim, generator=torch.Generator())
    assert float(problem.objective(near)) == 0.0  # the lowest cell reads the optimum


# -- the pendulum -------------------------------------------------------------------------------

def _balance(problem: Pendulum) -> torch.Tensor:
    """A hand-made policy: u = -u_max tanh(3 tanh(3 sin(theta) + 3 omega / 8)), a saturated PD."""
    h = problem.hidden
    x = torch.zeros(_policy_size(3, h, 1))
    x[1], x[2] = 3.0, 3.0  # the first hidden unit reads sin(theta) and omega / 8
    x[3 * h + h] = -3.0  # the output weight of that unit
    return x


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_pendulum_costs_lie_in_their_bounds_and_reward_balancing(seed):
    problem = _instance("pendulum", seed)
    zero = torch.zeros(problem.dim)
    costs = problem.loss(torch.stack([zero, _balance(problem), problem.x0]))
    assert torch.isfinite(costs).all()
    assert (costs >= problem.f_min).all() and (costs <= 1.011).all()
    # Near the top, the PD policy holds the pole up, while without torque it falls.
    problem.starts = torch.tensor([[0.1, 0.0], [-0.1, 0.0], [0.05, 0.5], [-0.2, 0.0]])
    held, fallen = problem.loss(torch.stack([_balance(problem), zero])).tolist()
    assert held < 0.01 < 0.1 < fallen
    # Hanging at rest without torque, it stays down: the worst angle, every step.
    problem.starts = torch.tensor([[math.pi, 0.0]] * 4)
    assert float(problem.objective(zero)) == pytest.approx(1.0, abs=1e-4)


def test_the_pendulum_torque_cannot_lift_it_directly():
    for seed in range(10):
        p = _instance("pendulum", seed)
        assert 0.3 <= p.max_torque / (p.mass * 9.8 * p.length / 2) <= 0.7
        assert 4 <= p.hidden <= 16 and p.dim == _policy_size(3, p.hidden, 1)
