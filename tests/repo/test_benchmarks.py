"""Benchmarks are scripts, not tests: these only smoke-run their tiny versions."""
from __future__ import annotations

import json
import math

import pytest
import torch

import torchzo
from benchmarks.perf import overhead
from torchzo.learned import LearnedZO
from torchzo.oracle import kernels

# Each benchmark's tiny version still runs for seconds, more on a busy machine.
pytestmark = pytest.mark.slow

# Benchmarks that time a step on a constant objective warn that it learns nothing, by design.
ZERO_SIGNAL = pytest.mark.filterwarnings("ignore::torchzo.ZeroSignalWarning")


@ZERO_SIGNAL
def test_overhead_quick_writes_json_and_markdown(tmp_path):
    result = overhead.main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "overhead.json").read_text())
    assert data["machine"] and result
    text = (tmp_path / "overhead.md").read_text()
    assert "ZOAdam" in text and "| d |" in text
    (split,) = data["split"]
    # The parts add up to about the whole step. The quick run's steps take about a
    # millisecond, so on a loaded machine (a meta-training run beside the tests) their
    # medians can differ by 2x; a wrong unit or a missing part is off by far more.
    for parts in split["optimizers"].values():
        total = (split["closure_s"]["median"] + parts["oracle_s"]["median"]
                 + parts["update_s"]["median"])
        assert parts["oracle_s"]["median"] > 0 and parts["update_s"]["median"] > 0
        assert 1 / 3 < total / parts["step_s"]["median"] < 3
    assert "## Step time split" in text
    # The memory floor, measured in the same repetitions, and each optimizer over it.
    assert "## Overhead as a multiple of the memory floor" in text
    assert "| add pass (µs) | copy (µs) | floor: 5 adds (µs) |" in text
    assert "ZOSGD (Rademacher) / floor" in text and "ZOSGD (Rademacher) / Adam" in text
    assert data["kernels"]["available"] == kernels.available()
    assert "Rademacher kernels (`torchzo.oracle.kernels`)" in text
    assert "| ZOLSTM / ZOAdam | ZOLSTM (generalist) / ZOAdam |" in text
    assert "ZOLSTM lean (inference) / ZOSGD (inference) |" in text
    for case in data["timing"]:
        floor = case["floor_s"]
        assert 0 < floor["add"]["median"] and 0 < floor["copy"]["median"]
        assert floor["step"]["median"] == pytest.approx(5 * floor["add"]["median"])
        assert set(case["over_floor"]) == {"ZOSGD", "ZOSGD (Rademacher)",
                                           "ZOSGD (Rademacher, torch ops)", "ZOSGD (orthogonal)",
                                           "ZOSignSGD", "ZOAdam",
                                           "ZOLSTM", "ZOLSTM (general)",
                                           "ZOLSTM (generalist)", "ZOSGD (inference)",
                                           "ZOLSTM lean (inference)"}
        assert all(r["median"] > 0 for r in case["over_floor"].values())


def test_binclass_quick_writes_tables_and_plots(tmp_path):
    from benchmarks.paper import binclass

    binclass.main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "binclass.json").read_text())
    assert {"zosgd", "zosignsgd", "zoadam"} <= set(data["tuning"]["best"])
    text = (tmp_path / "binclass.md").read_text()
    assert "ZO-Adam" in text and "ZO-LSTM" in text


# Its coarse tuning grid holds ZO-Adam at lr 1, which with Rademacher directions saturates
# the logistic loss: a step there is flat, and the optimizer says so.
@pytest.mark.filterwarnings("ignore::torchzo.ZeroSignalWarning")
def test_binclass_directions_kind_reaches_every_method(tmp_path):
    from benchmarks.paper import binclass

    runs = {}
    for kind in ("gaussian", "rademacher"):
        binclass.main(["--quick", "--no-sweeps", "--no-plots", "--directions-kind", kind,
                       "--out", str(tmp_path / kind)])
        runs[kind] = json.loads((tmp_path / kind / "binclass.json").read_text())
    assert runs["rademacher"]["config"]["directions_kind"] == "rademacher"
    assert runs["gaussian"]["tuning"]["candidates"] != runs["rademacher"]["tuning"]["candidates"]
    assert runs["gaussian"]["curves"] != runs["rademacher"]["curves"]


