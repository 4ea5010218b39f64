"""Helpers shared by the benchmarks: the machine they ran on, robust summaries, and output."""
from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from tools import ROOT

__all__ = ["OUT", "faults_per_call", "fmt_spread", "fmt_time", "machine", "malloc_settings",
           "minor_faults", "sig3", "spread", "write_results"]

# Where the benchmarks write by default: the repository's docs, whatever the working directory.
OUT = ROOT / "docs" / "benchmarks"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """What the numbers depend on; the load average shows how busy a shared machine was."""
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpus_usable": len(affinity) if affinity is not None else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def minor_faults() -> int:
    """Minor page faults of this process so far (0 where the platform does not count them)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def faults_per_call(fn: Callable[[], Any], calls: int = 10) -> float:
    """Minor page faults per call of ``fn`` over ``calls`` back-to-back calls."""
    before = minor_faults()
    for _ in range(calls):
        fn()
    return (minor_faults() - before) / calls


def malloc_settings(requested: Sequence[str]) -> Iterator[str]:
    """The malloc settings of ``requested`` ("default", "kept") in the order they can be run.

    "kept" comes last and is entered by calling :func:`torchzo.cpu.keep_freed_memory`, which
    lasts for the rest of the process; it is skipped where malloc is not glibc's.
    """
    from torchzo.cpu import keep_freed_memory

    for malloc in sorted(set(requested), key=["default", "kept"].index):
        if malloc == "kept" and not keep_freed_memory():
            print("malloc is not glibc's: no 'kept' cases", file=sys.stderr)
            continue
        yield malloc


def spread(xs: Sequence[float]) -> dict[str, float]:
    """Median and interquartile range: robust to the outliers a shared machine produces."""
    xs = sorted(xs)
    if len(xs) == 1:
        q1 = q3 = xs[0]
    else:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return {"median": statistics.median(xs), "p25": q1, "p75": q3, "min": xs[0], "max": xs[-1],
            "n": len(xs)}


def fmt_time(seconds: float) -> str:
    us = seconds * 1e6
    if abs(us) < 1000:
        return f"{us:.3g} µs" if abs(us) < 100 else f"{us:.0f} µs"
    return f"{us / 1000:.3g} ms" if abs(us) < 100_000 else f"{us / 1000:.0f} ms"


def sig3(x: float) -> str:
    """Three significant digits, without an exponent for numbers up to 1e6."""
    return f"{x:.3g}" if abs(x) < 1000 or abs(x) >= 1e6 else f"{x:.0f}"


def fmt_spread(s: dict[str, float], fmt: Any = sig3) -> str:
    """``median (p25–p75)``."""
    return f"{fmt(s['median'])} ({fmt(s['p25'])}–{fmt(s['p75'])})"


def write_results(out_dir: str | Path, name: str, data: dict[str, Any],
                  markdown: str) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` under ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / f"{name}.json", out / f"{name}.md"
    js.write_text(json.dumps(data, indent=1) + "\n")
    md.write_text(markdown)
    return js, md


def finish(data: dict[str, Any], start: float, name: str, out_dir: str | Path | None,
           render: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """Close a benchmark run: record the end load and wall time, render, write, print."""
    data["loadavg_end"] = list(os.getloadavg())
    data["elapsed_s"] = time.perf_counter() - start
    markdown = render(data)
    if out_dir:
        for path in write_results(out_dir, name, data, markdown):
            print(f"wrote {path}", file=sys.stderr)
    print(markdown)
    return data


def interleaved_times(contenders: dict[str, Callable[[], Any]], reps: int,
                      seed: int = 0, number: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each contender: one warm-up call each, then ``reps`` rounds that
    call every contender in a shuffled order, so that drifts in machine load hit all.

    A sample is the mean of ``number`` back-to-back calls (as in ``timeit``): a training loop
    repeats one kind of step, and switching kinds costs a cold start (thread pool wake-up,
    caches) that a single call would count in full.
    """
    import random

    for fn in contenders.values():
        fn()
    samples: dict[str, list[float]] = {k: [] for k in contenders}
    order, rng = list(contenders), random.Random(seed)
    for _ in range(reps):
        rng.shuffle(order)
        for k in order:
            fn = contenders[k]
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            samples[k].append((time.perf_counter() - t0) / number)
    return samples


# -- plots: one helper for every benchmark figure -------------------------------------------


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or ``None`` when the ``plot`` extra is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        logging.getLogger("matplotlib").setLevel(logging.WARNING)
        import matplotlib.pyplot as plt
    except ImportError:
        logging.getLogger("benchmarks").warning(
            "matplotlib is not installed (pip install torchzo[plot]): no plots")
        return None
    return plt


def band(ax: Any, steps: Sequence[int], curve: dict[str, Any], label: str, alpha: float = 0.15,
         floor: float | None = None, **kw: Any) -> None:
    """A mean curve with a band of +- one std (``curve["curve_mean"]``, ``curve["curve_std"]``);
    ``floor`` keeps the band's lower edge positive on a log axis."""
    import torch

    mean = torch.tensor(curve["curve_mean"], dtype=torch.float64)
    std = torch.tensor(curve["curve_std"], dtype=torch.float64)
    low = mean - std if floor is None else (mean - std).clamp_min(floor)
    line, = ax.plot(steps, mean, label=label, lw=1.3, **kw)
    ax.fill_between(steps, low, mean + std, color=line.get_color(), alpha=alpha, lw=0)


def save_figure(fig: Any, path: Path) -> str:
    """Write ``fig`` as a PNG; returns the file name (for the markdown)."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path.name
