"""ZOSGD / ZOSignSGD / ZOAdam: convergence, update-path equivalences, determinism, dtypes and
shapes, param groups, torch.optim integration, query accounting and the Batched objective."""
from __future__ import annotations

import pytest
import torch
from zo_testing import (
    ESTIMATORS,
    OPTIMIZERS,
    PATHS_TOL,
    CountingClosure,
    Objective,
    all_same_bits,
    same_bits,
    snapshot,
)

import torchzo
from torchzo.oracle import KINDS
from torchzo.tasks import Quadratic

SHAPES = [(2, 3), (), (4,), (2, 2, 2)]
ALL = list(OPTIMIZERS.values())
LR = {torchzo.ZOAdam: 0.05, torchzo.ZOSGD: 0.05, torchzo.ZOSignSGD: 0.02}


def q_for(estimator: str, q: int = 4) -> int:
    return 2 * q if estimator == "antithetic" else q


def trajectory(opt: torch.optim.Optimizer, params, objective, steps: int,
               batched: torchzo.Batched | None = None) -> list[list[torch.Tensor]]:
    out = []
    for _ in range(steps):
        opt.step(batched if batched is not None else (lambda: objective(params)))
        out.append(snapshot(params))
    return out


NO_BATCH = object()


def run(cls, steps=5, seed=0, dtypes=torch.float32, shapes=SHAPES, chunk=NO_BATCH, **kw):
    """A trajectory on ``Objective(shapes)``: closure path, or Batched(chunk_size=chunk)."""
    obj = Objective(shapes, seed=1)
    params = obj.params(dtypes)
    kw.setdefault("lr", LR[cls])
    kw.setdefault("q", 4)
    opt = cls(params, seed=seed, **kw)
    batched = None if chunk is NO_BATCH else torchzo.Batched(obj.batched, chunk)
    return trajectory(opt, params, obj, steps, batched)


def same_trajectory(a, b) -> bool:
    return all(all_same_bits(x, y) for x, y in zip(a, b)) and len(a) == len(b)


# -- convergence --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_zoadam_solves_a_50_dim_quadratic(seed):
    task = Quadratic(50, seed=0, dtype=torch.float32)
    x = task.x0.clone().requires_grad_(True)
    opt = torchzo.ZOAdam([x], lr=0.05, q=10, seed=seed)
    f0 = float(task(x.detach()))
    for _ in range(300):
        opt.step(lambda: task(x))
    assert float(task(x.detach())) <= f0 / 100
    assert opt.steps == 300 and opt.queries == 300 * 11


@pytest.mark.parametrize("cls, lr, factor", [(torchzo.ZOSGD, 0.3, 100.0),
                                             (torchzo.ZOSignSGD, 0.01, 2.0)])
def test_zosgd_and_zosignsgd_make_progress(cls, lr, factor):
    task = Quadratic(50, seed=0, dtype=torch.float32)
    x = task.x0.clone().requires_grad_(True)
    opt = cls([x], lr=lr, q=10, seed=0)
    f0 = float(task(x.detach()))
    for _ in range(100):
        opt.step(lambda: task(x))
    assert float(task(x.detach())) <= f0 / factor


# -- equivalences of update paths ---------------------------------------------------------------

VARIANTS = [
    (torchzo.ZOAdam, {}),
    (torchzo.ZOAdam, {"weight_decay": 0.1}),
    (torchzo.ZOAdam, {"maximize": True, "betas": (0.5, 0.9)}),
    (torchzo.ZOAdam, {"estimator": "central", "eps": 1e-3}),
    (torchzo.ZOSGD, {}),
    (torchzo.ZOSGD, {"momentum": 0.9}),
    (torchzo.ZOSGD, {"momentum": 0.9, "weight_decay": 0.1}),
    (torchzo.ZOSGD, {"maximize": True}),
    (torchzo.ZOSGD, {"momentum": 0.5, "weight_decay": 0.01, "maximize": True,
                     "estimator": "antithetic"}),
    (torchzo.ZOSignSGD, {}),
    (torchzo.ZOSignSGD, {"weight_decay": 0.1}),
    (torchzo.ZOSignSGD, {"maximize": True, "estimator": "central"}),
]