def test_schedules_quick_runs_every_schedule(tmp_path):
    from benchmarks.paper import schedules

    data = schedules.main(["--quick", "--out", str(tmp_path)])
    assert len(data["runs"]) == 11
    assert all(0 < r["final"] < 1 for r in data["runs"].values())


def test_batched_quick_times_both_paths_on_the_same_directions(tmp_path):
    from benchmarks.perf import batched

    data = batched.main(["--quick", "--out", str(tmp_path)])
    default, kept = data["cases"]  # this machine's malloc is glibc's
    assert (default["malloc"], kept["malloc"]) == ("default", "kept")
    for case in data["cases"]:
        assert case["q"] == 20 and case["speedup"]["median"] > 0
        assert case["max_abs_delta_diff"] < 1e-3  # same seeds: the paths differ by rounding
        assert case["malloc_delta_diff"] == 0.0  # the allocator changes no bits
        assert case["native_delta_diff"] < 1e-3  # nor, beyond rounding, the convolution backend
        parts = {k: case["step_s"][k]["median"] for k in ("objective only", "step, free objective")}
        assert all(0 < v < case["step_s"]["batched"]["median"] * 2 for v in parts.values())
    loops = {(lp["path"], lp["malloc"]): lp for lp in data["plain_loops"]["loops"]}
    assert set(loops) == {(p, m) for p in ("sequential", "batched") for m in ("default", "kept")
                          } | {("sequential, oneDNN off", "default")}
    assert loops["batched", "kept"]["faults_per_step"]["median"] < 25  # ~400 by default
    text = (tmp_path / "batched.md").read_text()
    assert "| 20 | 1 | kept |" in text and "| batched | 2 | kept |" in text


@ZERO_SIGNAL
def test_cuda_script_runs_every_part_on_the_cpu(tmp_path):
    # The GPU check runs on a short loan of a machine: its smoke test here keeps it from
    # rotting between loans.
    from benchmarks.perf import cuda

    data = cuda.main(["--device", "cpu", "--quick", "--no-tests", "--out", str(tmp_path)])
    (case,) = data["overhead"]
    assert case["d"] == 1000 and set(case["per_query_floors"]) == set(cuda.OPTIMIZERS)
    assert all(v > 0 for v in case["median_s"].values())
    assert data["attack"]["speedup"] > 0
    assert data["attack"]["max_delta_difference"] < 1e-3  # same directions, rounding apart
    assert data["nccl"]["backend"] == "gloo" and data["nccl"]["bit_identical"]
    assert data["finetune"]["gaussian_bits_match_cpu"]
    assert set(data["finetune"]["modes"]) == {"exact", "inference"}
    text = (tmp_path / "cuda.md").read_text()
    assert "| 1e+03 | ZOSGD (Rademacher) |" in text and "| gloo | 1000 | True (3) |" in text


@ZERO_SIGNAL
@pytest.mark.skipif(not kernels.available(), reason="needs a C compiler (as the kernels do)")
def test_gaussian_generator_prototype_keeps_its_bits_and_its_statistics(tmp_path):
    from research import gaussian_generator

    data = gaussian_generator.main(["--quick", "--out", str(tmp_path)])
    assert data["bits"]["identical"]  # the vector build is the plain-C definition
    assert all(0 < z < 4 for z in data["statistics"]["rms_z"].values())
    floors = data["timings"]["per_query_floors"]
    assert set(floors) == {"step: Gaussian, torch randn", "step: Gaussian, this generator",
                           "step: Gaussian, the package's", "step: Rademacher"}
    assert all(v > 0 for v in floors.values())
    text = (tmp_path / "gaussian-generator.md").read_text()
    assert "| Gaussian, this generator |" in text and "| fourth moment |" in text


