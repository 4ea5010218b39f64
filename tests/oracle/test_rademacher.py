"""Rademacher (+-1) query directions: their documented bits, their statistics against Gaussian
directions, the same bits on every path (closure, batched in any chunking, population), the
``directions_kind`` hyperparameter of every optimizer and its place in the state dict."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from zo_testing import FAST, Objective, all_same_bits, deep_equal, random_nets, snapshot

import torchzo
from torchzo.oracle import (
    KINDS,
    SCHEMES,
    Guide,
    Layout,
    ParameterBackup,
    Part,
    Scheme,
    draw_seeds,
    estimate_batched,
    estimate_closure,
    estimate_population,
)

F64 = torch.float64
ALL = [torchzo.ZOSGD, torchzo.ZOSignSGD, torchzo.ZOAdam]


def _mix64(z: int) -> int:
    """SplitMix64's output function, in Python's unbounded ints (reduced mod 2**64)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return z ^ (z >> 31)


def documented_signs(seed: int, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The module docstring's recipe, by hand: entry ``k`` is bit ``k % 64`` of word ``k // 64``
    (bytes in little-endian order), word ``i`` being ``mix64(mix64(seed) + (i + 1) * golden)``,
    a set bit meaning -1."""
    key = _mix64(seed)
    words = [_mix64((key + (i + 1) * 0x9E3779B97F4A7C15) % 2**64) for i in range(-(-n // 64))]
    return torch.tensor([-1.0 if (words[k // 64] >> (k % 64)) & 1 else 1.0 for k in range(n)],
                        dtype=dtype)


def quadratic(d: int, seed: int = 0):
    """``f(x) = 0.5 x^T H x`` (float64, SPD ``H`` with off-diagonal terms): (fn, grad at x, x)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=F64)
    H = A @ A.T / d + torch.eye(d, dtype=F64)
    x = torch.randn(d, generator=g, dtype=F64)
    return (lambda X: 0.5 * ((X @ H) * X).sum(-1)), H @ x, x


def estimates(kind: str, fn, x, q: int, trials: int, mu: float, name: str = "forward",
              seed: int = 0) -> torch.Tensor:
    """``trials`` independent estimates of ``q`` queries each (seeds drawn as an optimizer
    draws them), stacked into (trials, d)."""
    gen = torch.Generator().manual_seed(seed)
    scheme = Scheme(name, q)
    part = Part((0,), scheme, mu, kind)
    return torch.stack([estimate_batched(fn, x, part.query(draw_seeds(gen, scheme.directions)))[1]
                        for _ in range(trials)])


# -- the directions themselves ------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 64, 65, 200])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_signs_follow_the_documented_packing(n, dtype):
    for seed in (0, 12345, 2**62 + 3):
        (u,) = Layout([torch.zeros(n, dtype=dtype)], "rademacher").sample(seed)
        assert all_same_bits([u], [documented_signs(seed, n, dtype)])


def test_same_seed_same_signs_over_any_layout_and_scratch_reuse():
    shapes = [(2, 3), (), (40,), (5, 5)]
    tensors = [torch.zeros(s) for s in shapes]
    layout = Layout(tensors, "rademacher")
    first = [u.clone() for u in layout.sample(99)]
    layout.sample(100)  # overwrites the scratch buffer
    again = [u.clone() for u in layout.sample(99)]
    flat = Layout([torch.zeros(sum(torch.Size(s).numel() for s in shapes))], "rademacher")
    assert all_same_bits(first, again)
    assert all_same_bits([torch.cat([u.reshape(-1) for u in first])], [flat.sample(99)[0]])
    # The other kind, from the same seed, is another direction.
    gauss = torch.cat([u.reshape(-1) for u in Layout(tensors).sample(99)])
    assert not torch.equal(gauss.abs(), torch.ones_like(gauss))


@FAST
@given(seeds=st.lists(st.integers(0, 2**63 - 2), max_size=5), n=st.integers(0, 140),
       dtype=st.sampled_from([torch.float32, F64]), scaled=st.booleans(), guided=st.booleans())
def test_sample_rows_are_the_samples_of_each_seed(seeds, n, dtype, scaled, guided):
    layout = Layout([torch.zeros(n, dtype=dtype)], "rademacher")
    scale = torch.linspace(0.5, 2.0, n, dtype=dtype) if scaled else None
    guide = Guide.orthonormal([[torch.arange(n, dtype=dtype) + 1]]) if guided and n else None
    rows = layout.sample_rows(seeds, scale, guide)
    expected = [layout.sample(s, None if scale is None else [scale], guide)[0].clone()
                for s in seeds]
    assert all_same_bits(list(rows), expected)
    # Chunked draws are the same rows: each row comes from its own seed alone.
    if len(seeds) > 1:
        halves = torch.cat([layout.sample_rows(seeds[:1], scale, guide),
                            layout.sample_rows(seeds[1:], scale, guide)])
        assert all_same_bits([halves], [rows])


