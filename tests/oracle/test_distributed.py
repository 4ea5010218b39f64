"""Distributed queries: two gloo ranks on this machine take the single-process run's exact steps.

One pair of worker processes (this file run as a script) plays every scenario and saves what it
saw; the tests compare both ranks with each other and with the same scenario run here in a
single process, bit for bit. The workers talk over the loopback interface only, and every wait
is bounded, so a hang fails the tests instead of blocking them.
"""
from __future__ import annotations

import math
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

if __name__ == "__main__":  # a worker: the tests' folder holds the shared test helpers
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zo_testing import Objective, all_same_bits, deep_equal, snapshot  # noqa: E402

import torchzo  # noqa: E402
from tools.launch import exit_worker, launch_ranks  # noqa: E402
from torchzo import Batched, ClosureError  # noqa: E402
from torchzo.learned import LearnedZO  # noqa: E402
from torchzo.oracle import RankFailedError  # noqa: E402

WORLD = 2
STEPS = 5
SHAPES = [(3, 4), (5,), (2, 2)]


def _nets() -> LearnedZO:
    """Random (untrained) ZO-LSTM nets, scaled up so that their effect on a step shows."""
    torch.manual_seed(1)
    nets = LearnedZO()
    with torch.no_grad():
        for p in nets.parameters():
            p.mul_(3.0 if p.dim() else 1.0)
    return nets


def _optimizer(name: str, params: list[torch.Tensor]) -> torchzo.ZOOptimizer:
    if name == "adam-forward":
        return torchzo.ZOAdam(params, lr=0.05, q=5, seed=3)
    if name == "adam-central":
        return torchzo.ZOAdam(params, lr=0.05, q=3, estimator="central", seed=4)
    if name == "adam-antithetic":
        return torchzo.ZOAdam(params, lr=0.05, q=6, estimator="antithetic", seed=5)
    if name == "signsgd":
        return torchzo.ZOSignSGD(params, lr=0.01, q=3, seed=6)
    if name == "sgd-two-groups":
        return torchzo.ZOSGD([{"params": params[:2]},
                              {"params": params[2:], "q": 3, "estimator": "central"}],
                             lr=0.01, momentum=0.9, q=4, seed=7)
    if name == "adam-rademacher":
        return torchzo.ZOAdam(params, lr=0.05, q=5, seed=10, directions_kind="rademacher")
    if name == "adam-orthogonal":  # every rank rebuilds the whole group of 5 directions
        return torchzo.ZOAdam(params, lr=0.05, q=5, seed=12, directions_kind="orthogonal")
    if name == "sgd-two-kinds":
        return torchzo.ZOSGD([{"params": params[:2], "directions_kind": "rademacher"},
                              {"params": params[2:]}], lr=0.01, q=3, estimator="central",
                             seed=11)
    if name == "sgd-inference":  # MeZO's step, and two groups
        return torchzo.ZOSGD([{"params": params[:2]}, {"params": params[2:], "lr": 0.005}],
                             lr=0.01, q=3, estimator="central", seed=13, memory="inference")
    if name == "adam-central-no-x":  # no f(x): the ranks check the parameters instead
        return torchzo.ZOAdam(params, lr=0.05, q=3, estimator="central", seed=4,
                              loss_at_x=False)
    if name == "sgd-inference-no-x":  # MeZO's two forward passes a step
        return torchzo.ZOSGD(params, lr=0.01, q=3, estimator="central", seed=13,
                             memory="inference", loss_at_x=False)
    if name == "adam-inference-rademacher":
        return torchzo.ZOAdam(params, lr=0.05, q=5, seed=14, directions_kind="rademacher",
                              memory="inference")
    if name == "zolstm":
        return torchzo.ZOLSTM(params, pretrained=_nets(), q=4, query_prob=0.5, seed=8)
    if name == "zolstm-guided":
        return torchzo.ZOLSTM(params, pretrained=_nets(), q=4, estimator="antithetic",
                              covariance="guided", seed=9)
    raise KeyError(name)


