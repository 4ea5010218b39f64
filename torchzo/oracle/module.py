"""Batched queries of an ``nn.Module``'s loss: many parameter vectors in one vectorised call."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torch.func import functional_call, vmap

from .estimator import Batched

__all__ = ["module_objective"]


def module_objective(
    module: nn.Module,
    loss_fn: Callable[..., Tensor],
    *inputs: Any,
    target: Any = None,
    params: Sequence[Tensor] | None = None,
    chunk_size: int | None = None,
    kwargs: Mapping[str, Any] | None = None,
) -> Batched:
    """The loss of ``module`` on fixed inputs as a :class:`Batched` objective for ``opt.step``.

    Row ``b`` of the objective's input ``X`` (shape ``(B, d)``) is a value of ``params``
    (default: ``module.parameters()``), flattened and concatenated in order, and its output
    is ``loss_fn(module(*inputs, **kwargs), target)`` (``loss_fn(module(*inputs, **kwargs))``
    without a ``target``) with the module's parameters set to that row, for every row at once
    through ``torch.func.functional_call`` and ``torch.func.vmap``. Parameters not in
    ``params`` and buffers keep their current values.

    ``params`` must be the optimizer's parameters in its order, which is the case for an
    optimizer built with ``module.parameters()``: the optimizer checks this at each step.
    ``chunk_size`` bounds the rows of a call, and with them the memory of the directions and of
    the vectorised forward pass (``None``: all queries of a step at once).

    The module runs under ``vmap``: put it in ``eval()`` mode if it has layers that update
    buffers (batch norm) or draw random numbers (dropout) in training mode.

    Each step allocates the activations of all its rows and frees them again; on a CPU with
    glibc, call :func:`torchzo.cpu.keep_freed_memory` once so that the next step reuses that
    memory instead of faulting it in page by page.

    Example::

        opt = torchzo.ZOAdam(model.parameters(), lr=1e-3, q=20)
        objective = module_objective(model, nn.functional.cross_entropy, x, target=y,
                                     chunk_size=8)
        loss = opt.step(objective)  # as opt.step(lambda: F.cross_entropy(model(x), y))
    """
    names = {id(p): name for name, p in module.named_parameters()}
    chosen = list(module.parameters()) if params is None else list(params)
    missing = [i for i, p in enumerate(chosen) if id(p) not in names]
    if missing:
        raise ValueError(f"params {missing} are not parameters of the module")
    keys = [names[id(p)] for p in chosen]
    if len(set(keys)) != len(keys):
        raise ValueError("params lists a parameter more than once")
    shapes = [p.shape for p in chosen]
    dtypes = [p.dtype for p in chosen]
    numels = [p.numel() for p in chosen]
    extra = dict(kwargs or {})

    def one(*pieces: Tensor) -> Tensor:
        out = functional_call(module, dict(zip(keys, pieces)), inputs, extra)
        return loss_fn(out) if target is None else loss_fn(out, target)

    batched = vmap(one, chunk_size=chunk_size)

    def fn(X: Tensor) -> Tensor:
        if X.dim() != 2 or X.shape[1] != sum(numels):
            raise ValueError(f"expected X of shape (B, {sum(numels)}), got {tuple(X.shape)}")
        pieces = [c.reshape(X.shape[0], *s).to(dt)
                  for c, s, dt in zip(X.split(numels, dim=1), shapes, dtypes)]
        return batched(*pieces)

    return Batched(fn, chunk_size, params=tuple(chosen))
