"""What step() refuses: closures that write parameters or gradients, batched objectives
that call backward(), odd parameters, non-finite updates; and the zero-signal warning."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from zo_testing import (
    OPTIMIZERS,
    Objective,
    all_same_bits,
    deep_equal,
    random_nets,
    snapshot,
    state_copy,
)

import torchzo
from torchzo.oracle import ClosureError

ALL = {**OPTIMIZERS, "ZOLSTM": torchzo.ZOLSTM}


def two_partitions(cls=torchzo.ZOSignSGD):
    a, b = torch.zeros(2), torch.zeros(2)
    opt = cls([{"params": [a], "q": 4}, {"params": [b], "q": 2}], lr=0.05, mu=1e-2, seed=0)
    return a, b, opt


def issue_closure(a, b, write_at):
    calls = [0]

    def closure():
        calls[0] += 1
        loss = (a**2).sum() + ((b - 1) ** 2).sum()
        if calls[0] == write_at:
            a.add_(1.0)  # after the loss is computed: the loss itself is right
        return loss

    return closure


# -- 1. a closure that writes a parameter in place ----------------------------------------------

def test_issue_repro_in_place_write_in_the_second_estimate_is_refused():
    a, b, opt = two_partitions()
    before = state_copy(opt)
    with pytest.raises(ClosureError, match="wrote parameter 0 in place"):
        opt.step(issue_closure(a, b, write_at=6))  # call 6: the second group's queries
    assert torch.equal(a, torch.zeros(2)) and torch.equal(b, torch.zeros(2))
    assert deep_equal(state_copy(opt), before) and opt.steps == 0
    opt.step(issue_closure(a, b, write_at=0))  # the same step without the write
    assert torch.equal(b, torch.tensor([0.05, 0.05]))


@pytest.mark.parametrize("write", ["add_", "view", "index", "copy_", "before_loss"])
@pytest.mark.parametrize("name", list(ALL))
def test_every_in_place_write_is_refused_and_undone(name, write):
    obj = Objective([(3,), (2, 2)], seed=1)
    params = obj.params(torch.float32)
    opt = ALL[name](params, q=3, seed=0)
    opt.step(lambda: obj(params))
    before, state = snapshot(params), state_copy(opt)
    calls = [0]

    def closure():
        calls[0] += 1
        if calls[0] == 2 and write == "before_loss":
            params[1].mul_(2.0)
        loss = obj(params)
        if calls[0] == 2:
            {"add_": lambda: params[0].add_(1.0), "view": lambda: params[1].view(-1).sub_(1.0),
             "index": lambda: params[0].__setitem__(0, 7.0),
             "copy_": lambda: params[1].copy_(torch.ones(2, 2)),
             "before_loss": lambda: None}[write]()
        return loss

    with pytest.raises(ClosureError, match="in place at direction 1"):
        opt.step(closure)
    assert all_same_bits(params, before)
    assert deep_equal(state_copy(opt), state)


def test_a_write_at_f_x_is_refused():
    x = torch.ones(3)
    opt = torchzo.ZOSGD([x], lr=0.1, q=2, seed=0)
    with pytest.raises(ClosureError, match="in place at f\\(x\\)"):
        opt.step(lambda: (x.add_(1) ** 2).sum())
    assert torch.equal(x, torch.ones(3))


# -- 2. .grad is given back as it was -----------------------------------------------------------

@pytest.mark.parametrize("had_grad", [False, True])
@pytest.mark.parametrize("name", list(ALL))
def test_backward_under_enable_grad_leaves_grad_as_it_was(name, had_grad):
    w = torch.randn(3, requires_grad=True)
    if had_grad:
        w.grad = torch.full((3,), 0.5)
    grad, bits = w.grad, None if w.grad is None else w.grad.clone()
    opt = ALL[name]([w], q=2, seed=0)

    def closure():
        with torch.enable_grad():
            loss = (w**2).sum()
            loss.backward()  # None -> tensor, or accumulated into the existing one
        return loss.detach()

    with pytest.raises(ClosureError, match="gradients"):
        opt.step(closure)
    assert w.grad is grad
    if had_grad:
        assert torch.equal(w.grad, bits)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_in_the_closure_leaves_grad_as_it_was(set_to_none):
    w = torch.randn(3, requires_grad=True)
    w.grad = torch.full((3,), 0.5)
    grad = w.grad
    opt = torchzo.ZOSGD([w], lr=0.1, q=2, seed=0)
    twin_w = w.detach().clone()
    twin = torchzo.ZOSGD([twin_w], lr=0.1, q=2, seed=0)

    def closure():
        opt.zero_grad(set_to_none=set_to_none)
        return (w**2).sum()

    opt.step(closure)  # harmless: the closure sees no gradients, and the step completes
    twin.step(lambda: (twin_w**2).sum())
    assert w.grad is grad and torch.equal(grad, torch.full((3,), 0.5))
    assert torch.equal(w.detach(), twin_w)


def test_the_closure_sees_no_grad_and_gets_it_back():
    w = torch.randn(3, requires_grad=True)
    w.grad = torch.ones(3)
    seen = []
    opt = torchzo.ZOSGD([w], lr=0.1, q=2, seed=0)
    opt.step(lambda: seen.append(w.grad) or (w**2).sum())
    assert seen == [None] * 3 and torch.equal(w.grad, torch.ones(3))


# -- 3. a Batched objective that calls backward() -----------------------------------------------

@pytest.mark.parametrize("how", ["no_grad", "enable_grad", "in_place"])
@pytest.mark.parametrize("name", list(ALL))
def test_batched_objective_misbehaving_raises_closure_error(name, how):
    obj = Objective([(3,), (2,)], seed=2)
    params = obj.params(torch.float32)
    opt = ALL[name](params, q=3, seed=0)
    opt.step(torchzo.Batched(obj.batched))
    before, state = snapshot(params), state_copy(opt)
    grads = [p.grad for p in params]

    def fn(X):
        out = obj.batched(X)
        if how == "no_grad":
            out.sum().backward()
        elif how == "enable_grad":
            with torch.enable_grad():
                sum((p.double() ** 2).sum() for p in params).backward()
        else:
            params[1].add_(1.0)
        return out

    match = {"no_grad": "called backward", "enable_grad": "gradients", "in_place": "in place"}
    with pytest.raises(ClosureError, match=match[how]):
        opt.step(torchzo.Batched(fn, chunk_size=2))
    assert all_same_bits(params, before) and deep_equal(state_copy(opt), state)
    assert [p.grad for p in params] == grads


def test_estimate_batched_alone_names_backward():
    from torchzo.oracle import Part, Scheme, estimate_batched

    def fn(X):
        out = (X**2).sum(-1)
        out.sum().backward()
        return out

    with torch.no_grad(), pytest.raises(ClosureError, match="called backward"):
        estimate_batched(fn, torch.zeros(3), Part((0,), Scheme("forward", 2), 1e-3).query([1, 2]))


# -- 6. odd parameters --------------------------------------------------------------------------

ODD = {
    "sparse_coo": (lambda: torch.zeros(3).to_sparse(), TypeError, "layout"),
    "sparse_csr": (lambda: torch.zeros(2, 2).to_sparse_csr(), TypeError, "layout"),
    "meta": (lambda: torch.zeros(3, device="meta"), ValueError, "meta"),
    "float8": (lambda: torch.zeros(3, dtype=torch.float8_e4m3fn), ValueError, "8-bit"),
    "float8_e5m2": (lambda: torch.zeros(3, dtype=torch.float8_e5m2), ValueError, "8-bit"),
    "expanded": (lambda: torch.zeros(1).expand(4), ValueError, "overlapping"),
    "expanded_2d": (lambda: torch.zeros(3, 1).expand(3, 2), ValueError, "overlapping"),
    "inference": (lambda: _inference(), ValueError, "inference"),
}


def _inference():
    with torch.inference_mode():
        return torch.zeros(3)


@pytest.mark.filterwarnings("ignore:Sparse CSR")
@pytest.mark.parametrize("kind", list(ODD))
@pytest.mark.parametrize("name", list(ALL))
def test_odd_parameters_are_rejected_at_construction(name, kind):
    make, exc, match = ODD[kind]
    with pytest.raises(exc, match=match):
        ALL[name]([make()])
    opt = ALL[name]([torch.zeros(2)])
    with pytest.raises(exc, match=match):
        opt.add_param_group({"params": [make()]})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("name", list(ALL))
def test_only_empty_groups_and_shared_memory_are_rejected(name):
    with pytest.raises(ValueError, match="empty"):
        ALL[name]([{"params": []}, {"params": []}])
    base = torch.zeros(10)
    with pytest.raises(ValueError, match="share memory"):
        ALL[name]([base[:6], base[4:]])
    opt = ALL[name]([base[:5]])
    with pytest.raises(ValueError, match="share memory"):
        opt.add_param_group({"params": [base[4:8]]})
    opt.add_param_group({"params": [base[5:]]})  # views that do not overlap are fine
    ALL[name]([{"params": [torch.zeros(4, 3).t(), torch.zeros(2, 3)[:, ::2]]}, {"params": []}])


# -- 7. non-finite updates ----------------------------------------------------------------------

@pytest.mark.parametrize("key, value", [("lr", math.nan), ("lr", math.inf), ("mu", math.nan)])
@pytest.mark.parametrize("name", list(ALL))
def test_a_non_finite_hyperparameter_written_into_a_group_is_refused(name, key, value):
    x = torch.randn(4)
    opt = ALL[name]([x], q=2, seed=0)
    opt.step(lambda: (x**2).sum())
    before, state = x.clone(), state_copy(opt)
    opt.param_groups[0][key] = value
    with pytest.raises(ValueError, match=f"param_groups\\[0\\]\\['{key}'\\] is"):
        opt.step(lambda: (x**2).sum())
    assert torch.equal(x, before)
    opt.param_groups[0][key] = state["param_groups"][0][key]
    assert deep_equal(state_copy(opt), state)


def test_an_update_that_overflows_is_undone():
    h = torch.full((3,), 60000.0, dtype=torch.float16)
    opt = torchzo.ZOSGD([h], lr=100.0, q=2, mu=50.0, momentum=0.5, seed=0)
    before, state = h.clone(), state_copy(opt)
    with pytest.raises(torchzo.optim.NonFiniteUpdateError, match="parameter 0"):
        opt.step(lambda: -(h.double() ** 2).sum())
    assert torch.equal(h, before) and deep_equal(state_copy(opt), state)
    assert (opt.steps, opt.queries) == (0, 0) and not opt.state


def test_a_non_finite_state_is_undone():
    x = torch.zeros(3)
    opt = torchzo.ZOAdam([x], lr=1e-3, q=2, seed=0)
    opt.step(lambda: (x - 1).pow(2).sum())
    before, state = x.clone(), state_copy(opt)
    # A finite float32 estimate of about 1e29, whose square overflows Adam's second moment
    # (while the parameter update, m / sqrt(inf), stays finite).
    with pytest.raises(torchzo.optim.NonFiniteUpdateError, match="exp_avg_sq"):
        opt.step(lambda: 1e29 * x.sum())
    assert torch.equal(x, before) and deep_equal(state_copy(opt), state)


def test_an_estimate_that_overflows_is_refused():
    x = torch.zeros(3, dtype=torch.float64)
    opt = torchzo.ZOSGD([x], lr=1e-3, q=2, mu=1e-20, seed=0)
    with pytest.raises(torchzo.optim.NonFiniteUpdateError, match="estimate is not finite"):
        opt.step(lambda: 1e300 * torch.sign(x.sum()))  # finite losses, differences / mu: inf
    assert torch.equal(x, torch.zeros(3, dtype=torch.float64)) and opt.steps == 0


# Every path on which a loss of 1e300 (finite in float64) overflows a float32 or bfloat16
# estimate: the three hand-designed rules at both memory modes, ZOLSTM with each covariance.
OVERFLOW_PATHS = [
    *((name, kind, memory, batched, None) for name in OPTIMIZERS
      for kind in ("gaussian", "orthogonal", "rademacher", "auto")
      for memory in ("exact", "inference") for batched in (False, True)
      if memory == "exact" or (kind in ("gaussian", "rademacher") and not batched)),
    *(("ZOLSTM", kind, "exact", batched, covariance) for kind in ("gaussian", "rademacher")
      for batched in (False, True) for covariance in ("learned", "identity", "guided")),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name, kind, memory, batched, covariance", OVERFLOW_PATHS)
def test_an_estimate_that_overflows_the_dtype_raises_one_error_on_every_path(
        name, kind, memory, batched, covariance, dtype):
    x = torch.ones(5, dtype=dtype)
    kw = dict(lr=0.1, q=3, seed=0, directions_kind=kind)
    opt = (torchzo.ZOLSTM([x], covariance=covariance, **kw) if name == "ZOLSTM" else
           ALL[name]([x], memory=memory, **kw))
    opt.step(lambda: (x.double() ** 2).sum())
    before, state = x.clone(), state_copy(opt)
    calls = [0]

    def closure():
        calls[0] += 1
        return torch.tensor(1e300 if calls[0] == 2 else 1.0, dtype=torch.float64)

    def fn(X):
        return torch.cat([torch.ones(X.shape[0] - 1, dtype=torch.float64),
                          torch.tensor([1e300], dtype=torch.float64)])

    with pytest.raises(torchzo.optim.NonFiniteUpdateError, match="estimate is not finite"):
        opt.step(torchzo.Batched(fn) if batched else closure)
    assert deep_equal(state_copy(opt), state)
    if memory == "exact":
        assert all_same_bits([x], [before])
    else:  # the inference mode restores its perturbations to rounding
        torch.testing.assert_close(x, before)


@pytest.mark.parametrize("loss", [10**400, -(10**400)], ids=["plus", "minus"])
def test_an_int_loss_beyond_the_float_range_is_a_non_finite_loss(loss):
    x = torch.ones(3)
    opt = torchzo.ZOAdam([x], q=2, seed=0)
    state = state_copy(opt)
    with pytest.raises(ClosureError, match="non-finite loss.*beyond the float range"):
        opt.step(lambda: loss)
    assert torch.equal(x, torch.ones(3)) and deep_equal(state_copy(opt), state)
    with pytest.raises(ClosureError, match="non-finite loss"):  # as an infinite float is
        opt.step(lambda: math.inf if loss > 0 else -math.inf)


def test_zolstm_non_finite_update_learned_restores_everything():
    x = torch.randn(4)
    opt = torchzo.ZOLSTM([x], q=2, seed=0)  # the generalist
    opt.step(lambda: (x**2).sum())
    before, state = x.clone(), state_copy(opt)
    opt.param_groups[0]["lr"] = 1e300  # finite, but the update overflows float32
    with pytest.raises(torchzo.optim.NonFiniteUpdateError, match="optimizer state, RNG"):
        opt.step(lambda: (x**2).sum())
    opt.param_groups[0]["lr"] = 1.0
    assert torch.equal(x, before) and deep_equal(state_copy(opt), state)


def test_zolstm_paper_non_finite_update_leaves_only_its_lstm_states_advanced_and_finite():
    x = torch.randn(4)
    opt = torchzo.ZOLSTM([x], pretrained=random_nets(), q=2, seed=0)
    opt.step(lambda: (x**2).sum())
    before, state = x.clone(), state_copy(opt)
    opt.param_groups[0]["lr"] = 1e300
    with pytest.raises(torchzo.optim.NonFiniteUpdateError, match="update_h.*have advanced"):
        opt.step(lambda: (x**2).sum())
    opt.param_groups[0]["lr"] = 1.0
    after = state_copy(opt)
    lstm = set(opt.nets.arch.compact_keys)
    assert torch.equal(x, before) and deep_equal(after["zo"], state["zo"])
    assert deep_equal({k: v for k, v in after["state"][0].items() if k not in lstm},
                      {k: v for k, v in state["state"][0].items() if k not in lstm})
    assert all(bool(torch.isfinite(v).all()) for v in after["state"][0].values())
    opt.load_state_dict(after)  # what it saved, it loads


@pytest.mark.parametrize("scale", [1e20, 1e30])
def test_zolstm_on_a_huge_loss_refuses_the_step_and_keeps_a_finite_state(scale):
    # The generalist's second moment of an estimate of about 1e21 overflows float32: the step
    # is refused and undone, never leaving an infinite state that its own load would refuse.
    w = torch.randn(10, generator=torch.Generator().manual_seed(0))
    opt = torchzo.ZOLSTM([w], seed=0)
    for _ in range(5):  # until a step's estimate is large enough
        before, state = w.clone(), state_copy(opt)
        try:
            opt.step(lambda: scale * (w.double() ** 2).sum())
        except torchzo.optim.NonFiniteUpdateError as err:
            assert "'second'" in str(err) and "loss's magnitude" in str(err)
            break
        assert all(bool(torch.isfinite(v).all()) for v in opt.state[w].values())
    else:
        raise AssertionError("no step overflowed")
    assert torch.equal(w, before) and deep_equal(state_copy(opt), state)
    opt.load_state_dict(state_copy(opt))
    opt.step(lambda: (w.double() ** 2).sum())  # and it goes on


def test_eps_zero_adam_on_a_flat_loss_is_refused_not_nan():
    x = torch.zeros(3)
    opt = torchzo.ZOAdam([x], lr=1e-3, eps=0.0, q=2, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torchzo.ZeroSignalWarning)
        with pytest.raises(torchzo.optim.NonFiniteUpdateError):
            opt.step(lambda: torch.tensor(0.5))  # 0 / (sqrt(0) + 0)
    assert torch.equal(x, torch.zeros(3)) and not opt.state


# -- the zero-signal warning --------------------------------------------------------------------

@pytest.mark.parametrize("name", list(ALL))
def test_zero_signal_warns_once_naming_mu(name):
    x = torch.zeros(4)
    opt = ALL[name]([x], q=3, mu=1e-3, seed=0)
    def step():
        return torch.round(x.sum())  # piecewise constant: flat at mu = 1e-3

    with pytest.warns(torchzo.ZeroSignalWarning, match="mu=0.001.*larger mu") as record:
        opt.step(step)
        opt.step(step)
    assert len(record) == 1 and record[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step(step)  # once per optimizer
        y = torch.zeros(4)
        ALL[name]([y], q=3, mu=1e-3, seed=0).step(lambda: (y**2).sum() + y.sum())


@pytest.mark.parametrize("memory", ["exact", "inference"])
def test_no_zero_signal_warning_once_the_loss_has_moved(memory):
    """A run that reaches the floor of its loss (a solved task: every query difference zero)
    is not in trouble; the warning is for a loss flat from the start."""
    x = torch.ones(4)
    opt = torchzo.ZOSGD([x], lr=0.1, q=3, mu=1e-3, seed=0, memory=memory)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        losses = [float(opt.step(lambda: ((x**2).sum() - 0.5).clamp(min=0)))
                  for _ in range(200)]
    assert losses[0] > 0 and losses[-1] == 0 and losses[-2] == 0


def test_zero_signal_names_the_flat_group_only():
    a, b = torch.zeros(2), torch.zeros(2)
    opt = torchzo.ZOSGD([{"params": [a]}, {"params": [b], "mu": 0.5}], lr=0.1, q=2, mu=1e-3,
                        seed=0)
    with pytest.warns(torchzo.ZeroSignalWarning, match="param group 0 \\(mu=0.001\\)"):
        opt.step(lambda: torch.round(a.sum()) + (b**2).sum())
    assert issubclass(torchzo.ZeroSignalWarning, UserWarning)


@pytest.mark.parametrize("memory, batched", [("exact", False), ("exact", True),
                                             ("inference", False)])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("leaf", [False, True], ids=["view of a buffer", "nn.Parameter"])
def test_a_closure_that_repoints_a_parameter_gets_it_back_in_its_own_memory(memory, batched,
                                                                            k, leaf):
    buffer = torch.arange(8.0)
    p = torch.nn.Parameter(torch.arange(4.0)) if leaf else buffer[2:6]
    opt = torchzo.ZOAdam([p], lr=0.1, q=3, seed=0, memory=memory)
    before, state = p.detach().clone(), state_copy(opt)
    where = (p.untyped_storage().data_ptr(), p.storage_offset(), p.stride())
    calls = [0]

    def repoint():
        calls[0] += 1
        if calls[0] == k:  # at f(x), or at a query that has moved the parameter
            with torch.no_grad():
                p.set_(torch.ones(4))

    def closure():
        repoint()
        return (p.double() ** 2).sum()

    def fn(X):
        repoint()
        return (X.double() ** 2).sum(1)

    with pytest.raises(ClosureError, match="wrote parameter 0"):
        opt.step(torchzo.Batched(fn, chunk_size=1) if batched else closure)
    assert (p.untyped_storage().data_ptr(), p.storage_offset(), p.stride()) == where
    if memory == "exact":
        assert all_same_bits([p.detach()], [before])
    else:  # the inference mode moves back to rounding
        torch.testing.assert_close(p.detach(), before)
    assert deep_equal(state_copy(opt), state)
    if not leaf:
        buffer[3] = 7.0
        assert p[1] == 7.0  # still a view of the buffer
