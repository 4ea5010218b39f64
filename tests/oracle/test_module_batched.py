"""``module_objective``: an nn.Module's loss as a batched objective (functional_call + vmap)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from zo_testing import snapshot

import torchzo
from torchzo.oracle import module_objective


def _mlp(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    x = torch.randn(40, 6)
    y = torch.randint(0, 3, (40,))
    return model, x, y


def _loaded_loss(model: nn.Module, params: list[torch.Tensor], row: torch.Tensor,
                 loss) -> torch.Tensor:
    """The loss with ``row`` copied into ``params`` (then put back)."""
    saved = snapshot(params)
    with torch.no_grad():
        for p, piece in zip(params, row.split([p.numel() for p in params])):
            p.copy_(piece.view_as(p))
        value = loss()
        for p, s in zip(params, saved):
            p.copy_(s)
    return value


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_rows_give_the_losses_of_the_module_with_those_parameters(chunk_size):
    model, x, y = _mlp()
    params = list(model.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    X = flat + 0.3 * torch.randn(7, flat.numel())
    objective = module_objective(model, F.cross_entropy, x, target=y, chunk_size=chunk_size)
    assert objective.chunk_size == chunk_size
    got = objective.fn(X)
    want = torch.stack([_loaded_loss(model, params, row, lambda: F.cross_entropy(model(x), y))
                        for row in X])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # The module itself is untouched.
    assert torch.equal(torch.cat([p.detach().reshape(-1) for p in params]), flat)


def test_a_subset_of_parameters_without_target_and_with_kwargs():
    model, x, y = _mlp(1)
    head = list(model[2].parameters())
    objective = module_objective(model, lambda out: (out ** 2).mean(), x, params=head)
    flat = torch.cat([p.detach().reshape(-1) for p in head])
    X = flat + 0.3 * torch.randn(4, flat.numel())
    want = torch.stack([_loaded_loss(model, head, row, lambda: (model(x) ** 2).mean())
                        for row in X])
    torch.testing.assert_close(objective.fn(X), want, rtol=1e-5, atol=1e-6)

    lin = nn.Linear(6, 2)
    scaled = module_objective(lin, lambda out: out.sum(), kwargs={"input": x})
    flat = torch.cat([p.detach().reshape(-1) for p in lin.parameters()])
    torch.testing.assert_close(scaled.fn(flat[None])[0], lin(x).sum().detach())


def test_step_follows_the_closure_trajectory():
    # float64: in float32 the two paths' losses differ in the last bit, and Adam's first step
    # (the sign of the estimate) amplifies that on coordinates whose estimate is near zero.
    model_a, x, y = _mlp(2)
    model_b, _, _ = _mlp(2)
    model_a.double()
    model_b.double()
    x = x.double()
    opt_a = torchzo.ZOAdam(model_a.parameters(), lr=0.02, q=8, seed=11)
    opt_b = torchzo.ZOAdam(model_b.parameters(), lr=0.02, q=8, seed=11)
    objective = module_objective(model_b, F.cross_entropy, x, target=y, chunk_size=4)
    for _ in range(10):
        la = opt_a.step(lambda: F.cross_entropy(model_a(x), y))
        lb = opt_b.step(objective)
        torch.testing.assert_close(torch.as_tensor(lb), la, rtol=1e-9, atol=1e-9)
    start = _mlp(2)[0].double()
    for a, b, s in zip(model_a.parameters(), model_b.parameters(), start.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        assert not torch.equal(b, s)
    with torch.no_grad():
        assert float(F.cross_entropy(model_b(x), y)) < float(la)


def test_parameters_in_another_order_are_refused():
    model, x, y = _mlp(3)
    params = list(model.parameters())
    opt = torchzo.ZOSGD(params[::-1], lr=0.1, q=2, seed=0)
    before = snapshot(params)
    with pytest.raises(ValueError, match="another order"):
        opt.step(module_objective(model, F.cross_entropy, x, target=y))
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    opt.step(module_objective(model, F.cross_entropy, x, target=y, params=params[::-1]))
    assert opt.steps == 1
    with pytest.raises(ValueError, match="not parameters of the module"):
        module_objective(model, F.cross_entropy, x, params=[torch.zeros(2)])
