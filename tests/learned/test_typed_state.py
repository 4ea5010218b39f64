"""The learned step's typed state: one NamedTuple per tensor, one per param group held once,
population dimensions in front, autograd kept and inputs untouched."""
from __future__ import annotations

import pytest
import torch
from zo_testing import deep_equal, random_nets

from torchzo import learned
from torchzo.learned.arch import ControlState, GeneralConfig, GeneralState, PaperConfig, PaperState
from torchzo.oracle import Part, Scheme


def test_each_architecture_names_its_state_types_and_their_fields():
    assert PaperConfig.state_type is PaperState and PaperConfig.group_state_type is None
    assert PaperState._fields == ("update_h", "update_c", "query_h", "query_c", "prev_estimate",
                                  "prev_update", "query_out")
    assert GeneralConfig.state_type is GeneralState
    assert GeneralConfig.group_state_type is ControlState
    assert GeneralState._fields == ("prev_estimate", "prev_update", "momenta", "second",
                                    "query_out")
    assert ControlState._fields == ("ctrl_h", "ctrl_c", "log_sigma", "log_sigma0", "log_radius",
                                    "prev_loss", "loss_scale", "t")
    assert set(PaperConfig.compact_keys) <= set(PaperState._fields)


@pytest.mark.parametrize("population", [(), (3,), (2, 3)])
def test_init_puts_population_dimensions_in_front_and_one_state_per_group(population):
    a, b, c = torch.zeros(4), torch.zeros(2, 3), torch.zeros(5, dtype=torch.float64)
    groups = [learned.Group((0, 1)), learned.Group((2,))]
    paper = learned.init(PaperConfig(hidden=6), [a, b, c], groups, population)
    assert [type(s) for s in paper.tensors] == [PaperState] * 3 and paper.groups == [None, None]
    assert paper.tensors[1].update_h.shape == (*population, 6, 6)
    assert paper.tensors[1].prev_estimate.shape == (*population, 6)
    assert paper.tensors[2].query_c.dtype == torch.float32
    assert all(s.query_out is None for s in paper.tensors)
    cfg = GeneralConfig(hidden=5, momenta=(0.5, 0.9), base=1)
    general = learned.init(cfg, [a, b, c], groups, population)
    assert len(general.groups) == 2 and all(isinstance(g, ControlState) for g in general.groups)
    assert general.tensors[0].momenta.shape == (*population, 4, 2)
    assert general.tensors[2].second.shape == (*population, 5)
    assert general.groups[0].ctrl_h.shape == (*population, 5)
    assert general.groups[1].t.shape == population
    assert not any(v.any() for s in general.tensors for v in s if v is not None)


@pytest.mark.parametrize("kind", ["paper", "general"])
def test_a_population_step_returns_typed_state_of_the_same_shapes_and_changes_nothing(kind):
    nets = random_nets(kind=kind)
    members, d = 3, 6
    weights = {k: v.detach()[None].expand(members, *v.shape).clone().requires_grad_(True)
               for k, v in nets.weights().items()}
    x = torch.linspace(-1, 1, d).expand(members, d).clone()
    groups = [learned.Group((0,), 0.5, q=4)]
    state = learned.init(nets.arch, [x[0]], groups, (members,))
    before = [v.clone() for s in (*state.tensors, *state.groups) if s is not None
              for v in s if v is not None]
    planned = learned.plan(weights, nets.arch, [x], state, groups,
                           [Part((0,), Scheme("forward", 4), 1e-3)],
                           torch.Generator().manual_seed(0))
    grads = [torch.randn(members, d, generator=torch.Generator().manual_seed(1))]
    result = learned.update(weights, nets.arch, [x], state, groups, grads,
                            torch.ones(members), planned)
    (new,), (group,) = result.state
    assert type(new) is type(state.tensors[0]) and new.query_out is None  # out of place
    for field, old in state.tensors[0]._asdict().items():
        if old is not None:
            assert getattr(new, field).shape == old.shape, field
    if kind == "general":
        assert isinstance(group, ControlState) and torch.equal(group.t, torch.ones(members))
        assert group.log_sigma.shape == (members,)
    else:
        assert group is None
    after = [v for s in (*state.tensors, *state.groups) if s is not None
             for v in s if v is not None]
    assert deep_equal(after, before)
    loss = result.params[0].sum()
    loss.backward()
    assert any(w.grad is not None and w.grad.abs().sum() > 0 for w in weights.values())


def test_detached_keeps_the_values_and_cuts_the_graph():
    w = torch.ones(3, requires_grad=True)
    st = GeneralState(w * 2, w * 3, (w * 4)[:, None], w * 5)
    group = ControlState(*(w.sum() * k for k in range(8)))
    cut = learned.LearnedState([st], [group, None]).detached()
    assert cut.groups[1] is None and cut.tensors[0].query_out is None
    assert all(not v.requires_grad for v in (*cut.tensors[0][:4], *cut.groups[0]))
    assert torch.equal(cut.tensors[0].momenta, st.momenta.detach())
