"""The demo (``python -m torchzo``) says what each row is, with settings the repository measured."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import torchzo
import torchzo.__main__ as demo

BINCLASS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "binclass.json"


def test_the_baselines_run_with_the_benchmarks_tuned_settings():
    data = json.loads(BINCLASS.read_text())
    best = data["tuning"]["best"]
    for name, kind in (("ZOSGD", "zosgd"), ("ZOSignSGD", "zosignsgd"), ("ZOAdam", "zoadam")):
        assert demo.BINCLASS_TUNED[name]["lr"] == pytest.approx(best[kind]["lr"], rel=1e-5)
    assert demo.BINCLASS_TUNED["ZOAdam"]["betas"] == tuple(best["zoadam"]["betas"])
    for name, lr in demo.BINCLASS_TUNED_LR.items():
        assert lr == data["transfer"][name]["alpha"]


def test_each_row_is_explained_and_the_default_is_read_from_the_manifest(capsys):
    demo.main(["--steps", "12"])
    out = capsys.readouterr().out
    default = torchzo.pretrained.default_name()
    rows = [line.split() for line in out.splitlines()]
    labels = [r[0] for r in rows if len(r) == 5 and r[0].startswith("ZO")]  # name, 4 losses
    assert labels[:4] == ["ZOSGD", "ZOSignSGD", "ZOAdam", "ZOLSTM:binclass"]
    if default != "binclass":
        assert labels[4] == f"ZOLSTM:{default}"
    for label in labels:
        assert f"\n{label}: " in out  # one line saying what the row is


def test_the_default_rows_follow_whatever_the_default_is(monkeypatch):
    monkeypatch.setattr(torchzo.pretrained, "default_name", lambda: "binclass")
    assert [r[0] for r in demo.binclass_runs()][-1] == "ZOLSTM:binclass"  # not run twice
    monkeypatch.setattr(torchzo.pretrained, "default_name", lambda: "cifar-attack")
    rows = demo.binclass_runs()
    assert [r[0] for r in rows][-1] == "ZOLSTM:cifar-attack"  # no tuned lr known for it
    assert "trained on mnist-attack: another problem family" in rows[-1][3]
    monkeypatch.setattr(torchzo.pretrained, "default_name", lambda: "generalist")
    rows = demo.binclass_runs()
    assert [r[0] for r in rows][-1] == "ZOLSTM:generalist"
    assert "meta-trained on other problem families (never this one)" in rows[-1][3]
