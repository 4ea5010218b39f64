"""A learned optimizer's weights as one flat vector, and from one architecture to another."""
from __future__ import annotations

import torch
from torch import Tensor

from ..learned.arch import Architecture
from ..learned.nets import LearnedZO
from .seeding import build_seeded

__all__ = ["blank", "flatten", "grown", "unflatten", "weights_of"]


def flatten(weights: dict[str, Tensor]) -> Tensor:
    """The weights as one vector, in the order of the dict."""
    return torch.cat([w.detach().reshape(-1) for w in weights.values()])


def unflatten(theta: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
    """Vectors ``theta`` (..., n) as weights shaped like ``like`` with the leading dims."""
    out, start = {}, 0
    lead = theta.shape[:-1]
    for name, w in like.items():
        out[name] = theta[..., start:start + w.numel()].reshape((*lead, *w.shape))
        start += w.numel()
    return out


def blank(arch: Architecture) -> LearnedZO:
    """Networks of ``arch`` whose weights are about to be overwritten (drawn from a generator
    of their own, not the global one)."""
    return build_seeded(lambda: LearnedZO(arch=arch), torch.Generator())


def weights_of(theta: Tensor, arch: Architecture) -> LearnedZO:
    """A :class:`LearnedZO` of ``arch`` holding the flat weights ``theta``."""
    nets = blank(arch)
    like = {k: v.detach() for k, v in nets.weights().items()}
    nets.load_state_dict(unflatten(theta, like), strict=True)
    return nets


def grown(old: dict[str, Tensor], like: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """``old`` in another architecture's layout ``like``. Weights ``like`` lacks are dropped
    (the query net, for an export without it); weights that grew (the controller's input
    columns for the noise inputs) keep the old entries and start at zero in the new ones;
    weights new to the architecture start as ``like``'s. So the new architecture steps as
    the old optimizer did."""
    out = {}
    for name, w in like.items():
        if name not in old:
            out[name] = w.detach().clone()
            continue
        src = old[name].detach()
        if src.shape == w.shape:
            out[name] = src
        elif src.dim() == 2 and all(a <= b for a, b in zip(src.shape, w.shape)):
            out[name] = src.new_zeros(w.shape)
            out[name][:src.shape[0], :src.shape[1]] = src
        else:
            raise ValueError(f"cannot start {name} {tuple(w.shape)} from {source}'s "
                             f"{tuple(src.shape)}")
    return out
