"""The ``general`` architecture: a scale-free learned ZO step, as ZOLSTM runs it and as a
population of weight sets runs it for ES meta-training."""
from __future__ import annotations

import functools
import math
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from zo_testing import FEW, resume_round_trip

import torchzo
from torchzo.learned import GeneralConfig, LearnedZO
from torchzo.meta.population import run_population
from torchzo.oracle import Layout, Part, Scheme, draw_seeds, estimate_batched
from torchzo.tasks import Problem, learning, synthetic

ARCH = GeneralConfig(hidden=8)
D = 16


def _untrained() -> LearnedZO:
    torch.manual_seed(0)
    return LearnedZO(arch=ARCH)


def _nets(seed: int, std: float = 0.3, arch: GeneralConfig = ARCH) -> LearnedZO:
    """General nets with every weight (read-outs included) moved by seeded noise of ``std``:
    the update MLP, the query MLP and the controller all act."""
    torch.manual_seed(seed)
    nets = LearnedZO(arch=arch)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in nets.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    assert nets.update.fc2.weight.abs().min() > 0 and nets.control.head.weight.abs().min() > 0
    return nets


def _weights(nets: list[LearnedZO]) -> dict[str, torch.Tensor]:
    """The weights of ``nets`` stacked along a leading population dimension."""
    return {k: torch.stack([n.weights()[k].detach() for n in nets]) for k in nets[0].weights()}


def _sigma0(nets: LearnedZO, x0: torch.Tensor) -> float:
    """The documented start step: max(exp(log_lr) * rms(x0), exp(log_floor))."""
    rms = float(x0.double().pow(2).mean().sqrt())
    return max(math.exp(float(nets.log_lr.detach())) * rms,
               math.exp(float(nets.log_floor.detach())))


# -- 1. an untrained general optimizer starts as ZO-Adam ------------------------------------

def _quadratic32(X: torch.Tensor) -> torch.Tensor:
    w = torch.linspace(0.5, 3.0, X.shape[-1])
    return (w * (X - 0.7) ** 2).sum(-1)


@pytest.mark.parametrize("lr", [1.0, 0.5])
@pytest.mark.parametrize("start", ["scaled", "zero"])
def test_untrained_first_step_is_minus_sigma0_times_the_sign_of_the_estimate(start, lr):
    """Zero read-outs: m_hat / denom = g / (|g| + eps mean|g|) at t = 1, the controller adds
    nothing (no previous update: cos = 0), so the step is -lr sigma0 sign(g) with sigma0
    relative to rms(x0), or the absolute floor for a start at zero."""
    nets = _untrained()
    g0 = torch.Generator().manual_seed(3)
    x0 = 4 * torch.randn(10, generator=g0) if start == "scaled" else torch.zeros(10)
    sigma0 = _sigma0(nets, x0)
    if start == "scaled":
        assert sigma0 > 2 * math.exp(float(nets.log_floor.detach()))  # the relative branch
    else:
        assert sigma0 == pytest.approx(ARCH.floor)
    q, mu = 5, 1e-3
    # The estimate the optimizer's first step sees: its seeds come first from its generator,
    # and the untrained query net's scales are all ones (learned or isotropic, the same u).
    seeds = draw_seeds(torch.Generator().manual_seed(11), q)
    query = Part((0,), Scheme("forward", q), mu).query(seeds)
    _, g = estimate_batched(_quadratic32, x0.clone(), query)
    assert (g != 0).all()

    x = x0.clone()
    opt = torchzo.ZOLSTM([x], pretrained=nets, q=q, mu=mu, lr=lr, seed=11)
    opt.step(torchzo.Batched(_quadratic32))
    st = opt.state[x]
    torch.testing.assert_close(st["prev_estimate"], g, rtol=1e-5, atol=1e-6)
    expected = -lr * sigma0 * g / (g.abs() + ARCH.eps * g.abs().mean())
    torch.testing.assert_close(st["prev_update"], expected, rtol=1e-5, atol=0)
    assert torch.equal(st["prev_update"].sign(), -g.sign())
    # x0 + update rounds to x's float32 spacing: a few ulps of |x0| apart.
    torch.testing.assert_close(x - x0, expected, rtol=1e-5, atol=4e-7 * float(x0.abs().max()))
    assert float(st["group.log_sigma"]) == pytest.approx(math.log(sigma0), abs=1e-6)
    assert float(st["group.log_sigma0"]) == pytest.approx(math.log(sigma0), abs=1e-6)
    assert float(st["group.t"]) == 1 and float(st["group.log_radius"]) == 0


