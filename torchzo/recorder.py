"""Recording an optimizer's progress: loss and queries after every step."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .optim.base import ZOOptimizer
from .progress import Progress

__all__ = ["Recorder"]


class Recorder:
    """Appends ``(steps, queries, loss)`` after every completed step of ``optimizer``.

    Uses the optimizer's standard step post-hook, so the training loop is unchanged::

        rec = torchzo.Recorder(opt, progress=True)
        for _ in range(100):
            opt.step(closure)
        rec.queries, rec.losses  # loss before each step, queries spent up to it
        rec.plot("loss.png")     # loss against queries (needs the plot extra)

    ``losses[i]`` is the loss at the parameters before step ``i + 1`` (what ``step``
    returned); ``queries[i]`` counts the queries of steps 1 to ``i + 1``. A failed step records
    nothing. ``remove()`` detaches it.

    ``progress=True`` also shows the steps, queries, latest loss and queries per second as the
    run goes (a tqdm bar on a terminal with tqdm installed, else a plain line on stderr every
    10 s and one from ``remove()``); pass a :class:`torchzo.progress.Progress` instead to choose
    its total, stream or interval.
    """

    def __init__(self, optimizer: ZOOptimizer, progress: bool | Progress = False) -> None:
        if not isinstance(optimizer, ZOOptimizer):
            raise ValueError(f"Recorder needs a torchzo optimizer, got {type(optimizer).__name__}")
        self.steps: list[int] = []
        self.queries: list[int] = []
        self.losses: list[float] = []
        self.progress: Progress | None = (
            Progress(desc=type(optimizer).__name__) if progress is True else progress or None)
        self._queries_at_start = optimizer.queries
        self._handle = optimizer.register_step_post_hook(self._record)

    def _record(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.steps.append(optimizer.steps)
        self.queries.append(optimizer.queries)
        self.losses.append(optimizer.last_loss)
        if self.progress is not None:
            elapsed = self.progress.elapsed
            spent = optimizer.queries - self._queries_at_start
            fields: dict[str, Any] = {"queries": optimizer.queries, "loss": optimizer.last_loss,
                                      "queries/s": round(spent / elapsed) if elapsed > 0 else 0}
            self.progress.update(1, **fields)

    def remove(self) -> None:
        """Detach from the optimizer (later steps are no longer recorded); ends the progress."""
        self._handle.remove()
        if self.progress is not None:
            self.progress.close()

    def as_dict(self) -> dict[str, list]:
        """The records as lists (JSON-ready): losses, cumulative queries, steps."""
        return {"steps": self.steps, "queries": self.queries, "losses": self.losses}

    def plot(self, path: str | Path | None = None, label: str = "loss", **kwargs: Any) -> Any:
        """Loss against queries, as :func:`torchzo.plot_recorders` draws it for one recorder."""
        from .plot import plot_recorders

        return plot_recorders({label: self}, path, **kwargs)
