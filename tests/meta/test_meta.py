"""Meta-training: gradients reach the right networks, runs are deterministic and resumable."""
from __future__ import annotations

import json
import math

import pytest
import torch

from torchzo.learned import LearnedZO
from torchzo.meta import MetaConfig, Rollout, RolloutConfig, StageConfig, fd_loss, meta_train
from torchzo.meta.__main__ import main as meta_main
from torchzo.meta.loop import Estimate, LoopConfig, MetaLoop, Validation
from torchzo.meta.trainer import evaluate
from torchzo.optim.zolstm import ZOLSTM
from torchzo.tasks import BinaryClassification


@pytest.fixture(scope="module")
def task():
    return BinaryClassification(dim=10, samples=100, batch=16, q=4, horizon=12, unroll=4)


def _tiny(**kw) -> MetaConfig:
    base = dict(q=4, update_stage=StageConfig(2, 2, 1e-3), query_stage=StageConfig(2, 2, 5e-3),
                val_problems=2)
    return MetaConfig(**{**base, **kw})


def _grads(problem, cfg: RolloutConfig) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    nets = LearnedZO()
    rollout = Rollout(problem, nets, cfg, seed=1, data_seed=2)
    total = sum(rollout.step()[0] for _ in range(4))
    total.backward()
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in nets.named_parameters()}


def test_stage_one_gradient_reaches_only_the_update_rnn(task):
    g = _grads(task.problems("train")[0], RolloutConfig(q=4, use_query=False))
    assert any(v.abs().sum() > 0 for n, v in g.items() if n.startswith("update."))
    assert all(v.abs().sum() == 0 for n, v in g.items() if n.startswith("query."))


def test_query_gradient_through_values_differs_from_reference_behaviour(task):
    problem = task.problems("train")[0]
    full = _grads(problem, RolloutConfig(q=4, use_query=True, query_grad="full"))
    ref = _grads(problem, RolloutConfig(q=4, use_query=True, query_grad="u"))
    q_full = torch.cat([v.flatten() for n, v in full.items() if n.startswith("query.")])
    q_ref = torch.cat([v.flatten() for n, v in ref.items() if n.startswith("query.")])
    assert q_full.abs().sum() > 0 and q_ref.abs().sum() > 0
    assert not torch.allclose(q_full, q_ref)


def test_fd_loss_matches_autograd_gradient():
    torch.manual_seed(0)
    A = torch.randn(5, 5, dtype=torch.float64)

    def fn(X):
        return (torch.tanh(X @ A) ** 2).sum(-1)

    X = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64)
    (fd_loss(fn, mu=1e-5)(X) * w).sum().backward()
    fd = X.grad.clone()
    X.grad = None
    (fn(X) * w).sum().backward()
    torch.testing.assert_close(fd, X.grad, rtol=1e-6, atol=1e-8)


def test_fd_grad_mode_trains_close_to_true_gradients(task):
    problem = task.problems("train")[1]
    true = _grads(problem, RolloutConfig(q=4, use_query=True))
    fd = _grads(problem, RolloutConfig(q=4, use_query=True, grad_mode="fd", fd_mu=1e-3))
    for name in true:
        torch.testing.assert_close(fd[name], true[name], rtol=0.05, atol=1e-4)


def test_meta_training_is_deterministic_and_returns_best_validation(task):
    runs = [meta_train(task, _tiny(), progress=False) for _ in range(2)]
    for a, b in zip(runs[0][0].state_dict().values(), runs[1][0].state_dict().values()):
        assert torch.equal(a, b)
    hist = runs[0][1]
    assert [r["stage"] for r in hist["epochs"]] == ["update"] * 2 + ["query"] * 2
    vals = [r["val"] for r in hist["epochs"] if r["stage"] == "query"]
    assert hist["query_best_val"] <= min(vals) + 1e-12


