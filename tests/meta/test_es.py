"""ES meta-training of the generalist: flat weights, the score, the search gradient, resuming,
and the command line that trains and exports it."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from zo_testing import FAST, FEW

import torchzo
from torchzo.learned import GeneralConfig, LearnedZO
from torchzo.learned.arch import from_dict
from torchzo.meta import es, es_gradient
from torchzo.meta.__main__ import main
from torchzo.meta.es import ESConfig, flatten, score, train_es, unflatten, validate, weights_of
from torchzo.meta.es_gradient import centred_ranks
from torchzo.meta.population import PopulationRun

ARCH = GeneralConfig(hidden=8)


def _like() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.detach() for k, v in LearnedZO(arch=ARCH).weights().items()}


def _tiny(iterations: int, **kw) -> ESConfig:
    settings = dict(pairs=2, instances=1, steps=(5, 10), val_every=2, val_instances=1,
                    val_steps=5)
    return ESConfig(iterations=iterations, **{**settings, **kw})


# -- 1. flat weights ------------------------------------------------------------------------------

@FEW
@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), seed=st.integers(0, 2**16))
def test_flatten_unflatten_round_trip_with_and_without_leading_dims(lead, seed):
    like = _like()
    n = sum(w.numel() for w in like.values())
    assert flatten(like).shape == (n,)
    assert torch.equal(flatten(unflatten(flatten(like), like)), flatten(like))
    theta = torch.randn((*lead, n), generator=torch.Generator().manual_seed(seed))
    out = unflatten(theta, like)
    assert list(out) == list(like)  # the dict's order
    for name, w in like.items():
        assert out[name].shape == (*lead, *w.shape)
    rows = theta.reshape(-1, n)
    stacked = {k: v.reshape(-1, *like[k].shape) for k, v in out.items()}
    for i in range(rows.shape[0]):
        member = {k: v[i] for k, v in stacked.items()}
        assert torch.equal(flatten(member), rows[i])  # a member's slice is its own vector
    # The pieces are contiguous runs of theta, in order.
    start = 0
    for name, w in like.items():
        assert torch.equal(out[name].reshape(*lead, -1), theta[..., start:start + w.numel()])
        start += w.numel()
    assert start == n


def test_weights_of_holds_the_flat_weights():
    like = _like()
    theta = torch.randn(sum(w.numel() for w in like.values()),
                        generator=torch.Generator().manual_seed(1))
    nets = weights_of(theta, ARCH)
    assert nets.arch == ARCH
    assert torch.equal(flatten({k: v.detach() for k, v in nets.weights().items()}), theta)


# -- 2. the score ---------------------------------------------------------------------------------

def _curve(gaps: list[float], f_min: float = 0.0) -> torch.Tensor:
    return torch.tensor([f_min + g for g in gaps], dtype=torch.float64)


@FAST
@given(start=st.floats(1e-3, 1e3), ratios=st.lists(st.floats(1e-5, 1e3), min_size=1, max_size=11),
       shrink=st.floats(0.01, 0.9), at=st.integers(0, 10), f_min=st.floats(-10, 10))
def test_score_is_lower_for_a_curve_that_decreases_more(start, ratios, shrink, at, f_min):
    """Within the clipping range (progress between 1e-8 and 1e4 of the start gap)."""
    gaps = [start] + [start * r for r in ratios]
    at = 1 + at % len(ratios)
    better = list(gaps)
    better[at] = gaps[at] * shrink  # lower at one step, the same start
    scores = score(torch.stack([_curve(gaps, f_min), _curve(better, f_min)]), f_min)
    assert scores.shape == (2,)
    assert scores[1] < scores[0]


def test_score_of_a_diverged_member_is_the_worst():
    steps = 10
    good = [1.0 * 0.7 ** t for t in range(steps)]
    stalled = [1.0] * steps
    awful = [1.0] + [1e6] * (steps - 1)  # finite but 10^6 times the start
    diverged = [1.0] + [math.nan] * (steps - 1)
    overflowed = [1.0] + [math.inf] * (steps - 1)
    scores = score(torch.stack([_curve(c) for c in (good, stalled, awful, diverged,
                                                    overflowed)]), 0.0)
    assert torch.isfinite(scores).all()
    assert scores[0] < scores[1] < scores[2]
    assert scores[3] >= scores[:3].max() and scores[4] == scores[3]
    # A run that diverges late ranks behind the same run that does not.
    late = good[:-1] + [math.nan]
    pair = score(torch.stack([_curve(good), _curve(late)]), 0.0)
    assert pair[1] > pair[0]


def test_score_clips_progress_at_the_optimum():
    exact = score(_curve([1.0, 0.0, 0.0])[None], 0.0)
    below = score(_curve([1.0, -1.0, -5.0])[None], 0.0)  # under f_min: clipped, not NaN
    assert torch.isfinite(exact).all() and torch.isfinite(below).all()
    assert float(exact) == pytest.approx(2 * math.log(1e-8) / 3)
    assert float(below) == float(exact)


@FAST
@given(a=st.floats(1e-3, 1e3), b=st.floats(-1e3, 1e3), f_min=st.floats(-10, 10),
       seed=st.integers(0, 2**16))
def test_score_is_invariant_to_loss_scale_and_offset(a, b, f_min, seed):
    g = torch.Generator().manual_seed(seed)
    gaps = torch.rand(4, 9, generator=g, dtype=torch.float64).cumprod(1) * 3 + 1e-3
    losses = f_min + gaps
    base = score(losses, f_min)
    mapped = score(a * losses + b, a * f_min + b)
    torch.testing.assert_close(mapped, base, rtol=1e-6, atol=1e-6)


@FAST
@given(values=st.lists(st.integers(-10**6, 10**6), min_size=2, max_size=20, unique=True))
def test_centred_ranks_keep_the_order_and_are_centred(values):
    x = torch.tensor(values, dtype=torch.float64)
    ranks = centred_ranks(x)
    assert ranks.min() == -0.5 and ranks.max() == 0.5
    assert float(ranks.sum()) == pytest.approx(0.0, abs=1e-9)
    assert torch.equal(ranks.argsort(), x.argsort())
    # Ranks, not values: an increasing map gives the same ones.
    assert torch.equal(centred_ranks(x ** 3 + 5 * x), ranks)


@FAST
@given(values=st.lists(st.integers(-3, 3), min_size=2, max_size=20))
def test_tied_scores_share_their_rank_and_give_no_direction(values):
    """Members that all reached the floor tie; sorting them by index would tell the search
    to move from the minus halves to the plus halves for no reason."""
    x = torch.tensor(values, dtype=torch.float64)
    ranks = centred_ranks(x)
    assert float(ranks.sum()) == pytest.approx(0.0, abs=1e-9)
    for i in range(len(values)):
        for j in range(len(values)):
            assert (ranks[i] == ranks[j]) == (x[i] == x[j])
            assert (ranks[i] < ranks[j]) == (x[i] < x[j])
    # an antithetic population whose every member tied: zero search direction
    assert torch.equal(centred_ranks(torch.zeros(8, dtype=torch.float64)),
                       torch.zeros(8, dtype=torch.float64))


def test_score_counts_no_progress_below_its_floor():
    solved = _curve([1.0, 1e-3, 1e-6, 1e-9])
    deeper = _curve([1.0, 1e-3, 1e-7, 1e-12])
    pair = score(torch.stack([solved, deeper]), 0.0, floor=1e-4)
    assert float(pair[0]) == float(pair[1])
    assert float(pair[0]) == pytest.approx((0 + math.log(1e-3) + 2 * math.log(1e-4)) / 4)
    # at the default floor (1e-8) the deeper run scores better
    default = score(torch.stack([solved, deeper]), 0.0)
    assert default[1] < default[0]


# -- 3. resuming ----------------------------------------------------------------------------------

def _checkpoint(folder: Path) -> dict:
    return torch.load(folder / "checkpoint.pt", weights_only=True)


def _theta(checkpoint: dict) -> torch.Tensor:
    return checkpoint["params"]["theta"]


def _history(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("seconds")
    return rows


def test_train_es_resumes_bit_exactly(tmp_path):
    quiet = lambda line: None  # noqa: E731
    whole, split = tmp_path / "whole", tmp_path / "split"
    train_es(_tiny(3), whole, log=quiet)
    train_es(_tiny(2), split, log=quiet)
    first = _checkpoint(split)
    assert first["iteration"] == 2
    lines = []
    train_es(_tiny(3), split, log=lines.append)
    assert any("resumed at iteration 2" in line for line in lines)
    a, b = _checkpoint(whole), _checkpoint(split)
    assert a["iteration"] == b["iteration"] == 3
    for name, (x, y) in {"theta": (_theta(a), _theta(b)), "rng": (a["rng"], b["rng"]),
                         "base_val": (a["start"], b["start"])}.items():
        assert torch.equal(x, y), name
    for key in ("step", "exp_avg", "exp_avg_sq"):  # Adam's moments (m, v) and count
        assert torch.equal(a["optimizer"]["state"][0][key], b["optimizer"]["state"][0][key]), key
    assert a["best"]["score"] == b["best"]["score"]
    assert a["best"]["iteration"] == b["best"]["iteration"]
    assert torch.equal(a["best"]["weights"]["theta"], b["best"]["weights"]["theta"])
    assert not torch.equal(_theta(a), _theta(first))  # the last iteration moved theta
    assert not torch.equal(_theta(a), flatten(_like()))
    assert _history(whole) == _history(split)
    best_a = torch.load(whole / "best.pt", weights_only=True)
    best_b = torch.load(split / "best.pt", weights_only=True)
    assert best_a["iteration"] == best_b["iteration"]
    assert torch.equal(best_a["theta"], best_b["theta"])


def test_a_checkpoint_from_before_torch_adam_resumes_as_the_same_state(tmp_path):
    """Checkpoints of the hand-rolled update (theta, m and v at the top level) resume: m and
    v are Adam's moments, so converted they are the state the loop would have saved."""
    quiet = lambda line: None  # noqa: E731
    whole, old = tmp_path / "whole", tmp_path / "old"
    train_es(_tiny(3), whole, log=quiet)
    train_es(_tiny(2), old, log=quiet)
    st = _checkpoint(old)
    adam = st["optimizer"]["state"][0]
    torch.save({"theta": _theta(st), "m": adam["exp_avg"], "v": adam["exp_avg_sq"],
                "iteration": st["iteration"], "rng": st["rng"], "best": st["best"]["score"],
                "base_val": st["start"], "average": st["average"]["theta"]},
               old / "checkpoint.pt")
    lines: list[str] = []
    train_es(_tiny(3), old, log=lines.append)
    assert any("resumed at iteration 2" in line for line in lines)
    assert torch.equal(_theta(_checkpoint(old)), _theta(_checkpoint(whole)))
    assert _history(old) == _history(whole)


