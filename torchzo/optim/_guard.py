"""What ``ZOOptimizer.step`` keeps so that a step that goes wrong can be undone.

A :class:`StepGuard` lives for one step. It sets the parameters' ``.grad`` aside (the closure
sees ``None``; the tensors are put back, untouched, when the step ends, however it ends), and
holds the exact copies that undo an update: the parameters (taken after the estimate, when the
oracle has restored them, or before a batched objective's calls, which could write them), and
the optimizer state of the update rules that run through ``_update_group``. It then checks that
the update left every parameter and state tensor finite.

The module is private to the package; its names are public to the modules that import it.
"""
from __future__ import annotations

import math
import numbers
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..oracle import ParameterBackup, Query, kernels
from ..oracle.backup import Places
from ..oracle.scratch import Scratch

if TYPE_CHECKING:
    from torch.optim import Optimizer

__all__ = ["NonFiniteUpdateError", "StepGuard", "ZeroSignalWarning", "all_finite",
           "check_estimate", "check_hyperparameters", "check_largest", "max_abs",
           "newly_nonfinite", "non_finite", "user_stacklevel"]


class ZeroSignalWarning(UserWarning):
    """Every query difference of a step was exactly zero, so the estimate is zero.

    The objective is flat, or piecewise constant, at the scale ``mu``: a larger ``mu`` (or a
    smoother loss) gives the estimate something to measure. Warned once per optimizer.
    """


class NonFiniteUpdateError(FloatingPointError):
    """A step's estimate or update was not finite, and the step was undone.

    Raised by ``step()`` instead of writing NaN or infinity into the parameters or the
    optimizer state: a non-finite hyperparameter (e.g. a NaN ``lr`` written into a param group),
    loss differences too large for the dtype, or an update that overflows the parameters'
    dtype. See ``ZOOptimizer.step`` for what is restored.
    """


def _by_device(tensors: Iterable[Tensor]) -> list[list[Tensor]]:
    out: dict[torch.device, list[Tensor]] = {}
    for t in tensors:
        if t.numel():
            out.setdefault(t.device, []).append(t.detach())
    return list(out.values())


def _gather(values: list[Tensor]) -> Tensor:
    """0-dim ``values`` (of one device) as one float64 vector, or the one value itself."""
    if len(values) == 1:
        return values[0]
    return torch.stack([v.to(torch.float64) for v in values])


def _by_kernel(tensors: Iterable[Tensor]) -> tuple[float, list[Tensor]]:
    """The largest ``|x|`` over the tensors the compiled kernel reads (contiguous CPU float32
    and float64: one read pass, where torch's ``aminmax`` costs about four), and the others."""
    largest, rest = 0.0, []
    use = kernels.available()
    for t in tensors:
        if use and kernels.fits(t, t.dtype):
            value = kernels.abs_max(t.detach())
            if not value <= largest:  # a NaN, which must win
                largest = value
                if math.isnan(value):
                    return value, []
        else:
            rest.append(t)
    return largest, rest


def max_abs(tensors: Iterable[Tensor]) -> float:
    """The largest ``|x|`` over the elements of ``tensors`` (NaN if one is NaN; 0 if none).

    The compiled kernel where it reads the tensor; otherwise one ``aminmax`` pass per tensor
    (no temporary) and one synchronisation per device.
    """
    largest, rest = _by_kernel(tensors)
    if math.isnan(largest):
        return largest
    for ts in _by_device(rest):
        value = float(_gather([e.abs() for t in ts for e in torch.aminmax(t)]).max())
        if not math.isfinite(value):  # NaN propagates through abs and max
            return value
        largest = max(largest, value)
    return largest


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """Whether every element of ``tensors`` is finite.

    The compiled kernel's largest magnitude where it reads the tensor; otherwise a sum (the
    cheapest full pass), finite only if every element is; when one is not, that may be an
    overflow of finite elements, so :func:`max_abs` decides.
    """
    largest, rest = _by_kernel(tensors)
    if not math.isfinite(largest):
        return False
    for ts in _by_device(rest):
        sums = [t.sum(dtype=torch.float32) if t.element_size() < 4 else t.sum() for t in ts]
        if not math.isfinite(float(_gather(sums).sum())) and not math.isfinite(max_abs(ts)):
            return False
    return True


_NEVER_NON_FINITE = (int, bool, str, type(None), torch.dtype)


