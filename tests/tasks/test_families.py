"""The generalist's task families: seeded instances, splits by family, and augmentation."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from zo_testing import FEW

from torchzo.tasks.families import (
    FAMILIES,
    FAMILY_SPLITS,
    Augmented,
    augment,
    families,
    sample_instance,
)

NAMES = sorted(FAMILIES)
# Per family (20-odd of them, cartpole's 200-step simulation among them): a few seeds each.
PER_FAMILY = settings(max_examples=6, deadline=None, database=None)
SEEDS = st.integers(0, 2**31 - 1)


def _instance(name: str, seed: int):
    family = FAMILIES[name]
    problem = family.make(torch.Generator().manual_seed(seed))
    if family.mu is not None:
        problem.mu = family.mu
    return problem


def _points(problem, seed: int, rows: int = 4) -> torch.Tensor:
    """x0 and rows around it at a few scales (B, d)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([0.0, 0.01, 0.3, 3.0][:rows])[:, None]
    return problem.x0[None] + scales * torch.randn(rows, problem.dim, generator=g)


def _stochastic(name: str) -> int | None:
    """A seed whose instance of ``name`` draws minibatches, if one of the first 12 does."""
    for seed in range(12):
        if _instance(name, seed).sample_batch(torch.Generator().manual_seed(0)) is not None:
            return seed
    return None


STOCHASTIC = {name: seed for name in NAMES if (seed := _stochastic(name)) is not None}


def test_families_are_registered_by_name():
    assert len(NAMES) >= 20
    assert all(FAMILIES[name].name == name for name in NAMES)
    # Each makes problems of its own: no two families share a constructor.
    assert len({FAMILIES[name].make for name in NAMES}) == len(NAMES)


@pytest.mark.parametrize("name", NAMES)
@PER_FAMILY
@given(seed=SEEDS)
def test_family_draws_instances_deterministically_with_a_sound_batched_loss(name, seed):
    a, b = _instance(name, seed), _instance(name, seed)
    assert a.x0.dim() == 1 and a.x0.dtype == torch.float32 and a.dim == a.x0.numel()
    assert torch.equal(a.x0, b.x0)
    X = _points(a, seed)
    la, lb = a.loss(X), b.loss(X)
    assert la.shape == (X.shape[0],)
    assert torch.equal(la, lb)  # same seed: the same data, not just the same start
    assert torch.isfinite(la[0])
    # The reported objective is the loss of one row (a batch of one rounds differently).
    assert float(a.objective(a.x0)) == pytest.approx(float(la[0]), rel=1e-5, abs=1e-6)
    # f_min is a lower bound of the (full) loss: at the start and around it.
    assert a.f_min <= float(la[0])
    assert (la[torch.isfinite(la)] >= a.f_min - 1e-6 * (1 + abs(a.f_min))).all()
    # A row's loss does not depend on the other rows (a population shares one call).
    alone = torch.stack([a.loss(X[i:i + 1])[0] for i in range(X.shape[0])])
    torch.testing.assert_close(la, alone, rtol=1e-5, atol=1e-6)
    # Another seed draws another instance.
    c = _instance(name, seed + 1)
    assert c.dim != a.dim or not torch.equal(c.loss(X), la) or not torch.equal(c.x0, a.x0)


def test_splits_are_disjoint_and_cover_every_family():
    assert set(FAMILY_SPLITS) == {"train", "val", "test", "fresh"}
    seen: list[str] = [name for split in FAMILY_SPLITS.values() for name in split]
    assert len(seen) == len(set(seen)), "a family is in two splits (or twice in one)"
    assert set(seen) == set(FAMILIES)
    assert len(FAMILY_SPLITS["test"]) >= 7
    assert len(FAMILY_SPLITS["val"]) >= 1 and len(FAMILY_SPLITS["train"]) >= 1
    for split, names in FAMILY_SPLITS.items():
        assert [f.name for f in families(split)] == list(names)
    with pytest.raises(ValueError, match="split"):
        families("validation")


def test_later_families_are_appended_so_earlier_seeds_stay_put():
    # Benchmark instances are seeded by a family's position in FAMILIES and validation
    # instances by its position in the val split: shipped results depend on both.
    added = ["student-t", "squared-hinge", "sharp-ridge", "ackley"]
    wide = ["wide-quadratic", "near-optimum", "warm-rosenbrock"]
    fresh = ["bent-cigar", "discus", "different-powers", "attractive-sector", "step-ellipsoid",
             "schaffers-f7", "noisy-ellipsoid", "noisy-rosenbrock", "quantised-least-squares",
             "pendulum"]
    noisy_wide = ["minibatch-near-optimum", "minibatch-warm-rosenbrock"]
    assert list(FAMILIES)[22:] == added + wide + fresh + noisy_wide
    assert list(FAMILIES).index("poisson") == 21
    assert list(FAMILY_SPLITS["val"]) == ["huber", "quartic", "softmax", *added,
                                          "warm-rosenbrock", "minibatch-warm-rosenbrock"]


@pytest.mark.parametrize("name", ["sharp-ridge", "ackley"])
@FEW
@given(seed=SEEDS)
def test_analytic_optima_are_exact_and_nothing_falls_below_them(name, seed):
    problem = _instance(name, seed)
    x_star = problem.x_star
    assert float(problem.objective(x_star)) == problem.f_min == 0.0
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([1e-7, 1e-4, 1e-2, 1.0])[:, None]
    X = x_star + scales * torch.randn(4, problem.dim, generator=g)
    assert (problem.loss(X) >= 0).all()  # rounding included: gaps are never negative
    # The optimum is a kink (the ridge's norm, Ackley's cone): its gradient is 0, not nan.
    x = x_star.clone().requires_grad_(True)
    problem.objective(x).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@FEW
