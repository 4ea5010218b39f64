"""ZO-signSGD: the sign of the ZO gradient estimate as the step direction."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._validation import check_number, default_foreach
from .base import ParamsT, ZOOptimizer

__all__ = ["ZOSignSGD", "zo_signsgd"]


class ZOSignSGD(ZOOptimizer):
    r"""Zeroth-order signSGD (Liu et al., 2019).

    .. math::
        \theta_t = \theta_{t-1} - \eta \, \mathrm{sign}\big(\hat\nabla f(\theta_{t-1})
        + \lambda \theta_{t-1}\big)

    The estimate's scale does not matter, only its sign, so ``lr`` is the per-coordinate step
    length. Arguments as for :class:`ZOSGD` (without momentum).
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, q: int = 20, mu: float | None = None,
                 estimator: str = "forward", weight_decay: float = 0.0, maximize: bool = False,
                 foreach: bool | None = None, *, seed: int | None = None,
                 generator: torch.Generator | None = None, distributed: Any = None,
                 directions_kind: str = "gaussian", memory: str = "exact",
                 loss_at_x: bool = True) -> None:
        defaults = dict(lr=lr, q=q, mu=mu, estimator=estimator, weight_decay=weight_decay,
                        maximize=maximize, foreach=foreach,
                        directions_kind=directions_kind)
        super().__init__(params, defaults, seed=seed, generator=generator,
                         distributed=distributed, memory=memory,
                         loss_at_x=loss_at_x)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        check_number("weight_decay", group["weight_decay"], allow_zero=True)

    def _apply(self, group: dict[str, Any], params: list[Tensor], estimates: list[Tensor],
               states: list[dict[str, Any]]) -> None:
        zo_signsgd(params, estimates, lr=group["lr"], weight_decay=group["weight_decay"],
                   maximize=group["maximize"], foreach=group["foreach"])

    def _update_bound(self, group: dict[str, Any], estimate: float, param: float,
                      state: dict[str, list[Tensor]]) -> float:
        return max(estimate + group["weight_decay"] * param, param + group["lr"])


def zo_signsgd(params: list[Tensor], estimates: list[Tensor], *, lr: float,
               weight_decay: float = 0.0, maximize: bool = False,
               foreach: bool | None = None) -> None:
    """Functional ZO-signSGD update."""
    kernel = _multi_tensor_signsgd if default_foreach(params, foreach) else _single_tensor_signsgd
    kernel(params, estimates, lr=lr, weight_decay=weight_decay, maximize=maximize)


def _single_tensor_signsgd(params: list[Tensor], estimates: list[Tensor], *, lr: float,
                           weight_decay: float, maximize: bool) -> None:
    for p, g in zip(params, estimates):
        if maximize:
            g = -g
        if weight_decay != 0:
            g = g.add(p, alpha=weight_decay)
        p.add_(g.sign(), alpha=-lr)


def _multi_tensor_signsgd(params: list[Tensor], estimates: list[Tensor], *, lr: float,
                          weight_decay: float, maximize: bool) -> None:
    if not params:
        return
    grads = torch._foreach_neg(estimates) if maximize else list(estimates)
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_add_(params, torch._foreach_sign(grads), alpha=-lr)
