"""Orthogonal query directions: the documented construction, their statistics against
independent Gaussian directions, the same bits on every path and chunking, and the kind a
learned optimizer's weights name as its default."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from zo_testing import FAST, Objective, all_same_bits, random_nets, snapshot

import torchzo
from torchzo.learned import GeneralConfig, LearnedZO
from torchzo.learned.arch import from_dict
from torchzo.oracle import (
    Layout,
    ParameterBackup,
    Part,
    Scheme,
    directions,
    draw_seeds,
    estimate_batched,
    estimate_closure,
    estimate_population,
)

F64 = torch.float64


def flat_directions(layout: Layout, seeds: list[int]) -> torch.Tensor:
    return torch.stack([torch.cat([u.reshape(-1) for u in layout.direction(seeds, k)])
                        for k in range(len(seeds))])


# -- the directions themselves ------------------------------------------------------------------


@pytest.mark.parametrize("numel,q", [(17, 5), (17, 17), (6, 20), (1, 3), (400, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_each_group_is_an_orthogonal_frame_of_norm_sqrt_numel(numel, q, dtype):
    layout = Layout([torch.zeros(numel, dtype=dtype)], "orthogonal")
    seeds = list(range(40, 40 + q))
    U = layout.rows(seeds, 0, q)
    assert U.dtype == dtype and U.shape == (q, numel)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    for start in range(0, q, numel):
        block = U[start:start + numel].double()
        gram = block @ block.T
        torch.testing.assert_close(gram, numel * torch.eye(len(block), dtype=F64),
                                   rtol=0, atol=tol * numel)
    if q > numel:  # different groups are drawn independently, not orthogonal to each other
        assert float((U[0].double() @ U[numel].double()).abs()) > tol * numel


def test_the_first_direction_is_its_gaussian_draw_rescaled_and_the_frame_is_gram_schmidt():
    # Positive diagonal of R makes QR equal Gram-Schmidt on the draws in seed order: the
    # first direction is the first draw scaled to norm sqrt(d), the second the second draw's
    # part orthogonal to it, and so on.
    # d = 9 is orthogonalised by Householder, d = 200 (tall) by Cholesky QR.
    d, seeds = 9, [3, 1, 4]
    gram_schmidt_equals_frame(d, seeds)
    gram_schmidt_equals_frame(200, seeds)


def gram_schmidt_equals_frame(d: int, seeds: list[int]) -> None:
    z = torch.stack([Layout([torch.zeros(d, dtype=F64)]).sample(s)[0].clone() for s in seeds])
    U = Layout([torch.zeros(d, dtype=F64)], "orthogonal").rows(seeds, 0, 3)
    frame = []
    for row in z:
        for f in frame:
            row = row - (row @ f) * f
        frame.append(row / row.norm())
    torch.testing.assert_close(U, torch.stack(frame) * math.sqrt(d), rtol=1e-10, atol=1e-10)


def test_cholesky_qr_matches_householder_and_falls_back_to_it_on_a_singular_block():
    Z = torch.randn(6, 6 * directions._TALL, generator=torch.Generator().manual_seed(0))
    Q, R = torch.linalg.qr(Z.T)
    householder = (Q * torch.diagonal(R).sign()).T
    torch.testing.assert_close(directions._orthonormal_rows(Z), householder, rtol=0, atol=1e-5)
    Z[3] = Z[1]  # rank-deficient: Cholesky fails, Householder still gives orthonormal rows
    U = directions._orthonormal_rows(Z)
    assert torch.isfinite(U).all()
    torch.testing.assert_close(U @ U.T, torch.eye(6), rtol=0, atol=1e-5)


@FAST
@given(q=st.integers(1, 12), numel=st.integers(1, 9), cuts=st.lists(st.integers(0, 12)),
       seed=st.integers(0, 2**62))
def test_any_split_of_a_step_gives_the_same_bits(q, numel, cuts, seed):
    seeds = draw_seeds(torch.Generator().manual_seed(seed), q)
    whole = Layout([torch.zeros(numel)], "orthogonal").rows(seeds, 0, q)
    fresh = Layout([torch.zeros(numel)], "orthogonal")  # its cache holds other groups
    bounds = sorted({0, q, *[c for c in cuts if c <= q]})
    pieces = [fresh.rows(seeds, a, b - a) for a, b in zip(bounds, bounds[1:])]
    assert torch.equal(torch.cat(pieces), whole)
    one_by_one = flat_directions(Layout([torch.zeros(numel)], "orthogonal"), seeds)
    assert torch.equal(one_by_one, whole)


def test_a_layout_of_several_tensors_gives_the_flat_layouts_directions():
    shapes = [(2, 3), (), (4,)]
    seeds = [7, 8, 9, 10]
    shaped = flat_directions(Layout([torch.zeros(s) for s in shapes], "orthogonal"), seeds)
    flat = Layout([torch.zeros(11)], "orthogonal").rows(seeds, 0, 4)
    assert torch.equal(shaped, flat)


def test_scale_and_guide_act_after_orthogonalisation():
    d, seeds = 8, [5, 6, 7]
    scale = torch.linspace(0.5, 2, d, dtype=F64)
    base = Layout([torch.zeros(d, dtype=F64)], "orthogonal").rows(seeds, 0, 3)
    scaled = Layout([torch.zeros(d, dtype=F64)], "orthogonal").rows(seeds, 0, 3, scale)
    assert torch.equal(scaled, base * scale)


def test_draws_that_need_their_own_seed_alone_are_refused():
    layout = Layout([torch.zeros(4)], "orthogonal")
    with pytest.raises(ValueError, match="direction\\(\\) or rows\\(\\)"):
        layout.sample(1)
    with pytest.raises(ValueError, match="direction\\(\\) or rows\\(\\)"):
        layout.sample_rows([1, 2])


def test_auto_is_orthogonal_for_short_groups_and_gaussian_bits_for_tall_ones():
    seeds = draw_seeds(torch.Generator().manual_seed(5), 5)
    short, tall = 16 * 5 - 1, 16 * 5
    assert torch.equal(Layout([torch.zeros(short)], "auto").rows(seeds, 0, 5),
                       Layout([torch.zeros(short)], "orthogonal").rows(seeds, 0, 5))
    assert torch.equal(Layout([torch.zeros(tall)], "auto").rows(seeds, 0, 5),
                       Layout([torch.zeros(tall)]).sample_rows(seeds))
    for n in (short, tall):
        layout = Layout([torch.zeros(n)], "auto")
        assert torch.equal(flat_directions(layout, seeds), layout.rows(seeds, 0, 5))
        assert (layout._frames[0] is None) == (n == tall)  # a tall step holds no frame
    scale = torch.linspace(0.5, 2, tall)
    scaled = Layout([torch.zeros(tall)], "auto").direction(seeds, 2, [scale])[0]
    assert torch.equal(scaled, Layout([torch.zeros(tall)]).sample(seeds[2], [scale])[0])
    # A step is judged by its q, not by its groups' lengths: 20 directions in 19 coordinates
    # are groups of 19 and 1, and the last one is normalised too, as "orthogonal" does.
    many = draw_seeds(torch.Generator().manual_seed(6), 20)
    assert torch.equal(Layout([torch.zeros(19)], "auto").rows(many, 0, 20),
                       Layout([torch.zeros(19)], "orthogonal").rows(many, 0, 20))


def test_auto_optimizer_on_a_tall_problem_steps_as_with_gaussian_directions():
    a, b = torch.ones(100), torch.ones(100)
    fn = lambda x: lambda: ((x - 2) ** 2).sum()  # noqa: E731
    oa = torchzo.ZOAdam([a], lr=0.1, q=3, seed=4, directions_kind="auto")
    ob = torchzo.ZOAdam([b], lr=0.1, q=3, seed=4)
    for _ in range(3):
        oa.step(fn(a))
        ob.step(fn(b))
    assert torch.equal(a, b)


# -- the estimator's statistics -----------------------------------------------------------------


def test_with_q_equal_to_d_a_forward_estimate_of_a_linear_function_is_exact():
    # sum_i (u_i . a) u_i = d a over a full orthogonal frame of norm sqrt(d): the estimate
    # (1 / q) sum_i (f(x + mu u_i) - f(x)) / mu u_i is a itself. Independent Gaussian
    # directions are off by O(1 / sqrt(q)).
    d = 6
    a = torch.linspace(-1, 2, d, dtype=F64)
    fn = lambda X: X @ a  # noqa: E731
    x = torch.randn(d, dtype=F64, generator=torch.Generator().manual_seed(1))
    seeds = draw_seeds(torch.Generator().manual_seed(2), d)
    ortho = Part((0,), Scheme("forward", d), 1e-3, "orthogonal")
    g = estimate_batched(fn, x, ortho.query(seeds))[1]
    torch.testing.assert_close(g, a, rtol=1e-9, atol=1e-9)
    gauss = estimate_batched(fn, x, Part((0,), Scheme("forward", d), 1e-3).query(seeds))[1]
    assert float((gauss - a).norm()) > 0.1 * float(a.norm())


def test_directions_have_unit_covariance_and_the_estimate_less_variance():
    # E[u u^T] = I for each direction (it is uniform on the sphere of radius sqrt(d)); at
    # d = 8, q = 4 the forward estimate's error is E||g - grad||^2 = (d / q - 1) ||grad||^2
    # (the frame spans q of d dimensions, scaled by d / q): 1 against Gaussian directions'
    # (d + 1) / q = 2.25. Measured within 10% (about 5 standard errors at 4000 trials).
    d, q, trials = 8, 4, 4000
    gen = torch.Generator().manual_seed(3)
    layout = Layout([torch.zeros(d, dtype=F64)], "orthogonal")
    U = torch.cat([layout.rows(draw_seeds(gen, q), 0, q) for _ in range(trials // q)])
    cov = U.T @ U / U.shape[0]
    torch.testing.assert_close(cov, torch.eye(d, dtype=F64), rtol=0, atol=0.15)
    H = torch.diag(torch.linspace(0.5, 2, d, dtype=F64))
    fn = lambda X: 0.5 * ((X @ H) * X).sum(-1)  # noqa: E731
    x = torch.randn(d, dtype=F64, generator=torch.Generator().manual_seed(4))
    grad = H @ x
    norm2 = float(grad @ grad)
    mse = {}
    for kind in ("gaussian", "orthogonal"):
        seeds = torch.Generator().manual_seed(5)
        part = Part((0,), Scheme("forward", q), 1e-6, kind)
        est = torch.stack([estimate_batched(fn, x, part.query(draw_seeds(seeds, q)))[1]
                           for _ in range(trials)])
        mse[kind] = float(((est - grad) ** 2).sum(1).mean()) / norm2
    assert mse["orthogonal"] == pytest.approx(d / q - 1, rel=0.1)
    assert mse["gaussian"] == pytest.approx((d + 1) / q, rel=0.1)


# -- the same bits on every path ----------------------------------------------------------------


@FAST
@given(name=st.sampled_from(["forward", "central", "antithetic"]), n_dirs=st.integers(1, 14),
       chunk=st.one_of(st.none(), st.integers(1, 10)), seed=st.integers(0, 2**62))
def test_closure_and_batched_paths_agree(name, n_dirs, chunk, seed):
    scheme = Scheme(name, 2 * n_dirs if name == "antithetic" else n_dirs)
    obj = Objective([(2, 3), (), (4,)], seed=n_dirs)  # 11 coordinates: q > d makes two groups
    params = obj.params()
    before = snapshot(params)
    seeds = draw_seeds(torch.Generator().manual_seed(seed), scheme.directions)
    backup = ParameterBackup(params)
    f0 = float(obj(params))
    g_closure = estimate_closure(lambda: obj(params), backup,
                                 Part((0, 1, 2), scheme, 1e-3, "orthogonal").query(seeds), f0)
    backup.restore()
    assert all_same_bits(params, before)
    x = torch.cat([p.detach().reshape(-1) for p in params])
    flat = Part((0,), scheme, 1e-3, "orthogonal").query(seeds)
    g_whole = estimate_batched(obj.batched, x, flat)[1]
    g_chunked = estimate_batched(obj.batched, x, flat, chunk)[1]
    torch.testing.assert_close(torch.cat([g.reshape(-1) for g in g_closure]), g_whole,
                               rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(g_chunked, g_whole, rtol=1e-12, atol=1e-13)


def test_population_members_get_the_estimate_of_their_row():
    d, P = 9, 3
    X = torch.randn(P, d, generator=torch.Generator().manual_seed(5), dtype=F64)
    obj = Objective([(d,)], seed=2)
    scheme, seeds = Scheme("forward", 12), list(range(12))
    query = Part((0,), scheme, 1e-3, "orthogonal").query(seeds)
    f0, g = estimate_population(obj.batched, X, query)
    for m in range(P):
        fm, gm = estimate_batched(obj.batched, X[m], query)
        torch.testing.assert_close(f0[m], fm, rtol=1e-14, atol=0)
        torch.testing.assert_close(g[m], gm, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("cls", [torchzo.ZOSGD, torchzo.ZOSignSGD, torchzo.ZOAdam])
def test_optimizers_resume_bit_exactly_with_orthogonal_directions(cls):
    obj = Objective([(2, 3), (), (4,)], seed=1)

    def run(steps, resume_at=None):
        params = obj.params(F64)
        opt = cls(params, lr=0.05, q=4, seed=3, directions_kind="orthogonal")
        for k in range(steps):
            if k == resume_at:
                sd = copy.deepcopy(opt.state_dict())
                opt = cls(params, lr=0.05, q=4, seed=9)
                opt.load_state_dict(sd)
            opt.step(lambda: obj(params))
        return params, opt

    full, opt = run(5)
    resumed, _ = run(5, resume_at=2)
    assert opt.param_groups[0]["directions_kind"] == "orthogonal"
    assert all_same_bits(full, resumed)
    gauss = obj.params(F64)
    other = cls(gauss, lr=0.05, q=4, seed=3)
    for _ in range(5):
        other.step(lambda: obj(gauss))
    assert not all_same_bits(full, gauss)


# -- the kind a learned optimizer's weights name ------------------------------------------------


def test_zolstm_runs_with_the_kind_its_weights_name_unless_told_otherwise():
    paper = random_nets()
    assert torchzo.ZOLSTM([torch.zeros(3)], pretrained=paper).defaults["directions_kind"] \
        == "gaussian"
    nets = LearnedZO(arch=GeneralConfig(hidden=4, query_net=False,
                                        directions_kind="orthogonal"))
    x = torch.zeros(5)
    opt = torchzo.ZOLSTM([x], pretrained=nets, q=3, seed=1)
    assert opt.param_groups[0]["directions_kind"] == "orthogonal"
    told = torchzo.ZOLSTM([torch.zeros(5)], pretrained=nets, directions_kind="rademacher")
    assert told.param_groups[0]["directions_kind"] == "rademacher"
    # The kind is in the architecture, so it travels with a saved file and a state dict.
    again = LearnedZO(arch=from_dict(nets.arch.to_dict()))
    assert again.arch.directions_kind == "orthogonal"
    opt.step(lambda: ((x - 1) ** 2).sum())
    assert opt.state_dict()["param_groups"][0]["directions_kind"] == "orthogonal"
    with pytest.raises(ValueError, match="directions_kind must be one of"):
        GeneralConfig(directions_kind="sphere")


def test_a_population_of_one_steps_as_zolstm_with_the_kind_of_its_arch():
    from torchzo.meta.population import run_population
    from torchzo.tasks.synthetic import RotatedQuadratic

    problem = RotatedQuadratic(torch.Generator().manual_seed(4))
    nets = LearnedZO(arch=GeneralConfig(hidden=4, query_net=False,
                                        directions_kind="orthogonal"))
    weights = {k: v.detach()[None] for k, v in nets.weights().items()}
    pop = run_population(weights, nets.arch, problem, steps=5, q=4, seed=6)
    x = problem.x0.detach().clone().float()
    opt = torchzo.ZOLSTM([x], pretrained=nets, q=4, seed=6)
    data = torch.Generator().manual_seed(7)
    losses = [float(problem.loss(x))]
    for _ in range(5):
        batch = problem.sample_batch(data)
        opt.step(torchzo.Batched(lambda X, b=batch: problem.loss(X, b)))
        losses.append(float(problem.loss(x)))
    torch.testing.assert_close(pop.losses[0].double(), torch.tensor(losses, dtype=F64),
                               rtol=1e-4, atol=1e-6)
    gauss = LearnedZO(arch=GeneralConfig(hidden=4, query_net=False))
    gauss.load_state_dict(nets.state_dict())
    other = run_population({k: v.detach()[None] for k, v in gauss.weights().items()},
                           gauss.arch, problem, steps=5, q=4, seed=6)
    assert not torch.equal(other.losses, pop.losses)
