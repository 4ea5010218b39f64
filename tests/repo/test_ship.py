"""``python -m tools.ship``: trained weights enter a manifest that ``torchzo.pretrained`` reads."""
from __future__ import annotations

import json

import pytest
import torch

from tools.ship import main as ship_main
from torchzo import pretrained
from torchzo.learned import LearnedZO
from torchzo.optim.zolstm import ZOLSTM

TRAIN = "python -m torchzo.meta train --task binclass --out w.pt"


@pytest.fixture
def trained(tmp_path, monkeypatch):
    """A weights file with the metadata ``torchzo.meta train`` writes, and an empty ``dest``."""
    torch.manual_seed(0)
    out = tmp_path / "w.pt"
    meta = {"task": "binclass", "preset": "paper", "arch": "paper", "command": TRAIN,
            "val_final_loss": 0.5, "train_seconds": 1.0, "torch": str(torch.__version__),
            "machine": "test"}
    pretrained.save(LearnedZO(), out, meta)
    out.with_name("w.pt.json").write_text(json.dumps({**meta, "sha256": pretrained.sha256(out)}))
    dest = tmp_path / "shipped"
    dest.mkdir()
    monkeypatch.setattr(pretrained, "weights_dir", lambda: dest)
    return out, dest


def test_shipped_weights_load_by_name_as_the_default(trained):
    out, dest = trained
    ship_main(["--weights", str(out), "--name", "toy", "--command", "train it",
               "--dest", str(dest), "--default"])
    assert pretrained.available() == ["toy"] and pretrained.default_name() == "toy"
    assert pretrained.info("toy")["command"] == "train it"
    assert torch.equal(pretrained.load("toy").update.head.weight,
                       pretrained.load_file(out).update.head.weight)


def test_without_command_the_manifest_records_the_train_and_ship_commands(trained):
    out, dest = trained
    ship_main(["--weights", str(out), "--name", "again", "--dest", str(dest)])
    assert pretrained.info("again")["command"] == (
        f"{TRAIN} && python -m tools.ship --weights {out} --name again --dest {dest}")


def test_alpha_bakes_the_output_scale_into_a_transferred_optimizer(trained):
    """At lr=1 the shipped file steps as the original at lr=alpha (to rounding), and says
    where it came from."""
    out, dest = trained
    ship_main(["--weights", str(out), "--name", "moved", "--command", "move it",
               "--dest", str(dest), "--alpha", "0.25", "--task", "elsewhere"])
    info = pretrained.info("moved")
    assert info["task"] == "elsewhere" and info["trained_on"] == "binclass"
    assert info["alpha"] == 0.25 and info["val_final_loss"] is None
    xa, xb = torch.zeros(5), torch.zeros(5)
    f = lambda x: ((x - 1) ** 2).sum() + x[0].sin()  # noqa: E731
    oa = ZOLSTM([xa], pretrained="moved", seed=3)
    ob = ZOLSTM([xb], pretrained=str(out), lr=0.25, seed=3)
    for _ in range(5):
        oa.step(lambda: f(xa))
        ob.step(lambda: f(xb))
    assert not torch.equal(xa, torch.zeros(5))
    torch.testing.assert_close(xa, xb, rtol=1e-5, atol=1e-6)