@pytest.mark.parametrize("cls, kw", VARIANTS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_foreach_and_single_tensor_updates_agree(cls, kw):
    a = run(cls, foreach=True, **kw)
    b = run(cls, foreach=False, **kw)
    c = run(cls, **kw)  # the CPU default (single-tensor)
    assert same_trajectory(b, c)
    for xs, ys in zip(a, b):
        for x, y in zip(xs, ys):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
    start = Objective(SHAPES, seed=1).params(torch.float32)
    assert all(not same_bits(x, s.detach()) for x, s in zip(a[-1], start))  # they did move


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("extra", [{}, {"weight_decay": 0.05}])
def test_maximize_negated_objective_equals_minimize(cls, extra):
    obj = Objective(SHAPES, seed=2)
    pa, pb = obj.params(torch.float32), obj.params(torch.float32)
    oa = cls(pa, lr=LR[cls], q=4, seed=3, **extra)
    ob = cls(pb, lr=LR[cls], q=4, seed=3, maximize=True, **extra)
    if cls is torchzo.ZOSGD:
        for g in oa.param_groups + ob.param_groups:
            g["momentum"] = 0.5
    for _ in range(4):
        la = oa.step(lambda: obj(pa))
        lb = ob.step(lambda: -obj(pb))
        assert float(lb) == -float(la)
    assert all_same_bits(pa, pb)


# -- determinism --------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_trajectory_different_seed_different(cls, kind):
    a, b, c = (run(cls, seed=s, directions_kind=kind) for s in (7, 7, 8))
    assert same_trajectory(a, b)
    assert not all_same_bits(a[0], c[0])


def test_generator_argument_equals_seed():
    obj = Objective(SHAPES)
    pa, pb = obj.params(torch.float32), obj.params(torch.float32)
    oa = torchzo.ZOAdam(pa, lr=0.05, q=3, seed=11)
    ob = torchzo.ZOAdam(pb, lr=0.05, q=3, generator=torch.Generator().manual_seed(11))
    assert same_trajectory(trajectory(oa, pa, obj, 3), trajectory(ob, pb, obj, 3))


def test_global_seed_controls_an_unseeded_optimizer():
    obj = Objective(SHAPES)

    def unseeded(global_seed):
        torch.manual_seed(global_seed)
        params = obj.params(torch.float32)
        return trajectory(torchzo.ZOSGD(params, lr=0.05, q=3), params, obj, 3)

    a, b, c = unseeded(5), unseeded(5), unseeded(6)
    assert same_trajectory(a, b)
    assert not all_same_bits(a[0], c[0])


def test_steps_do_not_touch_the_global_rng():
    obj = Objective(SHAPES)
    params = obj.params(torch.float32)
    opt = torchzo.ZOAdam(params, lr=0.05, q=3, seed=0)
    torch.manual_seed(123)
    trajectory(opt, params, obj, 3)
    after = torch.rand(4)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(4))


# -- shapes and dtypes --------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL)
def test_parameters_of_several_shapes(cls):
    shapes = [(), (3, 4), (2, 3, 2), (1,)]
    obj = Objective(shapes, seed=3)
    params = obj.params(torch.float32)
    start = snapshot(params)
    f0 = float(obj(params))
    opt = cls(params, lr=LR[cls], q=8, seed=0)
    trajectory(opt, params, obj, 40)
    assert float(obj(params)) < 0.7 * f0
    assert [p.shape for p in params] == [torch.Size(s) for s in shapes]
    assert all(p.dtype == torch.float32 for p in params)
    assert all(not same_bits(p.detach(), s) for p, s in zip(params, start))


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_loss_decreases_in_each_dtype_with_default_mu(cls, dtype):
    obj = Objective([(6,)], seed=4)
    params = obj.params(dtype)
    f0 = float(obj(params))
    opt = cls(params, lr=LR[cls], q=8, seed=0)
    assert opt.resolved_mu(opt.param_groups[0]) == pytest.approx(
        {torch.float32: 1e-3, torch.float64: 1e-7, torch.bfloat16: 0.1}[dtype])
    trajectory(opt, params, obj, 40)
    assert params[0].dtype == dtype
    assert float(obj(params)) < 0.7 * f0


