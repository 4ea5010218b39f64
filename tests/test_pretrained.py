"""Shipped weights: listed, verified against the manifest, loaded offline with weights_only."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

import torchzo
from torchzo import pretrained
from torchzo.learned import LearnedZO
from torchzo.optim.zolstm import ZOLSTM


def test_every_shipped_file_matches_its_manifest_and_loads():
    names = pretrained.available()
    assert "binclass" in names and pretrained.default_name() in names
    for name in names:
        entry = pretrained.info(name)
        path = pretrained.weights_dir() / entry["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        assert path.stat().st_size < 64_000  # 10-unit LSTMs: kilobytes
        for key in ("task", "command", "preset"):
            assert entry[key]
        assert isinstance(pretrained.load(name), LearnedZO)


def test_zolstm_defaults_to_the_shipped_default():
    x = torch.zeros(4)
    opt = ZOLSTM([x], seed=0)
    shipped = pretrained.load()
    for a, b in zip(opt.nets.state_dict().values(), shipped.state_dict().values()):
        assert torch.equal(a, b)
    by_name = ZOLSTM([torch.zeros(4)], pretrained="binclass", seed=0)
    assert isinstance(by_name.nets, LearnedZO)


def test_cifar_attack_is_the_measured_transfer_of_mnist_attack():
    """docs/benchmarks/attack-cifar10.md measured mnist-attack at the tuned output scale;
    the shipped cifar-attack must be that optimizer with the scale baked in."""
    docs = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
    bench = json.loads((docs / "attack-cifar10.json").read_text())
    scale = bench["transfer"]["mnist"]["alpha"]
    assert bench["weights"]["mnist"]["sha256"] == pretrained.info("mnist-attack")["sha256"]
    src = pretrained.load("mnist-attack").state_dict()
    dst = pretrained.load("cifar-attack").state_dict()
    assert src.keys() == dst.keys()
    for key in src:
        want = src[key] * scale if key == "update.head.weight" else src[key]
        # The manifest's alpha is rounded to six digits: 0.132816 for 0.42 x 0.316228.
        torch.testing.assert_close(dst[key], want, rtol=1e-5, atol=0)
    # And so it steps as the measured transfer did, up to float rounding.
    target = torch.linspace(-1, 1, 50)
    xs = [torch.zeros(50), torch.zeros(50)]
    opts = [ZOLSTM([xs[0]], pretrained="cifar-attack", seed=0),
            ZOLSTM([xs[1]], pretrained="mnist-attack", lr=scale, seed=0)]
    for _ in range(30):
        for x, opt in zip(xs, opts):
            opt.step(lambda x=x: ((x - target) ** 2).sum())
    assert (xs[0] - torch.zeros(50)).abs().max() > 1e-3  # it moved
    # Rounding differences grow over 30 LSTM steps: up to about 1e-5 near zero.
    torch.testing.assert_close(xs[0], xs[1], rtol=1e-4, atol=1e-4)


@pytest.fixture
def fake_shipped(tmp_path, monkeypatch):
    """A private copy of a manifest and one weights file, for breaking them."""
    torch.manual_seed(0)
    nets = LearnedZO()
    torch.save({"weights": nets.state_dict(), "meta": {"task": "toy"}}, tmp_path / "toy.pt")
    digest = hashlib.sha256((tmp_path / "toy.pt").read_bytes()).hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps({"default": "toy", "weights": [
        {"name": "toy", "file": "toy.pt", "sha256": digest, "task": "toy",
         "command": "n/a", "preset": "paper"}]}))
    monkeypatch.setattr(pretrained, "weights_dir", lambda: tmp_path)
    return tmp_path, nets


def test_loads_by_name_and_by_path(fake_shipped):
    folder, nets = fake_shipped
    for source in ("toy", folder / "toy.pt", str(folder / "toy.pt"), nets.state_dict()):
        opt = ZOLSTM([torch.zeros(2)], pretrained=source)
        assert torch.equal(opt.nets.update.head.weight, nets.update.head.weight)


def test_tampered_file_is_refused(fake_shipped):
    folder, _ = fake_shipped
    data = bytearray((folder / "toy.pt").read_bytes())
    data[-30] ^= 0xFF
    (folder / "toy.pt").write_bytes(bytes(data))
    with pytest.raises(pretrained.PretrainedError, match="does not match its manifest"):
        pretrained.load("toy")


def test_missing_file_is_named(fake_shipped):
    folder, _ = fake_shipped
    (folder / "toy.pt").unlink()
    with pytest.raises(pretrained.PretrainedError, match="missing"):
        ZOLSTM([torch.zeros(2)], pretrained="toy")


def test_unknown_name_lists_the_available_ones(fake_shipped):
    with pytest.raises(ValueError, match="toy"):
        pretrained.info("nope")
    with pytest.raises(pretrained.PretrainedError, match="no weights file"):
        ZOLSTM([torch.zeros(2)], pretrained="nope")


def test_pickled_code_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    torch.save({"weights": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(pretrained.PretrainedError, match="not a loadable"):
        pretrained.load_file(tmp_path / "evil.pt")
    assert (tmp_path / "victim").is_dir()


def test_wrong_weights_are_refused(tmp_path):
    torch.save({"weights": {"a": torch.zeros(2)}}, tmp_path / "w.pt")
    with pytest.raises(pretrained.PretrainedError, match="does not hold ZO-LSTM weights"):
        torchzo.ZOLSTM([torch.zeros(2)], pretrained=tmp_path / "w.pt")


def test_shipped_generalist_holds_the_weights_its_benchmark_measured():
    from benchmarks.generalist.heldout import weights_digest

    docs = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
    bench = json.loads((docs / "generalist.json").read_text())
    assert weights_digest(pretrained.load("generalist")) == bench["weights_digest"]
    assert pretrained.load("generalist").arch.kind == "general"


def test_weights_digest_tells_apart_architectures_that_step_differently_with_one_weight_set():
    """The step cap changes the step, not the weights: the digest must see it."""
    from dataclasses import replace

    from benchmarks.generalist.heldout import weights_digest

    shipped = pretrained.load("generalist")
    other = LearnedZO(arch=replace(shipped.arch, max_step=0.0))
    other.load_state_dict(shipped.state_dict())
    assert weights_digest(other) != weights_digest(shipped)
    same = LearnedZO(arch=shipped.arch)
    same.load_state_dict(shipped.state_dict())
    assert weights_digest(same) == weights_digest(shipped)