def test_scale_and_guide_act_as_on_gaussian_directions():
    n, seed = 9, 31
    scale = torch.linspace(0.5, 2.0, n, dtype=F64)
    layout = Layout([torch.zeros(n, dtype=F64)], "rademacher")
    z = layout.sample(seed)[0].clone()
    assert all_same_bits([layout.sample(seed, [scale])[0]], [z * scale])
    guide = Guide.orthonormal([[torch.arange(n, dtype=F64) + 1]], alpha=0.3)
    guided = z.clone()
    guide.apply([guided], seed)
    assert all_same_bits([layout.sample(seed, None, guide)[0]], [guided])
    torch.testing.assert_close(guided.norm(), torch.tensor(math.sqrt(n), dtype=F64))


def test_signs_are_fair_independent_and_of_unit_variance():
    # 4000 directions of d = 130 (two full words and a partial one): every entry is +-1, and
    # the sample mean and second-moment matrix are those of independent fair signs within 5
    # standard errors (1 / sqrt(N) per entry), across bytes, words and consecutive seeds.
    d, N = 130, 4000
    U = Layout([torch.zeros(d, dtype=F64)], "rademacher").sample_rows(range(N))
    assert bool((U.abs() == 1).all())
    tol = 5 / math.sqrt(N)
    assert float(U.mean(0).abs().max()) < tol
    M = U.T @ U / N
    assert torch.equal(M.diagonal(), torch.ones(d, dtype=F64))
    off = M - torch.eye(d, dtype=F64)
    assert float(off.abs().max()) < 1.3 * tol  # the largest of 130 * 129 / 2 entries
    assert float((U[1:] * U[:-1]).mean(0).abs().max()) < tol  # seed s and s + 1


# -- the estimator's statistics -----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", SCHEMES)
def test_estimate_is_unbiased_on_a_quadratic_for_both_kinds(kind, name):
    # The mean of N independent estimates (forward: exact on a quadratic up to O(mu) terms of
    # zero mean for both kinds) lies within 5 standard errors of the gradient in every
    # coordinate, and that bound is tight enough to see an estimate off by a factor of 2.
    fn, grad, x = quadratic(5, seed=1)
    q = 2 if name == "antithetic" else 1
    samples = estimates(kind, fn, x, q, 3000, mu=1e-4, name=name, seed=2)
    tol = 5 * samples.std(0) / math.sqrt(samples.shape[0])
    assert bool((grad.abs() / 2 > tol).any())
    assert bool(((samples.mean(0) - grad).abs() <= tol).all()), (samples.mean(0), grad, tol)


def test_rademacher_forward_estimate_has_lower_variance_than_gaussian():
    # For q directions, E||g - grad||^2 = (d + 1) ||grad||^2 / q with Gaussian directions and
    # (d - 1) ||grad||^2 / q with Rademacher ones (||u||^2 = d exactly), plus O(mu) terms: at
    # d = 8, q = 4, 2.25 and 1.75 times ||grad||^2. Each measured value lies within 10% of its
    # expectation (about 5 standard errors at 4000 trials), and Rademacher's is below 0.9 times
    # Gaussian's (the expected ratio is 7 / 9 = 0.78).
    d, q, trials = 8, 4, 4000
    fn, grad, x = quadratic(d, seed=3)
    norm2 = float(grad @ grad)
    mse = {kind: float(((estimates(kind, fn, x, q, trials, mu=1e-5, seed=4) - grad) ** 2)
                       .sum(1).mean()) / norm2 for kind in KINDS}
    assert mse["gaussian"] == pytest.approx((d + 1) / q, rel=0.1)
    assert mse["rademacher"] == pytest.approx((d - 1) / q, rel=0.1)
    assert mse["rademacher"] < 0.9 * mse["gaussian"]


# -- the same bits on every path ----------------------------------------------------------------


@FAST
@given(name=st.sampled_from(SCHEMES), n_dirs=st.integers(1, 4),
       chunk=st.one_of(st.none(), st.integers(1, 10)), seed=st.integers(0, 2**62),
       scaled=st.booleans())