@pytest.mark.parametrize("cls", ALL)
def test_mixed_dtypes_in_one_optimizer(cls):
    dtypes = [torch.float32, torch.float64, torch.bfloat16]
    obj = Objective([(3,), (2, 2), (4,)], seed=5)
    params = obj.params(dtypes)
    start = snapshot(params)
    f0 = float(obj(params))
    opt = cls(params, lr=LR[cls], q=8, seed=0, foreach=True)
    assert opt.resolved_mu(opt.param_groups[0]) == pytest.approx(0.1)  # least precise dtype
    trajectory(opt, params, obj, 40)
    assert [p.dtype for p in params] == dtypes
    assert float(obj(params)) < 0.7 * f0
    assert all(not same_bits(p.detach(), s) for p, s in zip(params, start))


# -- param groups -------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL)
def test_group_with_zero_lr_never_moves(cls):
    obj = Objective([(3,), (4,)], seed=6)
    a, b = obj.params(torch.float32)
    b0 = b.detach().clone()
    a0 = a.detach().clone()
    opt = cls([{"params": [a]}, {"params": [b], "lr": 0.0}], lr=LR[cls], q=4, seed=0)
    trajectory(opt, [a, b], obj, 5)
    assert same_bits(b.detach(), b0)
    assert not same_bits(a.detach(), a0)


@pytest.mark.parametrize("cls", ALL)
def test_groups_with_same_oracle_settings_share_directions(cls):
    obj = Objective([(3,), (4,)], seed=7)
    pa, pb = obj.params(torch.float32), obj.params(torch.float32)
    split = cls([{"params": [pa[0]]}, {"params": [pa[1]]}], lr=LR[cls], q=4, seed=9)
    joint = cls(pb, lr=LR[cls], q=4, seed=9)
    ca, cb = CountingClosure(obj, pa), CountingClosure(obj, pb)
    for _ in range(3):
        split.step(ca)
        joint.step(cb)
    assert all_same_bits(pa, pb)
    assert ca.calls == cb.calls == split.queries == 3 * 5


@pytest.mark.parametrize("cls", ALL)
def test_groups_with_different_settings_are_estimated_separately(cls):
    obj = Objective([(3,), (4,), (2,)], seed=8)
    params = obj.params(torch.float32)
    groups = [
        {"params": [params[0]], "q": 3},                               # forward, q=3: 3 queries
        {"params": [params[1]], "q": 2, "estimator": "central"},       # 4 queries
        {"params": [params[2]], "q": 3, "mu": 1e-2},                   # other mu: 3 queries
    ]
    opt = cls(groups, lr=LR[cls], q=5, seed=0)
    closure = CountingClosure(obj, params)
    start = snapshot(params)
    for n in range(1, 4):
        opt.step(closure)
        assert closure.calls == opt.queries == n * (1 + 3 + 4 + 3)
    assert opt.state_dict()["zo"]["queries"] == 3 * 11
    assert all(not same_bits(p.detach(), s) for p, s in zip(params, start))


@pytest.mark.parametrize("cls", ALL)
def test_add_param_group(cls):
    obj = Objective([(3,), (4,)], seed=9)
    a, b = obj.params(torch.float32)
    opt = cls([a], lr=LR[cls], q=4, seed=0)
    for bad in ({"lr": -1.0}, {"q": 0}, {"estimator": "sideways"}, {"mu": 0.0},
                {"estimator": "antithetic", "q": 3}):
        with pytest.raises(ValueError):
            opt.add_param_group({"params": [b], **bad})
        assert len(opt.param_groups) == 1
    with pytest.raises(ValueError):
        opt.add_param_group({"params": [torch.zeros(2, dtype=torch.int64)]})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [b], "lr": 2 * LR[cls]})
    assert len(opt.param_groups) == 2
    assert opt.param_groups[1]["q"] == 4 and opt.param_groups[1]["lr"] == 2 * LR[cls]
    b0 = b.detach().clone()
    closure = CountingClosure(obj, [a, b])
    opt.step(closure)
    assert not same_bits(b.detach(), b0)
    assert closure.calls == 5  # same oracle settings: one shared estimate


