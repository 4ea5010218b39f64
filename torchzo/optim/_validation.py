"""Checks of hyperparameters and the default kernel choice, shared by the optimizers.

The module is private to the package (its name starts with ``_``); its functions are public
to the modules that import it.
"""
from __future__ import annotations

import math
from typing import Any

from torch import Tensor

__all__ = ["check_number", "default_foreach"]


def check_number(name: str, value: Any, *, allow_zero: bool = False,
                 upper: float | None = None, allow_upper: bool = True) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number in its range.

    The range is ``> 0`` (``>= 0`` with ``allow_zero``), and ``<= upper`` (``< upper`` without
    ``allow_upper``) when ``upper`` is given. Booleans are not numbers here.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    low = ok and (value > 0 or (allow_zero and value == 0))
    high = upper is None or (ok and (value < upper or (allow_upper and value == upper)))
    if low and high:
        return
    if upper is None:
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, "
                         f"got {value!r}")
    interval = f"{'[' if allow_zero else '('}0, {upper:g}{']' if allow_upper else ')'}"
    raise ValueError(f"{name} must be in {interval}, got {value!r}")


def default_foreach(params: list[Tensor], foreach: bool | None) -> bool:
    """``foreach``, or when ``None`` whether every tensor is on CUDA (torch.optim's default)."""
    if foreach is None:
        return bool(params) and all(p.is_cuda for p in params)
    return foreach
