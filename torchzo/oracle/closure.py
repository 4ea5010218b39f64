"""Evaluating a user's closure safely: scalar, finite, gradient-free, and nothing lost on error."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["ClosureError", "ParameterBackup", "call_closure", "check_losses", "loss_value"]

Closure = Callable[[], Any]


class ClosureError(RuntimeError):
    """The closure misbehaved; the parameters were restored to their values before the step."""


def _grad_marks(params: Sequence[Tensor]) -> list[tuple[int, int] | None]:
    return [None if p.grad is None else (id(p.grad), p.grad._version) for p in params]


def call_closure(closure: Closure, params: Sequence[Tensor], where: str) -> tuple[Any, float]:
    """Run ``closure`` without autograd; return its raw result and the loss as a Python float.

    ``where`` names the query in error messages ("f(x)", "query 3 (+mu)", ...).
    """
    before = _grad_marks(params)
    try:
        with torch.no_grad():
            result = closure()
    except RuntimeError as err:
        if "does not require grad" in str(err):
            raise ClosureError(
                f"the closure called backward() at {where}; a zeroth-order closure only returns "
                "the loss (remove zero_grad()/backward() from it)"
            ) from err
        raise
    if _grad_marks(params) != before:
        raise ClosureError(
            f"the closure wrote parameter gradients at {where} (backward() under enable_grad?); "
            "a zeroth-order closure only returns the loss"
        )
    return result, loss_value(result, where)


def loss_value(result: Any, where: str) -> float:
    """The loss in ``result`` as a float, or a ClosureError saying what is wrong with it."""
    if isinstance(result, Tensor):
        if result.numel() != 1:
            raise ClosureError(
                f"the closure must return a scalar loss, got a tensor of shape "
                f"{tuple(result.shape)} at {where}"
            )
        if result.is_complex():
            raise ClosureError(f"the closure returned a complex loss at {where}")
        value = result.item()  # a Python float: float32/bf16 losses widen exactly
    elif isinstance(result, (int, float)) and not isinstance(result, bool):
        value = float(result)
    else:
        raise ClosureError(
            f"the closure must return a scalar loss (tensor or number), got "
            f"{type(result).__name__} at {where}"
        )
    if not math.isfinite(value):
        raise ClosureError(f"the closure returned a non-finite loss ({value}) at {where}")
    return value


def check_losses(values: Tensor, rows: int, first_query: int) -> None:
    """A ClosureError unless a batched objective's ``values`` are ``rows`` finite losses;
    ``first_query`` numbers the first row in the message."""
    if not isinstance(values, Tensor) or values.shape != (rows,):
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ClosureError(f"the batched objective must return shape ({rows},), got {shape}")
    bad = ~torch.isfinite(values.detach())
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ClosureError(
            f"the batched objective returned a non-finite loss at query {first_query + row}")


class ParameterBackup:
    """An exact copy of parameters, for perturbing them in place and putting them back.

    ``restore()`` copies the saved bits back, so a step that fails at any query leaves every
    parameter bit-identical to where it started (adding and subtracting ``mu * u`` would not).
    """

    def __init__(self, params: Sequence[Tensor]) -> None:
        self.params = list(params)
        with torch.no_grad():
            self.saved = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def restore(self, index: Sequence[int] | None = None) -> None:
        """Put back every parameter, or those in ``index``."""
        if index is None:
            torch._foreach_copy_(self.params, self.saved)
        else:
            torch._foreach_copy_([self.params[i] for i in index], [self.saved[i] for i in index])

    @torch.no_grad()
    def perturb(self, index: Sequence[int], direction: Sequence[Tensor], alpha: float) -> None:
        """Set ``params[i] = saved[i] + alpha * direction`` for ``i`` in ``index``."""
        for i, u in zip(index, direction):
            torch.add(self.saved[i], u, alpha=alpha, out=self.params[i])
