"""load_state_dict is atomic: everything is checked before anything changes, and a
state dict that fails leaves parameters, state, RNG and counters bit-identical."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from zo_testing import Objective, all_same_bits, deep_equal, random_nets, snapshot, state_copy

import torchzo
from torchzo.learned import GeneralConfig, LearnedZO

SHAPES = [(2, 3), (4,)]
MAKERS = {
    "ZOSGD": lambda ps, nets: torchzo.ZOSGD(ps, lr=0.05, q=3, momentum=0.9, seed=0),
    "ZOSignSGD": lambda ps, nets: torchzo.ZOSignSGD(ps, lr=0.02, q=3, seed=0),
    "ZOAdam": lambda ps, nets: torchzo.ZOAdam(
        [{"params": ps[:1]}, {"params": ps[1:], "q": 2, "estimator": "central"}], lr=0.05, q=3,
        seed=0),
    "ZOLSTM": lambda ps, nets: torchzo.ZOLSTM(ps, pretrained=nets, q=3, seed=0),
}


def run(name, steps, nets=None):
    obj = Objective(SHAPES, seed=4)
    params = obj.params(torch.float32)
    opt = MAKERS[name](params, nets if nets is not None else random_nets())
    for _ in range(steps):
        opt.step(lambda: obj(params))
    return obj, params, opt


def corruptions(name):
    """(label, function changing a deep copy of a valid state dict, message pattern)."""
    def zo(key, value):
        return lambda sd: sd["zo"].__setitem__(key, value)

    def first_state(key, value):
        return lambda sd: sd["state"][0].__setitem__(key, value)

    def group(key, value):
        return lambda sd: sd["param_groups"][0].__setitem__(key, value)

    cases = [
        ("no zo", lambda sd: sd.pop("zo"), "'zo'"),
        ("zo not a dict", lambda sd: sd.__setitem__("zo", [1]), "zo"),
        ("no steps", lambda sd: sd["zo"].pop("steps"), "steps"),
        ("negative queries", zo("queries", -1), "queries"),
        ("float steps", zo("steps", 2.5), "steps"),
        ("bad generator", zo("generator", torch.zeros(7, dtype=torch.uint8)), "generator"),
        ("generator not a tensor", zo("generator", [1, 2]), "generator"),
        ("nan lr", group("lr", math.nan), "lr"),
        ("bad estimator", group("estimator", "backward"), "estimator"),
        ("short group", lambda sd: sd["param_groups"][0]["params"].pop(), "parameters"),
        ("extra group", lambda sd: sd["param_groups"].append(copy.deepcopy(
            sd["param_groups"][0])), "param groups"),
        ("state of no parameter", lambda sd: sd["state"].__setitem__(99, {}), "99"),
        ("state not a dict", lambda sd: sd["state"].__setitem__(0, 3.0), "dict"),
        ("groups not a list", lambda sd: sd.__setitem__("param_groups", {}), "param_groups"),
    ]
    if name == "ZOSGD":
        cases += [("wrong shape", first_state("momentum_buffer", torch.zeros(5)), "shape"),
                  ("nan buffer", first_state("momentum_buffer", torch.full((2, 3), math.nan)),
                   "non-finite")]
    if name == "ZOAdam":
        cases += [("wrong shape", first_state("exp_avg", torch.zeros(3, 2)), "shape"),
                  ("inf moment", first_state("exp_avg_sq", torch.full((2, 3), math.inf)),
                   "non-finite"),
                  ("nan step", first_state("step", math.nan), "step")]
    if name == "ZOLSTM":
        cases += [
            ("wrong state shape", first_state("update_h", torch.zeros(6, 20)), "update_h"),
            ("unknown state key", first_state("momentum_buffer", torch.zeros(6)), "unknown"),
            ("missing state key", lambda sd: sd["state"][0].pop("query_c"), "missing"),
            ("nan state", first_state("prev_update", torch.full((6,), math.nan)), "non-finite"),
            ("nets missing a key", lambda sd: sd["zo"]["nets"].pop("query.head.weight"),
             "missing"),
            ("nets of another size", lambda sd: sd["zo"].__setitem__(
                "nets", LearnedZO(20).state_dict()), "shape"),
            ("nan nets", lambda sd: sd["zo"]["nets"]["update.head.weight"].fill_(math.nan),
             "non-finite"),
            ("huge nets", lambda sd: sd["zo"]["nets"]["update.head.weight"].fill_(1e30),
             "magnitude"),
            ("bad state dtype", group("state_dtype", torch.int8), "state_dtype"),
        ]
    return cases


CASES = [(n, *c) for n in MAKERS for c in corruptions(n)]


@pytest.mark.parametrize("name, label, corrupt, match", CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_failed_load_changes_nothing(name, label, corrupt, match):
    _, _, saved = run(name, 2)
    sd = copy.deepcopy(saved.state_dict())
    corrupt(sd)
    obj, params, opt = run(name, 3)  # a different point, state and RNG
    _, twin_params, twin = run(name, 3)
    before_params, before = snapshot(params), state_copy(opt)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    assert all_same_bits(params, before_params)
    assert deep_equal(state_copy(opt), before)
    # And it steps exactly as an optimizer that was never asked to load.
    opt.step(lambda: obj(params))
    twin.step(lambda: obj(twin_params))
    assert all_same_bits(params, twin_params)
    assert deep_equal(state_copy(opt), state_copy(twin))


def test_issue_repro_missing_steps_leaves_the_adam_state():
    obj = Objective([(3,)])
    x = obj.params(torch.float32)
    opt = torchzo.ZOAdam(x, lr=0.05, q=2, seed=0)
    opt.step(lambda: obj(x))
    sd = copy.deepcopy(opt.state_dict())
    del sd["zo"]["steps"]
    opt.step(lambda: obj(x))
    generator = opt._generator.get_state()
    with pytest.raises(ValueError, match="steps"):
        opt.load_state_dict(sd)
    assert opt.state[x[0]]["step"] == 2 and opt.steps == 2
    assert torch.equal(opt._generator.get_state(), generator)


def test_issue_repro_hidden_20_checkpoint_into_hidden_10_optimizer():
    def make(hidden):
        x = torch.randn(6, generator=torch.Generator().manual_seed(0))
        opt = torchzo.ZOLSTM([x], pretrained=LearnedZO(hidden), q=3, seed=0)
        opt.step(lambda: (x**2).sum())
        return x, opt

    _, big = make(20)
    x, small = make(10)
    before = state_copy(small)
    with pytest.raises(ValueError, match="hidden 10"):
        small.load_state_dict(big.state_dict())
    assert deep_equal(state_copy(small), before)
    small.step(lambda: (x**2).sum())  # the in-memory state survived
    assert small.steps == 2


@pytest.mark.parametrize("name", list(MAKERS))
def test_a_valid_load_still_resumes_and_ignores_the_failed_attempts(name):
    _, _, saved = run(name, 2)
    sd = copy.deepcopy(saved.state_dict())
    obj, params, opt = run(name, 3)
    bad = copy.deepcopy(sd)
    bad["zo"]["queries"] = "many"
    with pytest.raises(ValueError):
        opt.load_state_dict(bad)
    opt.load_state_dict(sd)
    assert (opt.steps, opt.queries) == (saved.steps, saved.queries)
    assert deep_equal(state_copy(opt), state_copy(saved))


def test_zolstm_general_arch_state_is_checked_against_its_architecture():
    nets = random_nets(kind="general")
    _, _, saved = run("ZOLSTM", 2, nets)
    sd = copy.deepcopy(saved.state_dict())
    assert set(sd["state"][0]) >= {"momenta", "second", "group.t"}
    sd["state"][0]["momenta"] = torch.zeros(6, 2)
    _, params, opt = run("ZOLSTM", 1, nets)
    before = state_copy(opt)
    with pytest.raises(ValueError, match="momenta"):
        opt.load_state_dict(sd)
    assert deep_equal(state_copy(opt), before)
    assert GeneralConfig() == opt.nets.arch
