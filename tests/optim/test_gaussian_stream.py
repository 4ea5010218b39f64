"""State dicts name the Gaussian stream they were saved with."""
import copy
import warnings

import pytest
import torch

import torchzo


def saved(kind):
    x = torch.zeros(5)
    opt = torchzo.ZOSGD([x], q=2, seed=0, directions_kind=kind)
    opt.step(lambda: (x - 1).pow(2).sum())
    return x, opt, copy.deepcopy(opt.state_dict())


def test_a_state_dict_records_the_stream():
    assert saved("gaussian")[2]["zo"]["gaussian_stream"] == 2


def test_an_older_state_dict_loads_with_a_warning_where_gaussian_draws_change():
    _, opt, sd = saved("gaussian")
    del sd["zo"]["gaussian_stream"]
    with pytest.warns(UserWarning, match="counter-based stream"):
        opt.load_state_dict(sd)
    _, opt, sd = saved("rademacher")
    del sd["zo"]["gaussian_stream"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.load_state_dict(sd)  # Rademacher draws are what they were


def test_an_unknown_stream_is_refused_and_changes_nothing():
    x, opt, sd = saved("gaussian")
    before = copy.deepcopy(opt.state_dict())
    sd["zo"]["gaussian_stream"] = 3
    with pytest.raises(ValueError, match="gaussian_stream"):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert after["zo"]["generator"].equal(before["zo"]["generator"])
    assert after["zo"]["steps"] == before["zo"]["steps"]