def test_a_run_neither_draws_from_nor_depends_on_the_global_generator(tmp_path):
    quiet = lambda line: None  # noqa: E731
    torch.manual_seed(123)
    before = torch.get_rng_state()
    run = tmp_path / "run"
    train_es(_tiny(2, val_every=1), run, log=quiet)
    train_es(_tiny(3, val_every=1), run, log=quiet)  # a resumed run too
    es.load_best(run)
    es.export(run, tmp_path / "w.pt", "cmd", {"query_net": False})
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(7)  # another global state: the same run
    train_es(_tiny(3, val_every=1), tmp_path / "again", log=quiet)
    assert torch.equal(_theta(_checkpoint(tmp_path / "again")), _theta(_checkpoint(run)))


def test_resume_after_an_interruption_keeps_one_history_row_per_iteration(tmp_path):
    quiet = lambda line: None  # noqa: E731
    run = tmp_path / "run"
    train_es(_tiny(2), run, log=quiet)
    at_two = (run / "checkpoint.pt").read_bytes()
    train_es(_tiny(3), run, log=quiet)
    # Killed after iteration 3 was logged but before its checkpoint was written:
    (run / "checkpoint.pt").write_bytes(at_two)
    train_es(_tiny(3), run, log=quiet)
    assert _checkpoint(run)["iteration"] == 3
    assert [row["iteration"] for row in _history(run)] == [1, 2, 3]