def test_gaussian_generator_prototype_is_swapped_in_for_the_step_only():
    # The what-if replaces the oracle's private draw inside a step: it must find it, and
    # put it back.
    from research import gaussian_generator
    from torchzo.oracle import directions

    before = directions.Gaussian.fill
    with gaussian_generator.own_gaussian(object()):  # the library is only called by a draw
        assert directions.Gaussian.fill is not before
    assert directions.Gaussian.fill is before


@ZERO_SIGNAL
def test_finetune_quick_measures_memory_and_time_in_each_mode(tmp_path):
    from benchmarks.perf import finetune

    data = finetune.main(["--quick", "--out", str(tmp_path)])
    cases = {c["memory"]: c for c in data["cases"]}
    assert set(cases) == {"exact", "inference"} and not any("error" in c for c in cases.values())
    # The exact mode holds the parameters' copy, the estimate and a direction; inference none.
    assert cases["exact"]["extra_peak_fraction"] > 2
    assert cases["inference"]["extra_peak_fraction"] < 0.2
    assert all(c["step_over_forwards"] > 0.5 for c in cases.values())
    assert "| lm-25m | ZOSGD | inference | 1 |" in (tmp_path / "finetune.md").read_text()


@ZERO_SIGNAL
def test_restore_drift_quick_reports_every_dtype_and_an_unmoved_exact_mode(tmp_path):
    from benchmarks.perf import restore_drift

    data = restore_drift.main(["--quick", "--out", str(tmp_path)])
    assert data["exact_unchanged"]
    assert {c["dtype"] for c in data["cases"]} == {"float32", "bfloat16", "float16"}
    f32 = [r for c in data["cases"] if c["dtype"] == "float32" for r in c["drift"]]
    assert all(r["changed"] < 0.1 for r in f32)  # float32 comes back, to rare roundings


def test_batched_mlp_quick_times_every_path_under_both_malloc_settings(tmp_path):
    from benchmarks.perf import batched_mlp

    data = batched_mlp.main(["--quick", "--out", str(tmp_path)])
    assert [c["malloc"] for c in data["cases"]] == ["default", "kept"]  # glibc here
    for case in data["cases"]:
        assert set(case["step_s"]) == {"closure", "batched", "batched-8"}
        assert case["mlp"]["d"] == 32 * 64 + 64 + 64 * 10 + 10
        diff = case["max_abs_param_diff_vs_closure"]
        # Same directions: the paths differ by float32 rounding, amplified at most by Adam.
        assert diff["closure"] == 0 and 0 < diff["batched"] <= 2e-3
        assert case["faults_per_step"]["batched"] >= 0
    assert (tmp_path / "batched-mlp.json").is_file()
    text = (tmp_path / "batched-mlp.md").read_text()
    assert "| 32-64-10, batch 16 | 1 | kept | batched |" in text


def test_lr_scan_scores_each_scale_against_zo_adam(tmp_path):
    from benchmarks.paper import lr_scan

    data = lr_scan.main(["--task", "binclass", "--weights", "binclass", "--lr", "0.5", "1.0",
                         "--adam-lr", "0.0562", "--adam-betas", "0.6", "0.99975",
                         "--problems", "1", "--out", str(tmp_path)])
    assert list(data["runs"]) == ["ZO-Adam lr 0.0562, betas (0.6, 0.99975)",
                                  "ZOLSTM lr 0.5", "ZOLSTM lr 1.0"]
    adam = data["runs"]["ZO-Adam lr 0.0562, betas (0.6, 0.99975)"]
    assert adam["reaches_adam_final"] is not None and adam["reaches_adam_final"] <= 500
    assert data["runs"]["ZOLSTM lr 0.5"]["final"] != data["runs"]["ZOLSTM lr 1.0"]["final"]
    assert (tmp_path / "lr-scan-binclass.json").is_file()
    assert "| ZOLSTM lr 0.5 |" in (tmp_path / "lr-scan-binclass.md").read_text()