def test_untrained_controller_is_the_hand_rule_for_the_step_size():
    """Zero controller read-out: log sigma += gain * clip(cos(g_t, -u_{t-1}) sqrt((d+q+1)/q),
    -1, 1), where u_{t-1} is the last update. On a linear objective the estimates keep
    pointing against the last update, so sigma grows."""
    nets = _untrained()
    d, q = 10, 4
    w = torch.linspace(-2.0, 3.0, d)
    x = torch.ones(d)
    opt = torchzo.ZOLSTM([x], pretrained=nets, q=q, seed=1)
    gain = float(nets.gain.detach())
    opt.step(torchzo.Batched(lambda X: X @ w))
    start = float(opt.state[x]["group.log_sigma"])
    for _ in range(8):
        before = {k: opt.state[x][k].clone() for k in ("group.log_sigma", "prev_update")}
        opt.step(torchzo.Batched(lambda X: X @ w))
        g = opt.state[x]["prev_estimate"]
        last = -before["prev_update"]
        cos = float(g @ last / (g.norm() * last.norm()))
        rule = gain * min(max(cos * math.sqrt((d + q + 1) / q), -1.0), 1.0)
        change = float(opt.state[x]["group.log_sigma"] - before["group.log_sigma"])
        assert change == pytest.approx(rule, abs=1e-6)
    assert float(opt.state[x]["group.log_sigma"]) > start + 2 * gain


# -- 2. scale equivariance --------------------------------------------------------------------

_G = torch.Generator().manual_seed(0)
_Q, _ = torch.linalg.qr(torch.randn(D, D, generator=_G, dtype=torch.float64))
_H = (_Q * torch.logspace(0, -2, D, dtype=torch.float64)) @ _Q.T
_TARGET = 3 * torch.randn(D, generator=_G, dtype=torch.float64)
# rms ~ 20: exp(log_lr) rms(s x0) stays above the floor down to s = 2^-6 (checked below).
_X0 = 20 * torch.randn(D, generator=_G, dtype=torch.float64)


def _f64(X: torch.Tensor) -> torch.Tensor:
    r = X - _TARGET
    return 0.5 * ((r @ _H) * r).sum(-1) + 0.1 * torch.sin(X).sum(-1)


def _scaled_run(seed: int, s: float, a: float, b: float, steps: int = 20,
                floor: float | None = None, nets: LearnedZO | None = None) -> torch.Tensor:
    """x_t / s for ZOLSTM on a f(x / s) + b from s x0 with radius s mu, float64 parameters.

    ``floor``: set the nets' absolute floor of the start step (default: theirs, inactive);
    ``nets``: other nets than ``_nets(seed)``.
    """
    nets = _nets(seed) if nets is None else nets
    if floor is not None:
        with torch.no_grad():
            nets.log_floor.fill_(math.log(floor))
    else:
        assert math.exp(float(nets.log_lr.detach())) * float((s * _X0).pow(2).mean().sqrt()) > \
            2 * math.exp(float(nets.log_floor.detach())), "the floor would be active"
    x = (s * _X0).clone()
    opt = torchzo.ZOLSTM([x], pretrained=nets, q=4, mu=s * 1e-3, seed=seed)
    objective = torchzo.Batched(lambda X: a * _f64(X / s) + b)
    out = []
    for _ in range(steps):
        opt.step(objective)
        out.append(x / s)
    return torch.stack(out)


@functools.cache
def _reference(seed: int) -> torch.Tensor:
    return _scaled_run(seed, 1.0, 1.0, 0.0)


def _relative_to_displacement(run: torch.Tensor, ref: torch.Tensor) -> float:
    moved = (ref - _X0).norm(dim=1)
    assert (moved > 1e-3 * _X0.norm()).all()  # the run goes somewhere
    return float(((run - ref).norm(dim=1) / moved).max())


