"""``loss_at_x=False``: two-sided estimators skip the query at x, take the same steps, and
return the mean of their queried losses."""
import math

import pytest
import torch

import torchzo
from torchzo.oracle import Batched

OPTIMIZERS = [(torchzo.ZOSGD, {"lr": 1e-2, "momentum": 0.5}), (torchzo.ZOSignSGD, {"lr": 1e-3}),
              (torchzo.ZOAdam, {"lr": 1e-2})]


def problem():
    g = torch.Generator().manual_seed(0)
    w = [torch.randn(7, 9, generator=g), torch.randn(11, generator=g)]
    target = [torch.randn(p.shape, generator=g) for p in w]
    calls = []

    def loss():
        value = sum(((p - t) ** 2).sum() for p, t in zip(w, target))
        calls.append(float(value))
        return value

    return w, loss, calls


def run(cls, kw, steps=5, **more):
    w, loss, calls = problem()
    opt = cls(w, **kw, q=4, seed=1, **more)
    returned, per_step = [], []
    for _ in range(steps):
        calls.clear()
        returned.append(opt.step(loss))
        per_step.append(list(calls))
    return w, opt, returned, per_step


@pytest.mark.parametrize("cls,kw", OPTIMIZERS)
@pytest.mark.parametrize("estimator", ["central", "antithetic"])
@pytest.mark.parametrize("memory", ["exact", "inference"])
def test_the_same_steps_without_the_query_at_x(cls, kw, estimator, memory):
    with_x, opt_x, losses_x, calls_x = run(cls, kw, estimator=estimator, memory=memory)
    without, opt, losses, calls = run(cls, kw, estimator=estimator, memory=memory,
                                      loss_at_x=False)
    for a, b in zip(without, with_x):
        assert torch.equal(a, b)
    per_step = 2 * 4 if estimator == "central" else 4
    assert [len(c) for c in calls] == [per_step] * 5
    assert [len(c) for c in calls_x] == [per_step + 1] * 5
    assert opt.queries == 5 * per_step and opt_x.queries == 5 * (per_step + 1)
    for returned, seen, at_x in zip(losses, calls, calls_x):
        assert returned.dtype == torch.float64 and returned.dim() == 0
        assert float(returned) == math.fsum(seen) / len(seen)
        assert seen == at_x[1:]  # the same queries, less f(x)
    assert opt.last_loss == float(losses[-1])


@pytest.mark.parametrize("chunk", [None, 4])
def test_a_batched_objective_takes_the_same_steps_and_calls_without_the_row_of_x(chunk):
    """In one call, the same bits; in calls of 4 rows, which then split the directions
    otherwise, the same steps to rounding."""
    def run_batched(**more):
        w, _, _ = problem()
        target = torch.linspace(-1, 1, sum(p.numel() for p in w))
        rows = []

        def fn(X):
            rows.append(X.shape[0])
            return ((X - target) ** 2).sum(1)

        opt = torchzo.ZOAdam(w, lr=1e-2, q=3, estimator="central", seed=1, **more)
        losses = [opt.step(Batched(fn, chunk_size=chunk)) for _ in range(3)]
        return w, losses, rows

    with_x, _, rows_x = run_batched()
    without, losses, rows = run_batched(loss_at_x=False)
    for a, b in zip(without, with_x):
        torch.testing.assert_close(a, b, rtol=0 if chunk is None else 1e-6, atol=0)
    assert sum(rows_x) == 3 * 7 and sum(rows) == 3 * 6 and max(rows) <= (chunk or 6)
    assert all(loss.dim() == 0 and loss.dtype == torch.float64 for loss in losses)


def test_the_forward_estimator_needs_the_loss_at_x():
    w, loss, _ = problem()
    with pytest.raises(ValueError, match="forward estimator"):
        torchzo.ZOSGD(w, q=2, loss_at_x=False)
    opt = torchzo.ZOSGD(w[:1], q=2, estimator="central", loss_at_x=False)
    with pytest.raises(ValueError, match="forward estimator"):
        opt.add_param_group({"params": w[1:], "estimator": "forward"})
    assert len(opt.param_groups) == 1
    with pytest.raises(ValueError, match="must be a bool"):
        torchzo.ZOSGD(w, q=2, estimator="central", loss_at_x=0)
    # An estimator changed by hand after construction is refused by the step, which changes
    # nothing.
    opt.param_groups[0]["estimator"] = "forward"
    before = w[0].clone()
    with pytest.raises(ValueError, match="forward estimator"):
        opt.step(loss)
    assert torch.equal(w[0], before) and opt.steps == 0 and opt.queries == 0