def non_finite(value: Any) -> bool:
    """Whether ``value`` is, or holds (a tuple or list), a real number that is NaN or infinite."""
    if isinstance(value, (tuple, list)):
        return any(non_finite(v) for v in value)
    if isinstance(value, Tensor):
        return value.numel() == 1 and value.is_floating_point() and \
            not bool(torch.isfinite(value).all())
    return isinstance(value, numbers.Real) and not math.isfinite(float(value))


def check_hyperparameters(param_groups: Sequence[dict[str, Any]]) -> None:
    """A ``ValueError`` if a number in a param group is not finite (a NaN ``lr`` written there
    after construction, say): a step checks this first, before anything changes."""
    for i, group in enumerate(param_groups):
        for key, value in group.items():
            kind = type(value)
            if kind is float:  # the common case first: every step runs this
                bad = not math.isfinite(value)
            else:
                bad = kind not in _NEVER_NON_FINITE and key != "params" and non_finite(value)
            if bad:
                raise ValueError(f"param_groups[{i}][{key!r}] is {value!r}: a step needs "
                                 "finite hyperparameters (nothing was changed)")


def check_estimate(grads: Sequence[Tensor], parts: Sequence[Query],
                   param_groups: Sequence[dict[str, Any]], warn_zero: bool) -> bool:
    """A :class:`NonFiniteUpdateError` for a part whose estimate is not finite; with
    ``warn_zero``, a :class:`ZeroSignalWarning` for the first part whose estimate is exactly
    zero. Returns whether it warned."""
    largest = [max_abs([grads[i] for i in part.index]) for part in parts]
    sized = [any(grads[i].numel() for i in part.index) for part in parts]
    return check_largest(largest, sized, parts, param_groups, warn_zero)


def check_largest(largest: Sequence[float], sized: Sequence[bool], parts: Sequence[Query],
                  param_groups: Sequence[dict[str, Any]], warn_zero: bool) -> bool:
    """:func:`check_estimate` from each part's largest estimate magnitude (or any number that
    is zero, or not finite, exactly when that is: the largest coefficient of an estimate held
    by its seeds) and whether the part has any coordinates."""
    for part, value, has in zip(parts, largest, sized):
        if not math.isfinite(value):
            raise NonFiniteUpdateError(
                f"the gradient estimate is not finite (its largest magnitude is {value}) for "
                f"{_describe(part, param_groups)}: the loss differences divided by mu overflow; "
                "the step was undone (a smaller mu, or a loss of smaller magnitude, avoids it)")
        if value == 0 and warn_zero and has:
            warnings.warn(ZeroSignalWarning(
                f"every query difference of this step was exactly zero for "
                f"{_describe(part, param_groups)}, so the gradient estimate is zero and the "
                f"step learns nothing: at the scale mu={part.mu:g} the objective is flat or "
                "piecewise constant (or, for a two-sided estimator, exactly symmetric about "
                "x). Try a larger mu (or a smoother loss). (Warned once per optimizer.)"),
                stacklevel=user_stacklevel())
            return True
    return False


