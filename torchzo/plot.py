"""Loss against queries for one or several recorded runs (needs the ``plot`` extra)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .recorder import Recorder

__all__ = ["plot_recorders"]


def _matplotlib_figure() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("plotting needs matplotlib, which is not installed: "
                          "pip install 'torchzo[plot]' (or pip install matplotlib)") from e
    return Figure


def plot_recorders(recorders: Mapping[str, Recorder], path: str | Path | None = None, *,
                   ax: Any = None, title: str | None = None, logy: bool = True) -> Any:
    """Plot each recorder's losses against its queries, one line per name; returns the figure.

    ``recorders`` maps a label to a :class:`torchzo.Recorder`. Each point is the loss before a
    step (what ``step`` returned) at the queries spent up to the end of that step, so runs
    with different ``q`` or estimators compare at equal cost. The y axis is logarithmic when
    ``logy`` and every loss is positive. ``path`` saves the figure (PNG, PDF, SVG: by its
    suffix). ``ax``: draw into these matplotlib axes (e.g. ``plt.gca()``) instead of a new
    figure, which is made without pyplot, so your backend and open figures are untouched.
    Raises ``ImportError`` with the install command when matplotlib is missing.
    """
    if not recorders:
        raise ValueError("plot_recorders needs at least one recorder")
    if ax is None:
        fig = _matplotlib_figure()(figsize=(6.4, 4.0))
        ax = fig.subplots()
    else:
        fig = ax.figure
    positive = True
    for label, rec in recorders.items():
        ax.plot(rec.queries, rec.losses, label=label, lw=1.4)
        positive = positive and all(loss > 0 for loss in rec.losses)
    if logy and positive:
        ax.set_yscale("log")
    ax.set_xlabel("queries (loss evaluations)")
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    if path is not None:
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    return fig
