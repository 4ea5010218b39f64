"""The learned step is one function: for a population of weight sets, and for the optimizer."""
from __future__ import annotations

import copy
import io
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from zo_testing import deep_equal, random_nets

import torchzo
from torchzo import learned
from torchzo.learned import LearnedZO
from torchzo.oracle import Part, Query, Scheme, estimate_batched, estimate_gradient

ROOT = Path(__file__).resolve().parents[2] / "torchzo"
D = 64  # above the sizes at which batched and plain matmuls take different CPU kernels


def _nets(seed: int, kind: str) -> LearnedZO:
    return random_nets(seed, 3.0, kind)


def _loss(X: torch.Tensor) -> torch.Tensor:
    return ((X - 1.0) ** 2 * torch.linspace(0.5, 2.0, X.shape[-1])).sum(-1)


def _estimate_population(x: torch.Tensor, query: Query
                         ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """An estimate for each member of a population (x: (P, d)), all with the same seeds, and
    each member's loss at its point."""
    found = [estimate_batched(_loss, x[m], replace(
                 query, scale=None if query.scale is None else (query.scale[0][m],)))
             for m in range(x.shape[0])]
    return [torch.stack([g for _, g in found])], torch.stack([f for f, _ in found])


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def _init(arch, x, population=()) -> learned.LearnedState:
    return learned.init(arch, [x], [learned.Group((0,))], population)


def _flat(state: learned.LearnedState) -> dict[str, torch.Tensor]:
    """Every tensor of a one-tensor, one-group state by field name (the group's prefixed)."""
    (st,), (group,) = state
    out = {k: v.clone() for k, v in st._asdict().items() if v is not None}
    if group is not None:
        out.update({f"group.{k}": v.clone() for k, v in group._asdict().items()})
    return out


def _run(weights, arch, x, state, generator, covariance, steps, in_place):
    scheme = Scheme("forward", 6)
    xs, states = [], []
    groups = [learned.Group((0,), 0.5, covariance=covariance, query_prob=0.7)]
    for _ in range(steps):
        planned = learned.plan(weights, arch, [x], state, groups, [Part((0,), scheme, 1e-3)],
                               generator)
        if x.dim() == 1:
            found = estimate_gradient(torchzo.Batched(_loss), [x], planned.queries)
            grads, loss = found.grads, found.loss
        else:
            grads, loss = _estimate_population(x, planned.queries[0])
        result = learned.update(weights, arch, [x], state, groups, grads, loss, planned,
                                in_place=in_place)
        (x,), state = result.params, result.state
        xs.append(x.clone())
        states.append(_flat(state))
    return xs, states


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("covariance", ["learned", "identity"])
@pytest.mark.parametrize("kind", ["paper", "general"])
def test_population_members_step_as_their_own_weights_do(kind, covariance, in_place):
    """A population of one is the unbatched step, bit for bit; one call over three weight sets
    gives each the step it takes alone, up to float32 rounding."""
    members = [_nets(seed, kind) for seed in (1, 2, 3)]
    arch = members[0].arch
    x0 = torch.linspace(-1, 1, D)
    with torch.no_grad():
        alone = [_run(n.weights(), arch, x0.clone(), _init(arch, x0),
                      torch.Generator().manual_seed(7), covariance, 5, in_place)
                 for n in members]
        for size in (1, 3):
            weights = {k: torch.stack([n.weights()[k] for n in members[:size]])
                       for k in members[0].weights()}
            xs, states = _run(weights, arch, x0.repeat(size, 1),
                              _init(arch, x0, (size,)),
                              torch.Generator().manual_seed(7), covariance, 5, in_place)
            for m in range(size):
                # A population of one is bit-exact at every step with the paper's networks
                # (the general controller's one-row LSTM rounds in another order when it
                # runs batched). In a larger one the batched read-out can round in another
                # order too; the random nets here amplify that over steps, so a member is
                # compared to its own first step only.
                for t in range(5 if size == 1 else 1):
                    same = torch.equal if size == 1 and kind == "paper" else _close
                    assert same(xs[t][m], alone[m][0][t]), (size, m, t)
                    for key, value in alone[m][1][t].items():
                        assert same(states[t][key][m], value), (size, m, t, key)
    assert not torch.equal(alone[0][0][-1], alone[1][0][-1])


def test_one_weight_set_computes_the_lstm_cells_states():
    torch.manual_seed(0)
    net = learned.CoordLSTM(3, 10, 2)
    x, h, c = torch.randn(D, 3), torch.randn(D, 10), torch.randn(D, 10)
    ref_h, ref_c = net.cell(x, (h, c))
    y, h_new, c_new = net(x, h, c)
    assert torch.equal(h_new, ref_h) and torch.equal(c_new, ref_c)
    assert torch.equal(y, net.head(ref_h))


def test_step_is_differentiable_in_the_weights_and_changes_nothing_out_of_place():
    # The paper's networks: meta-training backpropagates through them. The general ones are
    # trained by ES, and with these random weights their update and query nets get NaN
    # gradients here.
    nets = _nets(1, "paper")
    weights = {k: v.detach().clone().requires_grad_(True) for k, v in nets.weights().items()}
    x = torch.zeros(D)
    state = _init(nets.arch, x)
    before = _flat(state)
    xs, _ = _run(weights, nets.arch, x, state, torch.Generator().manual_seed(0), "learned", 3,
                 in_place=False)
    _loss(xs[-1]).backward()
    assert all(w.grad is not None and w.grad.abs().sum() > 0
               for k, w in weights.items() if k.startswith("update") or k == "log_lr")
    assert torch.equal(x, torch.zeros(D))
    assert deep_equal(_flat(state), before)


def test_no_second_copy_of_the_step_order():
    """Only torchzo/learned/step.py sequences the networks; everyone else calls it."""
    calls = re.compile(r"\b(_mix_draw|scales_from_outputs)\(|\barch\.update\(")
    found = {str(path.relative_to(ROOT)) for path in ROOT.rglob("*.py")
             if calls.search(path.read_text())}
    # zolstm.py only reads the scales it will use next (next_query_scales).
    assert found == {"learned/step.py", "optim/zolstm.py"}, found
    zolstm = (ROOT / "optim" / "zolstm.py").read_text()
    assert "mix_draw" not in zolstm and "learned_update" not in zolstm
    assert "_pending" not in zolstm


def test_settings_are_hyperparameters_in_groups_and_state_dict():
    nets = _nets(1, "paper")
    x, y = torch.zeros(4), torch.zeros(3)
    opt = torchzo.ZOLSTM([{"params": [x]}, {"params": [y], "covariance": "identity",
                                            "state_dtype": torch.bfloat16}],
                         pretrained=nets, q=4, seed=0, query_prob=0.25)
    groups = opt.state_dict()["param_groups"]
    assert groups[0]["covariance"] == "learned" and groups[1]["covariance"] == "identity"
    assert groups[0]["query_prob"] == 0.25 and groups[1]["state_dtype"] == torch.bfloat16
    for key in ("use_update", "guide_alpha"):
        assert all(key in g for g in groups)
    opt.step(lambda: (x - 1).pow(2).sum() + (y + 1).pow(2).sum())
    assert opt.state[y]["update_h"].dtype == torch.bfloat16
    assert opt.state[x]["update_h"].dtype == torch.float32
    assert "query_out" in opt.state[x] and "query_out" not in opt.state[y]
    with pytest.raises(ValueError, match="query_prob"):
        opt.add_param_group({"params": [torch.zeros(2)], "query_prob": 2.0})
    assert len(opt.param_groups) == 2


def test_a_schedule_of_query_prob_changes_the_steps():
    nets = _nets(1, "paper")
    finals = []
    for late in (0.5, 0.0):
        x = torch.zeros(6)
        opt = torchzo.ZOLSTM([x], pretrained=nets, q=4, seed=0, query_prob=0.5)
        for t in range(6):
            if t == 3:
                opt.param_groups[0]["query_prob"] = late
            opt.step(lambda x=x: (x - 1).pow(2).sum())
        finals.append(x.clone())
    assert not torch.equal(*finals)


def test_checkpoint_without_the_settings_loads_and_resumes():
    """A state dict saved before the ZO-LSTM settings were hyperparameters still loads."""
    nets = _nets(1, "paper")
    f = lambda x: ((x - 1.5) ** 2).sum()  # noqa: E731
    xa, xb = torch.zeros(5), torch.zeros(5)
    full = torchzo.ZOLSTM([xa], pretrained=copy.deepcopy(nets), q=4, seed=3)
    part = torchzo.ZOLSTM([xb], pretrained=copy.deepcopy(nets), q=4, seed=3)
    for _ in range(6):
        full.step(lambda: f(xa))
    for _ in range(2):
        part.step(lambda: f(xb))
    sd = part.state_dict()
    for g in sd["param_groups"]:
        for key in ("query_prob", "covariance", "use_update", "guide_alpha", "state_dtype"):
            del g[key]
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    xc = xb.clone()
    resumed = torchzo.ZOLSTM([xc], pretrained=copy.deepcopy(nets), q=4, seed=9)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert resumed.param_groups[0]["covariance"] == "learned"
    for _ in range(4):
        resumed.step(lambda: f(xc))
    assert torch.equal(xa, xc)


def test_oracle_entry_point_closure_and_batched_agree_and_restore():
    torch.manual_seed(0)
    a, b = torch.randn(3, 2), torch.randn(5)
    parts = [Part((0,), Scheme("forward", 4), 1e-3), Part((1,), Scheme("central", 2), 1e-3)]

    def closure():
        return _loss(torch.cat([a.reshape(-1), b]))

    before = (a.clone(), b.clone())
    gen = torch.Generator().manual_seed(1)
    got = estimate_gradient(closure, [a, b], [part.draw(gen) for part in parts])
    assert torch.equal(a, before[0]) and torch.equal(b, before[1])
    assert got.queries == 1 + 4 + 4 and [g.shape for g in got.grads] == [a.shape, b.shape]
    one = [Part((0, 1), Scheme("forward", 4), 1e-3)]
    closed = estimate_gradient(closure, [a, b],
                               [part.draw(torch.Generator().manual_seed(1)) for part in one])
    batched = estimate_gradient(torchzo.Batched(_loss), [a, b],
                                [part.draw(torch.Generator().manual_seed(1)) for part in one])
    for g, h in zip(closed.grads, batched.grads):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="share"):
        estimate_gradient(torchzo.Batched(_loss), [a, b],
                          [part.draw(torch.Generator()) for part in parts])


