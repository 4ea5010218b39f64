"""Weights are checked before they are trusted: shapes against the declared
architecture before anything is allocated, finite values of sane size, a PretrainedError that
says what is wrong for every malformed input, str paths like Path, an optional sha256."""
from __future__ import annotations

import hashlib
import io
import json
import math
import time
import zipfile

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from torchzo import pretrained
from torchzo.learned import GeneralConfig, LearnedZO, PaperConfig
from torchzo.optim.zolstm import ZOLSTM
from torchzo.pretrained import PretrainedError


def weights(**changes):
    torch.manual_seed(0)
    sd = LearnedZO().state_dict()
    sd.update(changes)
    return sd


def peak_bytes(fn):
    """Peak CPU bytes allocated by torch while ``fn`` runs (the allocator's own events)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        try:
            fn()
        except PretrainedError:
            pass
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak


@pytest.mark.parametrize("value, match", [(math.nan, "non-finite"), (math.inf, "non-finite"),
                                          (1e30, "magnitude")])
@pytest.mark.parametrize("how", ["file", "dict", "module"])
def test_non_finite_or_huge_weights_are_refused(tmp_path, value, match, how):
    sd = weights()
    sd["update.head.weight"][0, 3] = value
    if how == "file":
        torch.save({"weights": sd}, tmp_path / "w.pt")
        source = tmp_path / "w.pt"
    elif how == "dict":
        source = sd
    else:
        source = LearnedZO()
        source.load_state_dict(sd)
    with pytest.raises(PretrainedError, match=match):
        ZOLSTM([torch.zeros(3)], pretrained=source)


def test_a_small_file_declaring_a_huge_head_is_refused_quickly_in_bounded_memory(tmp_path):
    sd = weights(**{"update.head.weight": torch.zeros(1, 8000)})
    torch.save(sd, tmp_path / "w.pt")
    assert (tmp_path / "w.pt").stat().st_size < 64_000
    start = time.perf_counter()
    with pytest.raises(PretrainedError, match="8000 wide"):  # before the shapes are compared
        pretrained.load_file(tmp_path / "w.pt")
    assert time.perf_counter() - start < 2.0  # was 11 s
    assert peak_bytes(lambda: pretrained.load_file(tmp_path / "w.pt")) < 4 * 2**20  # was 2 GiB
    # The same with the architecture declared, and with a declared hidden size that is huge.
    torch.save({"weights": weights(), "arch": {"hidden": 8000}}, tmp_path / "a.pt")
    assert peak_bytes(lambda: pretrained.load_file(tmp_path / "a.pt")) < 4 * 2**20
    with pytest.raises(PretrainedError, match="hidden 8000"):
        pretrained.load_file(tmp_path / "a.pt")
    torch.save({"weights": weights(), "arch": {"hidden": 10**9}}, tmp_path / "b.pt")
    with pytest.raises(PretrainedError, match="hidden"):
        pretrained.load_file(tmp_path / "b.pt")


@pytest.mark.parametrize("arch, width", [
    ({"kind": "general", "config": {"coord_hidden": 65536}}, 65536),
    ({"kind": "general", "config": {"momenta": [0.5] * 1024}}, 1025),
    ({"kind": "paper", "config": {"hidden": 4096}}, 4096),
])
def test_an_architecture_too_wide_per_coordinate_is_refused_before_building(tmp_path, arch,
                                                                             width):
    # A file of a megabyte or two could declare networks whose first step allocates about
    # half a megabyte per parameter element: refused before anything is built. (The paper's
    # weights grow with the square of its width: there the declaration alone is refused.)
    built = (LearnedZO(arch=GeneralConfig(**arch["config"])) if arch["kind"] == "general"
             else LearnedZO())
    torch.save({"weights": built.state_dict(), "arch": arch}, tmp_path / "w.pt")
    assert (tmp_path / "w.pt").stat().st_size < 8 * 2**20
    with pytest.raises(PretrainedError, match=f"{width} wide, more than 1024"):
        pretrained.load_file(tmp_path / "w.pt")
    assert peak_bytes(lambda: pretrained.load_file(tmp_path / "w.pt")) < 16 * 2**20


def test_the_widest_allowed_architecture_still_loads(tmp_path):
    arch = GeneralConfig(coord_hidden=pretrained.MAX_COORDINATE_WIDTH)
    torch.save({"weights": LearnedZO(arch=arch).state_dict(), "arch": arch.to_dict()},
               tmp_path / "w.pt")
    assert pretrained.load_file(tmp_path / "w.pt").arch.coord_hidden == 1024


@pytest.mark.parametrize("blob, match", [
    (torch.zeros(3), "holds a Tensor"),
    ([torch.zeros(3)], "holds a list"),
    ({"weights": torch.zeros(3)}, "holds a Tensor"),
    ({"weights": {1: torch.zeros(1)}}, "unexpected"),
    ({"weights": weights(**{"update.head.weight": torch.zeros(1, 10, dtype=torch.int64)})},
     "not a dense floating"),
    ({"weights": weights(**{"update.head.weight": torch.zeros(1, 10).to_sparse()})},
     "not a dense floating"),
    ({"weights": weights(**{"extra": torch.zeros(1)})}, "unexpected \\['extra'\\]"),
    ({"weights": {k: v for k, v in weights().items() if k != "query.head.weight"}},
     "missing \\['query.head.weight'\\]"),
    ({"weights": weights(), "arch": {"kind": "nope"}}, "invalid architecture"),
    ({"weights": weights(), "arch": {"colour": 3}}, "invalid architecture"),
    ({"weights": weights(), "arch": {"horizon": 0}}, "horizon=0"),
    ({"weights": weights(), "arch": [1, 2]}, "invalid architecture"),
    ({"weights": weights(), "arch": {"kind": "general"}}, "missing \\['log_lr'"),
    ({"weights": weights(), "arch": {"kind": "adam"}}, "invalid architecture.*'adam'"),
    ({"weights": weights(), "arch": {"kind": "general", "config": {"colour": 3}}},
     "invalid architecture"),
    ({"weights": weights(), "arch": {"kind": "paper", "config": {"hidden": 0}}}, "hidden=0"),
    ({"weights": weights(), "arch": {"kind": "general", "sgd_mix": True}}, "sgd_mix"),
])
def test_every_malformed_file_raises_a_pretrained_error_saying_what(tmp_path, blob, match):
    torch.save(blob, tmp_path / "w.pt")
    with pytest.raises(PretrainedError, match=match):
        pretrained.load_file(tmp_path / "w.pt")
    with pytest.raises(PretrainedError, match=match):
        ZOLSTM([torch.zeros(2)], pretrained=str(tmp_path / "w.pt"))


@pytest.mark.parametrize("content, match", [
    (b"", "not a torch.save archive"), (b"not a zip at all", "not a torch.save archive"),
])
def test_files_that_are_not_archives_are_refused(tmp_path, content, match):
    (tmp_path / "w.pt").write_bytes(content)
    with pytest.raises(PretrainedError, match=match):
        pretrained.load_file(tmp_path / "w.pt")


def test_compressed_archives_are_refused(tmp_path):
    buf = io.BytesIO()
    torch.save(weights(), buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, \
            zipfile.ZipFile(tmp_path / "w.pt", "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            dst.writestr(item.filename, src.read(item.filename))
    with pytest.raises(PretrainedError, match="compressed"):
        pretrained.load_file(tmp_path / "w.pt")


def test_a_sha256_pins_a_user_file(tmp_path):
    pretrained.save(LearnedZO(), tmp_path / "w.pt")
    digest = hashlib.sha256((tmp_path / "w.pt").read_bytes()).hexdigest()
    assert isinstance(pretrained.load_file(tmp_path / "w.pt", sha256=digest), LearnedZO)
    assert isinstance(pretrained.load_file(str(tmp_path / "w.pt"), sha256=digest.upper()),
                      LearnedZO)
    with pytest.raises(PretrainedError, match="does not match the given sha256"):
        pretrained.load_file(tmp_path / "w.pt", sha256="0" * 64)


@pytest.fixture
def no_manifest(tmp_path, monkeypatch):
    empty = tmp_path / "shipped"
    empty.mkdir()
    monkeypatch.setattr(pretrained, "weights_dir", lambda: empty)
    return tmp_path


def test_a_str_path_loads_like_a_path_without_a_manifest(no_manifest):
    torch.manual_seed(0)
    nets = LearnedZO()
    pretrained.save(nets, no_manifest / "w.pt")
    for source in (no_manifest / "w.pt", str(no_manifest / "w.pt")):
        opt = ZOLSTM([torch.zeros(2)], pretrained=source)
        assert torch.equal(opt.nets.update.head.weight, nets.update.head.weight)
    with pytest.raises(PretrainedError, match="no weights file.*no shipped weights"):
        ZOLSTM([torch.zeros(2)], pretrained="binclass")


def test_an_unknown_shipped_name_lists_the_available_ones():
    with pytest.raises(PretrainedError, match="no weights file.*available: .*'binclass'"):
        ZOLSTM([torch.zeros(2)], pretrained="binclas")


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"), ("[]", "malformed"), ('{"weights": {}}', "malformed"),
    ('{"default": "toy", "weights": [3]}', "not an object"),
    ('{"default": "toy", "weights": [{"name": "toy", "file": "toy.pt"}]}', "sha256"),
    ('{"weights": []}', "default"),
])
def test_a_malformed_manifest_raises_a_pretrained_error(no_manifest, text, match):
    (no_manifest / "shipped" / "manifest.json").write_text(text)
    for call in (pretrained.available, pretrained.default_name, pretrained.load,
                 lambda: ZOLSTM([torch.zeros(2)])):
        with pytest.raises(PretrainedError, match=match):
            call()


def test_a_valid_manifest_of_ones_own_still_loads(no_manifest):
    pretrained.save(LearnedZO(arch=GeneralConfig(hidden=4)), no_manifest / "shipped" / "a.pt")
    digest = pretrained.sha256(no_manifest / "shipped" / "a.pt")
    (no_manifest / "shipped" / "manifest.json").write_text(json.dumps(
        {"default": "a", "weights": [{"name": "a", "file": "a.pt", "sha256": digest}]}))
    assert pretrained.load().arch == GeneralConfig(hidden=4)
    assert ZOLSTM([torch.zeros(2)], pretrained="a").nets.arch.kind == "general"


def test_files_with_the_flat_architecture_of_older_versions_load_as_they_stepped(tmp_path):
    """A flat dict keeps its kind's own settings and drops the ones the kind never read (a
    paper file's horizon and momenta), or that sat at the value that made them do nothing."""
    sd = LearnedZO(8).state_dict()
    flat = {"kind": "paper", "hidden": 8, "horizon": 200, "momenta": [0.5, 0.9, 0.99],
            "base": 2, "beta2": 0.999, "eps": 1e-8, "init_lr": 0.03}
    torch.save({"weights": sd, "arch": flat}, tmp_path / "paper.pt")
    assert pretrained.load_file(tmp_path / "paper.pt").arch == PaperConfig(hidden=8)
    general = LearnedZO(arch=GeneralConfig(hidden=4, max_step=0.5))
    flat = {**flat, "kind": "general", "hidden": 4, "coord_hidden": 8, "floor": 1e-3,
            "gain": 0.15, "noise_inputs": False, "query_net": True, "sgd_mix": False,
            "mix_gain": 0.0, "max_step": 0.5, "sigma_rate": 1.0, "directions_kind": "gaussian"}
    torch.save({"weights": general.state_dict(), "arch": flat}, tmp_path / "general.pt")
    assert pretrained.load_file(tmp_path / "general.pt").arch == general.arch
    torch.save({"weights": general.state_dict(), "arch": {**flat, "mix_gain": 0.1}},
               tmp_path / "mixed.pt")
    with pytest.raises(PretrainedError, match="no longer has 'mix_gain'"):
        pretrained.load_file(tmp_path / "mixed.pt")
    pretrained.save(general, tmp_path / "new.pt")
    stored = torch.load(tmp_path / "new.pt", weights_only=True)["arch"]
    assert stored == {"kind": "general", "config": {**general.arch.to_dict()["config"]}}
    assert set(stored["config"]) == {f for f in vars(general.arch)}