def test_step_lr_scheduler():
    # ZOSignSGD moves every coordinate by exactly lr, so the schedule is visible in the steps.
    obj = Objective([(5,)], seed=10)
    params = obj.params(torch.float64)
    opt = torchzo.ZOSignSGD(params, lr=0.1, q=4, seed=0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    lrs = []
    for _ in range(6):
        before = params[0].detach().clone()
        lrs.append(opt.param_groups[0]["lr"])
        opt.step(lambda: obj(params))
        sched.step()
        torch.testing.assert_close((params[0].detach() - before).abs(),
                                   torch.full((5,), lrs[-1], dtype=torch.float64))
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    assert sched.get_last_lr() == pytest.approx([0.0125])


@pytest.mark.parametrize("cls", ALL)
def test_step_hooks_are_called(cls):
    obj = Objective([(3,)], seed=11)
    params = obj.params(torch.float32)
    opt = cls(params, lr=LR[cls], q=2, seed=0)
    seen = []

    def pre(o, args, kwargs):
        seen.append(("pre", o is opt, params[0].detach().clone()))

    def post(o, args, kwargs):
        seen.append(("post", o is opt, params[0].detach().clone()))

    h1, h2 = opt.register_step_pre_hook(pre), opt.register_step_post_hook(post)
    before = params[0].detach().clone()
    opt.step(lambda: obj(params))
    after = params[0].detach().clone()
    assert [(k, ok) for k, ok, _ in seen] == [("pre", True), ("post", True)]
    assert same_bits(seen[0][2], before) and same_bits(seen[1][2], after)
    assert not same_bits(before, after)
    h1.remove()
    h2.remove()
    opt.step(lambda: obj(params))
    assert len(seen) == 2


# -- queries and the returned loss --------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_query_counts_match_closure_calls(cls, estimator):
    q = q_for(estimator, 3)
    per_step = {"forward": q + 1, "central": 2 * q + 1, "antithetic": q + 1}[estimator]
    obj = Objective(SHAPES, seed=12)
    params = obj.params(torch.float32)
    opt = cls(params, lr=LR[cls], q=q, estimator=estimator, seed=0)
    closure = CountingClosure(obj, params)
    for n in range(1, 4):
        opt.step(closure)
        assert closure.calls == opt.queries == n * per_step
        assert opt.steps == n
        zo = opt.state_dict()["zo"]
        assert (zo["steps"], zo["queries"]) == (n, n * per_step)


@pytest.mark.parametrize("cls", ALL)
def test_step_returns_the_loss_before_the_step(cls):
    obj = Objective(SHAPES, seed=13)
    params = obj.params(torch.float32)
    opt = cls(params, lr=LR[cls], q=3, seed=0)
    closure = CountingClosure(obj, params)
    for _ in range(3):
        expected = obj(params)
        first = len(closure.returned)
        loss = opt.step(closure)
        assert loss is closure.returned[first]
        assert same_bits(loss, expected)
        assert not same_bits(obj(params), expected)
    value = float(obj(params))
    assert opt.step(lambda: float(obj(params))) == value


# -- the Batched objective ----------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("chunk", [None, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_batched_objective_matches_the_closure_path(cls, estimator, chunk, kind):
    kw = {"estimator": estimator, "q": q_for(estimator, 3), "directions_kind": kind}
    if cls is torchzo.ZOSGD:
        kw["momentum"] = 0.5
    closure_run = run(cls, steps=4, seed=3, **kw)
    batched_run = run(cls, steps=4, seed=3, chunk=chunk, **kw)
    for xs, ys in zip(closure_run, batched_run):
        for x, y in zip(xs, ys):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)


def test_batched_objective_with_groups_returns_loss_and_counts_queries():
    obj = Objective([(3,), (2, 2)], seed=14)
    pa, pb = obj.params(torch.float64), obj.params(torch.float64)
    mk = lambda ps: torchzo.ZOAdam([{"params": [ps[0]]}, {"params": [ps[1]], "lr": 0.01}],  # noqa: E731
                                   lr=0.05, q=4, estimator="central", seed=1)
    oa, ob = mk(pa), mk(pb)
    rows = []

    def fn(X):
        rows.append(X.shape[0])
        return obj.batched(X)

    for _ in range(3):
        expected = obj(pb)
        la = oa.step(torchzo.Batched(fn, chunk_size=3))
        lb = ob.step(lambda: obj(pb))
        torch.testing.assert_close(la, expected, rtol=1e-14, atol=0)
        torch.testing.assert_close(la, lb, rtol=1e-14, atol=0)
    for x, y in zip(pa, pb):
        torch.testing.assert_close(x, y, **PATHS_TOL)
    assert sum(rows) == oa.queries == ob.queries == 3 * 9
    assert max(rows) <= 3