# ZO-SGD's tuning grid reaches lr 100, which diverges on matrix factorization: at f ~ 1e27
# float32 rounds every query difference to zero, and the optimizer says so.
@pytest.mark.filterwarnings("ignore::torchzo.ZeroSignalWarning")
def test_generalist_quick_scores_every_method_against_tuned_adam(tmp_path):
    from benchmarks.generalist import heldout as generalist

    # Weights with a query net, so that its ablation runs too.
    data = generalist.main(["--quick", "--families", "hinge,matrix-factorization",
                            "--weights", "mnist-attack", "--out", str(tmp_path)])
    assert set(data["families"]) == {"hinge", "matrix-factorization"}
    for entry in data["families"].values():
        summary = entry["summary"]
        assert summary["ZOAdam tuned"]["geomean_ratio_to_tuned_adam"] == 1.0
        assert {"ZOLSTM", "ZOLSTM no query net", "untrained (hand rule)",
                "ZOAdam lr 1e-3", "ZOSGD tuned"} <= set(summary)
        assert entry["tuned"]["adam"]["lr"] > 0
    text = (tmp_path / "generalist.md").read_text()
    assert "| hinge |" in text and "geometric mean" in text


def test_generalist_shows_what_orthogonal_directions_buy_beside_weights_that_use_them(tmp_path):
    """Weights that name orthogonal directions get ZO-Adam tuned with them, and themselves
    run with Gaussian ones: the same runs as those weights told to use Gaussian directions."""
    import dataclasses

    from benchmarks.generalist import heldout as generalist

    nets = torchzo.pretrained.load("generalist")
    kinds = {}
    for kind in ("orthogonal", "gaussian"):
        kinds[kind] = LearnedZO(arch=dataclasses.replace(nets.arch, directions_kind=kind))
        kinds[kind].load_state_dict(nets.state_dict())
        torchzo.pretrained.save(kinds[kind], tmp_path / f"{kind}.pt")
    args = ["--quick", "--families", "hinge", "--out", str(tmp_path)]
    data = generalist.main([*args, "--weights", str(tmp_path / "orthogonal.pt")])
    entry = data["families"]["hinge"]
    assert {generalist.ORTHOGONAL_ADAM, "ZOLSTM Gaussian directions"} <= set(entry["summary"])
    assert entry["tuned"]["adam_orthogonal"]["lr"] > 0
    assert entry["finals"]["ZOLSTM"] != entry["finals"]["ZOLSTM Gaussian directions"]
    assert "| ZO-Adam (orthogonal) lr | beta1 |" in (tmp_path / "generalist.md").read_text()
    plain = generalist.main([*args, "--weights", str(tmp_path / "gaussian.pt")])
    plain = plain["families"]["hinge"]
    assert entry["finals"]["ZOLSTM Gaussian directions"] == plain["finals"]["ZOLSTM"]
    assert generalist.ORTHOGONAL_ADAM not in plain["summary"]


def test_generalist_candidates_run_the_same_optimizer_as_the_main_row(tmp_path):
    """An ES check file as a candidate is the very optimizer its weights make: its finals
    equal the main row's for the same weights given as a file."""
    from benchmarks.generalist import heldout as generalist
    from torchzo.meta.es import flatten

    nets = torchzo.pretrained.load("generalist")
    run = tmp_path / "run"
    (run / "checks").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"arch": nets.arch.to_dict()}))
    torch.save({"theta": flatten(nets.weights()), "iteration": 7}, run / "checks" / "7.pt")
    check = str(run / "checks" / "7.pt")
    args = ["--quick", "--families", "hinge", "--out", ""]
    main = generalist.main([*args, "--weights", "generalist"])["families"]["hinge"]
    picked_all = generalist.main([*args[:-1], str(tmp_path), "--candidates", check])
    picked = picked_all["families"]["hinge"]
    assert picked_all["weights"] == check
    assert picked_all["weights_digest"] == {check: generalist.weights_digest(nets)}
    assert list(picked["summary"]) == [check, "ZOAdam tuned", "ZOSGD tuned"]
    assert f"{check}: {picked_all['weights_digest'][check][:16]}" in (
        tmp_path / "generalist.md").read_text()
    assert picked["finals"][check] == main["finals"]["ZOLSTM"]
    assert picked["finals"]["ZOAdam tuned"] == main["finals"]["ZOAdam tuned"]


