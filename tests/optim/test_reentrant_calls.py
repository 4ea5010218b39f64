"""A closure that calls back into the optimizer it is a closure of: ``step()``,
``add_param_group()`` or ``load_state_dict()`` is refused with a ClosureError before it changes
anything, so the outer step fails and is undone whole (or, when the closure catches the error,
completes as if the call had never been made)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from zo_testing import Objective, all_same_bits, deep_equal, random_nets, snapshot, state_copy

import torchzo
from torchzo.oracle import ClosureError

SHAPES = [(2, 3), (4,)]
KWARGS = {
    "ZOSGD": dict(lr=0.05, momentum=0.9),
    "ZOSignSGD": dict(lr=0.02),
    "ZOAdam": dict(lr=0.05),
    "ZOLSTM": dict(lr=0.5, pretrained=random_nets(seed=1)),
}
CALLS = ("step", "add_param_group", "load_state_dict")


class Run:
    def __init__(self, name: str, seed: int, warm: int) -> None:
        self.obj = Objective(SHAPES, seed=seed % 5)
        self.params = self.obj.params(torch.float32)
        self.opt = getattr(torchzo, name)(self.params[:1], q=3, seed=seed, **KWARGS[name])
        self.opt.add_param_group({"params": self.params[1:]})
        for _ in range(warm):
            self.step()
        g = torch.Generator().manual_seed(seed)
        for p in self.params:
            p.grad = torch.randn(p.shape, generator=g)

    def step(self, batched: bool = False):
        if batched:
            return self.opt.step(torchzo.Batched(self.obj.batched, chunk_size=1))
        return self.opt.step(lambda: self.obj(self.params))

    def reentrant(self, call: str, at: int, batched: bool, swallow: bool):
        """An objective that makes ``call`` on its own optimizer at its ``at``-th call (of 3
        or more)."""
        calls, saved = [0], state_copy(self.opt)
        extra = torch.zeros(2)

        def reenter():
            calls[0] += 1
            if calls[0] != at:
                return
            try:
                if call == "step":
                    self.step()
                elif call == "add_param_group":
                    self.opt.add_param_group({"params": [extra]})
                else:
                    self.opt.load_state_dict(saved)
            except ClosureError:
                if not swallow:
                    raise

        def closure():
            reenter()
            return self.obj(self.params)

        def fn(X):
            reenter()
            return self.obj.batched(X)

        return torchzo.Batched(fn, chunk_size=1) if batched else closure


@pytest.mark.parametrize("name", list(KWARGS))
@settings(max_examples=40, deadline=None, database=None)
@given(call=st.sampled_from(CALLS), seed=st.integers(0, 2**31), warm=st.integers(0, 2),
       at=st.integers(1, 3), batched=st.booleans(), swallow=st.booleans())
def test_a_call_back_into_the_optimizer_changes_nothing(name, call, seed, warm, at, batched,
                                                         swallow):
    run, twin = Run(name, seed, warm), Run(name, seed, warm)
    params, state = snapshot(run.params), state_copy(run.opt)
    grads = [p.grad for p in run.params]
    groups = len(run.opt.param_groups)
    objective = run.reentrant(call, at, batched, swallow)
    if swallow:
        run.opt.step(objective)  # the refused call changed nothing: the step is the twin's
    else:
        with pytest.raises(ClosureError, match=f"{call}.*during a step"):
            run.opt.step(objective)
        assert all_same_bits(run.params, params)
        assert deep_equal(state_copy(run.opt), state)  # state, RNG, counters
        assert run.opt.steps == warm
        run.step(batched)
    twin.step(batched)
    assert len(run.opt.param_groups) == groups
    assert all(p.grad is g for p, g in zip(run.params, grads))
    assert all_same_bits(run.params, twin.params)
    assert deep_equal(state_copy(run.opt), state_copy(twin.opt))
    assert run.opt.steps == warm + 1


def test_the_calls_still_work_between_steps():
    run = Run("ZOAdam", 0, 1)
    saved = state_copy(run.opt)
    run.step()
    run.opt.load_state_dict(saved)
    assert run.opt.steps == 1
    run.opt.add_param_group({"params": [torch.zeros(2)]})
    run.step()
    assert run.opt.steps == 2
