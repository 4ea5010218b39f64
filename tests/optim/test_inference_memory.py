"""``memory="inference"``: the step of the exact mode, with the parameters perturbed in place and
the estimate held by its seeds; MeZO's algorithm at q = 1."""
import copy

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import torchzo
from torchzo.optim import NonFiniteUpdateError, _inference
from torchzo.oracle import ClosureError, Layout, seeded
from torchzo.oracle.directions import draw_seeds

F64 = torch.float64
RULES = [(torchzo.ZOSGD, {"lr": 1e-3}), (torchzo.ZOSGD, {"lr": 1e-3, "momentum": 0.9,
                                                          "weight_decay": 0.1}),
         (torchzo.ZOSignSGD, {"lr": 1e-3}), (torchzo.ZOAdam, {"lr": 1e-2})]


def problem(dtype=F64):
    g = torch.Generator().manual_seed(0)
    w = [torch.randn(6, 40, generator=g, dtype=dtype), torch.randn(13, generator=g, dtype=dtype),
         torch.randn(8, 5, generator=g, dtype=dtype).t()]  # not contiguous: drawn whole
    target = [torch.randn(p.shape, generator=g, dtype=dtype) for p in w]

    def loss():
        return sum(((p - t) ** 2 * (1 + i)).sum() for i, (p, t) in enumerate(zip(w, target)))

    return w, loss


def run(cls, kw, memory, steps=8, chunk=None, monkeypatch=None, **more):
    if chunk is not None:
        monkeypatch.setattr(seeded, "CHUNK", chunk)
    w, loss = problem()
    opt = cls([{"params": w[:2]}, {"params": w[2:], "lr": kw["lr"] / 2}], seed=3,
              memory=memory, **kw, **more)
    losses = [float(opt.step(loss)) for _ in range(steps)]
    return w, losses, opt


@pytest.mark.parametrize("cls,kw", RULES)
@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
@pytest.mark.parametrize("estimator", ["forward", "central", "antithetic"])
def test_inference_mode_takes_the_exact_modes_steps_to_rounding(cls, kw, kind, estimator,
                                                                monkeypatch):
    """The same directions and update rule; only the perturbed points round differently, which
    moves each coefficient (a difference of losses over mu = 1e-7) by about eps |f| / mu. A
    chunk of 17 entries cuts every tensor into pieces."""
    exact, e_losses, e_opt = run(cls, kw, "exact", directions_kind=kind, estimator=estimator,
                                 q=4)
    infer, i_losses, i_opt = run(cls, kw, "inference", chunk=17, monkeypatch=monkeypatch,
                                 directions_kind=kind, estimator=estimator, q=4)
    assert e_losses[-1] < e_losses[0]
    torch.testing.assert_close(i_losses, e_losses, rtol=1e-7, atol=0)
    for a, b in zip(infer, exact):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    assert i_opt.queries == e_opt.queries and i_opt.steps == e_opt.steps
    assert i_opt.state_dict()["zo"]["generator"].equal(e_opt.state_dict()["zo"]["generator"])


def mezo(params, loss, seeds, lr, eps):
    """MeZO's step (princeton-nlp/MeZO, zo_step and zo_update), written plainly over torchzo's
    directions: perturb by +eps z, -2 eps z, +eps z, then step along z."""
    def z(seed):
        return Layout(params).sample(seed)

    def perturb(seed, scale):
        for p, u in zip(params, z(seed)):
            p.add_(u, alpha=scale * eps)

    for seed in seeds:
        perturb(seed, 1)
        plus = float(loss())
        perturb(seed, -2)
        minus = float(loss())
        perturb(seed, 1)
        g = (plus - minus) / (2 * eps)
        for p, u in zip(params, z(seed)):
            p.sub_(lr * (g * u))


@pytest.mark.parametrize("dtype,steps,tol", [
    (F64, 10, {"rtol": 1e-10, "atol": 1e-12}),
    # In float32 one step agrees to an ulp or two; later steps' loss differences (over mu)
    # amplify those: compare one.
    (torch.float32, 1, {"rtol": 1e-6, "atol": 1e-7})])
