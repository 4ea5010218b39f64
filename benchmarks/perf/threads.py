"""Torch's intra-op threads on small steps: one thread against the default, quiet and busy.

    python -m benchmarks.perf.threads [--d D ...] [--reps N] [--out DIR] [--quick]

A step of each optimizer (q = 20, forward estimator, a closure that costs a few vector
operations: the optimizer's own work dominates) at each size ``d``, timed with
``torch.set_num_threads(1)`` and with torch's default, interleaved in shuffled rounds; medians.
*Quiet*: nothing else runs. *Busy*: as many other processes spinning in pure Python as the
machine has CPUs less one, standing for the other jobs of a shared machine: a team of threads
then waits at each of torch's parallel regions for a thread that has no core. The ratio is the
default's time over one thread's: above 1, one thread is faster.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from typing import Any

import torch

from .._common import OUT, finish, interleaved_times, machine
from .._report import doc_paragraphs, md_table, section

OPTIMIZERS = ("ZOSGD", "ZOAdam", "ZOLSTM")


def _spin(stop: Any) -> None:
    while not stop.is_set():
        sum(range(10_000))


def _step(name: str, d: int, threads: int) -> Any:
    import torchzo

    g = torch.Generator().manual_seed(0)
    w = torch.randn(d, generator=g)
    target = torch.randn(d, generator=g)
    opt = getattr(torchzo, name)([w], q=20, seed=0, **({} if name == "ZOLSTM" else {"lr": 1e-3}))

    def step() -> None:
        torch.set_num_threads(threads)
        opt.step(lambda: ((w - target) ** 2).sum())
    return step


def measure(sizes: list[int], reps: int, default: int) -> list[dict[str, Any]]:
    rows = []
    for d in sizes:
        for name in OPTIMIZERS:
            contenders = {"one": _step(name, d, 1), "default": _step(name, d, default)}
            times = interleaved_times(contenders, reps, number=3)
            one, dflt = (statistics.median(times[k]) for k in ("one", "default"))
            rows.append({"d": d, "optimizer": name, "one_s": one, "default_s": dflt,
                         "ratio": dflt / one})
    torch.set_num_threads(default)
    return rows


def render(data: dict[str, Any]) -> str:
    m = data["machine"]
    body = []
    for load in ("quiet", "busy"):
        rows = [[r["d"], r["optimizer"], f"{1e3 * r['one_s']:.2f}", f"{1e3 * r['default_s']:.2f}",
                 f"{r['ratio']:.2f}"] for r in data[load]]
        body += [f"## {load.capitalize()}" + (f" ({data['spinners']} spinning processes)"
                                              if load == "busy" else ""), "",
                 md_table(["d", "optimizer", "1 thread (ms)",
                           f"{data['default_threads']} threads (ms)", "default / one"], rows)]
    return "\n".join([*section(
        "Threads on small steps", *doc_paragraphs(__doc__),
        f"`{data['command']}`. Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch "
        f"{m['torch']} (default {data['default_threads']} intra-op threads), load average "
        f"{m['loadavg'][0]:.2f} at the start.", level=1), *body,
        f"Total time {data['elapsed_s']:.0f} s."])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.perf.threads",
                                 description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--d", type=int, nargs="+", default=[100, 10_000, 1_000_000])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="d = 100 and 1e4, 3 rounds")
    ap.add_argument("--out", default=OUT, help="'' to write nothing")
    args = ap.parse_args(argv)
    if args.quick:
        args.d, args.reps = [100, 10_000], 3
    start = time.perf_counter()
    default = torch.get_num_threads()
    data: dict[str, Any] = {
        "benchmark": "threads", "machine": machine(), "default_threads": default,
        "command": " ".join(["python -m benchmarks.perf.threads",
                             *(sys.argv[1:] if argv is None else argv)])}
    data["quiet"] = measure(args.d, args.reps, default)
    spinners = max(1, (os.cpu_count() or 2) - 1)
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    procs = [context.Process(target=_spin, args=(stop,), daemon=True) for _ in range(spinners)]
    for p in procs:
        p.start()
    try:
        data["busy"] = measure(args.d, args.reps, default)
    finally:
        stop.set()
        for p in procs:
            p.join()
    data["spinners"] = spinners
    return finish(data, start, "threads", args.out, render)


if __name__ == "__main__":
    main()