@FEW
@given(k=st.integers(-6, 6), j=st.integers(-10, 10), seed=st.integers(0, 3))
def test_trajectory_is_equivariant_to_parameter_and_loss_scale(k, j, seed):
    """f_aug(x) = a f(x / s), x0_aug = s x0, mu_aug = s mu: x_aug_t = s x_t over 20 steps.

    Powers of two make the oracle's arithmetic exact, but not the step: log and exp of the
    start sigma (and the query features' logs) round, so agreement is to 1e-5 of the distance
    travelled, not bitwise. Parameters and loss are float64 because a float32 finite
    difference turns one ulp of x into ~eps |f| / mu of estimate, which the random nets then
    amplify (up to 2e-2 relative after 20 steps on this problem): rounding, not a scale leak.
    """
    s, a = 2.0 ** k, 2.0 ** j
    ref = _reference(seed)
    run = _scaled_run(seed, s, a, 0.0)
    assert _relative_to_displacement(run, ref) < 1e-5


@FEW
@given(b=st.floats(-100, 100).filter(lambda v: abs(v) > 1e-3), seed=st.integers(0, 3))
def test_trajectory_ignores_a_loss_offset(b, seed):
    """The optimizer sees only loss differences and loss changes: f + b steps as f does."""
    ref = _reference(seed)
    run = _scaled_run(seed, 1.0, 1.0, b)
    assert _relative_to_displacement(run, ref) < 1e-5


def test_scale_equivariance_check_detects_an_absolute_step():
    """The check above is not vacuous: where the absolute floor sets the start step (it is
    not relative to the parameters' scale), the scaled run leaves the reference."""
    s = 2.0 ** -4
    sigma_relative = _sigma0(_nets(0), s * _X0)
    run = _scaled_run(0, s, 1.0, 0.0, floor=1.5 * sigma_relative)
    assert _relative_to_displacement(run, _reference(0)) > 1e-3


def _plain_run(steps: int = 12, maximize: bool = False, closure: bool = False) -> torch.Tensor:
    x = _X0.clone()
    opt = torchzo.ZOLSTM([x], pretrained=_nets(1), q=4, seed=3, maximize=maximize)
    sign = -1.0 if maximize else 1.0
    out = []
    for _ in range(steps):
        if closure:
            opt.step(lambda: sign * _f64(x[None])[0])
        else:
            opt.step(torchzo.Batched(lambda X: sign * _f64(X)))
        out.append(x.clone())
    return torch.stack(out)


def test_maximizing_minus_f_is_minimizing_f_and_closure_is_batched():
    """maximize negates the estimate and the loss the controller reads: the same steps."""
    ref = _plain_run()
    assert (ref[-1] - _X0).norm() > 1e-3 * _X0.norm()
    assert torch.equal(_plain_run(maximize=True), ref)
    # The batched path sums the estimate by a matrix product, the closure path term by term:
    # float64 rounding apart (8e-9 relative after 12 steps on an AMD EPYC host).
    torch.testing.assert_close(_plain_run(closure=True), ref, rtol=1e-7, atol=1e-9)


# -- 3. the zero-signal radius ------------------------------------------------------------------

class _Recorder:
    """A batched objective that records its query rows; constant until ``signal`` is set."""

    def __init__(self) -> None:
        self.rows: list[torch.Tensor] = []
        self.signal = False

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        self.rows.append(X.clone())
        if self.signal:
            return ((X - 1.0) ** 2).sum(-1)
        return torch.full((X.shape[0],), 3.0)


def test_zero_signal_doubles_the_radius_up_to_its_cap_then_shrinks_it():
    """The rule is fixed (no weights in it): shown with random nets."""
    nets = _nets(4)
    d, q, mu, seed = 6, 3, 1e-3, 21
    x = torch.randn(d, generator=torch.Generator().manual_seed(0))
    x0 = x.clone()
    opt = torchzo.ZOLSTM([x], pretrained=nets, q=q, mu=mu, seed=seed, covariance="identity")
    objective = _Recorder()
    # Gaussian directions: the generator only draws each step's seeds, so u is reproducible.
    replica = torch.Generator().manual_seed(seed)
    cap = math.log(1e6)
    log_radius = 0.0
    assert opt._parts()[0].mu == mu
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the ZeroSignalWarning is the point here
        for k in range(1, 26):
            expected_mu = mu * math.exp(log_radius)
            opt.step(torchzo.Batched(objective))
            rows = objective.rows[-1]
            z = Layout([x]).sample_rows(draw_seeds(replica, q))
            # rows[1:] - rows[0] rounds to the spacing of x's float32 values (|x| < 4).
            torch.testing.assert_close(rows[1:] - rows[0], expected_mu * z, rtol=1e-4, atol=1e-6)
            log_radius = min(k * math.log(2), cap)
            got = float(opt.state[x]["group.log_radius"])
            assert got == pytest.approx(log_radius, rel=1e-6), k
            assert opt._parts()[0].mu == pytest.approx(mu * math.exp(got), rel=1e-6)
        assert got == pytest.approx(cap, rel=1e-6)
        objective.signal = True
        for _ in range(3):
            before = float(opt.state[x]["group.log_radius"])
            expected_mu = mu * math.exp(before)
            opt.step(torchzo.Batched(objective))
            rows = objective.rows[-1]
            z = Layout([x0]).sample_rows(draw_seeds(replica, q))
            torch.testing.assert_close(rows[1:] - rows[0], expected_mu * z, rtol=1e-4, atol=1e-6)
            got = float(opt.state[x]["group.log_radius"])
            assert got == pytest.approx(0.8 * before, rel=1e-6)
            assert opt._parts()[0].mu == pytest.approx(mu * math.exp(got), rel=1e-6)
    assert float(opt.state[x]["prev_estimate"].abs().sum()) > 0


