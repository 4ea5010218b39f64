"""state_dict / load_state_dict: a run resumed from a checkpoint is bit-identical to one that was
never interrupted (optimizer state, RNG and counters all travel in the state dict)."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from zo_testing import FAST, Objective, all_same_bits, deep_equal, snapshot, state_copy

import torchzo

SHAPES = [(2, 3), (), (4,), (3,)]
N_STEPS = 5

CONFIGS = {
    "ZOAdam": (torchzo.ZOAdam, [{}], {"lr": 0.05, "q": 3}),
    "ZOSGD-momentum": (torchzo.ZOSGD, [{}], {"lr": 0.05, "q": 3, "momentum": 0.9,
                                             "weight_decay": 0.01}),
    "ZOSignSGD": (torchzo.ZOSignSGD, [{}], {"lr": 0.02, "q": 3}),
    "ZOAdam-two-groups": (torchzo.ZOAdam, [{}, {"lr": 0.01, "q": 2, "estimator": "central"}],
                          {"lr": 0.05, "q": 3}),
    "ZOSGD-two-groups": (torchzo.ZOSGD, [{}, {"lr": 0.01, "momentum": 0.0}],
                         {"lr": 0.05, "q": 4, "momentum": 0.5, "estimator": "antithetic"}),
    "ZOSignSGD-two-groups": (torchzo.ZOSignSGD, [{"q": 2}, {"lr": 0.01}],
                             {"lr": 0.02, "q": 3}),
    "ZOAdam-rademacher": (torchzo.ZOAdam, [{}], {"lr": 0.05, "q": 3,
                                                 "directions_kind": "rademacher"}),
    "ZOSGD-momentum-rademacher": (torchzo.ZOSGD, [{}], {"lr": 0.05, "q": 3, "momentum": 0.9,
                                                        "directions_kind": "rademacher"}),
    "ZOSignSGD-two-kinds": (torchzo.ZOSignSGD, [{}, {"directions_kind": "rademacher"}],
                            {"lr": 0.02, "q": 3}),
}


def build(name, params, seed, **override):
    cls, groups_kw, kw = CONFIGS[name]
    groups = [{"params": [p for i, p in enumerate(params) if i % len(groups_kw) == j], **g}
              for j, g in enumerate(groups_kw)]
    return cls(groups, seed=seed, **{**kw, **override})


def steps(opt, params, obj, n):
    for _ in range(n):
        opt.step(lambda: obj(params))


def roundtrip(sd, via):
    if via == "memory":
        return copy.deepcopy(sd)
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def check_resume(name, k, seed, via):
    obj = Objective(SHAPES, seed=seed % 5)
    # The uninterrupted run.
    ref_params = obj.params(torch.float32)
    ref = build(name, ref_params, seed)
    steps(ref, ref_params, obj, N_STEPS)
    # The interrupted run: checkpoint after k steps, then the original keeps going (its live state
    # tensors change, which must not leak into the checkpoint).
    params = obj.params(torch.float32)
    opt = build(name, params, seed)
    steps(opt, params, obj, k)
    checkpoint = roundtrip(opt.state_dict(), via)
    saved_params = snapshot(params)
    counters = (opt.steps, opt.queries)
    steps(opt, params, obj, 2)
    # Resume on fresh parameter copies, with a fresh optimizer of another seed and lr.
    resumed_params = [p.clone().requires_grad_(True) for p in saved_params]
    resumed = build(name, resumed_params, seed + 1, lr=0.5)
    resumed.load_state_dict(checkpoint)
    assert (resumed.steps, resumed.queries) == counters
    steps(resumed, resumed_params, obj, N_STEPS - k)
    assert all_same_bits(resumed_params, ref_params)
    assert deep_equal(state_copy(resumed), state_copy(ref))
    assert (resumed.steps, resumed.queries) == (ref.steps, ref.queries)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("via", ["memory", "torch.save"])
@pytest.mark.parametrize("k", [0, 2, N_STEPS])
def test_resume_is_bit_exact(name, via, k):
    check_resume(name, k, seed=3, via=via)


@pytest.mark.parametrize("name", list(CONFIGS))
@FAST
@given(k=st.integers(0, N_STEPS), seed=st.integers(0, 2**31),
       via=st.sampled_from(["memory", "torch.save"]))
def test_resume_is_bit_exact_property(name, k, seed, via):
    check_resume(name, k, seed, via)


@pytest.mark.parametrize("name", ["ZOAdam", "ZOSGD-momentum", "ZOSignSGD"])
def test_resuming_without_loading_differs(name):
    # The checks above can fail: without load_state_dict the continuation is different.
    obj = Objective(SHAPES)
    ref_params = obj.params(torch.float32)
    ref = build(name, ref_params, 0)
    steps(ref, ref_params, obj, 4)
    params = obj.params(torch.float32)
    opt = build(name, params, 0)
    steps(opt, params, obj, 2)
    fresh = build(name, params, 0)
    steps(fresh, params, obj, 2)
    assert not all_same_bits(params, ref_params)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dict_contents_and_counters_round_trip(name):
    obj = Objective(SHAPES)
    params = obj.params(torch.float32)
    opt = build(name, params, 7)
    steps(opt, params, obj, 3)
    sd = opt.state_dict()
    zo = sd["zo"]
    assert zo["steps"] == 3 and zo["queries"] == opt.queries > 3
    generator = zo["generator"].clone()
    steps(opt, params, obj, 1)
    assert torch.equal(sd["zo"]["generator"], generator)  # a snapshot, not the live generator
    assert not torch.equal(opt.state_dict()["zo"]["generator"], generator)
    other = build(name, obj.params(torch.float32), 8)
    other.load_state_dict(roundtrip(sd, "torch.save"))
    assert (other.steps, other.queries) == (3, zo["queries"])
    assert torch.equal(other.state_dict()["zo"]["generator"], generator)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_load_state_dict_without_zo_entry_raises(name):
    obj = Objective(SHAPES)
    params = obj.params(torch.float32)
    opt = build(name, params, 0)
    steps(opt, params, obj, 1)
    before = state_copy(opt)
    sd = state_copy(opt)
    del sd["zo"]
    with pytest.raises(ValueError, match="zo"):
        opt.load_state_dict(sd)
    adam = torch.optim.Adam([torch.zeros(3, requires_grad=True)])
    with pytest.raises(ValueError):
        opt.load_state_dict(adam.state_dict())
    assert deep_equal(state_copy(opt), before)
