"""Property: whatever is done to a state dict, loading it either raises ValueError and changes
nothing, or succeeds and the next step works, leaving a state that saves and loads again
(values finite but beyond any range a step can use, a moment of 1e30, may make the steps
refuse cleanly instead: a NonFiniteUpdateError or a non-finite loss, undone).

The tampering draws a key of a parameter's state, the step counters, or the layout of the
entries: tensors made strided views (valid), expanded, sparse, meta, of another dtype or
shape, 0-dim, inference tensors or not tensors at all; values NaN, infinite, negative, huge
or zero; keys removed, added or renamed, entries emptied or moved to other parameters.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from zo_testing import Objective, all_same_bits, deep_equal, random_nets, snapshot, state_copy

import torchzo
from torchzo.optim import NonFiniteUpdateError
from torchzo.oracle import ClosureError

SHAPES = [(2, 3), (4,)]
NETS = {"paper": random_nets(seed=1), "general": random_nets(seed=2, kind="general")}
MAKERS = {
    "ZOSGD": lambda ps, seed: torchzo.ZOSGD(ps, lr=0.05, q=3, momentum=0.9, seed=seed),
    "ZOSignSGD": lambda ps, seed: torchzo.ZOSignSGD(ps, lr=0.02, q=3, seed=seed),
    "ZOAdam": lambda ps, seed: torchzo.ZOAdam(ps, lr=0.05, q=3, seed=seed),
    "ZOLSTM paper": lambda ps, seed: torchzo.ZOLSTM(ps, pretrained=NETS["paper"], q=3,
                                                    seed=seed),
    "ZOLSTM general": lambda ps, seed: torchzo.ZOLSTM(ps, pretrained=NETS["general"], q=3,
                                                      seed=seed),
}


def _inference(t):
    with torch.inference_mode():
        return t.clone()


LAYOUTS = {  # name -> what it makes of a state tensor
    "expand": lambda t: t.reshape(-1)[:1].expand(t.shape) if t.numel() > 1 else t,
    "transposed view": lambda t: t.t().contiguous().t() if t.dim() == 2 else t,
    "slice of a larger tensor": lambda t: torch.cat([t.reshape(-1), t.reshape(-1)])[
        :t.numel()].view(t.shape),
    "every other element": lambda t: torch.stack([t, t], -1)[..., 0],
    "sparse": lambda t: t.to_sparse(),
    "meta": lambda t: t.to("meta"),
    "float64": lambda t: t.double(),
    "bfloat16": lambda t: t.bfloat16(),
    "int32": lambda t: t.int(),
    "complex": lambda t: t.to(torch.complex64),
    "bool": lambda t: t > 0,
    "0-dim": lambda t: t.reshape(-1)[0].clone() if t.numel() else torch.tensor(0.0),
    "flattened": lambda t: t.reshape(-1),
    "unsqueezed": lambda t: t.unsqueeze(0),
    "inference": _inference,
    "a list": lambda t: t.tolist(),
    "None": lambda t: None,
    "a number": lambda t: 0.5,
}
VALUES = {  # name -> a value for the state tensor's elements
    "nan": math.nan, "inf": math.inf, "-inf": -math.inf, "negative": -1.0, "huge": 1e30,
    "zero": 0.0, "tiny": 1e-30,
}
COUNTS = [-1, 0, 1, 10**30, 2.5, math.nan, True, None, "3", torch.tensor(2)]


def tamper(sd, data):
    """Change ``sd`` in one drawn way."""
    state = sd["state"]
    where = data.draw(st.sampled_from(["layout", "values", "keys", "counters"]), label="what")
    pid = data.draw(st.sampled_from(sorted(state) or [0]), label="entry")
    entry = state.get(pid, {})
    tensors = sorted(k for k, v in entry.items() if isinstance(v, torch.Tensor))
    if where == "layout" and tensors:
        key = data.draw(st.sampled_from(tensors), label="key")
        entry[key] = LAYOUTS[data.draw(st.sampled_from(list(LAYOUTS)), label="layout")](
            entry[key])
    elif where == "values" and tensors:
        key = data.draw(st.sampled_from(tensors), label="key")
        value = VALUES[data.draw(st.sampled_from(list(VALUES)), label="value")]
        entry[key] = entry[key].clone()
        if entry[key].numel():
            index = data.draw(st.integers(0, entry[key].numel() - 1), label="index")
            everywhere = data.draw(st.booleans(), label="everywhere")
            if everywhere:
                entry[key].fill_(value)
            else:
                entry[key].view(-1)[index] = value
    elif where == "keys":
        how = data.draw(st.sampled_from(["pop", "add", "rename", "empty", "not a dict",
                                         "drop entry", "unknown parameter", "move"]),
                        label="how")
        keys = sorted(entry, key=str)
        if how == "pop" and keys:
            entry.pop(data.draw(st.sampled_from(keys), label="key"))
        elif how == "add":
            entry["bogus"] = torch.zeros(2)
        elif how == "rename" and keys:
            key = data.draw(st.sampled_from(keys), label="key")
            entry[key + "_old"] = entry.pop(key)
        elif how == "empty":
            entry.clear()
        elif how == "not a dict":
            state[pid] = 3.0
        elif how == "drop entry":
            state.pop(pid, None)
        elif how == "unknown parameter":
            state[99] = dict(entry)
        elif how == "move" and pid in state:
            other = 1 - pid if pid in (0, 1) else 0
            state[other] = state.pop(pid)
    else:
        count = data.draw(st.sampled_from(COUNTS), label="count")
        target = data.draw(st.sampled_from(["step", "zo steps", "zo queries", "group.t"]),
                           label="counter")
        if target == "step" and "step" in entry:
            entry["step"] = count
        elif target == "group.t" and "group.t" in entry:
            entry["group.t"] = count if not isinstance(count, (int, float)) or isinstance(
                count, bool) else torch.tensor(float(count))
        elif target.startswith("zo"):
            sd["zo"][target.split()[1]] = count


def make(name, seed, steps):
    obj = Objective(SHAPES, seed=seed % 5)
    params = obj.params(torch.float32)
    opt = MAKERS[name](params, seed)
    for _ in range(steps):
        opt.step(lambda: obj(params))
    return obj, params, opt


def finite(params, opt):
    state = [v for s in opt.state.values() for v in s.values()
             if isinstance(v, torch.Tensor) and v.is_floating_point()]
    return all(bool(torch.isfinite(t).all()) for t in [*params, *state])


@pytest.mark.filterwarnings("ignore::torchzo.ZeroSignalWarning")  # a parameter sent far off
@settings(max_examples=300, deadline=None, database=None)
@given(name=st.sampled_from(list(MAKERS)), seed=st.integers(0, 2**31), data=st.data())
def test_a_tampered_state_dict_is_refused_whole_or_steps(name, seed, data):
    _, _, saved = make(name, seed, 2)
    sd = copy.deepcopy(saved.state_dict())
    tamper(sd, data)
    obj, params, opt = make(name, seed + 1, 1)
    before_params, before = snapshot(params), state_copy(opt)
    try:
        opt.load_state_dict(sd)
    except ValueError:
        assert all_same_bits(params, before_params)
        assert deep_equal(state_copy(opt), before)
        opt.step(lambda: obj(params))
        return
    step_or_refuse(opt, obj, params)
    assert finite(params, opt)
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # what it saved, it loads
    step_or_refuse(opt, obj, params)


def step_or_refuse(opt, obj, params):
    """A step, or, where loaded values are finite but out of any range a step can use (a
    moment of 1e30, a step size of exp(1e30)), its clean refusal: undone."""
    before, state = snapshot(params), state_copy(opt)
    try:
        opt.step(lambda: obj(params))
    except (NonFiniteUpdateError, ClosureError) as err:
        assert isinstance(err, NonFiniteUpdateError) or "non-finite loss" in str(err)
        assert all_same_bits(params, before)
        # Only the paper architecture's LSTM states may have advanced.
        advanced = set(opt.nets.arch.compact_keys) if isinstance(opt, torchzo.ZOLSTM) else set()
        assert deep_equal(_without(state_copy(opt), advanced), _without(state, advanced))


def _without(sd, keys):
    sd["state"] = {i: {k: v for k, v in e.items() if k not in keys}
                   for i, e in sd["state"].items()}
    return sd


def test_the_tampering_reaches_every_kind_of_state():
    # The property above draws from these entries: each optimizer has some (ZOSignSGD none).
    for name in MAKERS:
        _, _, opt = make(name, 0, 2)
        keys = {k for s in opt.state_dict()["state"].values() for k in s}
        assert bool(keys) == (name != "ZOSignSGD")
