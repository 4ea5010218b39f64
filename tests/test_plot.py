"""Plots of loss against queries: a file is written; a clear error without matplotlib."""
from __future__ import annotations

import sys

import pytest
import torch

import torchzo


def _recorded(cls, **kw) -> torchzo.Recorder:
    x = torch.ones(6)
    opt = cls([x], q=4, seed=0, **kw)
    rec = torchzo.Recorder(opt)
    for _ in range(15):
        opt.step(lambda: (x**2).sum())
    return rec


def test_plot_recorders_writes_a_png_with_one_line_per_run(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed; the test extra "
                        "installs it: pip install -e '.[test]' (or the plot extra)")
    recs = {"ZO-SGD": _recorded(torchzo.ZOSGD, lr=0.05), "ZO-Adam": _recorded(torchzo.ZOAdam,
                                                                               lr=0.1)}
    path = tmp_path / "loss.png"
    fig = torchzo.plot_recorders(recs, path, title="toy")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.get_lines()] == ["ZO-SGD", "ZO-Adam"]
    assert ax.get_yscale() == "log" and list(ax.get_lines()[0].get_xdata()) == recs[
        "ZO-SGD"].queries
    one = recs["ZO-Adam"].plot(tmp_path / "one.svg", label="adam", logy=False)
    assert (tmp_path / "one.svg").read_text().lstrip().startswith("<?xml")
    assert one.axes[0].get_yscale() == "linear"
    # Drawn into given axes: the figure they belong to comes back.
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    assert torchzo.plot_recorders(recs, ax=ax) is ax.figure and len(ax.get_lines()) == 2
    with pytest.raises(ValueError, match="at least one"):
        torchzo.plot_recorders({})


def test_without_matplotlib_plotting_says_how_to_install_it(monkeypatch):
    for name in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)  # as if the extra were not installed
    rec = _recorded(torchzo.ZOSGD, lr=0.05)
    with pytest.raises(ImportError, match=r"pip install 'torchzo\[plot\]'"):
        rec.plot("never.png")
