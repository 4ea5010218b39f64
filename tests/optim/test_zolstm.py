"""ZOLSTM runs exactly what meta-training trains, resumes exactly and restores on error."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from zo_testing import deep_equal
from zo_testing import random_nets as _nets

import torchzo
from torchzo import Batched, ClosureError
from torchzo.learned.blocks import _CHUNK, CoordLSTM
from torchzo.learned.step import scales_from_outputs
from torchzo.meta import Rollout, RolloutConfig
from torchzo.optim.zolstm import ZOLSTM
from torchzo.tasks import BinaryClassification


@pytest.fixture(scope="module")
def problem():
    return BinaryClassification(dim=20, samples=200, batch=16).problems("train")[0]


@pytest.mark.parametrize("kind", ["paper", "general"])
@pytest.mark.parametrize("use_query", [False, True])
def test_rollout_equals_optimizer_step_by_step(problem, use_query, kind):
    """The meta-training rollout and a ZOLSTM run with the same seeds take bit-identical steps."""
    nets = _nets(kind=kind)
    rollout = Rollout(problem, nets, RolloutConfig(q=6, use_query=use_query), seed=5,
                      data_seed=6)
    x = problem.x0.clone()
    opt = ZOLSTM([x], pretrained=nets, q=6, query_prob=1.0, seed=5,
                 covariance="learned" if use_query else "identity")
    data = torch.Generator().manual_seed(6)
    for _ in range(15):
        if use_query:  # what the optimizer says it will use is what the rollout uses
            with torch.no_grad():
                outs, _ = nets.arch.query_outputs(nets.weights(), rollout.state.tensors,
                                                  rollout.state.groups[0])
                expected = scales_from_outputs(nets.arch, outs)[0]
            before = copy.deepcopy(opt.state_dict())
            assert torch.equal(opt.next_query_scales()[0], expected)
            assert deep_equal(opt.state_dict(), before)
        with torch.no_grad():
            rollout.step()
        batch = problem.sample_batch(data)
        opt.step(Batched(lambda X, b=batch: problem.loss(X, b)))
        assert torch.equal(rollout.x, x)
    assert not torch.equal(x, problem.x0)
    (expected,), (group,) = rollout.state
    if use_query:  # the optimizer has already run the QueryRNN the rollout runs next
        with torch.no_grad():
            outs, new = nets.arch.query_outputs(nets.weights(), [expected], group)
        expected = new[0]._replace(query_out=outs[0])
    _, ((got,), (got_group,)), _ = opt._learned_groups()
    assert type(got) is type(expected) and (got.query_out is None) == (not use_query)
    for key, value in expected._asdict().items():
        assert value is None or torch.equal(value, getattr(got, key)), key
    assert (group is None) == (kind == "paper") and (got_group is None) == (kind == "paper")
    if group is not None:
        for key, value in group._asdict().items():
            assert torch.equal(value, getattr(got_group, key)), key


def test_closure_path_matches_batched_path(problem):
    nets = _nets()
    xs = [problem.x0.clone(), problem.x0.clone()]
    opts = [ZOLSTM([x], pretrained=nets, q=6, seed=3) for x in xs]
    data = torch.Generator().manual_seed(0)
    for _ in range(10):
        batch = problem.sample_batch(data)
        opts[0].step(Batched(lambda X, b=batch: problem.loss(X, b)))
        opts[1].step(lambda b=batch: problem.loss(xs[1][None], b)[0])
    torch.testing.assert_close(xs[0], xs[1], rtol=0, atol=1e-4)


def test_query_scale_is_normalised_and_starts_isotropic():
    nets = _nets(gain=1.0)
    params = [torch.randn(7), torch.randn(3, 4)]
    states = [nets.arch.init_state(p) for p in params]
    outs, _ = nets.arch.query_outputs(nets.weights(), states,
                                      nets.arch.init_group_state(params[0]))
    scales = scales_from_outputs(nets.arch, outs)
    d = sum(p.numel() for p in params)
    total = sum((s**2).sum() for s in scales)
    torch.testing.assert_close(total, torch.tensor(float(d)))
    # Zero inputs and zero states: every coordinate gets the same scale, i.e. Sigma = I.
    torch.testing.assert_close(torch.cat(scales), torch.ones(d))
    assert [s.numel() for s in scales] == [7, 12]


def test_first_step_uses_zero_state_and_fresh_optimizer_does_not_leak():
    nets = _nets()
    x1, x2 = torch.ones(5), torch.ones(5)
    o1 = ZOLSTM([x1], pretrained=nets, seed=0)
    for _ in range(3):
        o1.step(lambda: (x1 - 2).pow(2).sum())
    o2 = ZOLSTM([x2], pretrained=nets, seed=0)
    o2.step(lambda: (x2 - 2).pow(2).sum())
    o3_x = torch.ones(5)
    o3 = ZOLSTM([o3_x], pretrained=nets, seed=0)
    o3.step(lambda: (o3_x - 2).pow(2).sum())
    assert torch.equal(x2, o3_x)


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("aliased", [False, True])
def test_block_path_for_many_coordinates_matches_the_lstm_cell(state_dtype, aliased):
    """Without autograd, over more than one block of coordinates, the fused block form (and
    writing the new states over the old ones) computes what ``nn.LSTMCell`` computes."""
    torch.manual_seed(0)
    net = CoordLSTM(3, 10, 2)
    n = 2 * _CHUNK + 7
    x, h, c = torch.randn(n, 3), torch.randn(n, 10) * 0.5, torch.randn(n, 10)
    ref_h, ref_c = net.cell(x, (h.to(state_dtype).float(), c.to(state_dtype).float()))
    ref_y = net.head(ref_h)
    h, c = h.to(state_dtype), c.to(state_dtype)
    with torch.no_grad():
        y, h_new, c_new = net(x, h, c, (h, c) if aliased else None)
    assert (h_new.data_ptr() == h.data_ptr()) == aliased
    assert h_new.dtype == c_new.dtype == state_dtype and y.dtype == torch.float32
    tol = 1e-6 if state_dtype == torch.float32 else 1e-2
    torch.testing.assert_close(y, ref_y, atol=tol, rtol=tol)
    torch.testing.assert_close(h_new.float(), ref_h, atol=tol, rtol=tol)
    torch.testing.assert_close(c_new.float(), ref_c, atol=tol, rtol=tol)


@settings(max_examples=10, deadline=None)
@given(k=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_state_dict_resume_is_bit_exact(k, seed):
    nets = _nets()
    f = lambda x: ((x - 1.5) ** 2).sum() + x.flatten()[0].sin()  # noqa: E731
    xa = torch.zeros(2, 3)
    full = ZOLSTM([xa], pretrained=copy.deepcopy(nets), q=4, seed=seed)
    for _ in range(8):
        full.step(lambda: f(xa))
    xb = torch.zeros(2, 3)
    part = ZOLSTM([xb], pretrained=copy.deepcopy(nets), q=4, seed=seed)
    for _ in range(k):
        part.step(lambda: f(xb))
    buf = io.BytesIO()
    torch.save(part.state_dict(), buf)
    buf.seek(0)
    xc = xb.clone()
    resumed = ZOLSTM([xc], pretrained=_nets(seed=99), q=4, seed=seed + 1)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    for _ in range(8 - k):
        resumed.step(lambda: f(xc))
    assert torch.equal(xa, xc)


def test_bfloat16_params_keep_float32_lstm_state_through_a_round_trip():
    nets = _nets()
    x = torch.zeros(6, dtype=torch.bfloat16)
    opt = ZOLSTM([x], pretrained=nets, q=4, seed=0)
    opt.step(lambda: (x.float() - 1).pow(2).sum())
    before = {k: v.clone() for k, v in opt.state[x].items()}
    assert before["update_h"].dtype == torch.float32
    opt.load_state_dict(opt.state_dict())
    for k, v in before.items():
        assert opt.state[x][k].dtype == torch.float32
        assert torch.equal(opt.state[x][k], v)


@settings(max_examples=5, deadline=None)
@given(k=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_bfloat16_state_is_stored_in_bfloat16_and_resumes_bit_exactly(k, seed):
    nets = _nets()
    f = lambda x: ((x - 1.5) ** 2).sum()  # noqa: E731
    xa, xb = torch.zeros(5), torch.zeros(5)
    full = ZOLSTM([xa], pretrained=copy.deepcopy(nets), q=4, seed=seed, state_dtype=torch.bfloat16)
    part = ZOLSTM([xb], pretrained=copy.deepcopy(nets), q=4, seed=seed, state_dtype=torch.bfloat16)
    for _ in range(6):
        full.step(lambda: f(xa))
    for _ in range(k):
        part.step(lambda: f(xb))
    for key in ("update_h", "update_c", "query_h", "query_c"):
        assert part.state[xb][key].dtype == torch.bfloat16
    assert part.state[xb]["prev_estimate"].dtype == torch.float32
    buf = io.BytesIO()
    torch.save(part.state_dict(), buf)
    buf.seek(0)
    xc = xb.clone()
    resumed = ZOLSTM([xc], pretrained=_nets(seed=99), q=4, seed=0, state_dtype=torch.bfloat16)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert resumed.state[xc]["update_h"].dtype == torch.bfloat16
    for _ in range(6 - k):
        resumed.step(lambda: f(xc))
    assert torch.equal(xa, xc)


def test_bfloat16_state_changes_the_steps_little_on_the_shipped_weights():
    """Rounding the states between steps perturbs the trajectory but not what it reaches."""
    probs = BinaryClassification().problems("test")[:3]
    final = {}
    for dtype in (torch.float32, torch.bfloat16):
        total = 0.0
        for prob in probs:
            x = prob.x0.clone()
            opt = ZOLSTM([x], pretrained="binclass", seed=0, state_dtype=dtype)
            for _ in range(150):
                opt.step(lambda p=prob, x=x: p.loss(x))
            total += prob.loss(x).item()
        final[dtype] = total / len(probs)
    start = sum(p.loss(p.x0).item() for p in probs) / len(probs)
    assert final[torch.float32] != final[torch.bfloat16]
    assert final[torch.float32] < 0.8 * start
    assert final[torch.bfloat16] == pytest.approx(final[torch.float32], rel=0.01)


@settings(max_examples=15, deadline=None)
@given(fail_at=st.integers(1, 11), kind=st.sampled_from(["raise", "nan", "vector", "backward"]))
def test_failed_step_changes_nothing(fail_at, kind):
    nets = _nets()
    x = torch.randn(4, generator=torch.Generator().manual_seed(0))
    opt = ZOLSTM([x], pretrained=nets, q=10, seed=1)
    opt.step(lambda: (x**2).sum())
    snapshot = (x.clone(), copy.deepcopy(opt.state_dict()))
    calls = [0]

    def closure():
        calls[0] += 1
        if calls[0] == fail_at:
            if kind == "raise":
                raise KeyError("boom")
            if kind == "nan":
                return torch.tensor(float("nan"))
            if kind == "vector":
                return x * 1.0
            loss = (x**2).sum()
            loss.backward()
        return (x**2).sum()

    with pytest.raises((KeyError, ClosureError)):
        opt.step(closure)
    assert torch.equal(x, snapshot[0])
    after = opt.state_dict()
    assert torch.equal(after["zo"]["generator"], snapshot[1]["zo"]["generator"])
    for key in snapshot[1]["state"][0]:
        assert torch.equal(after["state"][0][key], snapshot[1]["state"][0][key])


def test_ablations_and_mix_probability_change_the_trajectory():
    nets = _nets()
    f = lambda x: ((x - 1) ** 2).sum()  # noqa: E731
    finals = {}
    for name, kw in {"full": {}, "p1": {"query_prob": 1.0}, "p0": {"query_prob": 0.0},
                     "no_query": {"covariance": "identity"}, "guided": {"covariance": "guided"},
                     "no_update": {"use_update": False, "lr": 0.05}}.items():
        x = torch.zeros(8)
        opt = ZOLSTM([x], pretrained=nets, q=4, seed=0, **kw)
        for _ in range(5):
            opt.step(lambda x=x: f(x))
        finals[name] = x.clone()
    # query_prob=0 samples like no-query but the QueryRNN still consumed a mix draw per step.
    assert not torch.equal(finals["p0"], finals["no_query"])
    assert not torch.equal(finals["p1"], finals["no_query"])
    assert not torch.equal(finals["full"], finals["p1"]) or not torch.equal(
        finals["full"], finals["p0"])
    # no-update is ZO-SGD with learned directions: loss goes down on a convex quadratic.
    assert f(finals["no_update"]) < f(torch.zeros(8))


def test_no_update_equals_zosgd_when_queries_are_isotropic():
    nets = _nets()
    xa, xb = torch.zeros(5), torch.zeros(5)
    a = ZOLSTM([xa], pretrained=nets, use_update=False, covariance="identity", lr=0.1, q=3, seed=4)
    b = torchzo.ZOSGD([xb], lr=0.1, q=3, seed=4)
    for _ in range(6):
        a.step(lambda: ((xa - 1) ** 2).sum())
        b.step(lambda: ((xb - 1) ** 2).sum())
    assert torch.equal(xa, xb)


def test_lr_scales_the_update_learned_and_schedulers_work():
    nets = _nets()
    steps = []
    for lr in (1.0, 0.5):
        x = torch.zeros(5)
        opt = ZOLSTM([x], pretrained=nets, lr=lr, q=4, seed=0)
        opt.step(lambda x=x: ((x - 1) ** 2).sum())
        steps.append(x.clone())
    torch.testing.assert_close(steps[1], 0.5 * steps[0])
    x = torch.zeros(5)
    opt = ZOLSTM([x], pretrained=nets, lr=1.0, q=4, seed=0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    opt.step(lambda: ((x - 1) ** 2).sum())
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_maximize_ascends_what_minimize_descends():
    nets = _nets()
    xa, xb = torch.zeros(5), torch.zeros(5)
    a = ZOLSTM([xa], pretrained=nets, q=4, seed=2)
    b = ZOLSTM([xb], pretrained=nets, q=4, seed=2, maximize=True)
    for _ in range(4):
        a.step(lambda: ((xa - 1) ** 2).sum())
        b.step(lambda: -((xb - 1) ** 2).sum())
    assert torch.equal(xa, xb)


@pytest.mark.parametrize("bad", [dict(query_prob=1.5), dict(query_prob=-0.1),
                                 dict(covariance="sphere"), dict(use_update=1), dict(lr=-1.0),
                                 dict(q=0), dict(guide_alpha=2.0),
                                 dict(pretrained=3.0), dict(state_dtype=torch.float64),
                                 dict(state_dtype="bfloat16")])
def test_invalid_arguments(bad):
    kwargs = {"pretrained": _nets(), **bad}
    with pytest.raises(ValueError):
        ZOLSTM([torch.zeros(3)], **kwargs)


@pytest.mark.parametrize("kind", ["paper", "general"])
def test_weights_round_trip_through_a_file_with_their_architecture(kind, tmp_path):
    from torchzo import pretrained

    nets = _nets(kind=kind)
    pretrained.save(nets, tmp_path / "w.pt", {"task": "toy"})
    back = pretrained.load_file(tmp_path / "w.pt")
    assert back.arch == nets.arch
    for (k, a), b in zip(nets.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k
