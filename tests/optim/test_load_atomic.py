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
        ("negative steps", zo("steps", -1), "steps"),
        ("groups not a list", lambda sd: sd.__setitem__("param_groups", {}), "param_groups"),
    ]
    # Tensors a step cannot update in place, whatever the key that holds them.
    key = {"ZOSGD": "momentum_buffer", "ZOAdam": "exp_avg", "ZOLSTM": "prev_update"}.get(name)
    if key is not None:
        cases += [
            ("stride 0", lambda sd: sd["state"][0].__setitem__(
                key, torch.zeros(1).expand(sd["state"][0][key].shape)), "share memory"),
            ("sparse", lambda sd: sd["state"][0].__setitem__(
                key, sd["state"][0][key].to_sparse()), "layout"),
            ("meta", lambda sd: sd["state"][0].__setitem__(
                key, sd["state"][0][key].to("meta")), "meta"),
            ("integer", lambda sd: sd["state"][0].__setitem__(
                key, sd["state"][0][key].long()), "floating"),
            ("complex", lambda sd: sd["state"][0].__setitem__(
                key, sd["state"][0][key].to(torch.complex64)), "floating"),
            ("0-dim", first_state(key, torch.tensor(0.5)), "shape"),
            ("inference", lambda sd: sd["state"][0].__setitem__(
                key, _inference_copy(sd["state"][0][key])), "inference"),
            ("list", lambda sd: sd["state"][0].__setitem__(
                key, sd["state"][0][key].tolist()), "tensor"),
        ]
    if name == "ZOSignSGD":
        cases += [("state of a rule with none", lambda sd: sd["state"].__setitem__(
            0, {"momentum_buffer": torch.zeros(2, 3)}), "unknown")]
    if name == "ZOSGD":
        cases += [("wrong shape", first_state("momentum_buffer", torch.zeros(5)), "shape"),
                  ("extra key", first_state("step", 3), "unknown"),
                  ("nan buffer", first_state("momentum_buffer", torch.full((2, 3), math.nan)),
                   "non-finite")]
    if name == "ZOAdam":
        cases += [("wrong shape", first_state("exp_avg", torch.zeros(3, 2)), "shape"),
                  ("inf moment", first_state("exp_avg_sq", torch.full((2, 3), math.inf)),
                   "non-finite"),
                  ("nan step", first_state("step", math.nan), "step"),
                  ("negative step", first_state("step", -1), "step"),
                  ("float step", first_state("step", 2.0), "step"),
                  ("bool step", first_state("step", True), "step"),
                  ("tensor step", first_state("step", torch.tensor(2)), "step"),
                  ("missing key", lambda sd: sd["state"][0].pop("exp_avg_sq"), "lacks"),
                  ("extra key", first_state("momentum_buffer", torch.zeros(2, 3)), "unknown"),
                  ("negative second moment", first_state("exp_avg_sq", -torch.ones(2, 3)),
                   "negative")]
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


def _inference_copy(t):
    with torch.inference_mode():
        return t.clone()


def general_corruptions():
    """Corruptions of the generalist's state (its own keys), as ``corruptions``'s."""
    def first_state(key, value):
        return lambda sd: sd["state"][0].__setitem__(key, value)

    cases = [
        ("negative second moment", first_state("second", -torch.ones(6)), "negative"),
        ("negative step count", first_state("group.t", torch.tensor(-3.0)), "negative"),
        ("stride 0 momenta", first_state("momenta", torch.zeros(1, 1).expand(6, 3)),
         "share memory"),
        ("0-dim second", first_state("second", torch.tensor(1.0)), "shape"),
    ]
    return cases


CASES = [(n, *c) for n in MAKERS for c in corruptions(n)]


GENERAL_CASES = general_corruptions()


@pytest.mark.parametrize("name, label, corrupt, match", CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_failed_load_changes_nothing(name, label, corrupt, match):
    check_failed_load(name, corrupt, match)


@pytest.mark.parametrize("label, corrupt, match", GENERAL_CASES,
                         ids=[c[0] for c in GENERAL_CASES])
def test_a_failed_load_of_the_generalist_changes_nothing(label, corrupt, match):
    check_failed_load("ZOLSTM", corrupt, match, random_nets(kind="general"))


def check_failed_load(name, corrupt, match, nets=None):
    _, _, saved = run(name, 2, nets)
    sd = copy.deepcopy(saved.state_dict())
    corrupt(sd)
    obj, params, opt = run(name, 3, nets)  # a different point, state and RNG
    _, twin_params, twin = run(name, 3, nets)
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


def test_an_expanded_state_tensor_survives_a_weights_only_file_and_is_refused(tmp_path):
    _, params, opt = run("ZOAdam", 2)
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["exp_avg"] = torch.zeros(1).expand(2, 3)
    torch.save(sd, tmp_path / "opt.pt")
    loaded = torch.load(tmp_path / "opt.pt", weights_only=True)
    assert loaded["state"][0]["exp_avg"].stride() == (0, 0)  # torch keeps the layout
    before = state_copy(opt)
    with pytest.raises(ValueError, match="exp_avg.*share memory"):
        opt.load_state_dict(loaded)
    assert deep_equal(state_copy(opt), before)


@pytest.mark.parametrize("alias", ["each other", "a parameter"])
def test_state_tensors_that_share_memory_are_loaded_as_copies(alias):
    _, _, saved = run("ZOAdam", 2)
    sd = copy.deepcopy(saved.state_dict())
    clean = copy.deepcopy(sd)
    obj, params, opt = run("ZOAdam", 1)
    _, twin_params, twin = run("ZOAdam", 1)
    with torch.no_grad():
        for p, q in zip(params, twin_params):
            p.copy_(q)
    if alias == "each other":  # both moments one tensor, as a file of views of one buffer
        sd["state"][0]["exp_avg"] = sd["state"][0]["exp_avg_sq"]
        clean["state"][0]["exp_avg"] = clean["state"][0]["exp_avg_sq"].clone()
    else:
        sd["state"][1]["exp_avg"] = params[1].detach()
        clean["state"][1]["exp_avg"] = params[1].detach().clone()
    opt.load_state_dict(sd)
    twin.load_state_dict(clean)
    opt.step(lambda: obj(params))
    twin.step(lambda: obj(twin_params))
    assert all_same_bits(params, twin_params)
    assert deep_equal(state_copy(opt), state_copy(twin))
