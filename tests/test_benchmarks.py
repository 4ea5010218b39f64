"""Benchmarks are scripts, not tests: these only smoke-run their tiny versions."""
from __future__ import annotations

import json

from torchzo.benchmarks import overhead


def test_overhead_quick_writes_json_and_markdown(tmp_path):
    result = overhead.main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "overhead.json").read_text())
    assert data["machine"] and result
    text = (tmp_path / "overhead.md").read_text()
    assert "ZOAdam" in text and "| d |" in text


def test_binclass_quick_writes_tables_and_plots(tmp_path):
    from torchzo.benchmarks import binclass

    binclass.main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "binclass.json").read_text())
    assert {"zosgd", "zosignsgd", "zoadam"} <= set(data["tuning"]["best"])
    text = (tmp_path / "binclass.md").read_text()
    assert "ZO-Adam" in text and "ZO-LSTM" in text


def test_schedules_quick_runs_every_schedule(tmp_path):
    from torchzo.benchmarks import schedules

    data = schedules.main(["--quick", "--out", str(tmp_path)])
    assert len(data["runs"]) == 11
    assert all(0 < r["final"] < 1 for r in data["runs"].values())


def test_batched_quick_times_both_paths_on_the_same_directions(tmp_path):
    from torchzo.benchmarks import batched

    data = batched.main(["--quick", "--out", str(tmp_path)])
    (case,) = data["cases"]
    assert case["q"] == 20 and case["speedup"]["median"] > 0
    assert case["max_abs_delta_diff"] < 1e-3  # same seeds: the paths only differ by rounding
    assert "| 20 |" in (tmp_path / "batched.md").read_text()