# -- CUDA ---------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cls", ALL)
def test_cuda_paths_agree(cls):
    obj = Objective(SHAPES, seed=15)
    obj.target, obj.weight = obj.target.cuda(), obj.weight.cuda()
    runs = []
    for foreach, batched in [(None, False), (False, False), (None, True)]:
        params = obj.params(torch.float32, device="cuda")
        opt = cls(params, lr=LR[cls], q=4, seed=0, foreach=foreach)
        runs.append(trajectory(opt, params, obj, 3,
                               torchzo.Batched(obj.batched) if batched else None))
        assert all(p.is_cuda for p in params)
    for other in runs[1:]:
        for xs, ys in zip(runs[0], other):
            for x, y in zip(xs, ys):
                torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


# -- unusual parameters and groups --------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL)
def test_empty_param_group_is_ignored(cls):
    # torch.optim allows a group without parameters; it must neither crash the step nor cost
    # queries (even with its own oracle settings), and it changes nothing else.
    obj = Objective([(3,), (4,)], seed=16)
    pa, pb, pc = obj.params(), obj.params(), obj.params()
    plain = cls(pa, lr=LR[cls], q=3, seed=0)
    with_empty = cls([{"params": pb}, {"params": [], "q": 5, "estimator": "central"}],
                     lr=LR[cls], q=3, seed=0)
    batched = cls([{"params": pc}, {"params": [], "q": 5}], lr=LR[cls], q=3, seed=0)
    ca, cb = CountingClosure(obj, pa), CountingClosure(obj, pb)
    for _ in range(3):
        plain.step(ca)
        with_empty.step(cb)
        batched.step(torchzo.Batched(obj.batched))
    assert all_same_bits(pa, pb)
    assert ca.calls == cb.calls == with_empty.queries == batched.queries == 3 * 4
    for x, y in zip(pa, pc):
        torch.testing.assert_close(x, y, **PATHS_TOL)


@pytest.mark.parametrize("cls", ALL)
def test_zero_size_parameter(cls):
    obj = Objective([(3,), (0,), (2, 0)], seed=17)
    params = obj.params()
    start = snapshot(params)
    opt = cls(params, lr=LR[cls], q=3, seed=0)
    trajectory(opt, params, obj, 2)
    opt.step(torchzo.Batched(obj.batched))
    assert [p.shape for p in params] == [torch.Size(s) for s in [(3,), (0,), (2, 0)]]
    assert not same_bits(params[0].detach(), start[0])


@pytest.mark.parametrize("cls", ALL)
def test_non_contiguous_parameters(cls):
    # A transposed leaf is optimized coordinate by coordinate like its contiguous copy (float64,
    # where the two losses are evaluated identically), and the batched path agrees with both.
    obj = Objective([(3, 4)], seed=18)
    start = obj.start[0].t().contiguous().t()  # same values, column-major strides
    assert not start.is_contiguous()
    runs = []
    for make, batched in [(lambda: start.clone().t().contiguous().t(), False),
                          (lambda: start.contiguous(), False), (lambda: start.contiguous(), True)]:
        p = [make().requires_grad_(True)]
        assert p[0].is_contiguous() == bool(runs)
        opt = cls(p, lr=LR[cls], q=3, seed=0)
        runs.append(trajectory(opt, p, obj, 3, torchzo.Batched(obj.batched) if batched else None))
    for other, tol in ((runs[1], dict(rtol=1e-12, atol=1e-12)), (runs[2], PATHS_TOL)):
        for xs, ys in zip(runs[0], other):
            torch.testing.assert_close(xs[0].contiguous(), ys[0], **tol)


@pytest.mark.parametrize("cls", [torchzo.ZOSGD, torchzo.ZOSignSGD, torchzo.ZOAdam])
def test_distributed_flag_is_accepted_and_validated_by_every_optimizer(cls):
    opt = cls([torch.zeros(2)], distributed=False)
    assert opt.distributed is False
    with pytest.raises((ValueError, TypeError)):
        cls([torch.zeros(2)], distributed="yes")