def test_the_covariance_setting_still_answers_to_its_old_name():
    """``directions`` (values learned, gaussian, guided_es) was the covariance setting's name:
    as an argument or a group key it warns and means the same; a state dict saved under it
    loads as the new name; a bad old value is refused."""
    nets = _nets(1, "paper")
    f = lambda x: ((x - 1.5) ** 2).sum()  # noqa: E731
    runs = []
    for old, new in (("gaussian", "identity"), ("guided_es", "guided")):
        xa, xb, xc = torch.zeros(5), torch.zeros(5), torch.zeros(5)
        with pytest.warns(FutureWarning, match=f"covariance={new!r}"):
            a = torchzo.ZOLSTM([xa], pretrained=nets, q=4, seed=3, directions=old)
        with pytest.warns(FutureWarning) as warned:
            b = torchzo.ZOLSTM([{"params": [xb], "directions": old}], pretrained=nets, q=4,
                               seed=3)
        assert warned[0].filename == __file__  # points at the caller, not into torch
        c = torchzo.ZOLSTM([xc], pretrained=nets, q=4, seed=3, covariance=new)
        for opt, x in ((a, xa), (b, xb), (c, xc)):
            assert opt.param_groups[0]["covariance"] == new
            for _ in range(3):
                opt.step(lambda x=x: f(x))
        assert torch.equal(xa, xc) and torch.equal(xb, xc)
        runs.append(xc.clone())
    assert not torch.equal(*runs)
    sd = c.state_dict()
    sd["param_groups"][0]["directions"] = "guided_es"
    del sd["param_groups"][0]["covariance"]
    d = torchzo.ZOLSTM([torch.zeros(5)], pretrained=nets, q=4, seed=0)
    d.load_state_dict(sd)
    assert d.param_groups[0]["covariance"] == "guided" and "directions" not in d.param_groups[0]
    with pytest.raises(ValueError, match="directions"):
        torchzo.ZOLSTM([torch.zeros(2)], pretrained=nets, directions="sphere")
