"""Recorder: one row per completed step, none for a failed one, through the standard hook."""
from __future__ import annotations

import pytest
import torch

import torchzo


def test_records_loss_and_queries_per_step_and_skips_failed_steps():
    x = torch.ones(4)
    opt = torchzo.ZOSGD([x], lr=0.1, q=3, seed=0)
    rec = torchzo.Recorder(opt)
    returned = [float(opt.step(lambda: (x**2).sum())) for _ in range(3)]
    with pytest.raises(torchzo.ClosureError):
        opt.step(lambda: torch.tensor(float("nan")))
    assert rec.steps == [1, 2, 3]
    assert rec.queries == [4, 8, 12]
    assert rec.losses == returned and returned[0] == 4.0
    rec.remove()
    opt.step(lambda: (x**2).sum())
    assert len(rec.losses) == 3
    assert rec.as_dict()["queries"] == [4, 8, 12]


def test_recorder_needs_a_torchzo_optimizer():
    with pytest.raises(ValueError, match="torchzo optimizer"):
        torchzo.Recorder(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))