@pytest.mark.parametrize("stop", [1, 3])  # within the update stage, and in the query stage
def test_checkpoint_resume_gives_the_same_weights(task, tmp_path, stop):
    cfg = _tiny()
    straight, _ = meta_train(task, cfg, progress=False)
    ck = tmp_path / "ck.pt"
    calls = []

    def stop_after_three(row):
        calls.append(row)
        if len(calls) == stop:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        meta_train(task, cfg, checkpoint=ck, progress=False, on_epoch=stop_after_three)
    resumed, hist = meta_train(task, cfg, checkpoint=ck, progress=False)
    assert len(hist["epochs"]) == 4
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_cli_writes_loadable_weights_with_metadata(tmp_path, monkeypatch):
    import torchzo.meta.__main__ as cli

    monkeypatch.setattr(cli, "get_task", lambda name: BinaryClassification(
        dim=10, samples=100, batch=16, q=4, horizon=8, unroll=4))
    out = tmp_path / "w.pt"
    meta_main(["train", "--task", "binclass", "--out", str(out), "--update-epochs", "1",
               "--query-epochs", "1", "--problems", "1", "--val-problems", "1",
               "--no-progress"])
    meta = json.loads((tmp_path / "w.pt.json").read_text())
    import hashlib

    assert meta["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert meta["task"] == "binclass" and meta["seed"] == 0 and "val_final_loss" in meta
    blob = torch.load(out, weights_only=True)
    assert blob["meta"]["torch"] == str(torch.__version__)
    x = torch.zeros(3)
    ZOLSTM([x], pretrained=str(out), seed=0).step(lambda: (x - 1).pow(2).sum())
    assert not torch.equal(x, torch.zeros(3))

    # tools.ship records this command in the manifest (tests/repo/test_ship.py).
    assert meta["command"] == (
        f"python -m torchzo.meta train --task binclass --out {out} --update-epochs 1 "
        "--query-epochs 1 --problems 1 --val-problems 1 --no-progress")


def test_meta_loss_keeps_eq4_balance_between_loss_and_regulariser():
    """Normalising eq. 4 must scale the regulariser with the loss, not leave it unscaled."""
    from torchzo.meta.trainer import meta_loss_term

    horizon = 5
    total = horizon * (horizon + 1) / 2
    losses = [torch.tensor(v) for v in (0.5, 0.4, 0.3, 0.2, 0.1)]
    regs = [torch.tensor(v) for v in (0.01, 0.02, 0.03, 0.04, 0.05)]
    eq4 = sum(t * f + r for t, (f, r) in enumerate(zip(losses, regs), start=1))
    ours = sum(meta_loss_term(t, f, r, total) for t, (f, r) in enumerate(zip(losses, regs), 1))
    torch.testing.assert_close(ours, eq4 / total)


def test_uniform_weighting_is_the_mean_of_the_curve_and_is_validated():
    from torchzo.meta.trainer import meta_loss_term

    losses = [torch.tensor(v) for v in (0.5, 0.4, 0.3)]
    ours = sum(meta_loss_term(t, f, torch.tensor(0.0), 3, "uniform")
               for t, f in enumerate(losses, 1))
    torch.testing.assert_close(ours, torch.tensor(0.4))
    with pytest.raises(ValueError, match="weighting"):
        MetaConfig(weighting="quadratic")


def test_uniform_weighting_validates_on_the_curve_mean(task):
    cfg = _tiny(weighting="uniform")
    nets, hist = meta_train(task, cfg, stages=("update",), progress=False)
    mean = evaluate(nets, task, "val", cfg, False, cfg.val_problems, metric="mean")
    final = evaluate(nets, task, "val", cfg, False, cfg.val_problems, metric="final")
    assert mean != final
    assert hist["update_best_val"] == pytest.approx(mean, rel=1e-12)


def test_train_command_refuses_an_unknown_task_with_a_usage_error(capsys):
    from torchzo.meta.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--task", "nope", "--out", "unused.pt"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nope'" in err and "binclass" in err


def test_meta_training_neither_draws_from_nor_depends_on_the_global_generator(task):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    nets, _ = meta_train(task, _tiny(), progress=False)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(7)
    again, _ = meta_train(task, _tiny(), progress=False)
    for a, b in zip(nets.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


# -- the outer loop, with a toy estimator ---------------------------------------------------------

class _Toy:
    """A noisy quadratic's gradient, busy on odd positions (as within a truncated unroll)."""

    def __init__(self) -> None:
        self.position = 0

    @property
    def idle(self) -> bool:
        return self.position % 2 == 0

    def state_dict(self) -> dict:
        assert self.idle
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]

    def estimate(self, params, rng):
        (w,) = params
        self.position += 1
        noise = torch.randn(w.shape, generator=rng)
        return Estimate([2 * (w.detach() - 1) + noise], {"noise": float(noise.sum())})


def _toy_loop(folder, iterations, record=None) -> MetaLoop:
    def validate(weights, start):
        values = (weights["w"] - 1) ** 2
        return Validation(float(values.sum()), values, {"val": float(values.sum())})

    w = torch.full((3,), 5.0)
    cfg = LoopConfig(iterations, val_every=2, seed=4, checkpoint_s=math.inf,
                     checkpoint_every=3, ema=0.5, keep_checks=True)
    return MetaLoop({"w": w}, torch.optim.Adam([w], lr=0.3), _Toy(), validate, cfg,
                    checkpoint=folder / "checkpoint.pt", folder=folder, log=lambda _: None,
                    record=record)


def _rows(folder) -> list[dict]:
    rows = [json.loads(r) for r in (folder / "history.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_the_loop_resumes_an_interrupted_run_bit_exactly_from_an_idle_checkpoint(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    whole.mkdir()
    split.mkdir()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    straight = _toy_loop(whole, 10)
    best = straight.run()

    def killed_at_eight(row):
        if row["iteration"] == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _toy_loop(split, 10, record=killed_at_eight).run()
    saved = torch.load(split / "checkpoint.pt", weights_only=True)
    assert saved["iteration"] == 6  # every 3 iterations, where the estimator is idle: not 3
    resumed = _toy_loop(split, 10)
    again = resumed.run(saved)
    assert torch.get_rng_state().equal(before)
    assert torch.equal(resumed.params["w"], straight.params["w"])
    assert not torch.equal(straight.params["w"], torch.full((3,), 5.0))
    assert torch.equal(again["w"], best["w"]) and resumed.best.iteration == straight.best.iteration
    assert torch.equal(resumed.average["w"], straight.average["w"])
    assert _rows(split) == _rows(whole) and [r["iteration"] for r in _rows(split)] == list(
        range(1, 11))
    a, b = (torch.load(f / "checkpoint.pt", weights_only=True) for f in (whole, split))
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(a["optimizer"]["state"][0][key], b["optimizer"]["state"][0][key])
    assert sorted(p.name for p in (split / "checks").iterdir()) == sorted(
        f"{i}.pt" for i in (2, 4, 6, 8, 10))
    kept = torch.load(split / "best.pt", weights_only=True)
    assert kept["iteration"] == straight.best.iteration and torch.equal(kept["w"], best["w"])


def test_the_loop_validates_the_average_and_keeps_the_best_of_it(tmp_path):
    loop = _toy_loop(tmp_path, 6)
    seen = []
    loop.validate = lambda weights, start, inner=loop.validate: (
        seen.append(weights["w"].clone()) or inner(weights, start))
    loop.run()
    assert torch.equal(seen[0], torch.full((3,), 5.0))  # the start weights
    assert torch.equal(seen[-1], loop.average["w"]) and not torch.equal(seen[-1],
                                                                         loop.params["w"])
    scores = [float(((w - 1) ** 2).sum()) for w in seen]
    assert loop.best.score == min(scores)
    assert torch.equal(loop.best.weights["w"], seen[scores.index(min(scores))])