def test_validate_is_deterministic_and_covers_the_val_families():
    like = _like()
    cfg = _tiny(1)
    theta = flatten(like)
    one, two = validate(theta, like, ARCH, cfg), validate(theta, like, ARCH, cfg)
    assert torch.equal(one, two)
    assert one.shape == (len(es.families("val")) * cfg.val_instances,)
    assert torch.isfinite(one).all() and (one <= math.log(1e4)).all()


# -- 4. the search gradient -----------------------------------------------------------------------

def test_es_step_moves_theta_along_the_direction_that_lowers_the_score(tmp_path, monkeypatch):
    """A toy in place of the rollouts: member m's run goes from gap 1 to gap exp(-c . theta_m)
    above the problem's f_min, so its score is -c . theta_m / 2 and lowering it means moving
    along +c. One ES iteration (Adam: a sign step) must have a positive cosine with c."""
    like = _like()
    n = sum(w.numel() for w in like.values())
    c = torch.randn(n, generator=torch.Generator().manual_seed(3))
    calls = []

    def toy(weights, arch, problem, steps, q=20, seed=0, **kw):
        members = next(iter(weights.values())).shape[0]
        theta = torch.cat([w.reshape(members, -1) for w in weights.values()], 1)
        progress = (theta.double() @ c.double()) / math.sqrt(n)
        gaps = torch.stack([torch.ones_like(progress), torch.exp(-progress)], 1)
        calls.append(members)
        return PopulationRun(problem.f_min + gaps, 0)

    monkeypatch.setattr(es, "run_population", toy)  # validation's
    monkeypatch.setattr(es_gradient, "run_population", toy)  # the estimator's
    cfg = _tiny(1, pairs=64, lr=0.01, val_every=1000)
    train_es(cfg, tmp_path / "toy", log=lambda line: None)
    assert 1 + 2 * cfg.pairs in calls  # the centre and the antithetic pairs in one call
    theta = _theta(_checkpoint(tmp_path / "toy"))
    delta = theta - flatten(like)
    assert delta.abs().max() == pytest.approx(cfg.lr, rel=1e-3)  # Adam's first step
    cos = float(delta @ c / (delta.norm() * c.norm()))
    assert cos > 0.1, cos