# name -> (optimizer, parameter dtype, batched objective's chunk_size or "closure")
SCENARIOS: dict[str, tuple[str, Any, Any]] = {
    "adam-forward": ("adam-forward", torch.float32, "closure"),
    "adam-central": ("adam-central", torch.float64, "closure"),
    "adam-antithetic": ("adam-antithetic", torch.float32, "closure"),
    "signsgd": ("signsgd", torch.float32, "closure"),
    "sgd-inference": ("sgd-inference", torch.float32, "closure"),
    "adam-inference-rademacher": ("adam-inference-rademacher", torch.float64, "closure"),
    "adam-central-no-x": ("adam-central-no-x", torch.float64, "closure"),
    "sgd-inference-no-x": ("sgd-inference-no-x", torch.float32, "closure"),
    "adam-batched-chunks-no-x": ("adam-central-no-x", torch.float32, 2),
    "sgd-two-groups": ("sgd-two-groups", [torch.float64, torch.float32, torch.float32],
                       "closure"),
    "zolstm": ("zolstm", torch.float32, "closure"),
    "zolstm-guided": ("zolstm-guided", torch.float32, "closure"),
    "adam-batched-chunks": ("adam-central", torch.float32, 2),
    "adam-batched-whole": ("adam-forward", torch.float32, None),
    "zolstm-batched": ("zolstm", torch.float32, None),
    "adam-rademacher": ("adam-rademacher", torch.float32, "closure"),
    "sgd-two-kinds": ("sgd-two-kinds", [torch.float64, torch.float32, torch.float32],
                      "closure"),
    "adam-rademacher-batched-chunks": ("adam-rademacher", torch.float32, 2),
    "adam-rademacher-batched-whole": ("adam-rademacher", torch.float32, None),
    "adam-orthogonal": ("adam-orthogonal", torch.float32, "closure"),
    "adam-orthogonal-batched-chunks": ("adam-orthogonal", torch.float32, 2),
}


def run_scenario(name: str, distributed: Any) -> dict[str, Any]:
    """``STEPS`` steps of scenario ``name``; ``distributed`` as the optimizer option."""
    opt_name, dtypes, chunk = SCENARIOS[name]
    obj = Objective(SHAPES)
    params = obj.params(dtypes)
    opt = _optimizer(opt_name, params)
    opt.distributed = distributed
    if chunk is None and not distributed:
        # What a sharded step with chunk_size=None does: calls of ceil(queries / world) rows.
        scheme = torchzo.oracle.Scheme(opt.defaults["estimator"], opt.defaults["q"])
        chunk = math.ceil(scheme.queries / WORLD)
    losses = []
    for _ in range(STEPS):
        if chunk == "closure":
            loss = opt.step(lambda: obj(params))
        else:
            loss = opt.step(Batched(obj.batched, chunk))
        losses.append(float(loss))
    return {"params": snapshot(params), "losses": losses, "queries": opt.queries,
            "state": opt.state_dict()["state"]}


def run_module_scenario(distributed: Any) -> dict[str, Any]:
    """ZOAdam on a small MLP through ``module_objective`` (batched, vmapped queries)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    opt = torchzo.ZOAdam(model.parameters(), lr=0.01, q=6, estimator="antithetic", seed=12)
    opt.distributed = distributed
    chunk = None if distributed else math.ceil(7 / WORLD)
    objective = torchzo.oracle.module_objective(model, torch.nn.functional.cross_entropy, x,
                                                target=y, chunk_size=chunk)
    losses = [float(opt.step(objective)) for _ in range(STEPS)]
    return {"params": snapshot(list(model.parameters())), "losses": losses}


def _error_scenarios(rank: int) -> dict[str, Any]:
    """Steps that fail on some ranks, or on all: what each rank raised, and what it kept."""
    out: dict[str, Any] = {}
    obj = Objective(SHAPES)

    def attempt(label: str, closure_for: Any, batched: bool = False) -> None:
        params = obj.params(torch.float32)
        opt = torchzo.ZOAdam(params, lr=0.05, q=6, seed=3)
        opt.distributed = True
        opt.step(lambda: obj(params))
        before, state, rng = snapshot(params), opt.state_dict(), opt._generator.get_state()
        try:
            opt.step(closure_for(params))
            raised: Any = None
        except Exception as err:  # noqa: BLE001 - recorded for the test to inspect
            raised = (type(err).__name__, str(err), getattr(err, "failures", None))
        unchanged = (all_same_bits(params, before) and opt.steps == 1
                     and torch.equal(opt._generator.get_state(), rng)
                     and all(torch.equal(a["exp_avg"], b["exp_avg"])
                             for a, b in zip(opt.state_dict()["state"].values(),
                                             state["state"].values())))
        # The group is still usable: the next step runs, and equals a run that never failed.
        opt.step(lambda: obj(params))
        out[label] = {"raised": raised, "unchanged": unchanged, "after": snapshot(params)}

    def fail_on_rank1(params: list[torch.Tensor]) -> Any:
        calls = [0]

        def closure() -> torch.Tensor:
            calls[0] += 1
            if rank == 1 and calls[0] == 2:
                raise ValueError("boom on rank 1")
            return obj(params)
        return closure

    def nan_at_fx_on_rank0(params: list[torch.Tensor]) -> Any:
        calls = [0]

        def closure() -> torch.Tensor:
            calls[0] += 1
            return obj(params) * (math.nan if rank == 0 and calls[0] == 1 else 1.0)
        return closure

    def different_function(params: list[torch.Tensor]) -> Any:
        return lambda: obj(params) + 0.001 * rank

    def batched_fails_on_rank1(params: list[torch.Tensor]) -> Any:
        def fn(X: torch.Tensor) -> torch.Tensor:
            if rank == 1:
                raise ValueError("batched boom on rank 1")
            return obj.batched(X)
        return Batched(fn)

    attempt("closure-raises-on-one-rank", fail_on_rank1)
    attempt("nan-f(x)-on-one-rank", nan_at_fx_on_rank0)
    attempt("ranks-disagree", different_function)
    attempt("batched-raises-on-one-rank", batched_fails_on_rank1)
    return out


def _held_scratch(kind: str) -> list[list[int]]:
    """The addresses a sharded ZO-SGD's scratch holds after each of 3 steps."""
    x = torch.nn.Parameter(torch.linspace(-1, 1, 1000))
    opt = torchzo.ZOSGD([x], lr=0.1, q=3, seed=0, directions_kind=kind)
    opt.distributed = True
    held = []
    for _ in range(3):
        opt.step(lambda: (x ** 2).sum())
        held.append(sorted(t.data_ptr() for ts in opt._scratch._kept.values() for t in ts))
    return held


