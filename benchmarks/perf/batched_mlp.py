"""Batched module queries vs the closure path on small MLPs: the step time of each path.

    python -m benchmarks.perf.batched_mlp [--reps N] [--number N] [--threads N ...]
                                     [--malloc default|kept ...] [--out DIR] [--quick]

One ZOAdam step (q = 20) on the cross-entropy of an MLP (32 inputs, 64 tanh units, 10 classes;
d = 2762) on a fixed batch of 16 or 256 samples. *closure*: ``opt.step(lambda:
F.cross_entropy(model(x), y))``, one forward pass per query; *batched*: the objective
:func:`torchzo.oracle.module_objective` builds, all q + 1 parameter vectors of a step in one
``vmap`` call; *batched-8*: the same in calls of at most 8 rows (``chunk_size=8``).
Repetitions alternate in a shuffled order; each is the mean of ``--number`` back-to-back
steps of one path; medians and interquartile ranges.

*malloc* and *faults* as in the MNIST-attack benchmark (``batched.py``): glibc's allocator as
it comes, or after :func:`torchzo.cpu.keep_freed_memory` (measured after the default cases in
the same process), and minor page faults per step of each path after the timing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchzo.optim import ZOAdam
from torchzo.oracle import module_objective
from torchzo.progress import Progress

from .._common import (
    OUT,
    faults_per_call,
    finish,
    fmt_spread,
    fmt_time,
    interleaved_times,
    machine,
    malloc_settings,
    spread,
)
from .._report import doc_paragraphs, md_table, section

# Rows per vectorised call of each batched path (None: all of a step's).
CHUNKS: dict[str, int | None] = {"batched": None, "batched-8": 8}
PATHS = ("closure", *CHUNKS)
SIZES = ((16, 32, 64), (256, 32, 64))  # (batch, inputs, hidden)


def make_mlp(batch: int, inputs: int, hidden: int, seed: int = 0
             ) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An ``inputs``-``hidden``-10 tanh MLP and a fixed batch of inputs and class labels."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, 10))
    x = torch.randn(batch, inputs, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    return model, x, y


def contender(size: tuple[int, int, int], path: str, q: int
              ) -> tuple[Callable[[], Any], list[torch.Tensor]]:
    """One ZOAdam step of ``path`` on a fresh copy of the MLP, and the parameters it moves."""
    model, x, y = make_mlp(*size)
    opt = ZOAdam(model.parameters(), lr=1e-3, q=q, seed=0)
    if path == "closure":
        return (lambda: opt.step(lambda: F.cross_entropy(model(x), y))), list(model.parameters())
    objective = module_objective(model, F.cross_entropy, x, target=y, chunk_size=CHUNKS[path])
    return (lambda: opt.step(objective)), list(model.parameters())


def case(size: tuple[int, int, int], q: int, reps: int, threads: int, number: int,
         malloc: str) -> dict[str, Any]:
    torch.set_num_threads(threads)
    steps, params = {}, {}
    for path in PATHS:
        steps[path], params[path] = contender(size, path, q)
    samples = interleaved_times(steps, reps, number=number)
    faults = {path: faults_per_call(step) for path, step in steps.items()}
    ref = params["closure"]
    batch, inputs, hidden = size
    return {
        "mlp": {"batch": batch, "inputs": inputs, "hidden": hidden, "outputs": 10,
                "d": sum(p.numel() for p in ref)},
        "q": q, "threads": threads, "malloc": malloc, "reps": reps, "number": number,
        "step_s": {k: spread(v) for k, v in samples.items()},
        "speedup_vs_closure": {k: spread([c / s for c, s in zip(samples["closure"], v)])
                               for k, v in samples.items()},
        "faults_per_step": faults,
        # The timed copies took the same number of steps (one warm-up, then reps * number).
        "max_abs_param_diff_vs_closure": {
            k: max(float((a - b).detach().abs().max()) for a, b in zip(ref, v))
            for k, v in params.items()},
    }


def render(data: dict[str, Any]) -> str:
    m, first = data["machine"], data["cases"][0]
    rows = []
    for c in data["cases"]:
        mlp = c["mlp"]
        size = f"{mlp['inputs']}-{mlp['hidden']}-{mlp['outputs']}, batch {mlp['batch']}"
        rows += [[size, c["threads"], c["malloc"], k, f"{c['faults_per_step'][k]:.0f}",
                  fmt_spread(c["step_s"][k], fmt_time),
                  fmt_spread(c["speedup_vs_closure"][k], lambda x: f"{x:.2f}"),
                  f"{c['max_abs_param_diff_vs_closure'][k]:.2g}"] for k in c["step_s"]]
    return "\n".join(section(
        "Batched vs sequential queries: small MLPs", *doc_paragraphs(__doc__),
        f"`{data['command']}`" + (" (**--quick: not results**)" if data["quick"] else "")
        + f". Machine: {m['cpu']}, torch {m['torch']}, {m.get('logical_cpus', '?')} logical "
        f"CPUs, load average {m['loadavg'][0]:.2f} at the start and "
        f"{data['loadavg_end'][0]:.2f} at the end; q = {first['q']}, {first['reps']} "
        f"repetitions of {first['number']} steps; *threads*: torch intra-op threads.",
        md_table(["MLP", "threads", "malloc", "objective", "faults per step", "step (IQR)",
                  "speed-up vs closure (IQR)", "max |param diff| vs closure"], rows),
        "The last column is the largest parameter difference from the closure path after "
        "the timed steps: the paths query the same directions, but float32 rounding differs "
        "between a vectorised and a plain forward pass, and Adam's normalised step turns it "
        "into up to 2 lr = 0.002 on coordinates whose estimate is near zero.",
        f"Total time {data['elapsed_s']:.0f} s.", level=1))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.perf.batched_mlp",
                                 description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--q", type=int, default=20)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--number", type=int, default=10, help="back-to-back steps per repetition")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--malloc", nargs="+", choices=["default", "kept"],
                    default=["default", "kept"],
                    help="glibc malloc as is, then after torchzo.cpu.keep_freed_memory()")
    ap.add_argument("--quick", action="store_true", help="one size, one thread, 3 repetitions")
    ap.add_argument("--out", default=OUT, help="'' to write nothing")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    sizes, reps, threads, number = ((SIZES[:1], 3, [1], 2) if args.quick
                                    else (SIZES, args.reps, args.threads, args.number))
    data: dict[str, Any] = {
        "benchmark": "batched_mlp", "quick": args.quick, "machine": machine(),
        "command": " ".join(["python -m benchmarks.perf.batched_mlp",
                             *(sys.argv[1:] if argv is None else argv)]),
        "cases": []}
    # Between cases only: nothing is written while a case is timed.
    with Progress(desc="batched_mlp", unit="case") as progress:
        for malloc in malloc_settings(args.malloc):
            for n in threads:
                for size in sizes:
                    data["cases"].append(case(size, args.q, reps, n, number, malloc))
                    progress.update(last=f"batch={size} threads={n} malloc={malloc}")
    return finish(data, start, "batched-mlp", args.out, render)


if __name__ == "__main__":
    main()