# -- 5. the command line --------------------------------------------------------------------------

def test_cli_trains_exports_and_the_export_loads_into_zolstm(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    # A run folder's config.json is the configuration it keeps: a tiny one here.
    tiny = dataclasses.asdict(_tiny(5, pairs=1))
    (run / "config.json").write_text(json.dumps(tiny))
    main(["es", "--out", str(run), "--iterations", "1", "--val-every", "1", "--threads", "1"])
    assert torch.get_num_threads() == 1
    assert _checkpoint(run)["iteration"] == 1
    best = torch.load(run / "best.pt", weights_only=True)
    # The folder's configuration was kept: one validation instance per family, not eight.
    assert best["val"].shape == (len(es.families("val")),)
    assert len(_history(run)) == 1 and "val" in _history(run)[0]
    exported = tmp_path / "generalist.pt"
    main(["es", "--out", str(run), "--export", str(exported), "--threads", "1"])
    assert "wrote" in capsys.readouterr().out
    assert exported.is_file()
    # The sidecar records what python -m tools.ship needs: both commands, the file's hash.
    meta = json.loads((tmp_path / "generalist.pt.json").read_text())
    assert meta["command"].startswith("python -m torchzo.meta es --out")
    assert "--iterations 1" in meta["command"] and f"--export {exported}" in meta["command"]
    assert meta["sha256"] == torchzo.pretrained.sha256(exported)
    assert meta["es_iteration"] == best["iteration"] and meta["train_seconds"] >= 0

    x = torch.randn(6, generator=torch.Generator().manual_seed(0))
    x0 = x.clone()
    opt = torchzo.ZOLSTM([x], pretrained=exported, q=4, seed=0)
    assert opt.nets.arch == ARCH
    got = flatten({k: v.detach() for k, v in opt.nets.weights().items()})
    assert torch.equal(got, best["theta"])
    for _ in range(3):
        opt.step(lambda: ((x - 1) ** 2).sum())
    assert torch.isfinite(x).all() and not torch.equal(x, x0)
    assert "group.log_radius" in opt.state[x]


def test_export_without_the_query_net_steps_as_the_run_with_identity_covariance(tmp_path):
    run = tmp_path / "run"
    train_es(_tiny(2), run, log=lambda _: None)
    (run / "commands.txt").write_text("python -m torchzo.meta es --out run\n")
    full, lean = tmp_path / "full.pt", tmp_path / "lean.pt"
    main(["es", "--out", str(run), "--export", str(full), "--threads", "1"])
    main(["es", "--out", str(run), "--export", str(lean), "--no-query-net", "--threads", "1"])
    meta = json.loads((tmp_path / "lean.pt.json").read_text())
    assert meta["query_net"] is False and "--no-query-net" in meta["command"]
    trajectories = []
    for path, directions in ((full, "identity"), (lean, "learned")):
        x = torch.randn(12, generator=torch.Generator().manual_seed(3))
        opt = torchzo.ZOLSTM([x], pretrained=path, q=4, seed=1, covariance=directions)
        for _ in range(5):
            opt.step(lambda x=x: ((x - 1) ** 4).sum())
        trajectories.append(x.clone())
    assert torchzo.ZOLSTM([torch.zeros(2)], pretrained=lean).nets.arch.query_net is False
    assert torch.equal(*trajectories)


def test_a_run_from_before_the_val_split_grew_resumes_on_its_three_families(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    old = dataclasses.asdict(_tiny(5, pairs=1))
    del old["val_families"]  # what a run folder of 2026-12-01 holds
    (run / "config.json").write_text(json.dumps(old))
    main(["es", "--out", str(run), "--iterations", "1", "--val-every", "1", "--threads", "1"])
    assert torch.load(run / "best.pt", weights_only=True)["val"].shape == (3,)
    chosen = tmp_path / "chosen"
    main(["es", "--out", str(chosen), "--iterations", "1", "--val-every", "1", "--pairs", "1",
          "--instances", "1", "--val-instances", "1", "--val-steps", "5", "--steps", "5", "10",
          "--val-families", "ackley,huber", "--threads", "1"])
    assert torch.load(chosen / "best.pt", weights_only=True)["val"].shape == (2,)
    with pytest.raises(ValueError, match="unknown validation families.*nope"):
        train_es(_tiny(1, val_families=("huber", "nope")), tmp_path / "bad", log=print)
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()
    new = tmp_path / "new"
    train_es(_tiny(1, val_every=1), new, log=lambda _: None)
    saved = json.loads((new / "config.json").read_text())["val_families"]
    assert tuple(saved) == es.FAMILY_SPLITS["val"] and len(saved) > 3


def test_score_tail_averages_the_end_of_the_run():
    losses = torch.tensor([[8.0, 4.0, 2.0, 1.0], [8.0, 1.0, 1.0, 1.0]])
    whole, tail = es.score(losses, 0.0), es.score(losses, 0.0, tail=0.25)
    assert whole[1] < whole[0]  # the second is ahead over the run
    assert torch.allclose(tail, torch.full((2,), math.log(1 / 8), dtype=torch.float64))
    stopped = torch.tensor([[8.0, float("nan"), 1.0, 1.0]])  # stays the worst once diverged
    assert es.score(stopped, 0.0, tail=0.5).item() == pytest.approx(math.log(1e4))


def test_ema_validates_and_keeps_the_average_of_the_weights(tmp_path):
    quiet = lambda line: None  # noqa: E731
    plain, averaged = tmp_path / "plain", tmp_path / "averaged"
    train_es(_tiny(2, val_every=1), plain, log=quiet)
    train_es(_tiny(2, val_every=1, ema=0.5), averaged, log=quiet)
    a, b = _checkpoint(plain), _checkpoint(averaged)
    assert torch.equal(_theta(a), _theta(b))  # the search itself is unchanged
    assert torch.equal(a["average"]["theta"], _theta(a))  # ema 0: the weights themselves
    assert not torch.equal(b["average"]["theta"], _theta(b))
    rows = [json.loads(r) for r in (averaged / "history.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2]
    cfg = _tiny(2, val_every=1, ema=0.5)
    like = {k: v.detach() for k, v in LearnedZO(arch=from_dict(cfg.arch)).weights().items()}
    val = es.validate(b["average"]["theta"], like, from_dict(cfg.arch), cfg)
    assert rows[-1]["val"] == round(float(val.mean()), 4)  # the average is what was validated


def _quadratic_curve(nets: LearnedZO) -> list[float]:
    """15 losses of ZOLSTM with ``nets`` on a fixed quadratic (q = 4, seed 3)."""
    x = torch.linspace(-1, 1, 12)
    opt = torchzo.ZOLSTM([x], pretrained=nets, q=4, seed=3)
    return [float(opt.step(lambda: ((x - 0.5) ** 2).sum())) for _ in range(15)]


def test_a_run_with_noise_inputs_starts_from_an_older_run_step_for_step(tmp_path):
    """Padding the controller's new input columns with zeros keeps the old optimizer."""
    quiet = lambda line: None  # noqa: E731
    old = tmp_path / "old"
    train_es(_tiny(1), old, log=quiet)
    noisy = dataclasses.replace(from_dict(_tiny(1).arch), noise_inputs=True)
    new = tmp_path / "new"
    train_es(_tiny(0, arch=noisy.to_dict(), init=str(old)), new, log=quiet)
    before, after = es.load_best(old), es.load_best(new)
    assert after.control.cell.weight_ih.shape[1] == before.control.cell.weight_ih.shape[1] + 2
    with torch.no_grad():  # make the controller matter: a non-zero read-out
        for nets in (before, after):
            nets.control.head.weight.fill_(0.3)
    curves = [_quadratic_curve(nets) for nets in (before, after)]
    # 0 * x terms: rounding at most, but float32 rounding that the other input width's BLAS
    # kernel does differently (1e-5 after 15 steps on an AMD EPYC host).
    assert curves[0] == pytest.approx(curves[1], rel=1e-4)


def test_a_run_starts_from_a_saved_check_step_for_step(tmp_path):
    """--init may name a check file; the new run starts as those weights."""
    quiet = lambda line: None  # noqa: E731
    old = tmp_path / "old"
    train_es(_tiny(2, val_every=1), old, log=quiet)
    check = old / "checks" / "1.pt"
    new = tmp_path / "new"
    train_es(_tiny(0, init=str(check)), new, log=quiet)
    before, after = es.load_check(check), es.load_best(new)
    assert torch.equal(after.control.head.weight, before.control.head.weight)
    with torch.no_grad():  # make the step-size read-out matter
        before.control.head.weight.fill_(0.3)
        after.control.head.weight.fill_(0.3)
    curves = [_quadratic_curve(nets) for nets in (before, after)]
    assert curves[0] == pytest.approx(curves[1], rel=1e-6)


def test_export_with_a_step_cap_records_it(tmp_path):
    run = tmp_path / "run"
    train_es(_tiny(2), run, log=lambda _: None)
    capped = tmp_path / "capped.pt"
    main(["es", "--out", str(run), "--export", str(capped), "--max-step", "0.1",
          "--threads", "1"])
    nets = torchzo.ZOLSTM([torch.zeros(3)], pretrained=capped).nets
    assert nets.arch.max_step == 0.1
    assert json.loads((tmp_path / "capped.pt.json").read_text())["max_step"] == 0.1
    with pytest.raises(ValueError, match="max_step"):
        es.export(run, tmp_path / "bad.pt", "cmd", {"max_step": -1})


def test_a_new_run_can_train_with_the_step_cap(tmp_path):
    run = tmp_path / "run"
    main(["es", "--out", str(run), "--iterations", "1", "--pairs", "1", "--instances", "1",
          "--steps", "5", "10", "--val-every", "1", "--val-instances", "1", "--val-steps", "5",
          "--max-step", "0.5", "--threads", "1"])
    assert es.load_best(run).arch.max_step == 0.5


def test_a_new_run_trains_with_the_queries_per_step_it_is_given(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(SystemExit, match="--qs.*positive"):
        main(["es", "--out", str(run), "--iterations", "1", "--qs", "4", "0", "--threads", "1"])
    assert not run.exists()
    main(["es", "--out", str(run), "--iterations", "1", "--pairs", "1", "--instances", "1",
          "--steps", "5", "10", "--val-every", "1", "--val-instances", "1", "--val-steps", "5",
          "--qs", "4", "--threads", "1"])
    assert json.loads((run / "config.json").read_text())["qs"] == [4]


def test_export_with_a_sigma_rate_records_it_and_keeps_the_digest_of_rate_one(tmp_path):
    from benchmarks.generalist.heldout import _DIGEST_FIELDS, flat_arch, weights_digest

    run = tmp_path / "run"
    train_es(_tiny(2), run, log=lambda _: None)
    plain, slow = tmp_path / "plain.pt", tmp_path / "slow.pt"
    main(["es", "--out", str(run), "--export", str(plain), "--threads", "1"])
    main(["es", "--out", str(run), "--export", str(slow), "--sigma-rate", "0.25",
          "--threads", "1"])
    assert json.loads((tmp_path / "slow.pt.json").read_text())["sigma_rate"] == 0.25
    a, b = torchzo.pretrained.load_file(plain), torchzo.pretrained.load_file(slow)
    assert a.arch.sigma_rate == 1.0 and b.arch.sigma_rate == 0.25
    assert weights_digest(a) != weights_digest(b)
    # a digest committed before the setting existed is still the one of rate 1
    import hashlib

    legacy = {k: v for k, v in flat_arch(a.arch).items() if k in _DIGEST_FIELDS}
    digest = hashlib.sha256(json.dumps(legacy, sort_keys=True).encode())
    for name, w in sorted(a.state_dict().items()):
        digest.update(name.encode())
        digest.update(w.detach().float().contiguous().numpy().tobytes())
    assert weights_digest(a) == digest.hexdigest()


@pytest.mark.slow
def test_directions_kind_is_an_exported_files_and_a_new_runs_architecture(tmp_path):
    run = tmp_path / "run"
    train_es(_tiny(2), run, log=lambda _: None)
    out = tmp_path / "orth.pt"
    main(["es", "--out", str(run), "--export", str(out), "--directions-kind", "orthogonal",
          "--threads", "1"])
    assert json.loads((tmp_path / "orth.pt.json").read_text())["directions_kind"] == "orthogonal"
    nets = torchzo.pretrained.load_file(out)
    assert nets.arch.directions_kind == "orthogonal"
    assert torchzo.ZOLSTM([torch.zeros(3)], pretrained=nets).defaults["directions_kind"] \
        == "orthogonal"
    fresh = tmp_path / "fresh"
    main(["es", "--out", str(fresh), "--iterations", "1", "--pairs", "2", "--instances", "1",
          "--steps", "5", "10", "--val-every", "5", "--directions-kind", "orthogonal",
          "--threads", "1"])
    assert json.loads((fresh / "config.json").read_text())["arch"]["config"][
        "directions_kind"] == "orthogonal"
    with pytest.raises(SystemExit):
        main(["es", "--out", str(fresh), "--directions-kind", "sphere"])


def test_progress_floor_bounds_validation_and_is_what_a_resumed_run_keeps(tmp_path):
    """--progress-floor lands in the run's config; its validation scores never go below
    log(floor), and an old config without the field resumes at the old floor."""
    run = tmp_path / "run"
    main(["es", "--out", str(run), "--iterations", "2", "--pairs", "2", "--instances", "1",
          "--steps", "5", "10", "--val-every", "2", "--val-instances", "1", "--val-steps", "30",
          "--progress-floor", "0.5", "--threads", "1"])
    config = json.loads((run / "config.json").read_text())
    assert config["progress_floor"] == 0.5
    val = torch.load(run / "best.pt", weights_only=True)["val"]
    assert float(val.min()) >= math.log(0.5) - 1e-12
    assert float(val.min()) == pytest.approx(math.log(0.5))  # some family got that far
    del config["progress_floor"]
    assert ESConfig(**{k: tuple(v) if isinstance(v, list) and k != "arch" else v
                       for k, v in config.items()}).progress_floor == 1e-8


def test_export_of_a_chosen_check_writes_that_check(tmp_path):
    from benchmarks.generalist.heldout import weights_digest

    run = tmp_path / "run"
    train_es(_tiny(4), run, log=lambda _: None)
    path = tmp_path / "two.pt"
    main(["es", "--out", str(run), "--export", str(path), "--check", "2", "--threads", "1"])
    assert json.loads((tmp_path / "two.pt.json").read_text())["es_iteration"] == 2
    assert weights_digest(torchzo.pretrained.load_file(path)) == weights_digest(
        es.load_check(run / "checks" / "2.pt"))
    with pytest.raises(FileNotFoundError, match="no such check"):
        es.export(run, tmp_path / "none.pt", "cmd", check=3)
    with pytest.raises(SystemExit, match="--export"):
        main(["es", "--out", str(run), "--check", "2", "--threads", "1"])


def test_export_of_a_run_started_from_another_runs_check_counts_both_runs(tmp_path):
    """A run whose --init is a saved check (RUN/checks/N.pt) exports: its commands and
    seconds are the first run's up to that check, then its own."""
    first, second = tmp_path / "first", tmp_path / "second"
    main(["es", "--out", str(first), "--iterations", "4", "--pairs", "2", "--instances", "1",
          "--steps", "5", "10", "--val-every", "2", "--val-instances", "1", "--val-steps", "5",
          "--threads", "1"])
    main(["es", "--out", str(second), "--init", str(first / "checks" / "2.pt"),
          "--iterations", "2", "--pairs", "2", "--instances", "1", "--steps", "5", "10",
          "--val-every", "2", "--val-instances", "1", "--val-steps", "5", "--threads", "1"])
    meta = es.export(second, tmp_path / "w.pt", "ship")
    assert meta["command"].count("torchzo.meta es") == 2 and meta["command"].endswith("ship")
    rows = [json.loads(r) for r in (first / "history.jsonl").read_text().splitlines()]
    own = [json.loads(r) for r in (second / "history.jsonl").read_text().splitlines()]
    expected = sum(r["seconds"] for r in rows if r["iteration"] <= 2) + sum(
        r["seconds"] for r in own if r["iteration"] <= meta["es_iteration"])
    assert meta["train_seconds"] == pytest.approx(round(expected, 1), abs=0.05)


@pytest.mark.parametrize("floor", [0.0, -1.0, 1.0, 2.0])
def test_progress_floor_outside_0_1_is_refused_before_anything_is_written(tmp_path, floor):
    with pytest.raises(ValueError, match="progress_floor"):
        train_es(_tiny(1, progress_floor=floor), tmp_path / "run", log=lambda _: None)
    assert not (tmp_path / "run").exists()