def _worker(rank: int, world: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    # A file rendezvous (no port to pick); gloo's own connections go over the loopback device.
    dist.init_process_group("gloo", init_method=(Path(out_dir) / "rendezvous").as_uri(),
                            rank=rank, world_size=world, timeout=timedelta(seconds=30))
    try:
        results: dict[str, Any] = {name: run_scenario(name, True) for name in SCENARIOS}
        # An explicit group: the world's, and a group of this rank alone (a single process).
        results["module-objective"] = run_module_scenario(True)
        results["explicit-group"] = run_scenario("adam-forward", dist.group.WORLD)
        singles = [dist.new_group([r]) for r in range(world)]
        results["own-group"] = run_scenario("adam-central", singles[rank])
        results["errors"] = _error_scenarios(rank)
        results["scratch"] = {kind: _held_scratch(kind) for kind in ("gaussian", "rademacher")}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()  # tear gloo down together, then exit_worker (see its docstring)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("distributed")
    done = launch_ranks([__file__, "worker", str(out)], WORLD, timeout=120)
    for r, p in enumerate(done):
        assert p.returncode == 0, f"rank {r} failed:\n{p.stdout[-4000:]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_ranks_take_the_single_process_steps_bit_for_bit(ranks, name):
    single = run_scenario(name, None)
    start = [s.to(p.dtype) for s, p in zip(Objective(SHAPES).start, single["params"])]
    assert not all_same_bits(single["params"], start)  # the steps moved
    for r in range(WORLD):
        got = ranks[r][name]
        assert all_same_bits(got["params"], single["params"]), f"rank {r}"
        assert got["losses"] == single["losses"], f"rank {r}"
        assert got["queries"] == single["queries"]
        assert deep_equal(got["state"], single["state"]), f"rank {r}"


@pytest.mark.slow
def test_module_objective_is_sharded_bit_for_bit(ranks):
    single = run_module_scenario(None)
    for r in range(WORLD):
        assert all_same_bits(ranks[r]["module-objective"]["params"], single["params"])
        assert ranks[r]["module-objective"]["losses"] == single["losses"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_a_sharded_step_keeps_its_memory_for_the_next_as_one_process_does(ranks, kind):
    # The estimate a step lends the scratch is the next step's (a fresh one every step would
    # be paged in anew at large d). The previous one is still held while a step runs, so a
    # fresh estimate could not land at its address by chance.
    for r in range(WORLD):
        held = ranks[r]["scratch"][kind]
        assert len(held[0]) == 2 and held[1] == held[0] and held[2] == held[0], f"rank {r}"


@pytest.mark.slow
def test_explicit_groups_world_and_single_rank(ranks):
    assert all_same_bits(ranks[0]["explicit-group"]["params"],
                         run_scenario("adam-forward", None)["params"])
    own = run_scenario("adam-central", None)["params"]
    for r in range(WORLD):
        assert all_same_bits(ranks[r]["own-group"]["params"], own)


def _reference_after_failure() -> list[torch.Tensor]:
    """Two successful steps of the error scenarios' optimizer: what a failed step must not alter."""
    obj = Objective(SHAPES)
    params = obj.params(torch.float32)
    opt = torchzo.ZOAdam(params, lr=0.05, q=6, seed=3)
    for _ in range(2):
        opt.step(lambda: obj(params))
    return snapshot(params)


@pytest.mark.slow
@pytest.mark.parametrize("label, failing, own_type, message", [
    ("closure-raises-on-one-rank", 1, "ValueError", "boom on rank 1"),
    ("nan-f(x)-on-one-rank", 0, "ClosureError", "non-finite"),
    ("batched-raises-on-one-rank", 1, "ValueError", "batched boom"),
])
def test_a_failure_on_one_rank_raises_on_every_rank_and_restores(ranks, label, failing,
                                                                  own_type, message):
    expected = _reference_after_failure()
    for r in range(WORLD):
        got = ranks[r]["errors"][label]
        assert got["raised"] is not None, f"rank {r} did not raise"
        kind, text, failures = got["raised"]
        if r == failing:
            assert kind == own_type and message in text
        else:
            assert kind == "RankFailedError" and message in text
            assert list(failures) == [failing] and message in failures[failing]
        assert got["unchanged"], f"rank {r} kept changes of the failed step"
        assert all_same_bits(got["after"], expected), f"rank {r}"


@pytest.mark.slow
def test_ranks_that_disagree_raise_everywhere(ranks):
    expected = _reference_after_failure()
    for r in range(WORLD):
        got = ranks[r]["errors"]["ranks-disagree"]
        kind, text, _ = got["raised"]
        assert kind == "ClosureError" and "disagree on f(x)" in text
        assert got["unchanged"] and all_same_bits(got["after"], expected)


def test_each_estimate_of_a_step_queries_around_x():
    """With param groups estimated separately, one estimate's queries must not see the last
    perturbation of another (single process; the sharded step matches it bit for bit)."""
    obj = Objective(SHAPES)
    params = obj.params()
    start = snapshot(params)
    seen: list[list[torch.Tensor]] = []

    def closure() -> torch.Tensor:
        seen.append(snapshot(params))
        return obj(params)

    opt = torchzo.ZOSGD([{"params": params[:2]}, {"params": params[2:], "q": 3}], lr=0.1, q=2,
                        seed=0)
    opt.step(closure)
    assert len(seen) == 1 + 2 + 3
    first, second = seen[1:3], seen[3:]
    assert all(all_same_bits(s[2:], start[2:]) and not all_same_bits(s[:2], start[:2])
               for s in first)
    assert all(all_same_bits(s[:2], start[:2]) and not all_same_bits(s[2:], start[2:])
               for s in second)


def test_option_is_validated_and_needs_an_initialised_group():
    obj = Objective(SHAPES)
    params = obj.params()
    with pytest.raises(ValueError, match="distributed must be"):
        torchzo.ZOSGD(params, lr=0.1).distributed = "yes"
    opt = torchzo.ZOSGD(params, lr=0.1, seed=0)
    before = snapshot(params)
    opt.distributed = True
    with pytest.raises(RuntimeError, match="init_process_group"):
        opt.step(lambda: obj(params))
    assert all_same_bits(params, before) and opt.steps == 0
    opt.distributed = False
    opt.step(lambda: obj(params))
    assert opt.steps == 1
    assert issubclass(RankFailedError, ClosureError)


@pytest.mark.slow
def test_benchmark_quick_writes_json_and_markdown(tmp_path):
    from benchmarks.perf import distributed as bench

    data = bench.main(["--quick", "--out", str(tmp_path)])
    assert data is not None and data["machine"]
    runs = [r for r in data["sharded"] if r["case"] != "allreduce"]
    assert len(runs) == 4
    assert all(r["ranks_identical"] and r["equals_single_process"] for r in runs)
    text = (tmp_path / "distributed.md").read_text()
    assert "| sleep | 2 |" in text
    assert (tmp_path / "distributed.json").exists()


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        _worker(int(sys.argv[3]), int(sys.argv[4]), sys.argv[2])
        exit_worker()