@given(seed=SEEDS, split=st.sampled_from(sorted(FAMILY_SPLITS)))
def test_sample_instance_is_deterministic_and_stays_in_its_split(seed, split):
    fa, pa = sample_instance(split, torch.Generator().manual_seed(seed))
    fb, pb = sample_instance(split, torch.Generator().manual_seed(seed))
    assert fa.name == fb.name and fa.name in FAMILY_SPLITS[split]
    assert isinstance(pa, Augmented) and torch.equal(pa.x0, pb.x0)
    assert (pa.s, pa.a, pa.b) == (pb.s, pb.a, pb.b)
    assert pa.mu == (None if fa.mu is None else fa.mu * pa.s)
    fc, pc = sample_instance(split, torch.Generator().manual_seed(seed), augmented=False)
    assert fc.name == fa.name and not isinstance(pc, Augmented)
    assert torch.equal(pc.x0 * pa.s, pa.x0)
    assert pc.mu == fa.mu


#: Continuous families whose loss amplifies one ulp of x far beyond 1e-5 of its value: a
#: pendulum swung up over 100 simulator steps (by about 3e4 at one seed in thousands).
CHAOTIC = {"pendulum"}


@pytest.mark.parametrize("name", NAMES)
@PER_FAMILY
@given(seed=SEEDS)
def test_augment_rescales_the_loss_and_the_parameters(name, seed):
    family = FAMILIES[name]
    g = torch.Generator().manual_seed(seed)
    base = family.make(g)
    if family.mu is not None:
        base.mu = family.mu
    aug = augment(base, g, family.mu)
    s, a, b = aug.s, aug.a, aug.b
    assert 1e-2 <= s <= 1e2 and 1e-3 <= a <= 1e3
    start = float(base.objective(base.x0)) - base.f_min
    assert abs(b) <= a * abs(start) * (1 + 1e-6)
    assert torch.equal(aug.x0, base.x0 * s)
    assert aug.f_min == pytest.approx(a * base.f_min + b, rel=1e-12, abs=1e-12)
    assert aug.mu == (None if family.mu is None else pytest.approx(family.mu * s))
    X = _points(base, seed)
    expected = a * base.loss(X).double() + b
    if family.mu is None and name not in CHAOTIC:  # (s x) / s differs from x by rounding only
        got = aug.loss(s * X).double()
    else:  # one ulp of x may cross a step, or grow over a simulation: the same point
        got = aug.loss(s * X).double()
        expected = a * base.loss((s * X) / s).double() + b
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * (abs(b) + a))
    assert float(aug.objective(aug.x0)) >= aug.f_min - 1e-6 * (abs(aug.f_min) + a)


@pytest.mark.parametrize("k", [-5, 0, 3])
def test_augmented_with_a_power_of_two_scale_is_exact(k):
    base = _instance("rotated-quadratic", 0)
    s, a, b = 2.0 ** k, 7.0, -3.5
    aug = Augmented(base, s, a, b, 0.01)
    X = _points(base, 1)
    assert torch.equal(aug.loss(s * X), a * base.loss(X) + b)
    assert aug.mu == 0.01 * s and aug.f_min == a * base.f_min + b


def test_some_families_are_stochastic():
    """Minibatch families exist (so the tests below check something), and the always
    stochastic ones are among them."""
    assert {"noisy-quadratic", "binclass"} <= set(STOCHASTIC)
    assert len(STOCHASTIC) >= 8, sorted(STOCHASTIC)


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_stochastic_family_batches_are_seeded_and_change_the_loss(name):
    problem = _instance(name, STOCHASTIC[name])
    X = _points(problem, 0)
    one = problem.sample_batch(torch.Generator().manual_seed(5))
    same = problem.sample_batch(torch.Generator().manual_seed(5))
    other = problem.sample_batch(torch.Generator().manual_seed(6))
    assert torch.equal(one, same)
    assert not torch.equal(one, other)
    loss_one = problem.loss(X, one)
    assert loss_one.shape == (X.shape[0],) and torch.isfinite(loss_one).all()
    assert torch.equal(loss_one, problem.loss(X, same))
    assert not torch.equal(loss_one, problem.loss(X))
    assert not torch.equal(loss_one, problem.loss(X, other))
    # The stream advances: successive batches of one generator differ.
    g = torch.Generator().manual_seed(5)
    assert not torch.equal(problem.sample_batch(g), problem.sample_batch(g))
    # Augmentation keeps the batches.
    aug = Augmented(problem, 2.0, 3.0, 1.0, None)
    assert torch.equal(aug.sample_batch(torch.Generator().manual_seed(5)), one)
    torch.testing.assert_close(aug.loss(2.0 * X, one), 3.0 * loss_one + 1.0)


def test_deterministic_families_draw_no_batches():
    for name in ("rotated-quadratic", "rosenbrock", "zero-one-linear", "cartpole"):
        problem = _instance(name, 0)
        assert problem.sample_batch(torch.Generator().manual_seed(0)) is None
        X = _points(problem, 0)
        assert torch.equal(problem.loss(X), problem.loss(X, None))


def test_piecewise_constant_families_name_their_radius():
    for name in ("zero-one-linear", "cartpole"):
        assert FAMILIES[name].mu is not None and FAMILIES[name].mu > 1e-3
        assert _instance(name, 0).mu == FAMILIES[name].mu
    assert all(math.isfinite(FAMILIES[n].mu) for n in NAMES if FAMILIES[n].mu is not None)