# -- 4 and 6. a population is the optimizer, member by member -----------------------------------

class _Float64(Problem):
    """A family instance whose losses are computed in float64 (its data converted).

    In float32 a loss's rounding, divided by mu, is a large part of each finite difference, so
    two runs whose points differ by one ulp (the population's einsum against the optimizer's
    sum) drift apart by far more than rounding within a few steps. In float64 the points are
    still float32 and the steps the same code, so agreement to 1e-5 is a real check.
    """

    def __init__(self, base: Problem) -> None:
        for key, value in list(vars(base).items()):
            if isinstance(value, torch.Tensor) and value.is_floating_point() and key != "x0":
                setattr(base, key, value.double())
        self.base, self.x0, self.f_min, self.mu = base, base.x0, base.f_min, base.mu

    def sample_batch(self, generator: torch.Generator):
        return self.base.sample_batch(generator)

    def loss(self, X: torch.Tensor, batch=None) -> torch.Tensor:
        return self.base.loss(X.double(), batch)


def _problem(name: str) -> Problem:
    if name == "rotated-quadratic":
        base = synthetic.RotatedQuadratic(torch.Generator().manual_seed(1), dim=12)
    elif name == "noisy-quadratic":
        base = synthetic.NoisyQuadratic(torch.Generator().manual_seed(3))
    else:
        base = learning.LeastSquares(torch.Generator().manual_seed(3))
        base.batch_size = 16
    problem = _Float64(base)
    stochastic = problem.sample_batch(torch.Generator().manual_seed(0)) is not None
    assert stochastic == (name != "rotated-quadratic")
    return problem


def _optimizer_losses(nets: LearnedZO, problem: Problem, steps: int, q: int, seed: int
                      ) -> torch.Tensor:
    """ZOLSTM(seed=seed) on the problem's batched loss, batches drawn as run_population does."""
    return _optimizer_losses_with(nets, problem, steps, seed, q=q, mu=problem.mu)


MEMBERS = (1, 2, 5)  # nets that make progress: a diverging member amplifies rounding too


@pytest.mark.parametrize("name", ["rotated-quadratic", "noisy-quadratic", "least-squares"])
def test_population_of_one_is_the_optimizer(name):
    problem = _problem(name)
    steps, q, seed = 15, 4, 7
    for member in MEMBERS[:2]:
        nets = _nets(member, 0.2)
        run = run_population(_weights([nets]), ARCH, problem, steps, q, seed)
        assert run.losses.shape == (1, steps + 1) and run.diverged == 0
        ref = _optimizer_losses(nets, problem, steps, q, seed)
        assert not torch.allclose(ref[-1], ref[0], rtol=1e-3)
        torch.testing.assert_close(run.losses[0], ref, rtol=1e-5, atol=0)


def test_population_of_one_uses_the_next_seed_for_batches():
    """The check above tells the data stream apart: seed + 1 matters on a stochastic problem."""
    problem = _problem("least-squares")
    nets = _nets(MEMBERS[0], 0.2)
    run = run_population(_weights([nets]), ARCH, problem, 10, 4, 7)
    other = _optimizer_losses(nets, problem, 10, 4, 6)  # ZOLSTM(seed=6): other seeds, batches
    assert not torch.allclose(run.losses[0], other, rtol=1e-3)