def test_generalist_floors_solved_gaps_and_counts_divergence():
    from benchmarks.generalist.heldout import FLOOR, log_progress, summarize

    assert log_progress([10.0, 0.0], 0.0) == pytest.approx(math.log(FLOOR))
    assert log_progress([10.0, math.inf], 0.0) == math.inf
    s = summarize({"ZOAdam tuned": [1.0, 0.0], "other": [0.5, 20.0]}, [10.0, 10.0], [0.0, 0.0])
    assert s["other"]["wins_vs_tuned_adam"] == 1 and s["other"]["ended_above_start"] == 1
    assert s["other"]["geomean_ratio_to_tuned_adam"] == pytest.approx(
        math.sqrt(0.5 * (20 / 10) / FLOOR))


def test_step_size_holds_sigma_where_asked_and_tracks_the_generalists(tmp_path):
    """The silenced controller keeps sigma at c * rms(x0) exactly; the shipped one moves it."""
    import math

    from benchmarks.paper import step_size
    from torchzo.tasks.binclass import BinaryClassification

    data = step_size.main(["--datasets", "1", "--trials", "1", "--steps", "50",
                           "--sizes", "0.02", "--out", str(tmp_path)])
    assert set(data["finals"]) == {"generalist", "ZOAdam tuned", "sigma 0.02 x rms(x0)"}
    assert all(math.isfinite(v[0]) for v in data["finals"].values())
    assert "| sigma 0.02 x rms(x0) |" in (tmp_path / "step-size-binclass.md").read_text()
    nets = step_size.silenced(torchzo.pretrained.load("generalist"), 0.02)
    problem = BinaryClassification().problems("train")[0]
    x = problem.x0.detach().clone().float()
    rms0 = float(x.pow(2).mean().sqrt())
    lr = 1.0
    opt = torchzo.ZOLSTM([x], pretrained=nets, lr=lr, seed=0)
    moved = torch.Generator().manual_seed(0)
    for _ in range(20):
        batch = problem.sample_batch(moved)
        opt.step(torchzo.Batched(lambda X, b=batch: problem.loss(X, b)))
        assert lr * math.exp(float(opt.state[x]["group.log_sigma"])) == pytest.approx(0.02 * rms0,
                                                                                 rel=1e-5)
    assert data["generalist_sigma_over_rms0"]["quantiles_10_50_90"][0][0] != 0.02


