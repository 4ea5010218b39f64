"""ZOLSTM's stored state: a group's own state held once, in its first parameter's, and state
dicts of the layout before that (the group's entries in every tensor's state) still resume."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from zo_testing import deep_equal, random_nets, state_copy

from torchzo import ZOLSTM
from torchzo.learned import PRESETS, GeneralConfig, LearnedZO
from torchzo.learned.arch import ControlState, GeneralState
from torchzo.tasks import Quadratic

# Saved by the ZOLSTM of the layout before (version 1): for each of two general networks,
# the state dict after 3 steps, the points then, and the losses and points of the 3 steps
# that followed. Rademacher directions, whose stream that version shares with this one.
FIXTURE = Path(__file__).parent / "data" / "zolstm_state_v1.pt"
GROUP_FIELDS = ControlState._fields


def _setup(name: str, start: list[torch.Tensor], seed: int = 0):
    """The optimizer the fixture was saved from (a generalist, or a general arch with a
    query net), at ``start``, with its closure."""
    prob = Quadratic(dim=7, seed=0, dtype=torch.float32)
    a, b, c = (torch.nn.Parameter(t.clone()) for t in start)
    # The saved state dicts hold the weights; these are networks of the same shapes.
    arch = PRESETS["generalist"] if name == "generalist" else GeneralConfig(hidden=3,
                                                                           coord_hidden=4)
    nets = LearnedZO(arch=arch)
    opt = ZOLSTM([{"params": [a, b]}, {"params": [c], "lr": 0.5}], pretrained=nets, q=3,
                 seed=seed, directions_kind="rademacher")

    def closure():
        return prob(torch.cat([a.reshape(-1), b.reshape(-1)])) + (c ** 2).sum()
    return opt, [a, b, c], closure


def _x0() -> list[torch.Tensor]:
    x0 = Quadratic(dim=7, seed=0, dtype=torch.float32).x0
    return [x0[:4], x0[4:].view(3, 1), x0[:2] * 0.5]


@pytest.mark.parametrize("name", ["generalist", "general-query"])
def test_a_state_dict_from_before_the_typed_state_resumes_the_same_steps(name):
    saved = torch.load(FIXTURE, weights_only=True)[name]
    old = saved["state_dict"]
    assert "version" not in old["zo"] and all("t" in e for e in old["state"].values())
    untouched = copy.deepcopy(old)
    opt, params, closure = _setup(name, saved["start"], seed=9)
    opt.load_state_dict(old)
    assert deep_equal(old, untouched)  # translated, not modified
    # Each group's state once, in its first parameter's, with that parameter's old values.
    a, b, c = params
    for p, pid in ((a, 0), (c, 2)):
        for k in GROUP_FIELDS:
            assert torch.equal(opt.state[p][f"group.{k}"], old["state"][pid][k]), k
    assert not any(k.startswith("group.") or k in GROUP_FIELDS for k in opt.state[b])
    losses = torch.stack([opt.step(closure) for _ in range(3)])
    assert torch.equal(losses, saved["losses"])
    for p, expected in zip(params, saved["params"]):
        assert torch.equal(p.detach(), expected)


@pytest.mark.parametrize("name", ["generalist", "general-query"])
def test_the_first_steps_store_what_the_old_layout_stored_held_once(name):
    """From the same start, this version's state dict after 3 steps holds the fixture's values:
    each per-coordinate entry, and each group's entries once instead of in every tensor."""
    saved = torch.load(FIXTURE, weights_only=True)[name]
    old = saved["state_dict"]
    opt, params, closure = _setup(name, _x0())
    opt.nets.load_state_dict(old["zo"]["nets"])
    for _ in range(3):
        opt.step(closure)
    for p, expected in zip(params, saved["start"]):
        assert torch.equal(p.detach(), expected)
    sd = opt.state_dict()
    assert sd["zo"]["version"] == 2 and torch.equal(sd["zo"]["generator"], old["zo"]["generator"])
    firsts = {0, 2}
    for pid, entry in old["state"].items():
        new = sd["state"][pid]
        own = {k: v for k, v in entry.items() if k not in GROUP_FIELDS}
        group = {f"group.{k}": entry[k] for k in GROUP_FIELDS} if pid in firsts else {}
        assert deep_equal(new, {**own, **group}), pid


def test_a_groups_state_is_held_once_in_its_first_parameters_state():
    nets = random_nets(kind="general")
    a, b, c = torch.zeros(3), torch.zeros(2, 2), torch.zeros(4)
    opt = ZOLSTM([{"params": [a, b]}, {"params": [c]}], pretrained=nets, q=2, seed=0)
    for _ in range(2):
        opt.step(lambda: (a - 1).pow(2).sum() + (b + 1).pow(2).sum() + c.sin().sum())
    per_coordinate = set(GeneralState._fields)
    group = {f"group.{k}" for k in GROUP_FIELDS}
    assert set(opt.state[a]) == set(opt.state[c]) == per_coordinate | group
    assert set(opt.state[b]) == per_coordinate
    assert opt.state[a]["group.t"].item() == 2 and opt.state[a]["group.ctrl_h"].shape == (10,)
    _, state, _ = opt._learned_groups()
    assert len(state.tensors) == 3 and len(state.groups) == 2
    assert all(isinstance(g, ControlState) for g in state.groups)
    assert all(isinstance(s, GeneralState) for s in state.tensors)


def test_paper_state_dict_without_a_version_loads_as_the_same_state():
    nets = random_nets()
    x = torch.zeros(5)
    opt = ZOLSTM([x], pretrained=nets, q=3, seed=0)
    for _ in range(2):
        opt.step(lambda: (x - 1).pow(2).sum())
    sd = opt.state_dict()
    old = {**sd, "zo": {k: v for k, v in sd["zo"].items() if k != "version"}}
    y = x.clone()
    other = ZOLSTM([y], pretrained=random_nets(seed=4), q=3, seed=7)
    other.load_state_dict(old)
    assert deep_equal(other.state_dict(), sd)


def _general_opt():
    x, y = torch.zeros(3), torch.zeros(2)
    opt = ZOLSTM([{"params": [x, y]}], pretrained=random_nets(kind="general"), q=2, seed=0)
    opt.step(lambda: (x - 1).pow(2).sum() + (y + 1).pow(2).sum())
    return opt


@pytest.mark.parametrize("change, match", [
    ("version", "version"),
    ("group entry on a second tensor", "unknown entries"),
    ("group entry missing", "missing"),
    ("old group entry in a new layout", "unknown entries"),
])
def test_a_state_dict_in_no_layout_this_version_reads_changes_nothing(change, match):
    sd = copy.deepcopy(_general_opt().state_dict())
    if change == "version":
        sd["zo"]["version"] = 3
    elif change == "group entry on a second tensor":
        sd["state"][1]["group.t"] = sd["state"][0]["group.t"].clone()
    elif change == "group entry missing":
        del sd["state"][0]["group.log_sigma"]
    else:
        sd["state"][1]["t"] = sd["state"][0]["group.t"].clone()
    opt = _general_opt()
    opt.step(lambda: sum(p.sum() for p in opt.param_groups[0]["params"]))
    before = state_copy(opt)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    assert deep_equal(state_copy(opt), before)