def _optimizer_losses_with(nets: LearnedZO, problem: Problem, steps: int, seed: int,
                           **settings) -> torch.Tensor:
    x = problem.x0.detach().float().clone()
    opt = torchzo.ZOLSTM([x], pretrained=nets, seed=seed, **{"q": 4, **settings})
    data = torch.Generator().manual_seed(seed + 1)
    curve = [problem.loss(x[None])[0]]
    for _ in range(steps):
        batch = problem.sample_batch(data)
        opt.step(torchzo.Batched(lambda X, batch=batch: problem.loss(X, batch)))
        curve.append(problem.loss(x[None])[0])
    return torch.stack(curve)


@pytest.mark.parametrize("settings", [dict(estimator="central"), dict(estimator="antithetic"),
                                      dict(query_prob=1.0, lr=0.5), dict(query_prob=0.0, lr=2.0),
                                      dict(covariance="identity")])
def test_population_of_one_is_the_optimizer_with_its_settings(settings):
    problem = _problem("least-squares")
    nets = _nets(MEMBERS[0], 0.2)
    run = run_population(_weights([nets]), ARCH, problem, 10, 4, 7, **settings)
    ref = _optimizer_losses_with(nets, problem, 10, 7, **settings)
    torch.testing.assert_close(run.losses[0], ref, rtol=1e-5, atol=0)


def test_population_refuses_the_guided_covariance():
    """ES populations run the learned or the identity covariance; GuidedES is the optimizer's
    ablation only, and a population must not quietly run unguided directions in its place."""
    problem = _problem("rotated-quadratic")
    nets = _nets(MEMBERS[0], 0.2)
    with pytest.raises(ValueError, match="'guided'"):
        run_population(_weights([nets]), ARCH, problem, 10, 4, 7, covariance="guided")


@pytest.mark.parametrize("name", ["rotated-quadratic", "noisy-quadratic"])
def test_population_members_run_as_they_do_alone(name):
    problem = _problem(name)
    steps, q, seed = 15, 4, 3
    members = [_nets(m, 0.2) for m in MEMBERS]
    together = run_population(_weights(members), ARCH, problem, steps, q, seed)
    assert together.losses.shape == (3, steps + 1) and together.diverged == 0
    for i, nets in enumerate(members):
        alone = run_population(_weights([nets]), ARCH, problem, steps, q, seed)
        torch.testing.assert_close(together.losses[i], alone.losses[0], rtol=1e-5, atol=0)
    # The members differ by their weights, so the check compares different curves.
    assert not torch.allclose(together.losses[0], together.losses[1], rtol=1e-3)


def test_population_counts_a_diverged_member_and_keeps_the_others():
    problem = _problem("rotated-quadratic")
    good, bad = _nets(1, 0.2), _nets(2, 0.2)
    with torch.no_grad():
        bad.log_lr.fill_(80.0)  # a start step of e^80 rms(x0): overflows float32
    together = run_population(_weights([good, bad]), ARCH, problem, 6, 4, 0)
    assert together.diverged == 1
    assert torch.isfinite(together.losses[0]).all()
    assert not torch.isfinite(together.losses[1, -1])
    alone = run_population(_weights([good]), ARCH, problem, 6, 4, 0)
    torch.testing.assert_close(together.losses[0], alone.losses[0], rtol=1e-5, atol=0)


# -- 5. state_dict round trip -------------------------------------------------------------------

def _steps(x: torch.Tensor) -> torch.Tensor:
    """Piecewise constant at a small mu: some steps see no signal, so the radius moves."""
    return ((4 * x).floor() ** 2).sum(-1)


