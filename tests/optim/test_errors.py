"""Validation errors, and the guarantee that a failing closure changes nothing: parameters (bit for
bit), optimizer state, RNG and counters are as before the step, and the run continues exactly as
if the failure never happened."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from zo_testing import (
    ESTIMATORS,
    FAST,
    OPTIMIZERS,
    Objective,
    all_same_bits,
    deep_equal,
    same_bits,
    snapshot,
    state_copy,
)

import torchzo
from torchzo.oracle import ClosureError, call_closure, loss_value
from torchzo.tasks import Quadratic

ALL = list(OPTIMIZERS.values())
SHAPES = [(2, 3), (), (4,)]
LR = {torchzo.ZOAdam: 0.05, torchzo.ZOSGD: 0.05, torchzo.ZOSignSGD: 0.02}


def p():
    return [torch.zeros(3, requires_grad=True)]


# -- construction -------------------------------------------------------------------------------

COMMON_BAD = [
    {"lr": -1e-3}, {"lr": float("nan")}, {"lr": float("inf")}, {"lr": "0.1"},
    {"q": 0}, {"q": -2}, {"q": 2.5}, {"q": True},
    {"mu": 0.0}, {"mu": -1e-3}, {"mu": float("nan")},
    {"estimator": "backward"}, {"estimator": "antithetic", "q": 3},
    {"weight_decay": -0.1}, {"maximize": "yes"},
    {"seed": 1, "generator": torch.Generator()}, {"seed": 1.5}, {"seed": True},
    {"generator": 3},
]
SPECIFIC_BAD = [
    (torchzo.ZOAdam, {"betas": (1.0, 0.999)}), (torchzo.ZOAdam, {"betas": (0.9, 1.0)}),
    (torchzo.ZOAdam, {"betas": (-0.1, 0.999)}), (torchzo.ZOAdam, {"betas": (0.9,)}),
    (torchzo.ZOAdam, {"betas": (0.9, 0.99, 0.999)}), (torchzo.ZOAdam, {"betas": 0.9}),
    (torchzo.ZOAdam, {"betas": (0.9, float("nan"))}),
    (torchzo.ZOAdam, {"eps": -1e-8}),
    (torchzo.ZOSGD, {"momentum": -0.5}), (torchzo.ZOSGD, {"momentum": float("nan")}),
]
CASES = [(cls, kw) for cls in ALL for kw in COMMON_BAD] + SPECIFIC_BAD


@pytest.mark.parametrize("cls, kw", CASES, ids=[f"{c.__name__}-{k}" for c, k in CASES])
def test_invalid_hyperparameters_raise_value_error(cls, kw):
    with pytest.raises(ValueError):
        cls(p(), **kw)


@pytest.mark.parametrize("cls, kw, message", [
    (torchzo.ZOAdam, {"betas": (1.0, 0.999)}, r"betas\[0\] must be in \[0, 1\), got 1.0"),
    (torchzo.ZOAdam, {"betas": (0.9, -1)}, r"betas\[1\] must be in \[0, 1\), got -1"),
    (torchzo.ZOSGD, {"momentum": True}, "momentum must be a finite number >= 0, got True"),
    (torchzo.ZOSignSGD, {"mu": 0.0}, "mu must be a finite number > 0, got 0.0"),
])
def test_invalid_hyperparameters_name_their_range(cls, kw, message):
    with pytest.raises(ValueError, match=message):
        cls(p(), **kw)


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_parameters_are_rejected(cls, dtype):
    with pytest.raises(ValueError, match="floating-point"):
        cls([torch.zeros(3, dtype=dtype)])


@pytest.mark.parametrize("cls", ALL)
def test_valid_edge_hyperparameters_are_accepted(cls):
    # The boundaries of the checks above are allowed (so the checks are not over-eager).
    kw = {"lr": 0.0, "q": 1, "mu": 1e-12, "weight_decay": 0.0}
    if cls is torchzo.ZOAdam:
        kw.update(betas=(0.0, 0.0), eps=0.0)
    if cls is torchzo.ZOSGD:
        kw.update(momentum=0.0)
    cls(p(), seed=0, **kw)
    cls(p(), generator=torch.Generator().manual_seed(0), estimator="antithetic", q=2)


@pytest.mark.parametrize("cls", ALL)
def test_step_without_closure_raises(cls):
    params = p()
    opt = cls(params, seed=0)
    before = state_copy(opt)
    with pytest.raises(ValueError, match="closure"):
        opt.step()
    assert deep_equal(state_copy(opt), before) and opt.queries == 0


def test_batched_needs_one_partition():
    obj = Objective([(3,), (2,)])
    a, b = obj.params()
    opt = torchzo.ZOSGD([{"params": [a]}, {"params": [b], "q": 3}], q=2, seed=0)
    before = state_copy(opt)
    with pytest.raises(ValueError, match="share"):
        opt.step(torchzo.Batched(obj.batched))
    assert deep_equal(state_copy(opt), before)


@pytest.mark.parametrize("chunk", [0, -1, 1.5, "2"])
def test_batched_chunk_size_validation(chunk):
    with pytest.raises(ValueError):
        torchzo.Batched(lambda X: X.sum(-1), chunk)


# -- the comparison helpers are sharp enough ----------------------------------------------------


def test_bit_comparison_distinguishes_signed_zeros_and_state_changes():
    assert not same_bits(torch.tensor([-0.0]), torch.tensor([0.0]))
    assert torch.equal(torch.tensor([-0.0]), torch.tensor([0.0]))  # what a value check would miss
    opt = torchzo.ZOAdam(p(), seed=0)
    sd = state_copy(opt)
    opt._generator.manual_seed(1)
    assert not deep_equal(state_copy(opt), sd)
    opt.load_state_dict(sd)
    assert deep_equal(state_copy(opt), sd)
    opt._counters["queries"] += 1
    assert not deep_equal(state_copy(opt), sd)


# -- loss checking ------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    (1.5, 1.5), (3, 3.0), (torch.tensor(2.0), 2.0), (torch.tensor([2.5]), 2.5),
    (torch.tensor([[0.25]], dtype=torch.float64), 0.25),
    (torch.tensor(1.0, dtype=torch.bfloat16), 1.0),
])
def test_loss_value_accepts_scalars(value, expected):
    assert loss_value(value, "here") == expected


@pytest.mark.parametrize("value, match", [
    (float("nan"), "non-finite"), (math.inf, "non-finite"), (torch.tensor(-math.inf), "non-finite"),
    (torch.tensor([1.0, 2.0]), "scalar"), (torch.zeros(0), "scalar"), (None, "scalar"),
    ("1.0", "scalar"), (True, "scalar"), (torch.tensor(1 + 2j), "complex"), ([1.0], "scalar"),
    (torch.tensor(True), "bool"),
])
def test_loss_value_rejects_bad_losses(value, match):
    with pytest.raises(ClosureError, match=match):
        loss_value(value, "query 3")


def test_closure_error_is_a_runtime_error_and_names_the_query():
    assert issubclass(ClosureError, RuntimeError)
    with pytest.raises(ClosureError, match="query 3"):
        loss_value(None, "query 3")
    x = torch.zeros(2, requires_grad=True)
    with pytest.raises(ClosureError, match="backward"):
        call_closure(lambda: (x * 2).sum().backward(), [x], "f(x)")
    assert x.grad is None


# -- restore on error ---------------------------------------------------------------------------


class Boom(Exception):
    pass


class BoomBase(BaseException):
    pass


MODES = {  # mode -> (expected exception, message pattern)
    "raise": (Boom, None),
    "raise_base": (BoomBase, None),
    "runtime_error": (RuntimeError, "user failure"),
    "nan": (ClosureError, "non-finite"),
    "inf": (ClosureError, "non-finite"),
    "vector": (ClosureError, "scalar"),
    "none": (ClosureError, "scalar"),
    "complex": (ClosureError, "complex"),
    "backward": (ClosureError, "backward"),
    "backward_enable_grad": (ClosureError, "backward"),
}


def bad_result(mode: str, loss: torch.Tensor, params):
    if mode == "raise":
        raise Boom
    if mode == "raise_base":
        raise BoomBase
    if mode == "runtime_error":
        raise RuntimeError("user failure")
    if mode == "nan":
        return loss * float("nan")
    if mode == "inf":
        return torch.tensor(-math.inf) if loss > 0 else torch.tensor(math.inf)
    if mode == "vector":
        return loss.repeat(2)
    if mode == "none":
        return None
    if mode == "complex":
        return loss.to(torch.complex128)
    if mode == "backward":
        out = sum((q.to(torch.float64) ** 2).sum() for q in params)
        out.backward()
        return out
    if mode == "backward_enable_grad":
        with torch.enable_grad():
            out = sum((q.to(torch.float64) ** 2).sum() for q in params)
            out.backward()
        return out.detach()
    raise AssertionError(mode)


class Scenario:
    """An optimizer on ``Objective``, warmed up, with signed zeros planted in its parameters."""

    def __init__(self, cls, groups_kw: list[dict], seed: int, warm: int, dtype=torch.float32):
        self.obj = Objective(SHAPES, seed=seed % 7)
        self.params = self.obj.params(dtype)
        groups = [{"params": [q for i, q in enumerate(self.params) if i % len(groups_kw) == j],
                   **kw} for j, kw in enumerate(groups_kw)]
        self.opt = cls(groups, lr=LR[cls], seed=seed)
        for _ in range(warm):
            self.opt.step(lambda: self.obj(self.params))
        with torch.no_grad():
            self.params[0][0, 0] = -0.0
            self.params[0][1, 2] = 0.0
            self.params[2][1] = -0.0

    def queries_per_step(self) -> int:
        return 1 + sum(s.queries - 1 for s, _, _ in self.opt._partitions())

    def good_step(self):
        return self.opt.step(lambda: self.obj(self.params))

    def failing_closure(self, k: int, mode: str):
        calls = [0]

        def closure():
            calls[0] += 1
            loss = self.obj(self.params)
            if calls[0] == k:
                return bad_result(mode, loss, self.params)
            return loss

        return closure, calls


def check_failure_changes_nothing(cls, groups_kw, mode, seed, warm, k_fraction):
    failing = Scenario(cls, groups_kw, seed, warm)
    reference = Scenario(cls, groups_kw, seed, warm)
    n = failing.queries_per_step()
    k = 1 + min(n - 1, int(k_fraction * n))
    params_before = snapshot(failing.params)
    state_before = state_copy(failing.opt)
    closure, calls = failing.failing_closure(k, mode)
    exc, match = MODES[mode]
    with pytest.raises(exc, match=match):
        failing.opt.step(closure)
    assert calls[0] == k  # it stopped at the failing query
    assert all_same_bits(failing.params, params_before)
    assert deep_equal(state_copy(failing.opt), state_before)
    assert (failing.opt.steps, failing.opt.queries) == (warm, warm * n)
    # Continuing gives exactly the run that never failed.
    assert same_bits(failing.good_step(), reference.good_step())
    assert all_same_bits(failing.params, reference.params)
    assert deep_equal(state_copy(failing.opt), state_copy(reference.opt))
    assert not all_same_bits(failing.params, params_before)


PER_CASE = settings(max_examples=6, deadline=None, database=None)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
@PER_CASE
@given(seed=st.integers(0, 2**31), warm=st.integers(0, 2), k_fraction=st.floats(0, 1))
def test_failing_closure_changes_nothing(name, estimator, mode, seed, warm, k_fraction):
    q = 4 if estimator == "antithetic" else 3
    check_failure_changes_nothing(OPTIMIZERS[name], [{"q": q, "estimator": estimator}], mode,
                                  seed, warm, k_fraction)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@FAST
@given(seed=st.integers(0, 2**31), warm=st.integers(0, 2), k_fraction=st.floats(0, 1),
       mode=st.sampled_from(list(MODES)))
def test_failing_closure_with_several_partitions_changes_nothing(name, seed, warm, k_fraction,
                                                                 mode):
    # Three groups in three partitions: a failure in a later partition must also put back the
    # parameters perturbed (and restored) by the earlier ones.
    groups = [{"q": 2}, {"q": 2, "estimator": "central", "lr": 0.01}, {"q": 4, "mu": 1e-2,
                                                                       "estimator": "antithetic"}]
    check_failure_changes_nothing(OPTIMIZERS[name], groups, mode, seed, warm, k_fraction)


@pytest.mark.parametrize("warm", [0, 3])
def test_issue_zoadam_closure_raising_on_its_7th_call(warm):
    task = Quadratic(10, seed=0, dtype=torch.float32)
    x = task.x0.clone().requires_grad_(True)
    opt = torchzo.ZOAdam([x], lr=0.05, seed=0)  # default q=20: the 7th call is mid-step
    for _ in range(warm):
        opt.step(lambda: task(x))
    before, state = x.detach().clone(), state_copy(opt)
    calls = [0]

    def closure():
        calls[0] += 1
        if calls[0] == 7:
            raise RuntimeError("data loader died")
        return task(x)

    with pytest.raises(RuntimeError, match="data loader died"):
        opt.step(closure)
    assert same_bits(x.detach(), before)
    assert deep_equal(state_copy(opt), state)
    opt.step(closure)  # and the optimizer still works
    assert calls[0] == 7 + 21


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("failure", ["raise", "nan_row", "wrong_shape", "not_a_tensor",
                                     "complex", "complex_real", "bool", "int"])
@pytest.mark.parametrize("call", [1, 2])
def test_failing_batched_objective_changes_nothing(name, failure, call):
    cls = OPTIMIZERS[name]
    runs = []
    for fail in (True, False):
        obj = Objective(SHAPES, seed=3)
        params = obj.params(torch.float32)
        opt = cls(params, lr=LR[cls], q=4, seed=1)
        opt.step(torchzo.Batched(obj.batched))
        before, state = snapshot(params), state_copy(opt)
        calls = [0]

        def fn(X, obj=obj, calls=calls):
            calls[0] += 1
            out = obj.batched(X)
            if calls[0] != call:
                return out
            if failure == "raise":
                raise Boom
            if failure == "nan_row":
                out = out.clone()
                out[-1] = float("nan")
                return out
            if failure == "wrong_shape":
                return out[:-1]
            if failure == "complex":  # what a careless FFT-based loss returns
                return out.to(torch.complex64) + 1j
            if failure == "complex_real":  # no imaginary part to lose, still not a real dtype
                return out.to(torch.complex128)
            if failure == "bool":
                return out > out.median()
            if failure == "int":
                return out.round().long()
            return out.tolist()

        if fail:
            exc, match = {"raise": (Boom, None), "nan_row": (ClosureError, "non-finite"),
                          "wrong_shape": (ClosureError, "shape"),
                          "not_a_tensor": (ClosureError, "shape"),
                          "complex": (ClosureError, "complex"),
                          "complex_real": (ClosureError, "complex"),
                          "bool": (ClosureError, "floating"),
                          "int": (ClosureError, "floating")}[failure]
            with pytest.raises(exc, match=match):
                opt.step(torchzo.Batched(fn, chunk_size=3))
            assert all_same_bits(params, before)
            assert deep_equal(state_copy(opt), state)
        opt.step(torchzo.Batched(obj.batched, chunk_size=3))
        runs.append((params, state_copy(opt)))
    assert all_same_bits(runs[0][0], runs[1][0])
    assert deep_equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("memory", ["exact", "inference"])
@pytest.mark.parametrize("cls,kw,dtype", [
    (torchzo.ZOSGD, {"lr": 1e5}, torch.float16),
    (torchzo.ZOSignSGD, {"lr": 1e5}, torch.float16),
    (torchzo.ZOAdam, {"lr": 1e38}, torch.bfloat16),  # lr / (1 - beta1) is beyond bfloat16's
])
def test_an_update_scalar_beyond_the_parameters_dtype_is_refused_before_anything(cls, kw, dtype,
                                                                                 memory):
    """torch itself would refuse it inside the update with a bare RuntimeError."""
    w = torch.randn(10).to(dtype)
    before = w.clone()
    opt = cls([w], **kw, q=2, seed=0, memory=memory)
    with pytest.raises(ValueError, match="beyond the range of"):
        opt.step(lambda: (w.float() ** 2).sum())
    assert torch.equal(w, before) and opt.steps == 0 and not opt.state
