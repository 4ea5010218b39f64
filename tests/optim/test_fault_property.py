"""Property: a fault at any call of a step changes nothing, for every optimizer, estimator, group
layout and both paths (closure and batched).

The faults are those of a hostile or careless objective: raising, a NaN/inf/non-scalar/None
loss, batched losses of a dtype that is not real floating point (complex, bool, integer),
``backward()`` with and without autograd, writing a parameter in place (through the
tensor, a view, or before computing the loss), and calling ``zero_grad()`` (harmless: the step
must then complete as if it had not). After a failed step the parameters (bit for bit), their
``.grad`` (the same tensor objects, same bits), the optimizer state, the RNG and the counters
are as before, and the next step equals a twin's that never saw the fault. Extends
test_errors.py's suite (closure faults of the hand-designed optimizers) to in-place writes,
gradients, ZOLSTM and the batched path; about 1,000 examples in all.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from zo_testing import (
    ESTIMATORS,
    Objective,
    all_same_bits,
    deep_equal,
    random_nets,
    same_bits,
    snapshot,
    state_copy,
)

import torchzo
from torchzo.oracle import ClosureError
from torchzo.oracle.estimator import chunk_plan

SHAPES = [(2, 3), (), (4,)]
NETS = {"paper": random_nets(seed=1), "general": random_nets(seed=2, kind="general")}
KWARGS = {
    "ZOSGD": dict(lr=0.05, momentum=0.9, weight_decay=0.01),
    "ZOSignSGD": dict(lr=0.02),
    "ZOAdam": dict(lr=0.05),
    "ZOLSTM": dict(lr=0.5),
}
# Extra groups of each layout (changes to the first group, which takes the drawn estimator); the
# batched path
# needs one estimate, so it only draws the layouts whose groups share it.
LAYOUTS = {
    "one group": [],
    "two groups, one estimate": [{"lr": 0.01}],
    "two estimates": [{"q": 2, "mu": 1e-2, "estimator": "forward"}],
    "three estimates": [{"q": 2, "estimator": "central"},
                        {"q": 4, "mu": 1e-2, "estimator": "antithetic"}],
}
SHARED = ["one group", "two groups, one estimate"]
CLOSURE_FAULTS = {
    "raise": KeyError, "nan": ClosureError, "inf": ClosureError, "vector": ClosureError,
    "none": ClosureError, "backward": ClosureError, "backward_enable_grad": ClosureError,
    "write": ClosureError, "write_view": ClosureError, "write_before_loss": ClosureError,
    "zero_grad": None,
}
BATCHED_FAULTS = {
    "raise": KeyError, "nan_row": ClosureError, "wrong_shape": ClosureError,
    "backward": ClosureError, "backward_enable_grad": ClosureError, "write": ClosureError,
    "zero_grad": None, "complex": ClosureError, "bool": ClosureError, "int": ClosureError,
}


class Run:
    """An optimizer on ``Objective`` after ``warm`` steps, with signed zeros and (maybe)
    gradients planted in its parameters."""

    def __init__(self, name, case):
        self.case = case
        self.obj = Objective(SHAPES, seed=case["seed"] % 5)
        self.params = self.obj.params(case["dtype"])
        first = {"estimator": case["estimator"], "q": 4 if case["estimator"] == "antithetic" else 3}
        kws = [first, *({**first, **kw} for kw in LAYOUTS[case["layout"]])]
        groups = [{"params": [p for i, p in enumerate(self.params) if i % len(kws) == j], **kw}
                  for j, kw in enumerate(kws)]
        extra = dict(KWARGS[name])
        if name == "ZOLSTM":
            extra.update(pretrained=NETS[case["arch"]], covariance=case["covariance"])
        self.opt = getattr(torchzo, name)(groups, seed=case["seed"], **extra)
        for _ in range(case["warm"]):
            self.opt.step(self.objective())
        with torch.no_grad():
            self.params[0][0, 0] = -0.0
            self.params[2][1] = -0.0
        if case["grads"]:
            g = torch.Generator().manual_seed(case["seed"])
            for p in self.params:
                p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)

    def objective(self, fault=None, k=0):
        """The good objective, or one that misbehaves (``fault``) at its ``k``-th call."""
        calls = [0]
        params, obj, chunk = self.params, self.obj, self.case["chunk"]

        def misbehave(loss):
            if fault == "raise":
                raise KeyError("boom")
            if fault in ("backward", "backward_enable_grad"):
                with torch.enable_grad() if fault == "backward_enable_grad" else torch.no_grad():
                    out = sum((q.to(torch.float64) ** 2).sum() for q in params)
                    out.backward()  # writes .grad, or raises torch's "does not require grad"
            elif fault == "write":
                params[self.case["victim"]].add_(0.5)
            elif fault == "write_view":
                params[self.case["victim"]].view(-1)[0] = 3.0
            elif fault == "zero_grad":
                self.opt.zero_grad()
            return {"nan": loss * float("nan"), "inf": loss + float("inf"),
                    "vector": loss.repeat(2), "none": None}.get(fault, loss)

        def closure():
            calls[0] += 1
            if calls[0] == k and fault == "write_before_loss":
                params[self.case["victim"]].sub_(1.0)
            loss = obj(params)
            return misbehave(loss) if calls[0] == k else loss

        def fn(X):
            calls[0] += 1
            out = obj.batched(X)
            if calls[0] != k:
                return out
            if fault == "nan_row":
                return torch.cat([out[:-1], out[-1:] * float("nan")])
            if fault == "wrong_shape":
                return out[:-1]
            if fault in ("complex", "bool", "int"):  # losses of a dtype that is not real float
                return {"complex": out + 0j, "bool": out > 0, "int": out.long()}[fault]
            return misbehave(out)

        return torchzo.Batched(fn, chunk_size=chunk) if self.case["batched"] else closure

    def calls_per_step(self):
        parts = self.opt._partitions()
        if not self.case["batched"]:
            return 1 + sum(s.queries - 1 for s, _, _ in parts)
        ((scheme, _, _),) = parts
        rows = self.case["chunk"] or scheme.queries
        return len(chunk_plan(scheme.directions, len(scheme.signs), rows))


def check(name, case, fault, k_fraction):
    failing, twin = Run(name, case), Run(name, case)
    n = failing.calls_per_step()
    k = 1 + min(n - 1, int(k_fraction * n))  # every call index is reachable
    params, state = snapshot(failing.params), state_copy(failing.opt)
    grads = [p.grad for p in failing.params]
    grad_bits = [None if g is None else g.clone() for g in grads]
    expected = (BATCHED_FAULTS if case["batched"] else CLOSURE_FAULTS)[fault]
    if expected is None:  # harmless: the step completes as the twin's
        assert same_bits(failing.opt.step(failing.objective(fault, k)),
                         twin.opt.step(twin.objective()))
    else:
        with pytest.raises(expected):
            failing.opt.step(failing.objective(fault, k))
        assert all_same_bits(failing.params, params)
        assert deep_equal(state_copy(failing.opt), state)  # state, RNG, counters
        twin.opt.step(twin.objective())
        failing.opt.step(failing.objective())
    assert all(p.grad is g for p, g in zip(failing.params, grads))
    assert all(g is None or same_bits(g, b) for g, b in zip(grads, grad_bits))
    assert all_same_bits(failing.params, twin.params)
    assert deep_equal(state_copy(failing.opt), state_copy(twin.opt))
    assert failing.opt.steps == case["warm"] + 1


def cases(name):
    """One example's configuration: the path, layout, estimator and the rest."""
    batched = st.booleans()
    return batched.flatmap(lambda b: st.fixed_dictionaries({
        "batched": st.just(b),
        "layout": st.sampled_from(SHARED if b else list(LAYOUTS)),
        "estimator": st.sampled_from(ESTIMATORS),
        "chunk": st.sampled_from([None, 1, 2, 3, 5]),
        "seed": st.integers(0, 2**31),
        "warm": st.integers(0, 2),
        "grads": st.booleans(),
        "victim": st.integers(0, len(SHAPES) - 1),
        "dtype": st.sampled_from([torch.float32, torch.float64]),
        "arch": st.sampled_from(list(NETS)),
        "covariance": st.sampled_from(["learned", "identity", "guided"]),
        "fault": st.sampled_from(list(BATCHED_FAULTS if b else CLOSURE_FAULTS)),
    }))


EXAMPLES = settings(max_examples=260, deadline=None, database=None)


@pytest.mark.parametrize("name", list(KWARGS))
@EXAMPLES
@given(data=st.data(), k_fraction=st.floats(0, 1, exclude_max=True))
def test_a_fault_at_any_call_changes_nothing(name, data, k_fraction):
    case = data.draw(cases(name), label="case")
    check(name, case, case["fault"], k_fraction)


def test_zolstm_steps_a_zero_dim_parameter_with_learned_directions():
    x, y = torch.tensor(1.0), torch.zeros(3)
    opt = torchzo.ZOLSTM([x, y], pretrained=NETS["paper"], q=2, query_prob=1.0, seed=0)
    opt.step(lambda: x**2 + (y**2).sum())
