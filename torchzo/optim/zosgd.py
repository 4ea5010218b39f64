"""ZO-SGD: SGD (with optional momentum and L2 weight decay) on the ZO gradient estimate."""
from __future__ import annotations

from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from ._checkpoint import Slot
from ._guard import max_abs
from ._validation import check_number, default_foreach
from .base import ParamsT, ZOOptimizer

__all__ = ["ZOSGD", "zo_sgd"]


class ZOSGD(ZOOptimizer):
    r"""Zeroth-order SGD.

    .. math::
        g_t = \hat\nabla f(\theta_{t-1}) + \lambda \theta_{t-1}, \quad
        b_t = \beta b_{t-1} + g_t \ (b_1 = g_1), \quad \theta_t = \theta_{t-1} - \eta b_t

    where :math:`\hat\nabla f` is the oracle's estimate from ``q`` queries (``-`` becomes ``+``
    with ``maximize``). With ``momentum=0`` this is the paper's ZO-SGD.

    Args:
        params: parameters or param groups.
        lr: step size :math:`\eta`.
        q: query directions per step (the estimator's budget; see :class:`torchzo.oracle.Scheme`).
        mu: smoothing radius; ``None`` picks the default for the parameters' dtype.
        estimator: ``"forward"``, ``"central"`` or ``"antithetic"``.
        momentum: :math:`\beta`.
        weight_decay: L2 penalty :math:`\lambda`.
        maximize: ascend instead of descend.
        foreach: use the multi-tensor kernels (default: on CUDA only, as in torch.optim).
        seed, generator: the source of query directions (see :class:`ZOOptimizer`).
        distributed: share each step's queries among the ranks of a process group (see
            :attr:`ZOOptimizer.distributed`).
        directions_kind: the query directions' distribution, ``"gaussian"`` (standard
            normal), ``"rademacher"`` (independent signs +-1), ``"orthogonal"`` (a step's
            Gaussian draws orthogonalised) or ``"auto"`` (orthogonal where q is a sizeable
            fraction of d, Gaussian otherwise); all have the same unit variance, so the same
            ``lr`` and ``mu``, and the last three a lower-variance estimate (see
            :mod:`torchzo.oracle.directions`). A per-group hyperparameter; groups that differ
            in it are estimated separately.
        memory: ``"exact"`` or ``"inference"`` (no copy of the parameters: see
            :class:`ZOOptimizer`).
        loss_at_x: ``False`` skips the query at the parameters themselves, for two-sided
            estimators (see :class:`ZOOptimizer`).
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, q: int = 20, mu: float | None = None,
                 estimator: str = "forward", momentum: float = 0.0, weight_decay: float = 0.0,
                 maximize: bool = False, foreach: bool | None = None, *, seed: int | None = None,
                 generator: torch.Generator | None = None, distributed: Any = None,
                 directions_kind: str = "gaussian", memory: str = "exact",
                 loss_at_x: bool = True) -> None:
        defaults = dict(lr=lr, q=q, mu=mu, estimator=estimator, momentum=momentum,
                        weight_decay=weight_decay, maximize=maximize, foreach=foreach,
                        directions_kind=directions_kind)
        super().__init__(params, defaults, seed=seed, generator=generator,
                         distributed=distributed, memory=memory,
                         loss_at_x=loss_at_x)

    _state_slots = MappingProxyType({"momentum_buffer": Slot(required=False, none=True)})

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        check_number("momentum", group["momentum"], allow_zero=True)
        check_number("weight_decay", group["weight_decay"], allow_zero=True)

    def _states(self, group: dict[str, Any], params: list[Tensor], complete: bool = False
                ) -> list[dict[str, Any]]:
        states = [self.state[p] for p in params]
        if complete and group["momentum"] != 0:
            # From zeros rather than a copy of the first estimate: the same values (but a
            # -0.0 estimate gives +0.0), made before the update runs piece by piece.
            for p, st in zip(params, states):
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = torch.zeros_like(p)
        return states

    def _apply(self, group: dict[str, Any], params: list[Tensor], estimates: list[Tensor],
               states: list[dict[str, Any]]) -> None:
        bufs: list[Tensor | None] = [st.get("momentum_buffer") for st in states]
        zo_sgd(params, estimates, bufs, lr=group["lr"], momentum=group["momentum"],
               weight_decay=group["weight_decay"], maximize=group["maximize"],
               foreach=group["foreach"])
        if group["momentum"] != 0:
            for st, b in zip(states, bufs):
                st["momentum_buffer"] = b

    def _update_bound(self, group: dict[str, Any], estimate: float, param: float,
                      state: dict[str, list[Tensor]]) -> float:
        g = estimate + group["weight_decay"] * param
        buf = group["momentum"] * max_abs(state.get("momentum_buffer", [])) + g
        return max(buf, param + group["lr"] * buf)


def zo_sgd(params: list[Tensor], estimates: list[Tensor], momentum_buffers: list[Tensor | None],
           *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
           maximize: bool = False, foreach: bool | None = None) -> None:
    """Functional ZO-SGD update; fills ``momentum_buffers`` in place of ``None`` entries."""
    kernel = _multi_tensor_sgd if default_foreach(params, foreach) else _single_tensor_sgd
    kernel(params, estimates, momentum_buffers, lr=lr, momentum=momentum,
           weight_decay=weight_decay, maximize=maximize)


def _single_tensor_sgd(params: list[Tensor], estimates: list[Tensor],
                       bufs: list[Tensor | None], *, lr: float, momentum: float,
                       weight_decay: float, maximize: bool) -> None:
    for i, (p, g) in enumerate(zip(params, estimates)):
        if maximize:
            g = -g
        if weight_decay != 0:
            g = g.add(p, alpha=weight_decay)
        if momentum != 0:
            buf = bufs[i]
            if buf is None:
                buf = bufs[i] = g.clone()
            else:
                buf.mul_(momentum).add_(g)
            g = buf
        p.add_(g, alpha=-lr)


def _multi_tensor_sgd(params: list[Tensor], estimates: list[Tensor],
                      bufs: list[Tensor | None], *, lr: float, momentum: float,
                      weight_decay: float, maximize: bool) -> None:
    if not params:
        return
    grads = list(estimates)
    if maximize:
        grads = list(torch._foreach_neg(grads))
    if weight_decay != 0:
        grads = list(torch._foreach_add(grads, params, alpha=weight_decay))
    if momentum != 0:
        fresh = [i for i, b in enumerate(bufs) if b is None]
        old = [i for i, b in enumerate(bufs) if b is not None]
        if old:
            held = [bufs[i] for i in old]
            torch._foreach_mul_(held, momentum)  # type: ignore[arg-type]
            torch._foreach_add_(held, [grads[i] for i in old])  # type: ignore[arg-type, misc]
        for i in fresh:
            bufs[i] = grads[i].clone()
        grads = bufs  # type: ignore[assignment]
    torch._foreach_add_(params, grads, alpha=-lr)