def test_central_q1_inference_sgd_is_mezo(dtype, steps, tol):
    w, loss = problem(dtype)
    w = w[:2]
    ours = [p.clone() for p in w]

    def our_loss():
        return sum(((p - t.to(dtype)) ** 2).sum() for p, t in zip(ours, [x * 0 for x in w]))

    def their_loss():
        return sum((p**2).sum() for p in w)

    opt = torchzo.ZOSGD(ours, lr=1e-3, q=1, mu=1e-3, estimator="central", seed=11,
                        memory="inference")
    for _ in range(steps):
        opt.step(our_loss)
    gen = torch.Generator().manual_seed(11)
    mezo(w, their_loss, [draw_seeds(gen, 1)[0] for _ in range(steps)], lr=1e-3, eps=1e-3)
    assert not torch.equal(ours[0], problem(dtype)[0][0])  # it moved
    for a, b in zip(ours, w):
        torch.testing.assert_close(a, b, **tol)


def test_a_failed_query_restores_parameters_to_rounding_and_the_rest_exactly():
    w, loss = problem()
    opt = torchzo.ZOAdam(w, lr=1e-2, q=4, seed=0, memory="inference")
    opt.step(loss)
    before = [p.clone() for p in w]
    sd = copy.deepcopy(opt.state_dict())
    calls = [0]

    def flaky():
        calls[0] += 1
        if calls[0] == 5:  # inside the second direction
            raise RuntimeError("boom")
        return loss()

    with pytest.raises(RuntimeError, match="boom"):
        opt.step(flaky)
    for a, b in zip(w, before):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-15)
    after = opt.state_dict()
    assert after["zo"]["generator"].equal(sd["zo"]["generator"])
    assert after["zo"]["steps"] == 1 and after["state"][0]["step"] == 1
    assert torch.equal(after["state"][0]["exp_avg"], sd["state"][0]["exp_avg"])


def test_a_nonfinite_update_writes_nothing():
    w, loss = problem()
    opt = torchzo.ZOAdam(w, lr=1e-2, q=2, seed=0, memory="inference")
    opt.step(loss)
    sd = copy.deepcopy(opt.state_dict())
    before = [p.clone() for p in w]
    opt.param_groups[0]["eps"] = 0.0
    with torch.no_grad():
        opt.state[w[1]]["exp_avg_sq"][3] = -1.0  # sqrt(-1): NaN, for that entry only
    with pytest.raises(NonFiniteUpdateError, match="parameter 1"):
        opt.step(loss)
    for a, b in zip(w, before):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-15)
    assert opt.state[w[0]]["step"] == 1
    assert torch.equal(opt.state[w[0]]["exp_avg"], sd["state"][0]["exp_avg"])
    assert opt.state_dict()["zo"]["generator"].equal(sd["zo"]["generator"])


def test_first_step_failure_leaves_no_state_behind():
    w, loss = problem()
    opt = torchzo.ZOSGD(w, lr=1e308, momentum=0.9, q=2, seed=0, memory="inference")
    with pytest.raises(NonFiniteUpdateError):
        opt.step(loss)
    assert not opt.state and opt.steps == 0


def test_resume_is_bit_exact():
    w, loss = problem()
    a = torchzo.ZOSGD(w, lr=1e-3, momentum=0.5, q=3, seed=0, memory="inference")
    for _ in range(3):
        a.step(loss)
    sd = copy.deepcopy(a.state_dict())  # torch.optim's state dicts hold the live tensors
    saved = [p.clone() for p in w]
    for _ in range(3):
        a.step(loss)
    first = [p.clone() for p in w]
    with torch.no_grad():
        for p, s in zip(w, saved):
            p.copy_(s)
    b = torchzo.ZOSGD(w, lr=1e-3, momentum=0.5, q=3, seed=99, memory="inference")
    b.load_state_dict(sd)
    for _ in range(3):
        b.step(loss)
    assert all(torch.equal(p, f) for p, f in zip(w, first))


def test_what_inference_memory_refuses():
    w, loss = problem()
    with pytest.raises(ValueError, match="memory must be one of"):
        torchzo.ZOSGD(w, memory="low")
    with pytest.raises(ValueError, match="piece by piece"):
        torchzo.ZOSGD(w, memory="inference", directions_kind="orthogonal")
    with pytest.raises(ValueError, match="piece of a tensor at a time"):
        torchzo.ZOLSTM(w, memory="inference")  # the shipped generalist's per-coordinate state
    opt = torchzo.ZOSGD(w, memory="inference")
    with pytest.raises(ValueError, match="Batched"):
        opt.step(torchzo.oracle.Batched(lambda X: X.sum(1)))