def test_closure_and_batched_paths_agree(name, n_dirs, chunk, seed, scaled):
    scheme = Scheme(name, 2 * n_dirs if name == "antithetic" else n_dirs)
    obj = Objective([(2, 3), (), (70,)], seed=n_dirs)
    params = obj.params()
    before = snapshot(params)
    seeds = draw_seeds(torch.Generator().manual_seed(seed), scheme.directions)
    scale = [torch.rand(p.shape, dtype=F64) + 0.5 for p in params] if scaled else None
    backup = ParameterBackup(params)
    f0 = float(obj(params))
    g_closure = estimate_closure(lambda: obj(params), backup,
                                 Part((0, 1, 2), scheme, 1e-3, "rademacher").query(seeds, scale),
                                 f0)
    backup.restore()
    assert all_same_bits(params, before)
    x = torch.cat([p.detach().reshape(-1) for p in params])
    flat_scale = None if scale is None else torch.cat([s.reshape(-1) for s in scale])
    scales = None if flat_scale is None else [flat_scale]
    query = Part((0,), scheme, 1e-3, "rademacher").query(seeds, scales)
    g_whole = estimate_batched(obj.batched, x, query)[1]
    g_chunked = estimate_batched(obj.batched, x, query, chunk)[1]
    flat = torch.cat([g.reshape(-1) for g in g_closure])
    torch.testing.assert_close(flat, g_whole, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(g_chunked, g_whole, rtol=1e-12, atol=1e-13)
    # ... and they are not the Gaussian estimate.
    g_gauss = estimate_batched(obj.batched, x, Part((0,), scheme, 1e-3).query(seeds, scales))[1]
    assert not torch.allclose(g_gauss, g_whole)


def test_population_members_get_the_estimate_of_their_row():
    d, P = 70, 3
    X = torch.randn(P, d, generator=torch.Generator().manual_seed(5), dtype=F64)
    obj = Objective([(d,)], seed=2)
    scheme, seeds = Scheme("antithetic", 4), [11, 22]
    scale = torch.rand(P, d, generator=torch.Generator().manual_seed(6), dtype=F64) + 0.5
    part = Part((0,), scheme, 1e-3, "rademacher")
    f0, g = estimate_population(obj.batched, X, part.query(seeds, [scale]))
    for m in range(P):
        fm, gm = estimate_batched(obj.batched, X[m], part.query(seeds, [scale[m]]))
        torch.testing.assert_close(f0[m], fm, rtol=1e-14, atol=0)
        torch.testing.assert_close(g[m], gm, rtol=1e-9, atol=1e-11)


def test_part_and_layout_refuse_an_unknown_kind():
    with pytest.raises(ValueError, match="kind must be one of"):
        Layout([torch.zeros(2)], "uniform")
    with pytest.raises(ValueError, match="kind must be one of"):
        Part((0,), Scheme("forward", 1), 1e-3, "sphere")


# -- the optimizers -----------------------------------------------------------------------------


def trajectory(cls, kind, steps=4, chunk="closure", seed=3, groups=None, **kw):
    obj = Objective([(2, 3), (), (4,)], seed=1)
    params = obj.params(F64)
    spec = params if groups is None else [{"params": [p], **g} for p, g in zip(params, groups)]
    opt = cls(spec, seed=seed, directions_kind=kind, **{"lr": 0.05, "q": 4, **kw})
    out = []
    for _ in range(steps):
        opt.step((lambda: obj(params)) if chunk == "closure"
                 else torchzo.Batched(obj.batched, chunk))
        out.append(snapshot(params))
    return out, opt


@pytest.mark.parametrize("cls", ALL)
def test_every_optimizer_takes_the_kind_and_it_changes_the_steps(cls):
    rad, opt = trajectory(cls, "rademacher")
    gauss, _ = trajectory(cls, "gaussian")
    assert all(g["directions_kind"] == "rademacher" for g in opt.param_groups)
    assert opt.state_dict()["param_groups"][0]["directions_kind"] == "rademacher"
    assert not all_same_bits(rad[0], gauss[0])
    # The default is Gaussian: the bits of a run that never names the kind.
    obj = Objective([(2, 3), (), (4,)], seed=1)
    params = obj.params(F64)
    default = cls(params, lr=0.05, q=4, seed=3)
    assert default.param_groups[0]["directions_kind"] == "gaussian"
    for _ in range(4):
        default.step(lambda: obj(params))
    assert all_same_bits(params, gauss[-1])
    with pytest.raises(ValueError, match="directions_kind must be one of"):
        cls(params, directions_kind="uniform")
    with pytest.raises(ValueError, match="directions_kind must be one of"):
        default.add_param_group({"params": [torch.zeros(2)], "directions_kind": 1})


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_batched_steps_match_the_closure_steps(cls, chunk):
    closure, _ = trajectory(cls, "rademacher", estimator="central", q=3)
    batched, _ = trajectory(cls, "rademacher", chunk=chunk, estimator="central", q=3)
    for xs, ys in zip(closure, batched):
        for x, y in zip(xs, ys):
            torch.testing.assert_close(x, y, rtol=1e-7, atol=1e-9)


def test_groups_that_differ_in_kind_are_estimated_separately():
    # Three groups: the first and last share a kind, hence one estimate (q + 1 queries), the
    # middle one has its own (q more).
    kinds = ["rademacher", "gaussian", "rademacher"]
    _, opt = trajectory(torchzo.ZOSGD, "gaussian", steps=1,
                        groups=[{"directions_kind": k} for k in kinds])
    assert opt.queries == 1 + 2 * 4
    parts = opt._parts()
    assert [(p.index, p.kind) for p in parts] == [((0, 2), "rademacher"), ((1,), "gaussian")]
    with pytest.raises(ValueError, match="directions_kind"):
        trajectory(torchzo.ZOSGD, "gaussian", steps=1, chunk=None,
                   groups=[{"directions_kind": k} for k in kinds])


@pytest.mark.parametrize("cls", ALL)
def test_resume_is_bit_exact_and_the_kind_travels_in_the_state_dict(cls):
    full, _ = trajectory(cls, "rademacher", steps=5)
    obj = Objective([(2, 3), (), (4,)], seed=1)
    params = obj.params(F64)
    opt = cls(params, lr=0.05, q=4, seed=3, directions_kind="rademacher")
    for _ in range(2):
        opt.step(lambda: obj(params))
    sd = copy.deepcopy(opt.state_dict())
    resumed = cls(params, lr=0.05, q=4, seed=9)  # Gaussian, until the state dict says not
    resumed.load_state_dict(sd)
    assert resumed.param_groups[0]["directions_kind"] == "rademacher"
    for _ in range(3):
        resumed.step(lambda: obj(params))
    assert all_same_bits(params, full[-1])


def test_a_state_dict_from_before_the_kind_loads_with_this_optimizers_value():
    obj = Objective([(2, 3), (), (4,)], seed=1)
    params = obj.params(F64)
    opt = torchzo.ZOAdam(params, lr=0.05, q=4, seed=3)
    opt.step(lambda: obj(params))
    old = copy.deepcopy(opt.state_dict())
    for g in old["param_groups"]:
        del g["directions_kind"]
    fresh = torchzo.ZOAdam(obj.params(F64), lr=0.05, q=4, seed=3)
    fresh.load_state_dict(old)
    assert fresh.param_groups[0]["directions_kind"] == "gaussian"
    assert deep_equal(fresh.state_dict(), opt.state_dict())
    bad = copy.deepcopy(opt.state_dict())
    bad["param_groups"][0]["directions_kind"] = "sphere"
    with pytest.raises(ValueError, match="directions_kind"):
        fresh.load_state_dict(bad)


# -- ZOLSTM -------------------------------------------------------------------------------------


def test_zolstm_isotropic_no_update_equals_zosgd_with_the_same_kind():
    nets = random_nets()
    xa, xb = torch.zeros(70), torch.zeros(70)
    a = torchzo.ZOLSTM([xa], pretrained=nets, use_update=False, covariance="identity", lr=0.1,
                       q=3, seed=4, directions_kind="rademacher")
    b = torchzo.ZOSGD([xb], lr=0.1, q=3, seed=4, directions_kind="rademacher")
    for _ in range(4):
        a.step(lambda: ((xa - 1) ** 2).sum())
        b.step(lambda: ((xb - 1) ** 2).sum())
    assert torch.equal(xa, xb)
    assert not torch.equal(xa, torch.zeros(70))


@pytest.mark.parametrize("covariance", ["learned", "guided"])
def test_zolstm_closure_batched_and_resume_with_rademacher_directions(covariance):
    nets = random_nets()
    # In float64 (the parameters are float32): the two paths' losses then differ only in
    # float64 rounding, which (f(x + mu u) - f(x)) / mu does not amplify past float32's.
    f = lambda X: ((X.double() - 1.5) ** 2).sum(-1) + X[..., 0].double().sin()  # noqa: E731
    kw = dict(pretrained=nets, q=4, seed=2, covariance=covariance, query_prob=0.7,
              directions_kind="rademacher")
    xs = [torch.zeros(70) for _ in range(3)]
    closure = torchzo.ZOLSTM([xs[0]], **kw)
    batched = torchzo.ZOLSTM([xs[1]], **kw)
    interrupted = torchzo.ZOLSTM([xs[2]], **kw)
    for k in range(6):
        closure.step(lambda: f(xs[0]))
        batched.step(torchzo.Batched(f))
        interrupted.step(lambda: f(xs[2]))
        if k == 2:
            sd = copy.deepcopy(interrupted.state_dict())
            interrupted = torchzo.ZOLSTM([xs[2]], **{**kw, "seed": 5,
                                                     "directions_kind": "gaussian"})
            interrupted.load_state_dict(sd)
    torch.testing.assert_close(xs[0], xs[1], rtol=0, atol=1e-4)
    assert torch.equal(xs[0], xs[2])
    gauss = torch.zeros(70)
    other = torchzo.ZOLSTM([gauss], **{**kw, "directions_kind": "gaussian"})
    for _ in range(6):
        other.step(lambda: f(gauss))
    assert not torch.equal(gauss, xs[0])
