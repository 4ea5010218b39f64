"""Recording an optimizer's progress: loss and queries after every step."""
from __future__ import annotations

from typing import Any

from .optim.base import ZOOptimizer

__all__ = ["Recorder"]


class Recorder:
    """Appends ``(steps, queries, loss)`` after every completed step of ``optimizer``.

    Uses the optimizer's standard step post-hook, so the training loop is unchanged::

        rec = torchzo.Recorder(opt)
        for _ in range(100):
            opt.step(closure)
        rec.queries, rec.losses  # loss before each step, queries spent up to it

    ``losses[i]`` is the loss at the parameters before step ``i + 1`` (what ``step``
    returned); ``queries[i]`` counts the queries of steps 1 to ``i + 1``. A failed step records
    nothing. ``remove()`` detaches it.
    """

    def __init__(self, optimizer: ZOOptimizer) -> None:
        if not isinstance(optimizer, ZOOptimizer):
            raise ValueError(f"Recorder needs a torchzo optimizer, got {type(optimizer).__name__}")
        self.steps: list[int] = []
        self.queries: list[int] = []
        self.losses: list[float] = []
        self._handle = optimizer.register_step_post_hook(self._record)

    def _record(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.steps.append(optimizer.steps)
        self.queries.append(optimizer.queries)
        self.losses.append(optimizer.last_loss)

    def remove(self) -> None:
        """Detach from the optimizer: later steps are no longer recorded."""
        self._handle.remove()

    def as_dict(self) -> dict[str, list]:
        """The records as lists (JSON-ready): losses, cumulative queries, steps."""
        return {"steps": self.steps, "queries": self.queries, "losses": self.losses}
