"""An exact copy of the parameters a step perturbs in place, and the perturbation itself."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .directions import Direction, Signs
from .scratch import Scratch

__all__ = ["ParameterBackup", "Places"]


class Places:
    """Where each of ``params``' elements live (storage, offset, shape, strides), to point a
    parameter back there after a closure repointed it (``p.set_(other)``): the values then
    go back into the memory the model reads, not into the closure's."""

    def __init__(self, params: Sequence[Tensor]) -> None:
        self.params = list(params)
        self.places = [(p.untyped_storage(), p.storage_offset(), p.shape, p.stride())
                       for p in self.params]

    @torch.no_grad()
    def restore(self) -> None:
        for p, (storage, offset, shape, stride) in zip(self.params, self.places):
            if p.untyped_storage().data_ptr() != storage.data_ptr() or \
                    p.storage_offset() != offset or p.shape != shape or p.stride() != stride:
                p.set_(storage, offset, shape, stride)


class ParameterBackup:
    """An exact copy of parameters, for perturbing them in place and putting them back.

    ``restore()`` copies the saved bits back, so a step that fails at any query leaves every
    parameter bit-identical to where it started (adding and subtracting ``mu * u`` would not).
    """

    def __init__(self, params: Sequence[Tensor], scratch: Scratch | None = None) -> None:
        self.params = list(params)
        self.places = Places(self.params)
        with torch.no_grad():
            if scratch is None:
                self.saved = [p.detach().clone() for p in self.params]
            else:
                self.saved = scratch.take(self.params)
                torch._foreach_copy_(self.saved, [p.detach() for p in self.params])

    @torch.no_grad()
    def restore(self, index: Sequence[int] | None = None) -> None:
        """Put back every parameter (into its own memory), or the values of those in
        ``index``."""
        if index is None:
            self.places.restore()
            torch._foreach_copy_(self.params, self.saved)
        else:
            torch._foreach_copy_([self.params[i] for i in index], [self.saved[i] for i in index])

    def perturb(self, index: Sequence[int], direction: Direction, alpha: float) -> None:
        """Set ``params[i] = saved[i] + alpha * direction`` for ``i`` in ``index``."""
        if isinstance(direction, Signs):  # writes under no_grad itself, where it uses torch
            direction.perturb([self.params[i] for i in index], [self.saved[i] for i in index],
                              alpha)
            return
        if torch.is_grad_enabled():
            with torch.no_grad():
                self._perturb(index, direction, alpha)
        else:  # the optimizers' case (as in call_closure): a query's no_grad is its Python
            self._perturb(index, direction, alpha)

    def _perturb(self, index: Sequence[int], direction: Sequence[Tensor], alpha: float) -> None:
        for i, u in zip(index, direction):
            torch.add(self.saved[i], u, alpha=alpha, out=self.params[i])
