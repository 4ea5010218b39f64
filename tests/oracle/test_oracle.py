"""The ZO oracle: estimator statistics, exactness of two-sided schemes, directions, schemes, and the
agreement of the closure and batched paths."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from zo_testing import FAST, FEW, Objective, all_same_bits, same_bits, snapshot

from torchzo.oracle import (
    SCHEMES,
    Guide,
    Layout,
    ParameterBackup,
    Part,
    Scheme,
    default_mu,
    draw_seeds,
    estimate_batched,
    estimate_closure,
    generation_dtype,
)
from torchzo.oracle.directions import counter

F64 = torch.float64


def quadratic(d: int, seed: int = 0):
    """``f(x) = 0.5 x^T H x`` (float64) with an SPD ``H``; returns (fn on (B, d), H, x)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=F64)
    H = A @ A.T / d + torch.eye(d, dtype=F64)
    x = torch.randn(d, generator=g, dtype=F64)

    def fn(X: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((X @ H) * X).sum(-1)

    return fn, H, x


def direction(seed: int, d: int, dtype: torch.dtype = F64) -> torch.Tensor:
    """The documented direction of a single-tensor layout: entries 0 to d of the counter-based
    Gaussian stream keyed by the seed (in torch ops, whether or not the kernels run)."""
    out = torch.empty(d, dtype=dtype)
    counter._torch_range(seed, 0, out)
    return out


def sample_estimates(fn, x, scheme_name, n, mu, scale=None, seed0=1000):
    """``n`` independent single-direction estimates (one per seed), stacked into (n, d)."""
    scheme = Scheme(scheme_name, 2 if scheme_name == "antithetic" else 1)
    scales = None if scale is None else [scale]
    return torch.stack([estimate_batched(fn, x, Part((0,), scheme, mu).query([seed0 + i],
                                                                             scales))[1]
                        for i in range(n)])


# Tolerance rule of the statistical tests: the sample mean of N i.i.d. estimates must lie within
# Z = 5 standard errors (sample std / sqrt(N)) of the expected value in every coordinate. Under the
# CLT a correct estimator fails this with probability < 1e-5 for d = 5 coordinates, and the seeds
# are fixed, so the test is deterministic. Each test also asserts the bound is tight enough to
# reject an estimate off by a factor of 2 (or with the wrong sign).
Z = 5.0
N_SAMPLES = 3000


def within_standard_errors(samples: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(samples.shape[0])
    tol = Z * se
    assert bool((expected.abs() > tol).any()), "tolerance too loose to detect a factor-2 error"
    assert bool(((mean - expected).abs() <= tol).all()), (mean, expected, tol)
    return mean


def test_forward_estimate_is_unbiased_on_a_quadratic():
    fn, H, x = quadratic(5)
    grad = H @ x
    samples = sample_estimates(fn, x, "forward", N_SAMPLES, mu=1e-4)
    mean = within_standard_errors(samples, grad)
    # Linearity: one estimate over all N directions is the mean of the N one-direction estimates.
    seeds = [1000 + i for i in range(N_SAMPLES)]
    _, g_all = estimate_batched(fn, x, Part((0,), Scheme("forward", N_SAMPLES), 1e-4).query(seeds),
                                512)
    torch.testing.assert_close(g_all, mean, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["central", "antithetic"])
def test_two_sided_estimates_are_unbiased(name):
    fn, H, x = quadratic(5, seed=1)
    within_standard_errors(sample_estimates(fn, x, name, N_SAMPLES, mu=1e-3), H @ x)


def test_scaled_directions_give_scale_squared_times_gradient():
    fn, H, x = quadratic(5, seed=2)
    scale = torch.tensor([0.5, 1.0, 2.0, 1.5, 0.25], dtype=F64)
    samples = sample_estimates(fn, x, "forward", N_SAMPLES, mu=1e-4, scale=scale)
    within_standard_errors(samples, scale**2 * (H @ x))


def test_scale_multiplies_each_direction():
    fn, H, x = quadratic(4, seed=3)
    scale = torch.tensor([0.5, 2.0, 3.0, 1.0], dtype=F64)
    layout = Layout([x])
    for seed in (0, 7, 2**40):
        torch.testing.assert_close(layout.sample(seed, [scale])[0].clone(),
                                   scale * direction(seed, 4), rtol=0, atol=0)


def central_reference(H, x, seeds, d):
    """(1/q) sum_i (u_i . grad) u_i with the directions rebuilt from their seeds."""
    U = torch.stack([direction(s, d) for s in seeds])
    return (U @ (H @ x)) @ U / len(seeds)


@FAST
@given(seeds=st.lists(st.integers(0, 2**62), min_size=1, max_size=6, unique=True),
       data_seed=st.integers(0, 100))
def test_central_difference_is_exact_on_a_quadratic(seeds, data_seed):
    # f(x + mu u) - f(x - mu u) = 2 mu u.grad exactly on a quadratic, so the central estimate is
    # the directional-derivative sum up to float64 rounding (~eps * |f| / mu, here ~1e-14).
    d = 5
    fn, H, x = quadratic(d, data_seed)
    ref = central_reference(H, x, seeds, d)
    _, g = estimate_batched(fn, x, Part((0,), Scheme("central", len(seeds)), 0.1).query(seeds))
    assert (g - ref).abs().max() <= 1e-10 * (1 + ref.abs().max())
    # The forward scheme is not exact (its O(mu) term u^T H u / 2 remains): the check can fail.
    _, g_fwd = estimate_batched(fn, x,
                                Part((0,), Scheme("forward", len(seeds)), 0.1).query(seeds))
    assert (g_fwd - ref).abs().max() > 1e-6


def test_central_difference_closure_path_is_exact_on_a_quadratic():
    d, seeds = 4, [3, 1, 4, 1_000_000_007]
    fn, H, x = quadratic(d, seed=5)
    p = x.clone().requires_grad_(True)
    backup = ParameterBackup([p])
    f0 = float(fn(x.unsqueeze(0))[0])
    g = estimate_closure(lambda: fn(p.unsqueeze(0))[0], backup,
                         Part((0,), Scheme("central", len(seeds)), 0.1).query(seeds), f0)[0]
    backup.restore()
    assert same_bits(p.detach(), x)
    ref = central_reference(H, x, seeds, d)
    assert (g - ref).abs().max() <= 1e-10 * (1 + ref.abs().max())


@FAST
@given(seeds=st.lists(st.integers(0, 2**62), min_size=1, max_size=5), mu=st.sampled_from(
    [1e-1, 1e-3, 1e-5]))
def test_antithetic_equals_central_with_half_the_directions(seeds, mu):
    obj = Objective([(6,)], seed=len(seeds))
    x = obj.start[0]
    q = 2 * len(seeds)
    f_a, g_a = estimate_batched(obj.batched, x,
                                Part((0,), Scheme("antithetic", q), mu).query(seeds))
    f_c, g_c = estimate_batched(obj.batched, x,
                                Part((0,), Scheme("central", q // 2), mu).query(seeds))
    torch.testing.assert_close(g_a, g_c, rtol=1e-12, atol=1e-14)
    assert same_bits(f_a, f_c)


# -- directions ---------------------------------------------------------------------------------


def test_same_seed_same_direction_and_documented_generator():
    shapes = [(2, 3), (), (4,)]
    tensors = [torch.zeros(s) for s in shapes]
    a = Layout(tensors)
    first = [u.clone() for u in a.sample(12345)]
    a.sample(999)  # overwrites the scratch buffer
    again = [u.clone() for u in a.sample(12345)]
    other = [u.clone() for u in Layout(tensors).sample(12345)]
    assert all_same_bits(first, again) and all_same_bits(first, other)
    assert [u.shape for u in first] == [torch.Size(s) for s in shapes]
    flat = torch.cat([u.reshape(-1) for u in first])
    assert same_bits(flat, direction(12345, 11, torch.float32))


@FAST
@given(seed=st.integers(0, 2**63 - 2),
       shapes=st.lists(st.lists(st.integers(1, 3), max_size=3).map(tuple), min_size=1,
                       max_size=4),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_list_layout_equals_flat_layout_of_the_concatenation(seed, shapes, dtype):
    tensors = [torch.ones(s, dtype=dtype) for s in shapes]
    numel = sum(t.numel() for t in tensors)
    parts = Layout(tensors).sample(seed)
    flat = Layout([torch.ones(numel, dtype=dtype)]).sample(seed)[0]
    assert same_bits(torch.cat([u.reshape(-1) for u in parts]), flat)


@FAST
@given(s1=st.integers(0, 2**63 - 2), s2=st.integers(0, 2**63 - 2))
def test_different_seeds_give_different_directions(s1, s2):
    layout = Layout([torch.zeros(8)])
    u1 = layout.sample(s1)[0].clone()
    u2 = layout.sample(s2)[0].clone()
    assert torch.equal(u1, u2) == (s1 == s2)


@pytest.mark.parametrize("dtypes, expected", [
    ([torch.float32], torch.float32),
    ([torch.float64], torch.float64),
    ([torch.bfloat16], torch.float32),
    ([torch.float16], torch.float32),
    ([torch.float32, torch.float64], torch.float64),
    ([torch.bfloat16, torch.float32], torch.float32),
])
def test_direction_dtype(dtypes, expected):
    assert generation_dtype(dtypes) == expected
    tensors = [torch.zeros(3, dtype=dt) for dt in dtypes]
    layout = Layout(tensors)
    assert all(u.dtype == expected for u in layout.sample(1))
    assert all(layout.dtype_of(i) == expected for i in range(len(dtypes)))
    assert all(z.dtype == expected and not z.any() for z in layout.zeros())
    with pytest.raises(IndexError):
        layout.dtype_of(len(dtypes))


@pytest.mark.parametrize("dtype, mu", [(torch.float32, 1e-3), (torch.float64, 1e-7),
                                       (torch.bfloat16, 0.1), (torch.float16, 0.1)])
def test_default_mu(dtype, mu):
    assert default_mu(dtype) == pytest.approx(mu, rel=1e-12)


def test_draw_seeds_is_reproducible_and_in_range():
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    assert draw_seeds(g, 0) == [] and torch.equal(g.get_state(), state)
    a = draw_seeds(g, 5)
    g.set_state(state)
    assert draw_seeds(g, 5) == a
    assert len(set(a)) == 5 and all(isinstance(s, int) and 0 <= s < 2**63 - 1 for s in a)
    assert draw_seeds(g, 5) != a


# -- schemes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, q, bad", [
    ("forward", 0, True), ("forward", -3, True), ("central", 2.5, True), ("forward", True, True),
    ("central", 2.0, True), ("antithetic", 3, True), ("antithetic", 1, True), ("backward", 2, True),
    ("Forward", 2, True), ("forward", 1, False), ("central", 1, False), ("antithetic", 2, False),
])
def test_scheme_validation(name, q, bad):
    if bad:
        with pytest.raises(ValueError):
            Scheme(name, q)
    else:
        Scheme(name, q)


@FAST
@given(q=st.integers(1, 50), name=st.sampled_from(SCHEMES))
def test_scheme_counts(q, name):
    if name == "antithetic":
        q *= 2
    s = Scheme(name, q)
    expected = {"forward": (q, q + 1), "central": (q, 2 * q + 1), "antithetic": (q // 2, q + 1)}
    assert (s.directions, s.queries) == expected[name]
    assert s.signs == ((1,) if name == "forward" else (1, -1))


def test_scheme_coefficients():
    assert Scheme("forward", 4).coefficient(1.0, (3.0,), 0.5) == pytest.approx(1.0)
    assert Scheme("central", 2).coefficient(9.0, (3.0, 1.0), 0.5) == pytest.approx(1.0)
    assert Scheme("antithetic", 4).coefficient(9.0, (3.0, 1.0), 0.5) == pytest.approx(1.0)


# -- closure path vs batched path ---------------------------------------------------------------


@FAST
@given(name=st.sampled_from(SCHEMES), n_dirs=st.integers(1, 4),
       chunk=st.one_of(st.none(), st.integers(1, 10)), seed=st.integers(0, 2**62),
       scaled=st.booleans())
def test_closure_and_batched_paths_agree(name, n_dirs, chunk, seed, scaled):
    q = 2 * n_dirs if name == "antithetic" else n_dirs
    scheme = Scheme(name, q)
    obj = Objective([(2, 3), (), (4,)], seed=n_dirs)
    params = obj.params()
    before = snapshot(params)
    seeds = draw_seeds(torch.Generator().manual_seed(seed), scheme.directions)
    scale = [torch.rand(p.shape, dtype=F64) + 0.5 for p in params] if scaled else None
    mu = 1e-3

    calls = []

    def closure():
        calls.append(1)
        return obj(params)

    backup = ParameterBackup(params)
    f0 = float(closure())
    g_closure = estimate_closure(closure, backup, Part((0, 1, 2), scheme, mu).query(seeds, scale),
                                 f0)
    backup.restore()
    assert all_same_bits(params, before)
    assert len(calls) == scheme.queries

    rows = []

    def fn(X):
        rows.append(X.shape[0])
        return obj.batched(X)

    x = torch.cat([p.detach().reshape(-1) for p in params])
    flat_scale = None if scale is None else torch.cat([s.reshape(-1) for s in scale])
    flat = Part((0,), scheme, mu).query(seeds, None if flat_scale is None else [flat_scale])
    f0_b, g_batched = estimate_batched(fn, x, flat, chunk)
    assert math.isclose(float(f0_b), f0, rel_tol=1e-14)
    torch.testing.assert_close(torch.cat([g.reshape(-1) for g in g_closure]), g_batched,
                               rtol=1e-9, atol=1e-11)
    # Every query is made exactly once, in chunks bounded by chunk_size (a chunk always holds
    # at least one whole direction, plus f(x) in the first one).
    assert sum(rows) == scheme.queries
    if chunk is not None:
        assert max(rows) <= max(chunk, 1 + len(scheme.signs))
    else:
        assert len(rows) == 1


def test_batched_rejects_non_flat_x():
    with pytest.raises(ValueError):
        estimate_batched(lambda X: X.sum(-1), torch.zeros(2, 2),
                         Part((0,), Scheme("forward", 1), 0.1).query([1]))


@pytest.mark.parametrize("name", SCHEMES)
@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_batched_path_is_differentiable(name, chunk):
    # Autograd through estimate_batched w.r.t. x and the direction scale must match finite
    # differences of the estimate (gradcheck, float64, a smooth non-quadratic objective).
    obj = Objective([(3,)], seed=4)
    scheme = Scheme(name, 4 if name != "central" else 2)
    seeds = [11, 22, 33, 44][: scheme.directions]
    x = obj.start[0].clone().requires_grad_(True)
    scale = torch.tensor([0.5, 1.0, 1.5], dtype=F64, requires_grad=True)

    def estimate(x, scale):
        return estimate_batched(obj.batched, x, Part((0,), scheme, 1e-2).query(seeds, [scale]),
                                chunk)

    assert torch.autograd.gradcheck(estimate, (x, scale), eps=1e-6, atol=1e-6, rtol=1e-5)
    f0, g = estimate(x, scale)
    (g.sum() + f0).backward()
    assert x.grad is not None and scale.grad is not None
    assert x.grad.abs().sum() > 0 and scale.grad.abs().sum() > 0


@FEW
@given(alpha=st.floats(-1.0, 1.0, allow_nan=False), seed=st.integers(0, 1000))
def test_parameter_backup_perturbs_and_restores_bit_exactly(alpha, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(3, 2, generator=g)
    a[0, 0] = -0.0
    a[0, 1] = float("nan")
    b = torch.randn(4, generator=g, dtype=F64)
    params = [a.requires_grad_(True), b.requires_grad_(True)]
    before = snapshot(params)
    backup = ParameterBackup(params)
    u = [torch.randn(3, 2, generator=g), torch.randn(4, generator=g, dtype=F64)]
    backup.perturb([1], [u[1]], alpha)
    assert same_bits(params[0].detach(), before[0])  # not in ``index``: untouched
    assert same_bits(params[1].detach(), torch.add(before[1], u[1], alpha=alpha))
    backup.perturb([0, 1], u, alpha)
    backup.restore()
    assert all_same_bits(params, before)


def test_scaled_sample_with_a_differentiable_scale():
    # With a scale that requires grad, sample() must give the same numbers as without, and each
    # returned direction must stay differentiable after later samples reuse the scratch buffer.
    layout = Layout([torch.zeros(2, 2, dtype=F64), torch.zeros(3, dtype=F64)])
    scale = [torch.full((2, 2), 2.0, dtype=F64, requires_grad=True),
             torch.tensor([1.0, 0.5, 3.0], dtype=F64, requires_grad=True)]
    plain = [u.clone() for u in layout.sample(5, [s.detach() for s in scale])]
    first = layout.sample(5, scale)
    assert all_same_bits([u.detach() for u in first], plain)
    layout.sample(6, scale)
    sum(u.sum() for u in first).backward()
    z = [u.clone() for u in layout.sample(5)]
    assert all_same_bits([s.grad for s in scale], z)


@FAST
@given(seeds=st.lists(st.integers(0, 2**63 - 2), max_size=5), n=st.integers(1, 9),
       dtype=st.sampled_from([torch.float32, torch.float64]), scaled=st.booleans(),
       guided=st.booleans(), grad=st.booleans())
def test_sample_rows_are_the_samples_of_each_seed(seeds, n, dtype, scaled, guided, grad):
    layout = Layout([torch.zeros(n, dtype=dtype)])
    scale = (torch.linspace(0.5, 2.0, n, dtype=dtype).requires_grad_(grad) if scaled else None)
    guide = (Guide.orthonormal([[torch.arange(n, dtype=dtype) + 1]]) if guided else None)
    rows = layout.sample_rows(seeds, scale, guide)
    assert rows.shape == (len(seeds), n) and rows.dtype == dtype
    expected = [layout.sample(s, None if scale is None else [scale], guide)[0].detach().clone()
                for s in seeds]
    assert all_same_bits(list(rows.detach()), expected)
    if grad and scaled and seeds:
        rows.sum().backward()
        assert scale.grad is not None and torch.isfinite(scale.grad).all()


def test_sample_rows_needs_one_flat_tensor():
    with pytest.raises(ValueError, match="one flat tensor"):
        Layout([torch.zeros(2, 2)]).sample_rows([1])
    with pytest.raises(ValueError, match="one flat tensor"):
        Layout([torch.zeros(2), torch.zeros(3)]).sample_rows([1])
