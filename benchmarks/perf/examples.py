"""How long the demo and each example take at their defaults: what the README's times rest on.

    python -m benchmarks.perf.examples [--only NAME ...] [--out DIR]

The demo (``python -m torchzo``) and each example run as a user runs them (``python
examples/NAME.py``, no arguments; the distributed one also under ``torchrun`` with two
processes), each in a fresh process, with torch's default threads, one after the other. An
example whose extra or data is missing is listed with the reason and not timed:
``blackbox_attack`` needs MNIST and a cached target classifier (``python -m torchzo.datasets
fetch mnist && python -m torchzo.tasks.targets --data mnist``), ``plot_losses`` matplotlib,
``lightning_finetune`` lightning. *Last line*: the example's own summary, for what it reached.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from typing import Any

from tools import ROOT
from tools.launch import local_gloo_env

from .._common import OUT, finish, machine
from .._report import doc_paragraphs, md_table, section

EXAMPLES = ("demo", "swap_adam", "nondifferentiable", "policy_search", "plot_losses", "meta_train",
            "lightning_finetune", "distributed", "distributed-torchrun", "blackbox_attack")
# What an example needs beyond torchzo's test extra, as a module to import.
NEEDS = {"plot_losses": "matplotlib", "lightning_finetune": "lightning"}


def _missing(name: str) -> str | None:
    """Why ``name`` cannot run here, or ``None``."""
    module = NEEDS.get(name)
    if module is not None and importlib.util.find_spec(module) is None:
        return f"needs {module}"
    if name == "blackbox_attack":
        from torchzo.tasks import targets
        if targets.target_info("mnist") is None:
            return f"needs MNIST and its cached target (none in {targets.cache_dir()})"
    return None


def command(name: str) -> list[str]:
    if name == "demo":
        return [sys.executable, "-m", "torchzo"]
    if name == "distributed-torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", str(ROOT / "examples" / "distributed.py")]
    return [sys.executable, str(ROOT / "examples" / f"{name}.py")]


def run(name: str, out_dir: str) -> dict[str, Any]:
    reason = _missing(name)
    if reason is not None:
        return {"example": name, "skipped": reason}
    start = time.perf_counter()
    done = subprocess.run(command(name), capture_output=True, text=True, check=False,
                          cwd=out_dir or None,
                          env=local_gloo_env() if name.endswith("torchrun") else None)
    seconds = time.perf_counter() - start
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    return {"example": name, "seconds": seconds, "returncode": done.returncode,
            "last_line": lines[-1] if lines else done.stderr.strip().splitlines()[-1:]}


def render(data: dict[str, Any]) -> str:
    m = data["machine"]
    rows = []
    for r in data["runs"]:
        if "skipped" in r:
            rows.append([r["example"], "not run", r["skipped"]])
        else:
            rows.append([r["example"], f"{r['seconds']:.0f} s"
                         + ("" if r["returncode"] == 0 else f" (exit {r['returncode']})"),
                         str(r["last_line"])])
    return "\n".join(section(
        "The demo and the examples at their defaults", *doc_paragraphs(__doc__),
        f"`{data['command']}`. Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch "
        f"{m['torch']} ({m['torch_threads']} threads by default), load average "
        f"{m['loadavg'][0]:.2f} at the start, {data['loadavg_end'][0]:.2f} at the end.",
        md_table(["example", "time", "last line"], rows),
        f"Total time {data['elapsed_s']:.0f} s.", level=1))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.perf.examples",
                                 description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--only", nargs="+", choices=EXAMPLES, default=list(EXAMPLES))
    ap.add_argument("--out", default=OUT, help="'' to write nothing")
    ap.add_argument("--workdir", default="", help="where the examples run (their outputs)")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    data: dict[str, Any] = {
        "benchmark": "examples", "machine": machine(),
        "command": " ".join(["python -m benchmarks.perf.examples",
                             *(sys.argv[1:] if argv is None else argv)]),
        "runs": [run(name, args.workdir) for name in args.only]}
    return finish(data, start, "examples", args.out, render)


if __name__ == "__main__":
    main()
