"""The ``lean`` architecture: its step's documented size, the dimension in it, its own radius,
two bytes of state a parameter, scale-freedom, and the same steps in ZOLSTM and a population."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from zo_testing import FEW, deep_equal, resume_round_trip

import torchzo
from torchzo.learned import LearnedZO
from torchzo.learned.arch import LeanConfig
from torchzo.meta.population import run_population
from torchzo.tasks import Problem

LEAN = LeanConfig()
F32 = LeanConfig(momentum_dtype="float32")


def _nets(seed: int | None = None, arch: LeanConfig = LEAN, std: float = 0.3
          ) -> LearnedZO:
    """Untrained lean nets, or (``seed``) every weight moved by seeded noise: the controller's
    read-out then acts."""
    torch.manual_seed(0)
    nets = LearnedZO(arch=arch)
    if seed is not None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in nets.parameters():
                p.add_(std * torch.randn(p.shape, generator=g))
        assert nets.control.head.weight.abs().min() > 0
    return nets


def _quadratic(X: torch.Tensor) -> torch.Tensor:
    w = torch.linspace(0.5, 3.0, X.shape[-1], dtype=X.dtype)
    return (w * (X - 0.7) ** 2).sum(-1)


def _start(nets: LearnedZO, x0: torch.Tensor) -> float:
    """The documented start of the scale: max(exp(log_lr) rms(x0), exp(log_floor))."""
    rms = float(x0.double().pow(2).mean().sqrt())
    return max(math.exp(float(nets.log_lr.detach())) * rms,
               math.exp(float(nets.log_floor.detach())))


@pytest.mark.parametrize("d", [10, 1000, 100_000])
@pytest.mark.parametrize("lr", [1.0, 0.25])
def test_first_step_is_lr_times_start_times_sqrt_q_over_d_plus_q(d, lr):
    """Untrained, the first step moves every coordinate by lr * s0 * sqrt(q / (d + q)) in RMS,
    along the estimate: the dimension is in the step, not learned."""
    q = 4
    x = torch.randn(d, generator=torch.Generator().manual_seed(d))
    x0 = x.clone()
    nets = _nets(arch=F32)
    opt = torchzo.ZOLSTM([x], pretrained=nets, lr=lr, q=q, seed=1)
    opt.step(torchzo.Batched(_quadratic))
    moved = float((x - x0).double().pow(2).mean().sqrt())
    expected = lr * _start(nets, x0) * math.sqrt(q / (d + q))
    assert moved == pytest.approx(expected, rel=1e-4)


def test_the_momentum_is_stored_in_bfloat16_two_bytes_a_parameter():
    d = 50_000
    a, b = torch.randn(d), torch.randn(40, 25)
    opt = torchzo.ZOLSTM([a, b], pretrained=_nets(), q=2, seed=0)
    opt.step(lambda: (a * a).sum() + (b * b).sum())
    per_tensor = [sum(v.numel() * v.element_size() for v in opt.state[p].values())
                  for p in (a, b)]
    assert opt.state[a]["momentum"].dtype == torch.bfloat16
    assert per_tensor[0] <= 2 * d + 100  # the group's controller (8 hidden) included
    assert per_tensor[1] <= 2 * b.numel() + 8


def test_own_radius_follows_the_scale_and_a_given_mu_is_kept():
    x = torch.randn(20, generator=torch.Generator().manual_seed(0)) * 3
    nets = _nets()
    opt = torchzo.ZOLSTM([x], pretrained=nets, q=4, seed=0)
    rho = math.exp(float(nets.log_rho.detach()))
    assert opt._parts()[0].mu == pytest.approx(rho * _start(nets, x), rel=1e-6)
    opt.step(torchzo.Batched(_quadratic))
    scale = math.exp(float(opt.state[x]["group.log_scale"]))
    assert opt._parts()[0].mu == pytest.approx(rho * scale, rel=1e-6)
    given_mu = torchzo.ZOLSTM([x], pretrained=nets, q=4, mu=0.02, seed=0)
    assert given_mu._parts()[0].mu == 0.02


@pytest.mark.parametrize("mu", [None, 1e-3])
def test_an_exactly_zero_estimate_doubles_the_radius(mu):
    """On a plateau every difference vanishes: the radius doubles each step, up to its cap."""
    x = torch.randn(6, generator=torch.Generator().manual_seed(1))
    opt = torchzo.ZOLSTM([x], pretrained=_nets(), q=3, mu=mu, seed=0)
    flat = torchzo.Batched(lambda X: torch.zeros(X.shape[0]))
    radii = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the zero-signal warning
        for _ in range(25):
            radii.append(opt._parts()[0].mu)
            opt.step(flat)
    ratios = [b / a for a, b in zip(radii, radii[1:])]
    assert ratios[0] == pytest.approx(2, rel=1e-5)
    assert radii[-1] == pytest.approx(radii[0] * 1e6, rel=1e-4)  # capped


@pytest.mark.parametrize("settings", [dict(covariance="guided"), dict(use_update=False)])
def test_ablations_that_need_the_last_estimate_are_refused(settings):
    with pytest.raises(ValueError, match="keep neither"):
        torchzo.ZOLSTM([torch.zeros(3)], pretrained=_nets(), **settings)


# -- scale-freedom ------------------------------------------------------------------------------

# rms ~ 40: exp(log_lr) rms(s x0) stays above the absolute floor down to s = 2^-6 (checked).
_X0 = 40 * torch.randn(16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def _f64(X: torch.Tensor) -> torch.Tensor:
    return _quadratic(X) + 0.1 * torch.sin(X).sum(-1)


def _scaled_run(seed: int, s: float, a: float, b: float = 0.0, steps: int = 20) -> torch.Tensor:
    """x_t / s for the lean step on a f(x / s) + b from s x0 (its own radius)."""
    x = (s * _X0).clone()
    nets = _nets(seed, F32)
    assert math.exp(float(nets.log_lr.detach())) * float(x.pow(2).mean().sqrt()) > \
        2 * math.exp(float(nets.log_floor.detach())), "the floor would be active"
    opt = torchzo.ZOLSTM([x], pretrained=nets, q=4, seed=seed)
    objective = torchzo.Batched(lambda X: a * _f64(X / s) + b)
    out = []
    for _ in range(steps):
        opt.step(objective)
        out.append(x / s)
    return torch.stack(out)


@FEW
@given(k=st.integers(-6, 6), j=st.integers(-10, 10), b=st.floats(-100, 100),
       seed=st.integers(0, 3))
def test_trajectory_is_equivariant_to_parameter_and_loss_scale_and_offset(k, j, b, seed):
    """Rescaling x by 2^k, the loss by 2^j and shifting it by b leaves x_t / s where it was,
    to the rounding of log and exp of the start (float64 parameters and loss)."""
    ref = _scaled_run(seed, 1.0, 1.0)
    run = _scaled_run(seed, 2.0 ** k, 2.0 ** j, b)
    moved = (ref - _X0).norm(dim=1)
    assert (moved > 1e-3 * _X0.norm()).all()
    assert float(((run - ref).norm(dim=1) / moved).max()) < 1e-5


# -- the optimizer and a population take the same steps ------------------------------------

class _Quadratic64(Problem):
    f_min = 0.0

    def __init__(self) -> None:
        self.x0 = _X0.float()

    def loss(self, X: torch.Tensor, batch: object = None) -> torch.Tensor:
        return _f64(X.double())


def _optimizer_losses(nets: LearnedZO, problem: Problem, steps: int, seed: int) -> torch.Tensor:
    x = problem.x0.clone()
    opt = torchzo.ZOLSTM([x], pretrained=nets, q=4, seed=seed)
    curve = [problem.loss(x[None])[0]]
    for _ in range(steps):
        opt.step(torchzo.Batched(problem.loss))
        curve.append(problem.loss(x[None])[0])
    return torch.stack(curve)


@pytest.mark.parametrize("arch", [LEAN, F32])
def test_population_of_one_is_the_optimizer(arch):
    problem, steps, seed = _Quadratic64(), 15, 7
    nets = _nets(1, arch, 0.2)
    weights = {k: v.detach()[None] for k, v in nets.weights().items()}
    run = run_population(weights, arch, problem, steps, 4, seed)
    ref = _optimizer_losses(nets, problem, steps, seed)
    assert not torch.allclose(ref[-1], ref[0], rtol=1e-3)
    torch.testing.assert_close(run.losses[0], ref, rtol=1e-5, atol=0)


@pytest.mark.filterwarnings("ignore:every query difference")
def test_state_dict_round_trip_resumes_bit_exactly():
    """9 steps, save, 6 more; a fresh optimizer (other nets, other seed) loads and runs 6."""
    def stairs(X: torch.Tensor) -> torch.Tensor:  # some steps see no signal: the radius moves
        return ((40 * X).floor() ** 2).sum(-1)

    def make(x: torch.Tensor, stranger: bool) -> torchzo.ZOLSTM:
        return torchzo.ZOLSTM([x], pretrained=_nets(9 if stranger else 3), q=4,
                              seed=77 if stranger else 5)

    def live(opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
        st = opt.state[x]
        assert st["group.ctrl_h"].abs().sum() > 0 and float(st["group.loss_scale"]) > 0

    x0 = torch.randn(8, generator=torch.Generator().manual_seed(2))
    resume_round_trip(make, x0, lambda opt: opt.step(torchzo.Batched(stairs)), loaded=live)


# -- at inference memory ---------------------------------------------------------------------

def _pair(d: int, seed: int = 0, arch: LeanConfig = LEAN, **settings):
    """The same lean optimizer in both memory modes, on copies of one start (float64, so
    that moving the parameters back after a query restores them to far below a step)."""
    x0 = torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = []
    for memory in ("exact", "inference"):
        x = x0.clone()
        opt = torchzo.ZOLSTM([x], pretrained=_nets(1, arch, 0.2), q=3, seed=seed, memory=memory,
                             estimator="central", directions_kind="gaussian", **settings)
        out.append((x, opt))
    return x0, out


@pytest.mark.parametrize("d", [40, 3 * 65536 + 5])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("arch", [LEAN, F32])
def test_inference_memory_takes_the_exact_modes_steps_to_rounding(d, maximize, arch):
    """Several pieces per tensor (d > 65,536) or one; parameters moved back to rounding and
    sums added piece by piece are the only differences, which a bfloat16 momentum (8
    significant bits) carries further where they flip its rounding."""
    sign = -1.0 if maximize else 1.0
    x0, runs = _pair(d, arch=arch, maximize=maximize)
    for x, opt in runs:
        for _ in range(8):
            opt.step(lambda x=x: sign * ((x - 0.5) ** 2).sum())
    (xe, exact), (xi, inference) = runs
    moved = float((xe - x0).norm())
    assert moved > 0 and float(((xe - 0.5) ** 2).sum()) < float(((x0 - 0.5) ** 2).sum())
    tolerance = 1e-4 if arch is F32 else 5e-3
    assert float((xe - xi).norm()) < tolerance * moved
    for key in ("second", "group.log_scale", "group.log_rho"):
        torch.testing.assert_close(exact.state[xe][key], inference.state[xi][key],
                                   rtol=tolerance, atol=0)
    assert inference.state[xi]["momentum"].dtype == torch.bfloat16 if arch is LEAN else \
        torch.float32


def test_inference_memory_needs_networks_that_update_a_piece_at_a_time():
    with pytest.raises(ValueError, match="lean"):
        torchzo.ZOLSTM([torch.zeros(3)], memory="inference")  # the shipped generalist
    opt = torchzo.ZOLSTM([torch.zeros(3)], pretrained=_nets(), memory="inference")
    assert opt.param_groups[0]["directions_kind"] == "gaussian"  # "auto" cannot be drawn so


def _snapshot(x: torch.Tensor, opt: torchzo.ZOLSTM):
    return x.clone(), {k: v.clone() for k, v in opt.state[x].items()}, \
        opt._generator.get_state().clone()


def _same(before, x: torch.Tensor, opt: torchzo.ZOLSTM, rounding: bool) -> None:
    x_before, state, rng = before
    if rounding:  # moved out and back in place: equal to rounding
        torch.testing.assert_close(x, x_before, rtol=1e-6, atol=1e-6)
    else:
        assert torch.equal(x, x_before)
    assert deep_equal(dict(opt.state[x]), state)
    assert torch.equal(opt._generator.get_state(), rng)


def test_inference_memory_failed_closure_changes_nothing_but_rounding():
    _, ((_, _), (x, opt)) = _pair(50)
    opt.step(lambda: (x ** 2).sum())
    before = _snapshot(x, opt)
    calls = []

    def failing():
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return (x ** 2).sum()
    with pytest.raises(RuntimeError, match="boom"):
        opt.step(failing)
    _same(before, x, opt, rounding=True)


def test_inference_memory_refuses_an_update_that_overflows_and_writes_nothing():
    _, ((_, _), (x, opt)) = _pair(50)
    opt.step(lambda: (x ** 2).sum())
    before = _snapshot(x, opt)
    opt.param_groups[0]["lr"] = 1e300  # a step beyond float32's range
    with pytest.raises(torchzo.NonFiniteUpdateError, match="nothing was written"):
        opt.step(lambda: (x ** 2).sum())
    _same(before, x, opt, rounding=True)