def test_one_tuning_protocol_replays_the_committed_tunings_of_both_benchmarks():
    """benchmarks._tuning, fed the scores the committed runs recorded, asks for exactly the
    candidates they ran and picks their settings: the paper's protocol (binclass) and the
    generalist's (per beta1, exponents of 10) are the one protocol on two grids."""
    from pathlib import Path

    from benchmarks._tuning import canon, tune_adam, tune_step
    from benchmarks.generalist.heldout import _grid
    from benchmarks.paper._protocol import Config, grid

    docs = Path(__file__).resolve().parents[2] / "docs" / "benchmarks"
    run = json.loads((docs / "binclass.json").read_text())
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v
                    for k, v in run["config"].items()})
    recorded = {(kind, r["delta"], tuple(r.get("betas", ()))): r["score"] or math.inf
                for kind, rs in run["tuning"]["candidates"].items() for r in rs}
    asked = set()

    def score(kind, delta, betas=()):
        key = (kind, canon(delta), tuple(canon(b) for b in betas))
        asked.add(key)
        return recorded[key]

    best = run["tuning"]["best"]
    for kind in ("zosgd", "zosignsgd"):
        assert tune_step(lambda d, k=kind: score(k, d), grid(cfg))[0] == best[kind]["delta"]
    delta, betas, _ = tune_adam(lambda d, b: score("zoadam", d, b), grid(cfg))
    assert (delta, list(betas)) == (best["zoadam"]["delta"], best["zoadam"]["betas"])
    assert asked == set(recorded)

    for family in json.loads((docs / "generalist.json").read_text())["families"].values():
        tuned = family["tuned"]
        tables = {b: {float(e): s for e, s in tuned[f"adam_beta1_{b}"].items()}
                  for b in (0.9, 0.5)}
        e, (b1, _), _ = tune_adam(lambda e, b, t=tables: t[b[0]][e],
                                  _grid([-5.0, -4.0, -3.0, -2.0, -1.0, 0.0], (0.9, 0.5)))
        assert (10 ** e, b1) == (tuned["adam"]["lr"], tuned["adam"]["beta1"])
        sgd = {float(e): s for e, s in tuned["sgd_grid"].items()}
        e, _ = tune_step(sgd.__getitem__, _grid([-7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0, 0.0]))
        assert 10 ** e == tuned["sgd"]["lr"]


def test_the_gpu_check_keeps_its_short_name():
    from benchmarks import cuda
    from benchmarks.perf import cuda as script

    assert cuda.main is script.main


@ZERO_SIGNAL
def test_finetune_quality_quick_scores_every_method_on_both_tasks(tmp_path, monkeypatch):
    from benchmarks.finetune import quality

    monkeypatch.setattr(quality, "CACHE", tmp_path / "cache")  # pretrains its tiny model
    data = quality.main(["--quick", "--out", str(tmp_path)])
    assert set(data["tasks"]) == {"text", "kind"}
    for rows in data["tasks"].values():
        assert set(rows) == {"pretrained", *quality.METHODS, "Adam (first order)"}
        assert len(rows["MeZO (ZO-SGD, central, q = 1)"]["test"]) == 3  # best, half, twice
    assert "## Task: kind" in (tmp_path / "finetune-quality.md").read_text()


def test_finetune_quality_runs_lean_weights_untuned_at_inference_memory(tmp_path, monkeypatch):
    from benchmarks.finetune import quality
    from torchzo.learned.arch import LeanConfig

    monkeypatch.setattr(quality, "CACHE", tmp_path / "cache")
    torchzo.pretrained.save(LearnedZO(arch=LeanConfig()), tmp_path / "lean.pt")
    data = quality.main(["--quick", "--out", str(tmp_path), "--lean", str(tmp_path / "lean.pt"),
                         "--methods", "ZO-LSTM lean,MeZO", "--name", "lean-check"])
    for rows in data["tasks"].values():
        assert set(rows) == {"pretrained", "ZO-LSTM lean", "MeZO (ZO-SGD, central, q = 1)"}
        assert list(rows["ZO-LSTM lean"]["test"]) == ["1"]  # untuned: lr 1
        assert all(math.isfinite(s) for s in rows["ZO-LSTM lean"]["test"]["1"])
    assert (tmp_path / "lean-check.md").exists()


def test_examples_timing_runs_an_example_and_lists_what_cannot_run(tmp_path, monkeypatch):
    from benchmarks.perf import examples

    monkeypatch.setitem(examples.NEEDS, "plot_losses", "no_such_module_here")
    data = examples.main(["--only", "policy_search", "plot_losses", "--out", str(tmp_path),
                          "--workdir", str(tmp_path)])
    timed, skipped = data["runs"]
    assert timed["returncode"] == 0 and timed["seconds"] > 0
    assert "mean return" in timed["last_line"]
    assert skipped == {"example": "plot_losses", "skipped": "needs no_such_module_here"}
    assert "| policy_search |" in (tmp_path / "examples.md").read_text()