def test_a_closure_that_writes_the_parameters_is_refused_and_undone():
    w, loss = problem()
    opt = torchzo.ZOSGD(w, q=2, seed=0, memory="inference")
    before = [p.clone() for p in w]

    def writes():
        w[1].add_(1.0)
        return loss()

    with pytest.raises(ClosureError, match="wrote parameter 1"):
        opt.step(writes)
    torch.testing.assert_close(w[0], before[0], rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_inference_mode_on_cuda_takes_the_cpu_steps_to_rounding(kind):
    def steps(device):
        g = torch.Generator().manual_seed(0)
        w = [torch.randn(300, 7, generator=g, dtype=F64).to(device)]
        opt = torchzo.ZOAdam(w, lr=1e-2, q=3, seed=0, estimator="central",
                             directions_kind=kind, memory="inference")
        for _ in range(4):
            opt.step(lambda: ((w[0] - 1) ** 2).sum())
        return w[0].cpu()

    torch.testing.assert_close(steps(torch.device("cuda")), steps(torch.device("cpu")),
                               rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("cls,kw", RULES)
def test_an_update_proved_finite_skips_its_trial_and_writes_the_same_bits(cls, kw, monkeypatch):
    """The bound lets the update write in one pass; forcing the trial pass changes no bit."""
    proved = []
    check = _inference._finite_for_sure
    monkeypatch.setattr(_inference, "_finite_for_sure",
                        lambda *a: proved.append(check(*a)) or proved[-1])
    one, one_losses, one_opt = run(cls, kw, "inference", q=3)
    assert proved and all(proved)
    monkeypatch.setattr(_inference, "_finite_for_sure", lambda *a: False)
    two, two_losses, two_opt = run(cls, kw, "inference", q=3)
    assert one_losses == two_losses
    for a, b in zip(one, two):
        assert torch.equal(a, b)
    for a, b in zip(one_opt.state.values(), two_opt.state.values()):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]


@pytest.mark.filterwarnings("ignore::torchzo.ZeroSignalWarning")  # huge parameters, small mu
@settings(max_examples=60, deadline=None)
@given(rule=st.sampled_from(RULES), dtype=st.sampled_from([torch.float16, torch.bfloat16,
                                                           torch.float32]),
       scale=st.floats(-8, 39), lr_exp=st.floats(-8, 30), gap=st.floats(-3, 30),
       kind=st.sampled_from(["gaussian", "rademacher"]))
# Adam's eps of 1e-8 is 0 in float16: the denominator's floor is eps as the state rounds it.
@example(rule=RULES[3], dtype=torch.float16, scale=0.0, lr_exp=-2.0, gap=-3.0, kind="gaussian")
def test_an_update_the_bound_proves_finite_is_finite(rule, dtype, scale, lr_exp, gap, kind):
    """Wherever the bound lets the update skip its trial, the values written are finite: the
    parameters' magnitude, the lr and the loss's slope (hence the coefficients) range up to
    the dtypes' limits."""
    cls, kw = rule
    g = torch.Generator().manual_seed(1)
    size = min(10.0 ** scale, float(torch.finfo(dtype).max) / 2)
    w = [(torch.randn(30, generator=g) * size).to(dtype)]
    slope = 10.0 ** gap

    def loss():
        return (w[0].float() * slope).sum() / 30

    # torch refuses an alpha beyond the dtype's range (Adam's lr / (1 - beta1) included)
    lr = min(10.0 ** lr_exp, float(torch.finfo(dtype).max) / 100)
    opt = cls(w, **{**kw, "lr": lr}, q=2, seed=0, memory="inference",
              directions_kind=kind, mu=1e-2)
    proved = []
    check = _inference._finite_for_sure
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_inference, "_finite_for_sure",
                   lambda *a: proved.append(check(*a)) or proved[-1])
        for _ in range(2):
            try:
                opt.step(loss)
            except (NonFiniteUpdateError, ClosureError):
                break
    if proved and proved[-1]:
        assert bool(torch.isfinite(w[0]).all())
        for st_ in opt.state.values():
            for v in st_.values():
                if isinstance(v, torch.Tensor) and v.is_floating_point():
                    assert bool(torch.isfinite(v).all())


def test_a_negative_second_moment_is_not_taken_for_bounded():
    """A hand-written negative ``exp_avg_sq`` would make a NaN through the root: the trial
    pass catches it, whatever eps."""
    w, loss = problem()
    opt = torchzo.ZOAdam(w, lr=1e-2, q=2, seed=0, memory="inference")
    opt.step(loss)
    before = [p.clone() for p in w]
    with torch.no_grad():
        opt.state[w[1]]["exp_avg_sq"][3] = -1.0
    with pytest.raises(NonFiniteUpdateError, match="parameter 1"):
        opt.step(loss)
    for a, b in zip(w, before):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-15)
