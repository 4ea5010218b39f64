"""Evaluating a user's closure safely: scalar, finite, gradient-free, and nothing lost on error."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .scratch import Scratch

# Scratch lived here once; it stays importable from here.
__all__ = ["LOSS_DTYPES", "ClosureError", "Scratch", "call_batched", "call_closure",
           "check_losses", "guard_batched", "loss_value", "mean_loss"]

#: The dtypes a batched objective's losses may have: real floating point, which the estimate's
#: differences and the update read as they are (complex parts would be cast away, booleans and
#: integers neither subtract nor divide by ``mu`` as real numbers do).
LOSS_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)

Closure = Callable[[], Any]


class ClosureError(RuntimeError):
    """The closure misbehaved; the parameters were restored to their values before the step."""


def _grad_marks(params: Sequence[Tensor]) -> list[tuple[int, int] | None]:
    return [None if p.grad is None else (id(p.grad), p.grad._version) for p in params]


def _versions(params: Sequence[Tensor]) -> list[int]:
    """The tensors' version counters, which every in-place write advances (cheap to read)."""
    return [p._version for p in params]


def _backward_error(err: RuntimeError, who: str, where: str) -> ClosureError | None:
    """The ClosureError for torch's error when ``who`` called ``backward()`` without a graph."""
    if isinstance(err, ClosureError) or "does not require grad" not in str(err):
        return None
    return ClosureError(f"{who} called backward() at {where}; a zeroth-order objective only "
                        "returns the loss (remove zero_grad()/backward() from it)")


def _check_untouched(params: Sequence[Tensor], versions: list[int],
                     marks: list[tuple[int, int] | None], who: str, where: str) -> None:
    """A ClosureError if ``who`` wrote a parameter or a parameter gradient during the call."""
    for i, (p, v) in enumerate(zip(params, versions)):
        if p._version != v:
            raise ClosureError(
                f"{who} wrote parameter {i} in place at {where}; a zeroth-order objective only "
                "reads the parameters (the optimizer perturbs and updates them)")
    if _grad_marks(params) != marks:
        raise ClosureError(
            f"{who} wrote parameter gradients at {where} (backward() under enable_grad?); "
            "a zeroth-order objective only returns the loss")


def call_closure(closure: Closure, params: Sequence[Tensor], where: str) -> tuple[Any, float]:
    """Run ``closure`` without autograd; return its raw result and the loss as a Python float.

    ``where`` names the query in error messages ("f(x)", "query 3 (+mu)", ...). A closure that
    calls ``backward()``, writes a parameter's gradient or writes a parameter in place (seen by
    its version counter, so not through ``.data`` or other untracked aliases) raises a
    :class:`ClosureError`.
    """
    before, versions = _grad_marks(params), _versions(params)
    try:
        if torch.is_grad_enabled():
            with torch.no_grad():
                result = closure()
        else:  # the optimizers' case: entering no_grad again costs more than the query's kernel
            result = closure()
    except RuntimeError as err:
        converted = _backward_error(err, "the closure", where)
        if converted is not None:
            raise converted from err
        raise
    _check_untouched(params, versions, before, "the closure", where)
    return result, loss_value(result, where)


def call_batched(fn: Callable[[Tensor], Tensor], X: Tensor, where: str) -> Tensor:
    """``fn(X)`` for a batched objective, with a ClosureError if it called ``backward()``."""
    try:
        return fn(X)
    except RuntimeError as err:
        converted = _backward_error(err, "the batched objective", where)
        if converted is not None:
            raise converted from err
        raise


def guard_batched(fn: Callable[[Tensor], Tensor], params: Sequence[Tensor]
                  ) -> Callable[[Tensor], Tensor]:
    """``fn`` raising a ClosureError if a call writes ``params`` or their gradients in place,
    or calls ``backward()`` (calls are numbered from 1 in the messages)."""
    params = list(params)
    calls = [0]

    def guarded(X: Tensor) -> Tensor:
        calls[0] += 1
        where = f"call {calls[0]}"
        before, versions = _grad_marks(params), _versions(params)
        out = call_batched(fn, X, where)
        _check_untouched(params, versions, before, "the batched objective", where)
        return out

    return guarded


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
        if result.dtype == torch.bool:
            raise ClosureError(f"the closure must return a scalar loss, got a bool tensor at "
                               f"{where}")
        value = result.item()  # a Python float: float32/bf16 losses widen exactly
    elif isinstance(result, (int, float)) and not isinstance(result, bool):
        try:
            value = float(result)
        except OverflowError:  # an int beyond the float range: infinite as a float
            raise ClosureError(f"the closure returned a non-finite loss (an int of "
                               f"{int(result).bit_length()} bits, beyond the float range) at "
                               f"{where}") from None
    else:
        raise ClosureError(
            f"the closure must return a scalar loss (tensor or number), got "
            f"{type(result).__name__} at {where}"
        )
    if not math.isfinite(value):
        raise ClosureError(f"the closure returned a non-finite loss ({value}) at {where}")
    return value


def check_losses(values: Tensor, rows: int, first_query: int, finite: bool = True) -> None:
    """A ClosureError unless a batched objective's ``values`` are ``rows`` losses of one of
    :data:`LOSS_DTYPES`, finite unless ``finite=False``; ``first_query`` numbers the first row
    in the message."""
    if not isinstance(values, Tensor) or values.shape != (rows,):
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ClosureError(f"the batched objective must return shape ({rows},), got {shape}")
    if values.dtype not in LOSS_DTYPES:
        kind = "complex" if values.is_complex() else "non-floating-point"
        raise ClosureError(f"the batched objective returned {kind} losses ({values.dtype}) "
                           f"for queries {first_query} to {first_query + rows - 1}; losses are "
                           f"real floating point: {', '.join(str(d) for d in LOSS_DTYPES)}")
    if not finite:
        return
    finite_values = torch.isfinite(values.detach())
    if not bool(finite_values.all()):
        row = int((~finite_values).nonzero()[0, 0])
        raise ClosureError(
            f"the batched objective returned a non-finite loss at query {first_query + row}")


def mean_loss(values: Sequence[float]) -> Tensor:
    """What a step that does not query f(x) returns as its loss: the mean of its queried
    losses, a 0-dim float64 tensor (an estimate of the loss smoothed over the directions)."""
    return torch.tensor(math.fsum(values) / len(values), dtype=torch.float64)