_LIBRARIES = (str(Path(__file__).resolve().parent.parent), str(Path(torch.__file__).parent))


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the first caller outside torchzo and
    torch (the user's ``opt.step(...)``), counted from the caller of ``warnings.warn``."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_LIBRARIES):
        frame, level = frame.f_back, level + 1
    return level


def _describe(part: Query, param_groups: Sequence[dict[str, Any]]) -> str:
    """``part``'s param groups and mu, for messages."""
    position, groups, wanted = 0, [], set(part.index)
    for i, g in enumerate(param_groups):
        if wanted.intersection(range(position, position + len(g["params"]))):
            groups.append(str(i))
        position += len(g["params"])
    return f"param group{'s' if len(groups) > 1 else ''} {', '.join(groups)} (mu={part.mu:g})"


def newly_nonfinite(now: Tensor, before: Tensor | None) -> bool:
    """Whether ``now`` has a non-finite element where ``before`` (``None``: nothing) had not."""
    bad = ~torch.isfinite(now)
    if before is not None:
        bad &= torch.isfinite(before)
    return bool(bad.any())


_Kept = tuple[dict[Any, Any], dict[Any, Any], dict[Any, Tensor]]


class StepGuard:
    """The undo record of one step of ``optimizer`` over ``params`` (see the module docstring)."""

    def __init__(self, optimizer: Optimizer, params: Sequence[Tensor]) -> None:
        self.optimizer = optimizer
        self.params = list(params)
        self.grads = [p.grad for p in self.params]
        for p in self.params:
            p.grad = None
        self.places = Places(self.params)
        self.saved: ParameterBackup | None = None
        # Where the copy's memory comes from and goes back to (ZOOptimizer._scratch).
        self.scratch: Scratch | None = getattr(optimizer, "_scratch", None)
        self.lent: list[Tensor] = []  # the step's estimates, theirs again once it ends
        # param -> (its state dict, that dict's items, copies of its tensors); None: not kept.
        self.state: dict[Tensor, _Kept] | None = None
        self.fresh: set[Tensor] = set()

    def save_params(self, copy: ParameterBackup | None = None) -> None:
        """Copy the parameters, or keep ``copy``, an exact one of all of them in order (once
        per step: a second call keeps the first copy)."""
        if self.saved is None:
            self.saved = copy if copy is not None else ParameterBackup(self.params, self.scratch)

    def lend(self, tensors: Sequence[Tensor]) -> None:
        """Give ``tensors`` (which nothing uses after the step) to the scratch when it ends."""
        self.lent = list(tensors)

    def save_state(self, copy: bool = True) -> None:
        """Copy the optimizer state of the parameters, before an update that changes it;
        without ``copy``, keep only each entry's items (the tensors themselves are not
        copied: the update must leave them as they are where it fails, as the inference
        memory mode's update does by checking before it writes)."""
        self.state, self.fresh = {}, set()
        live = self.optimizer.state
        for p in self.params:
            if p not in live:
                self.fresh.add(p)
                continue
            entry = live[p]
            tensors = {k: v for k, v in entry.items() if isinstance(v, Tensor) and copy}
            with torch.no_grad():
                made = (self.scratch.take(list(tensors.values())) if self.scratch is not None
                        else [torch.empty_like(v) for v in tensors.values()])
                for dst, src in zip(made, tensors.values()):
                    dst.copy_(src)
            copies = dict(zip(tensors, made))
            self.state[p] = (entry, dict(entry), copies)

    @torch.no_grad()
    def restore(self) -> None:
        """Put back whatever was copied: parameters (into their own memory, where a
        closure repointed one), and state where it was kept."""
        self.places.restore()
        if self.saved is not None:
            self.saved.restore()
        if self.state is None:
            return
        live = self.optimizer.state
        for p in self.params:
            if p in self.fresh:
                live.pop(p, None)
            elif p in self.state:
                entry, items, copies = self.state[p]
                for k, v in copies.items():
                    items[k].copy_(v)
                entry.clear()
                entry.update(items)
                live[p] = entry

    def release(self) -> None:
        """Give the gradients back and drop the copies (the end of every step)."""
        for p, g in zip(self.params, self.grads):
            p.grad = g
        if self.scratch is not None:
            self.scratch.keep([*(self.saved.saved if self.saved is not None else []),
                               *(t for _, _, c in (self.state or {}).values()
                                 for t in c.values()), *self.lent])
        self.saved, self.state = None, None

    def _state_tensors(self) -> list[Tensor]:
        live = self.optimizer.state
        return [v for p in self.params if p in live for v in live[p].values()
                if isinstance(v, Tensor) and v.is_floating_point()]

    def nonfinite_after_update(self) -> str | None:
        """What the update made non-finite ("parameter 2 (in param-group order)", ...), if any.

        Checks the parameters, and the state where it was copied; an element that was already
        non-finite before the step does not count.
        """
        if self.saved is None:  # a step that never estimated through ZOOptimizer._estimate
            return None
        kept = self.state is not None
        if all_finite([*self.params, *(self._state_tensors() if kept else [])]):
            return None
        for i, (p, before) in enumerate(zip(self.params, self.saved.saved)):
            if newly_nonfinite(p, before):
                return f"parameter {i} (in param-group order)"
        if not kept:
            return None
        assert self.state is not None
        live = self.optimizer.state
        for i, p in enumerate(self.params):
            copies = self.state[p][2] if p in self.state else {}
            for k, v in live.get(p, {}).items():
                if isinstance(v, Tensor) and v.is_floating_point() \
                        and newly_nonfinite(v, copies.get(k)):
                    return f"the state {k!r} of parameter {i} (in param-group order)"
        return None
