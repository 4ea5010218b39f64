"""Progress: plain lines where there is no terminal or no tqdm, a tqdm bar where there are."""
from __future__ import annotations

import io
import re
import sys

import pytest
import torch

import torchzo
from torchzo.progress import Progress

LINE = re.compile(r"^train: (\d+)/10 batch \((\d+)%\), [\d.]+ batch/s, [\d.]+ s"
                  r"(, about [\d.]+ s left| in all), loss=([\d.]+)$")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_show_count_rate_time_left_and_fields():
    out = io.StringIO()
    with Progress(total=10, desc="train", unit="batch", stream=out, every=4) as progress:
        for i in range(10):
            progress.update(loss=1.0 / (i + 1))
    lines = out.getvalue().splitlines()
    assert [LINE.match(line).group(1) for line in lines] == ["4", "8", "10"]
    assert "left" in lines[0] and lines[-1].endswith("loss=0.1") and " in all" in lines[-1]
    assert LINE.match(lines[0]).group(4) == "0.25"


def test_lines_come_by_time_and_not_for_field_only_updates():
    out = io.StringIO()
    progress = Progress(desc="runs", unit="run", stream=out, interval=0.0)
    progress.update(0, note="first")  # changes the fields, counts nothing: no line
    assert out.getvalue() == ""
    progress.update(2)
    progress.close()
    progress.close()  # a second close writes nothing
    first, last = out.getvalue().splitlines()
    assert first.startswith("runs: 2 run, ") and first.endswith("note=first")
    assert " in all" in last and "%" not in last  # no total: no percentage


def test_disabled_and_unit_scaled():
    out = io.StringIO()
    with Progress(total=5, stream=out, disable=True) as progress:
        progress.update(5)
        progress.write("hidden")
    assert out.getvalue() == ""
    with Progress(total=3_000_000, desc="dl", unit="B", unit_scale=True, stream=out,
                  interval=None) as progress:
        progress.update(1_500_000)
    assert out.getvalue().startswith("dl: 1.5M/3.0M B (50%), ")


def test_a_terminal_without_tqdm_gets_plain_lines(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if the extra were not installed
    out = _Terminal()
    with Progress(total=2, desc="x", stream=out, every=1) as progress:
        progress.update(loss=0.5)
        progress.write("a message")
    assert out.getvalue().splitlines()[:2] == [out.getvalue().splitlines()[0], "a message"]
    assert out.getvalue().startswith("x: 1/2 step (50%)")


def test_a_terminal_with_tqdm_gets_a_bar():
    pytest.importorskip("tqdm", reason="tqdm is not installed; the test extra installs it: "
                        "pip install -e '.[test]' (or the progress extra)")
    out = _Terminal()
    with Progress(total=4, desc="bar", stream=out) as progress:
        for _ in range(4):
            progress.update(loss=0.25)
    text = out.getvalue()
    assert "bar" in text and "4/4" in text and "loss=0.25" in text
    plain = io.StringIO()  # bar=False: plain lines even on a terminal
    with Progress(total=1, stream=plain, bar=False) as progress:
        progress.update()
    assert plain.getvalue().startswith("1/1 step (100%)")


def test_recorder_shows_steps_queries_loss_and_queries_per_second():
    x = torch.ones(4)
    opt = torchzo.ZOSGD([x], lr=0.1, q=3, seed=0)
    out = io.StringIO()
    rec = torchzo.Recorder(opt, progress=Progress(desc="run", stream=out, every=2))
    for _ in range(5):
        opt.step(lambda: (x**2).sum())
    rec.remove()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[0].startswith("run: 2 step, ")
    assert re.search(r"queries=8 loss=[\d.]+ queries/s=\d+$", lines[0])
    assert re.search(r"run: 5 step, .* in all, queries=20 loss=", lines[-1])
    assert rec.queries == [4, 8, 12, 16, 20]


def test_recorder_progress_true_writes_to_stderr(capsys):
    x = torch.ones(2)
    opt = torchzo.ZOAdam([x], lr=0.1, q=2, seed=0)
    rec = torchzo.Recorder(opt, progress=True)
    opt.step(lambda: (x**2).sum())
    rec.remove()
    err = capsys.readouterr().err
    assert err.startswith("ZOAdam: 1 step, ") and "queries=3 loss=2" in err


def test_target_training_shows_its_progress(monkeypatch, capsys):
    from torchzo.tasks import targets

    def fake(data, split, root):
        g = torch.Generator().manual_seed(0)
        return torch.rand(40, 1, 28, 28, generator=g), torch.randint(0, 10, (40,), generator=g)

    monkeypatch.setattr(targets, "_load", fake)
    targets.train_target("mnist", epochs=2, batch=16, progress=True)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.match(r"training the mnist target: 6/6 batch \(100%\), .* in all, "
                    r"epoch=2/2 loss=[\d.]+$", line)
    targets.train_target("mnist", epochs=1, batch=16)
    assert capsys.readouterr().err == ""  # silent unless asked
