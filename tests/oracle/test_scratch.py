"""A ZO optimizer keeps its step's copies (parameters, and the state it may undo) and its
estimate for the next step: the same trajectories and the same undo as fresh memory.
"""
from __future__ import annotations

import pytest
import torch
from zo_testing import OPTIMIZERS, Objective, all_same_bits, deep_equal, snapshot, state_copy

import torchzo
from torchzo.oracle import Batched
from torchzo.oracle.closure import Scratch

ALL = {**OPTIMIZERS, "ZOLSTM": torchzo.ZOLSTM}
SHAPES = [(3, 4), (5,), (2, 1, 3)]


def _failing(objective, params, at: int | None):
    """The closure of ``objective``, raising at its call ``at`` (counted from 1)."""
    calls = [0]

    def closure():
        calls[0] += 1
        if calls[0] == at:
            raise RuntimeError("the objective failed")
        return objective(params)

    return closure


def _run(cls, scratch: bool, batched: bool, fail_at: int | None = None):
    objective = Objective(SHAPES, seed=3)
    params = objective.params(torch.float32)
    opt = cls(params, q=4, seed=1)
    if not scratch:
        opt._scratch = None  # every step copies afresh, as before the scratch existed
    steps = []
    for step in range(4):
        closure = _failing(objective, params, fail_at if step == 2 else None)

        before = (snapshot(params), state_copy(opt))
        target = Batched(objective.batched, params=params) if batched and fail_at is None \
            else closure
        try:
            opt.step(target)
        except RuntimeError as err:
            assert "the objective failed" in str(err)
            assert all_same_bits(params, before[0]) and deep_equal(state_copy(opt), before[1])
        steps.append(snapshot(params))
    return steps, opt


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("batched", [False, True])
def test_kept_copies_give_the_trajectory_of_fresh_copies(name, batched):
    kept, opt = _run(ALL[name], True, batched)
    fresh, _ = _run(ALL[name], False, batched)
    assert all(all_same_bits(a, b) for a, b in zip(kept, fresh))
    assert opt._scratch.nbytes() > 0


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("fail_at", [1, 3])
def test_a_failed_step_is_undone_from_kept_copies(name, fail_at):
    # Step 2 fails at f(x) or at a later query; its undo reads copies written over last step's.
    kept, _ = _run(ALL[name], True, False, fail_at)
    fresh, _ = _run(ALL[name], False, False, fail_at)
    assert all_same_bits(kept[2], kept[1])  # the failed step changed nothing
    assert all(all_same_bits(a, b) for a, b in zip(kept, fresh))


def test_between_steps_it_holds_the_copies_and_the_estimate_it_made():
    objective = Objective(SHAPES)
    params = objective.params(torch.float32)
    nbytes = sum(p.nbytes for p in params)
    sgd, adam = torchzo.ZOSGD(params, q=2, seed=0), torchzo.ZOAdam(params, q=2, seed=0)
    lstm = torchzo.ZOLSTM(params, q=2, seed=0)
    adam.step(lambda: objective(params))  # creates the state: nothing of it to undo yet
    assert adam._scratch.nbytes() == 2 * nbytes  # the parameters' copy, the estimate
    for _ in range(3):
        sgd.step(lambda: objective(params))
        assert sgd._scratch.nbytes() == 2 * nbytes
        adam.step(lambda: objective(params))
        # And exp_avg and exp_avg_sq (the step counters are small tensors).
        assert 4 * nbytes <= adam._scratch.nbytes() < 4 * nbytes + 64 * len(params)
        lstm.step(lambda: objective(params))
        assert lstm._scratch.nbytes() == nbytes  # its estimate lives on in its state
    held = [t.data_ptr() for ts in sgd._scratch._kept.values() for t in ts]
    sgd.step(lambda: objective(params))
    assert sorted(held) == sorted(t.data_ptr() for ts in sgd._scratch._kept.values() for t in ts)


def test_it_lets_go_of_what_no_longer_matches_the_parameters():
    a, b = torch.zeros(1000), torch.zeros(10, dtype=torch.float64)
    opt = torchzo.ZOSGD([a], q=2, seed=0)
    opt.step(lambda: (a ** 2).sum())
    assert opt._scratch.nbytes() == 2 * a.nbytes
    opt.add_param_group({"params": [b]})
    opt.step(lambda: (a ** 2).sum() + (b ** 2).sum())
    assert opt._scratch.nbytes() == 2 * (a.nbytes + b.nbytes)


def test_take_matches_shape_strides_dtype_and_device():
    scratch = Scratch()
    t = torch.zeros(4, 6).t()  # non-contiguous: empty_like keeps its strides
    first = scratch.take([t, torch.zeros(3)])
    assert first[0].stride() == t.stride()
    scratch.keep(first)
    again = scratch.take([torch.zeros(6, 4), t, torch.zeros(3, dtype=torch.float64)])
    assert again[0].data_ptr() != first[0].data_ptr()  # another stride: a new tensor
    assert again[1].data_ptr() == first[0].data_ptr()
    assert again[2].dtype == torch.float64 and again[2].data_ptr() != first[1].data_ptr()