def test_threads_quick_times_one_thread_against_the_default_quiet_and_busy(tmp_path):
    from benchmarks.perf import threads

    data = threads.main(["--quick", "--out", str(tmp_path)])
    for load in ("quiet", "busy"):
        assert {(r["d"], r["optimizer"]) for r in data[load]} == {
            (d, o) for d in (100, 10_000) for o in threads.OPTIMIZERS}
        assert all(r["one_s"] > 0 and r["default_s"] > 0 for r in data[load])
    assert "## Busy" in (tmp_path / "threads.md").read_text()


def _anchors_or_skip() -> None:
    from benchmarks.generalist import anchors

    if anchors.missing():
        pytest.skip(anchors.missing())


@ZERO_SIGNAL
def test_judge_quick_scores_every_method_against_both_references(tmp_path):
    from benchmarks.generalist import judge
    from torchzo.learned.arch import LeanConfig

    _anchors_or_skip()
    torchzo.pretrained.save(LearnedZO(arch=LeanConfig()), tmp_path / "lean.pt")
    data = judge.main(["--quick", "--split", "val", "--families", "huber",
                       "--weights", str(tmp_path / "lean.pt"), "--out", str(tmp_path)])
    summary = data["families"]["huber"]["summary"]
    assert set(summary) == {"ZOLSTM", "ZOLSTM v1", "ZOAdam tuned", "ZOSGD tuned",
                            "CMA-ES tuned", "CMA-ES default", "NGOpt"}
    assert summary["ZOAdam tuned"]["ratio_to_ZOAdam tuned"] == 1.0
    assert summary["CMA-ES tuned"]["ratio_to_CMA-ES tuned"] == 1.0
    assert all(math.isfinite(f) for fs in data["families"]["huber"]["finals"].values()
               for f in fs)
    tuned = data["families"]["huber"]["tuned"]
    assert tuned["cma"]["sigma0"] > 0 and tuned["adam"]["betas"][0] in judge.BETA1
    text = (tmp_path / "judge-val.md").read_text()
    assert "Against CMA-ES tuned:" in text and "| huber |" in text


@pytest.mark.parametrize("anchor", ["cma", "ngopt"])
def test_anchors_spend_the_budget_of_a_zo_run_and_record_its_step_grid(anchor):
    from benchmarks.generalist import anchors
    from torchzo.tasks.families import FAMILIES

    _anchors_or_skip()
    problem = FAMILIES["huber"].instance(torch.Generator().manual_seed(0))
    rows = []
    loss = problem.loss
    problem.loss = lambda X, batch=None: (rows.append(X.shape[0]) if batch is not None
                                          else None, loss(X, batch))[1]
    steps, q, every = 12, 4, 3
    curve = (anchors.run_cma(problem, 0.3, steps, q, 0, every) if anchor == "cma"
             else anchors.run_ngopt(problem, steps, q, 0, every))
    assert len(curve) == steps // every + 1
    assert sum(rows) <= steps * (q + 1)
    assert sum(rows) > steps * (q + 1) // 2  # and it does search
    assert curve[-1] < curve[0]


def test_ngopt_metamodel_type_errors_count_as_the_failures_nevergrad_recovers_from(monkeypatch):
    from benchmarks.generalist import anchors

    _anchors_or_skip()
    from nevergrad.optimization import optimizerlib
    from nevergrad.optimization.metamodel import MetaModelFailure

    def numpy2(*args, **kwargs):
        raise TypeError("only 0-dimensional arrays can be converted to Python scalars")
    monkeypatch.setattr(optimizerlib, "learn_on_k_best", numpy2)
    with anchors._metamodel_failures_as_nevergrad_means_them():
        with pytest.raises(MetaModelFailure):
            optimizerlib.learn_on_k_best(None, 3)
    assert optimizerlib.learn_on_k_best is numpy2  # put back