def test_state_dict_round_trip_resumes_bit_exactly_with_radius_and_controller():
    """9 steps, save, 6 more; a fresh optimizer (other nets, other seed) loads and runs 6."""
    def make(x: torch.Tensor, stranger: bool) -> torchzo.ZOLSTM:
        return torchzo.ZOLSTM([x], pretrained=_nets(9 if stranger else 3, arch=ARCH), q=4,
                              mu=1e-3, seed=77 if stranger else 5)

    def loaded(opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
        # Everything the general arch keeps is live: the radius, the controller, the loss
        # statistics, sigma away from its start; and the loaded radius is the one queried.
        st = opt.state[x]
        radius = float(st["group.log_radius"])
        assert radius > 0 and st["group.ctrl_h"].abs().sum() > 0
        assert float(st["group.loss_scale"]) > 0
        assert float(st["group.log_sigma"]) != float(st["group.log_sigma0"])
        assert opt._parts()[0].mu == pytest.approx(1e-3 * math.exp(radius), rel=1e-6)

    x0 = torch.randn(8, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resume_round_trip(make, x0, lambda opt: opt.step(torchzo.Batched(_steps)),
                          loaded=loaded)


def test_without_a_query_net_learned_directions_are_the_identity_ablation():
    """GeneralConfig(query_net=False) drops the query net's weights, and its default (learned)
    directions step exactly as the full architecture with covariance='identity'."""
    full = LearnedZO(arch=GeneralConfig(hidden=8))
    lean = LearnedZO(arch=GeneralConfig(hidden=8, query_net=False))
    assert not any(k.startswith("query.") for k in lean.state_dict())
    with torch.no_grad():
        for name, w in lean.named_parameters():
            w.copy_(full.get_parameter(name) + 0.3 * torch.randn_like(w))
            full.get_parameter(name).copy_(w)
    curves = []
    for nets, directions in ((full, "identity"), (lean, "learned")):
        x = torch.linspace(-1, 1, 16)
        opt = torchzo.ZOLSTM([x], pretrained=nets, q=4, seed=5, covariance=directions)
        curves.append([float(opt.step(lambda x=x: ((x - 0.5) ** 2).sum())) for _ in range(12)])
    assert curves[0] == curves[1]
    assert torch.equal(opt.next_query_scales()[0], torch.ones(16))


def test_max_step_keeps_sigma_within_a_multiple_of_the_parameters_rms():
    """On a linear objective the hand rule grows sigma every step; GeneralConfig(max_step=c)
    holds it at c * rms(x) (the parameters before the step), and without a cap it outgrows that."""
    def run(cap: float) -> list[tuple[float, float]]:
        torch.manual_seed(0)
        nets = LearnedZO(arch=GeneralConfig(hidden=8, max_step=cap))
        w = torch.linspace(-2.0, 3.0, 10)
        x = torch.ones(10)
        opt = torchzo.ZOLSTM([x], pretrained=nets, q=4, seed=1)
        out = []
        for _ in range(30):
            rms = float(x.pow(2).mean().sqrt())
            opt.step(torchzo.Batched(lambda X: X @ w))
            out.append((math.exp(float(opt.state[x]["group.log_sigma"])), rms))
        return out
    capped = run(0.1)
    assert all(sigma <= 0.1 * rms * (1 + 1e-5) for sigma, rms in capped)
    assert any(sigma >= 0.1 * rms * (1 - 1e-5) for sigma, rms in capped)  # the cap binds
    assert any(sigma > 0.1 * rms for sigma, rms in run(0.0))


@FEW
@given(rate=st.floats(0.05, 1.0), seed=st.integers(0, 2**16))
def test_sigma_rate_scales_each_change_of_log_sigma(rate, seed):
    """GeneralConfig(sigma_rate=r): from the same state and estimate, log sigma moves r times as far
    as at rate 1 (the controller's read-out included), and rate 1 is the step without it."""
    from dataclasses import replace

    nets = _nets(seed % 7)
    x = torch.randn(D, generator=torch.Generator().manual_seed(seed))
    opt = torchzo.ZOLSTM([x], pretrained=nets, q=4, seed=seed)
    for _ in range(3):  # a state with history: the controller's read-out is not zero
        opt.step(lambda x=x: ((x - 0.3) ** 2).sum())
    _, state, _ = opt._learned_groups()  # the typed state the next step would take
    g = torch.randn(D, generator=torch.Generator().manual_seed(seed + 1))
    moves = {}
    for r in (1.0, rate):
        arch = replace(nets.arch, sigma_rate=r)
        with torch.no_grad():
            _, _, group = arch.update(nets.weights(), [g], state.tensors, state.groups[0], [x],
                                      1.0, torch.tensor(2.0), 4)
        moves[r] = float(group.log_sigma - state.groups[0].log_sigma)
    assert moves[1.0] != 0
    # log sigma is float32: adding and subtracting it again costs a few of its ulps
    ulps = 4 * torch.finfo(torch.float32).eps * (1 + abs(float(state.groups[0].log_sigma)))
    assert moves[rate] == pytest.approx(rate * moves[1.0], rel=1e-5, abs=ulps)


def test_sigma_rate_outside_its_range_is_refused():
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="sigma_rate"):
            GeneralConfig(sigma_rate=bad)
