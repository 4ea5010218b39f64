"""Every example runs end to end with tiny settings (their full runs are documented commands)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from data_marks import needs_mnist

from tools.launch import local_gloo_env

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("optimizer", ["ZOAdam", "ZOSGD"])
def test_swap_adam_reduces_the_loss(optimizer):
    out = _load("swap_adam").main(["--steps", "60", "--optimizer", optimizer])
    assert out["last"] < out["first"]


def test_nondifferentiable_reduces_the_zero_one_error():
    out = _load("nondifferentiable").main(["--steps", "40"])
    assert out["last"] < out["first"] - 0.05


@pytest.mark.slow
def test_policy_search_improves_the_return():
    out = _load("policy_search").main(["--steps", "8"])
    assert out["last"] > out["first"]


def test_plot_losses_example_records_each_run_and_writes_the_plot(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed; the test extra "
                        "installs it: pip install -e '.[test]' (or the plot extra)")
    out = _load("plot_losses").main(["--steps", "6", "--q", "4", "--out",
                                     str(tmp_path / "p.png")])
    assert len(out) == 4 and all(len(r.losses) == 6 for r in out.values())
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_meta_train_example_runs_and_compares():
    out = _load("meta_train").main(["--quick"])
    assert len(out) == 2 and all(v > 0 for v in out.values())


def test_meta_train_example_writes_plain_progress_lines_into_a_pipe():
    """With tqdm installed (the test extra), a pipe gets lines, not a bar's carriage returns."""
    pytest.importorskip("tqdm", reason="the check is that tqdm's bar stays off a pipe")
    done = subprocess.run([sys.executable, str(EXAMPLES / "meta_train.py"), "--quick"],
                          capture_output=True, text=True, check=True, timeout=600)
    assert "meta_loss=" in done.stderr
    assert "\r" not in done.stdout + done.stderr


@pytest.mark.slow
@needs_mnist
def test_blackbox_attack_example_attacks_with_each_optimizer(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHZO_CACHE", str(tmp_path))  # no cached target: the example trains one
    out = _load("blackbox_attack").main(["--images", "2", "--steps", "30",
                                         "--train-limit", "1000"])
    assert "ZOAdam (lr 0.01)" in out
    for s in out.values():
        assert 0 <= s["success_rate"] <= 1 and s["queries_per_image"] == 30 * 21


@pytest.mark.slow
def test_distributed_example_under_torchrun_takes_the_single_process_steps():
    args = [str(EXAMPLES / "distributed.py"), "--steps", "4", "--delay-ms", "0"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", *args], env=local_gloo_env(),
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    one = _load("distributed").main(args[1:])
    assert f"2 process(es): loss {one['first']:.4f} -> {one['last']:.4f}" in two.stdout
    assert f"parameters {one['checksum']}" in two.stdout  # bit-identical to one process
