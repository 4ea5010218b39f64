"""Checks of hyperparameters and the default kernel choice, shared by the optimizers.

The module is private to the package (its name starts with ``_``); its functions are public
to the modules that import it.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["check_number", "check_params", "default_foreach", "first_overlap", "overlaps_itself"]


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


def check_params(params: list[Tensor], others: list[Tensor]) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``params`` (a new param group) can be perturbed
    and updated in place: dense, floating point of 16 bits or more, real memory that holds each
    element once, not an inference tensor, and sharing no memory with each other or with
    ``others`` (the optimizer's other parameters)."""
    for i, p in enumerate(params):
        where = f"parameter {i} of the group"
        if p.layout != torch.strided:
            raise TypeError(f"{where} has layout {p.layout}: zeroth-order optimizers perturb "
                            "dense (strided) tensors only; convert it with .to_dense()")
        if p.device.type == "meta":
            raise ValueError(f"{where} is on the meta device (no data to perturb or update): "
                             "materialise the model first (e.g. module.to_empty(device=...))")
        if not p.is_floating_point():
            raise ValueError(f"zeroth-order optimizers need floating-point parameters, "
                             f"got {p.dtype} ({where})")
        if p.dtype.itemsize < 2:
            raise ValueError(f"{where} is {p.dtype}: 8-bit floats cannot resolve a perturbation "
                             "of size mu; optimize a float16/bfloat16/float32 copy instead")
        if p.is_inference():
            raise ValueError(f"{where} is an inference tensor (created under "
                             "torch.inference_mode()), which cannot be updated in place")
        if overlaps_itself(p):
            raise ValueError(f"{where} has overlapping memory (several elements share one "
                             f"location, strides {p.stride()} for shape {tuple(p.shape)}, as "
                             "from expand()): perturbing one element would move others; pass "
                             ".clone() of it")
    _check_disjoint([*others, *params], len(others))


def overlaps_itself(p: Tensor) -> bool:
    """Whether two elements of ``p`` share memory (a sufficient test for "no": every stride,
    in increasing order, steps past all elements spanned by the smaller ones)."""
    extent = 1
    for stride, size in sorted((st, sz) for sz, st in zip(p.shape, p.stride()) if sz > 1):
        if stride < extent:
            return True
        extent += (size - 1) * stride
    return False


def _span(p: Tensor) -> tuple[int, int, int] | None:
    """``(storage, first byte, end byte)`` of the memory ``p``'s elements lie in (``None`` for
    a tensor subclass without one storage)."""
    try:
        storage, start = p.untyped_storage().data_ptr(), p.data_ptr()
    except (RuntimeError, NotImplementedError, TypeError):
        return None
    extent = 1 + sum((sz - 1) * st for sz, st in zip(p.shape, p.stride()))
    return storage, start, start + extent * p.element_size()


def first_overlap(tensors: list[Tensor], first_new: int = 0) -> tuple[int, int] | None:
    """Two positions in ``tensors`` whose memory overlaps, one of them ``first_new`` or later
    (sweeping the spans in address order); ``None`` if there are none."""
    found = [(_span(p), i) for i, p in enumerate(tensors) if p.numel() > 0]
    spans = sorted(span + (i,) for span, i in found if span is not None)
    reach: tuple[int, int, int] | None = None  # (storage, end, index) of the furthest span
    for storage, start, end, i in spans:
        if reach is not None and reach[0] == storage and start < reach[1] \
                and max(i, reach[2]) >= first_new:
            return min(i, reach[2]), max(i, reach[2])
        if reach is None or reach[0] != storage or end > reach[1]:
            reach = (storage, end, i)
    return None


def _check_disjoint(params: list[Tensor], first_new: int) -> None:
    """A ``ValueError`` if the memory of a parameter at ``first_new`` or later overlaps
    another's."""
    found = first_overlap(params, first_new)
    if found is not None:
        raise ValueError(f"parameters {found[0]} and {found[1]} (counted over all param "
                         "groups) share memory, as views of one tensor do: perturbing one "
                         "would move the other; pass separate tensors")
