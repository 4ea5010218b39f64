"""ZO-Adam: Adam on the ZO gradient estimate (Chen et al., 2019)."""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from ._checkpoint import Slot
from ._guard import max_abs
from ._validation import check_number, default_foreach
from .base import ParamsT, ZOOptimizer

__all__ = ["ZOAdam", "zo_adam"]


class ZOAdam(ZOOptimizer):
    r"""Zeroth-order Adam.

    Adam's update (with bias correction and L2 ``weight_decay``, as ``torch.optim.Adam``)
    applied to the oracle's estimate :math:`\hat\nabla f(\theta_{t-1})`:

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,
        \quad \theta_t = \theta_{t-1} - \eta \frac{m_t / (1-\beta_1^t)}
        {\sqrt{v_t / (1-\beta_2^t)} + \epsilon}

    Args:
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1).
        eps: :math:`\epsilon`.
        Others as for :class:`ZOSGD`.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, q: int = 20, mu: float | None = None,
                 estimator: str = "forward", betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, maximize: bool = False,
                 foreach: bool | None = None, *, seed: int | None = None,
                 generator: torch.Generator | None = None, distributed: Any = None,
                 directions_kind: str = "gaussian", memory: str = "exact",
                 loss_at_x: bool = True) -> None:
        defaults = dict(lr=lr, q=q, mu=mu, estimator=estimator, betas=betas, eps=eps,
                        weight_decay=weight_decay, maximize=maximize, foreach=foreach,
                        directions_kind=directions_kind)
        super().__init__(params, defaults, seed=seed, generator=generator,
                         distributed=distributed, memory=memory,
                         loss_at_x=loss_at_x)

    _state_slots = MappingProxyType({"step": Slot("count"), "exp_avg": Slot(),
                                     "exp_avg_sq": Slot(nonnegative=True)})

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        betas = group["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas must be a pair of numbers in [0, 1), got {betas!r}")
        for i, b in enumerate(betas):
            check_number(f"betas[{i}]", b, allow_zero=True, upper=1, allow_upper=False)
        check_number("eps", group["eps"], allow_zero=True)
        check_number("weight_decay", group["weight_decay"], allow_zero=True)

    def _states(self, group: dict[str, Any], params: list[Tensor], complete: bool = False
                ) -> list[dict[str, Any]]:
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
        return [self.state[p] for p in params]

    def _apply(self, group: dict[str, Any], params: list[Tensor], estimates: list[Tensor],
               states: list[dict[str, Any]]) -> None:
        zo_adam(params, estimates, [st["exp_avg"] for st in states],
                [st["exp_avg_sq"] for st in states], [st["step"] for st in states],
                lr=group["lr"],
                betas=tuple(group["betas"]), eps=group["eps"],
                weight_decay=group["weight_decay"], maximize=group["maximize"],
                foreach=group["foreach"])

    def _update_scalars(self, group: dict[str, Any]) -> dict[str, float]:
        # The step's scale lr / (1 - beta1^t) is largest on the first step.
        return {**super()._update_scalars(group),
                "lr / (1 - beta1)": group["lr"] / (1 - group["betas"][0])}

    def _update_bound(self, group: dict[str, Any], estimate: float, param: float,
                      state: dict[str, list[Tensor]]) -> float:
        beta1, beta2 = group["betas"]
        squares = state["exp_avg_sq"]
        # The denominator is at least eps as the state's dtype rounds it (1e-8 is 0 in float16),
        # unless a negative second moment (written by hand) makes its root NaN.
        eps = min((float(torch.tensor(group["eps"], dtype=v.dtype)) for v in squares),
                  default=group["eps"])
        if eps <= 0 or any(v.numel() and float(v.min()) < 0 for v in squares):
            return math.inf
        g = estimate + group["weight_decay"] * param
        m = max_abs(state["exp_avg"]) + g  # lerp's difference, and more than its result
        v = max_abs(squares) + g * g
        # The bias corrections are smallest on the first step.
        denom = math.sqrt(v / (1 - beta2)) + group["eps"]
        return max(v, denom, param + group["lr"] / (1 - beta1) * m / eps)


def zo_adam(params: list[Tensor], estimates: list[Tensor], exp_avgs: list[Tensor],
            exp_avg_sqs: list[Tensor], steps: list[int], *, lr: float,
            betas: tuple[float, float], eps: float, weight_decay: float = 0.0,
            maximize: bool = False, foreach: bool | None = None) -> None:
    """Functional ZO-Adam update; ``steps`` are the counts after this step (1 on the first)."""
    # The multi-tensor kernel applies one bias correction to every tensor, so it serves only
    # tensors at one step count.
    multi = default_foreach(params, foreach) and len(set(steps)) == 1
    kernel = _multi_tensor_adam if multi else _single_tensor_adam
    kernel(params, estimates, exp_avgs, exp_avg_sqs, steps, lr=lr, beta1=betas[0],
           beta2=betas[1], eps=eps, weight_decay=weight_decay, maximize=maximize)


def _single_tensor_adam(params: list[Tensor], estimates: list[Tensor], exp_avgs: list[Tensor],
                        exp_avg_sqs: list[Tensor], steps: list[int], *, lr: float,
                        beta1: float, beta2: float, eps: float, weight_decay: float,
                        maximize: bool) -> None:
    for p, g, m, v, step in zip(params, estimates, exp_avgs, exp_avg_sqs, steps):
        if maximize:
            g = -g
        if weight_decay != 0:
            g = g.add(p, alpha=weight_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bc1, bc2 = 1 - beta1**step, 1 - beta2**step
        denom = v.sqrt().div_(math.sqrt(bc2)).add_(eps)
        p.addcdiv_(m, denom, value=-lr / bc1)


def _multi_tensor_adam(params: list[Tensor], estimates: list[Tensor], exp_avgs: list[Tensor],
                       exp_avg_sqs: list[Tensor], steps: list[int], *, lr: float,
                       beta1: float, beta2: float, eps: float, weight_decay: float,
                       maximize: bool) -> None:
    if not params:
        return
    grads = torch._foreach_neg(estimates) if maximize else list(estimates)
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    step = steps[0]
    bc1, bc2 = 1 - beta1**step, 1 - beta2**step
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denoms, math.sqrt(bc2))
    torch._foreach_add_(denoms, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denoms, -lr / bc1)
