"""What a Gaussian generator of our own would buy.

    python -m research.gaussian_generator [--d 1000000] [--reps 40] [--keys 20] [--out DIR]

The package drew Gaussian directions with torch's ``randn`` when this was written; it has
since adopted this generator's stream (``torchzo/oracle/directions/counter.py``, compiled in
``torchzo/oracle/kernels.c`` without this prototype's hand-written AVX-512 loop). This measures
the prototype, ``research/gaussian_generator.c``, a counter-based Box-Muller (see its header),
compiled with the flags of the package's kernels (AVX-512 where the CPU has it), against
torch's ``randn`` and against the package's own draws.

- *bits*: the vector build against the plain-C definition, at lengths that end mid-block.
- *statistics*: over ``--keys`` keys of ``--d`` numbers each, the z-scores of the mean, the
  variance, the fourth moment and the tail probabilities P(|z| > t), t = 1..4, against their
  N(0, 1) values, summarised by their root mean square (about 1 for a sound generator).
- *fill*: filling d floats, against ``manual_seed`` + ``randn`` and an add pass
  (``torch._foreach_add_``), interleaved, each sample q + 1 calls back to back.
- *step*: a ZO-SGD step (q = 20, free closure) with Gaussian directions drawn by ``randn`` or by
  this generator (the oracle's private direction draw swapped for the step: a what-if, not an
  API), and with Rademacher directions, each as the overhead per query over the add pass.

Writes ``gaussian-generator.json`` and ``.md`` under ``--out`` (default ``docs/benchmarks``).
"""
from __future__ import annotations

import argparse
import ctypes
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import OUT, finish, fmt_time, interleaved_times, machine, spread
from benchmarks._report import md_table, section
from torchzo.optim import ZOSGD
from torchzo.oracle import kernels
from torchzo.oracle.directions import Gaussian
from torchzo.oracle.directions.counter import gaussian_range

SOURCE = Path(__file__).with_suffix(".c")
Q = 20


def build(out_dir: Path, vector: bool) -> tuple[ctypes.CDLL, list[str]]:
    """The generator compiled with the package kernels' flags (their instruction sets where
    ``vector``, none where not), and ``-fno-math-errno`` so that ``sqrtf`` is the instruction."""
    flags = [f for f in kernels._flags() if vector or not f.startswith("-m")]
    flags.append("-fno-math-errno")
    target = out_dir / f"gauss-{'vector' if vector else 'plain'}.so"
    subprocess.run([os.environ.get("CC", "cc"), *flags, "-o", str(target), str(SOURCE)],
                   check=True, capture_output=True, text=True)
    lib = ctypes.CDLL(str(target))
    for name in ("gauss_fill", "gauss_fill_ref"):
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64]
        getattr(lib, name).restype = None
    return lib, flags


def fill(lib: ctypes.CDLL, out: torch.Tensor, key: int, ref: bool = False) -> None:
    if out.dtype is not torch.float32 or not out.is_contiguous() or not out.is_cpu:
        raise ValueError("the prototype fills contiguous CPU float32 tensors")
    (lib.gauss_fill_ref if ref else lib.gauss_fill)(out.data_ptr(), out.numel(), key)


def same_bits(fast: ctypes.CDLL, plain: ctypes.CDLL) -> dict[str, Any]:
    lengths, keys = [1, 31, 32, 33, 1000, 12345, 1_000_003], [0, 12345, 2**64 - 1]
    ok = True
    for n in lengths:
        for key in keys:
            a, b, c = torch.empty(n), torch.empty(n), torch.empty(n)
            fill(fast, a, key)
            fill(fast, b, key, ref=True)
            fill(plain, c, key)
            ok &= torch.equal(a, b) and torch.equal(a, c)
    long, short = torch.empty(5000), torch.empty(1234)
    fill(fast, long, 7)
    fill(fast, short, 7)
    ok &= torch.equal(long[:1234], short)  # entry i depends on (key, i) alone
    return {"lengths": lengths, "keys": keys, "identical": bool(ok)}


def moments(lib: ctypes.CDLL, d: int, keys: int) -> dict[str, Any]:
    """Root mean square, over keys, of each statistic's z-score against N(0, 1)."""
    z: dict[str, list[float]] = {}
    tails = {t: math.erfc(t / math.sqrt(2)) for t in (1, 2, 3, 4)}
    largest = 0.0
    for key in range(keys):
        x = torch.empty(d)
        fill(lib, x, 1000 + key)
        x64 = x.double()
        got = {"mean": (float(x64.mean()), 0.0, 1 / math.sqrt(d)),
               "variance": (float(x64.square().mean()), 1.0, math.sqrt(2 / d)),
               "fourth moment": (float(x64.pow(4).mean()), 3.0, math.sqrt(96 / d))}
        for t, p in tails.items():
            got[f"P(|z| > {t})"] = (float((x64.abs() > t).double().mean()), p,
                                     math.sqrt(p * (1 - p) / d))
        for name, (value, expected, se) in got.items():
            z.setdefault(name, []).append((value - expected) / se)
        largest = max(largest, float(x.abs().max()))
    return {"d": d, "keys": keys, "max_abs": largest,
            "rms_z": {k: math.sqrt(sum(v * v for v in vs) / len(vs)) for k, vs in z.items()}}


@contextmanager
def own_gaussian(lib: ctypes.CDLL) -> Iterator[None]:
    """The oracle's Gaussian draws from the prototype, keyed by each block's seed."""
    original = Gaussian.fill

    def draw(self: Gaussian, block: Any, out: torch.Tensor, seed: int) -> None:
        fill(lib, out, block.seed_for(seed))
    Gaussian.fill = draw  # type: ignore[method-assign]
    try:
        yield
    finally:
        Gaussian.fill = original  # type: ignore[method-assign]


@contextmanager
def torch_randn() -> Iterator[None]:
    """The oracle's Gaussian draws from torch's generator, as the package drew them before it
    adopted a counter-based stream (torchzo.oracle.directions.counter)."""
    original = Gaussian.fill
    generator = torch.Generator()

    def draw(self: Gaussian, block: Any, out: torch.Tensor, seed: int) -> None:
        generator.manual_seed(block.seed_for(seed))
        out.normal_(generator=generator)
    Gaussian.fill = draw  # type: ignore[method-assign]
    try:
        yield
    finally:
        Gaussian.fill = original  # type: ignore[method-assign]


def timings(lib: ctypes.CDLL, d: int, reps: int) -> dict[str, Any]:
    g = torch.Generator()
    z, acc, u = torch.empty(d), torch.zeros(d), torch.randn(d)
    zero = torch.zeros(())

    def randn() -> None:
        g.manual_seed(12345)
        torch.randn(d, generator=g, out=z)

    def step(kind: str, draws: str) -> Callable[[], Any]:
        opt = ZOSGD([torch.nn.Parameter(torch.randn(d))], lr=1e-6, q=Q, seed=0,
                    directions_kind=kind)

        def run() -> Any:
            if draws == "package":
                return opt.step(lambda: zero)
            with own_gaussian(lib) if draws == "prototype" else torch_randn():
                return opt.step(lambda: zero)
        return run

    def looped(fn: Callable[[], Any]) -> Callable[[], None]:
        # A step's passes follow one another on warm caches: so do a sample's (as the
        # overhead benchmark samples its fast contenders), not after another contender's.
        def run() -> None:
            for _ in range(Q + 1):
                fn()
        return run

    contenders: dict[str, Callable[[], Any]] = {
        "add pass": looped(lambda: torch._foreach_add_([acc], [u], alpha=1e-3)),
        "fill: this generator": looped(lambda: fill(lib, z, 12345)),
        "fill: torch randn": looped(randn),
        "fill: the package's": looped(lambda: gaussian_range(12345, 0, z)),
        "step: Gaussian, torch randn": step("gaussian", "randn"),
        "step: Gaussian, this generator": step("gaussian", "prototype"),
        "step: Gaussian, the package's": step("gaussian", "package"),
        "step: Rademacher": step("rademacher", "package")}
    times = interleaved_times(contenders, reps)
    med = {k: spread(v)["median"] / (1 if k.startswith("step") else Q + 1)
           for k, v in times.items()}
    floor = med["add pass"]
    return {"d": d, "q": Q, "reps": reps, "median_s": med,
            "over_add_pass": {k: med[k] / floor for k in med if k.startswith("fill")},
            "per_query_floors": {k: med[k] / (Q + 1) / floor for k in med
                                 if k.startswith("step")}}


def _timing_sections(t: dict[str, Any]) -> list[str]:
    fills = [["add pass", fmt_time(t["median_s"]["add pass"]), "1"]] + [
        [k.removeprefix("fill: "), fmt_time(t["median_s"][k]), f"{v:.3g}"]
        for k, v in t["over_add_pass"].items()]
    steps = [[k.removeprefix("step: "), fmt_time(t["median_s"][k]), f"{v:.3g}"]
             for k, v in t["per_query_floors"].items()]
    return [*section(f"Filling d = {t['d']:.0e} floats",
                     f"Medians of {t['reps']} interleaved repetitions, each sample {Q + 1} calls "
                     "back to back.",
                     md_table(["what", "time", "/ add pass"], fills)),
            *section(f"A ZO-SGD step (q = {t['q']}, free closure, one flat tensor of d = "
                     f"{t['d']:.0e})",
                     "A step's time (its closure costs nothing) over q + 1 add passes of the "
                     "same repetitions, i.e. per query, in add passes.",
                     md_table(["directions", "step", "per query / floor"], steps))]


def render(data: dict[str, Any]) -> str:
    m, s, b = data["machine"], data["statistics"], data["bits"]
    return "\n".join([
        *section("A Gaussian generator of our own: what it would buy",
                 "Written by `python -m research.gaussian_generator` (what each part measures: "
                 "its docstring); the generator is `research/gaussian_generator.c`, the "
                 f"prototype of the package's stream. Machine: {m['cpu']}, "
                 f"{m['logical_cpus']} logical CPUs, torch "
                 f"{m['torch']}, one thread; built with `cc {' '.join(data['flags'])}`; "
                 f"{data['elapsed_s']:.0f} s.",
                 f"Bits: the vector build equals the plain-C definition at lengths "
                 f"{b['lengths']} and a shorter fill is a prefix of a longer one: "
                 f"**{b['identical']}**.", level=1),
        *_timing_sections(data["timings"]),
        *section(f"Statistics ({s['keys']} keys of {s['d']:.0e} numbers)",
                 "Root mean square over the keys of each statistic's z-score against its "
                 "N(0, 1) value (about 1 where the numbers behave like N(0, 1)); largest |z| "
                 f"drawn: {s['max_abs']:.2f}.",
                 md_table(["statistic", "RMS z-score"],
                          [[k, f"{v:.2f}"] for k, v in s["rms_z"].items()]))])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--keys", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--out", default=str(OUT),
                    help="'' to write nothing; by default the docs, which quote the result")
    args = ap.parse_args(argv)
    if args.quick:
        args.d, args.reps, args.keys = 4096, 2, 2
    torch.set_num_threads(1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        fast, flags = build(Path(tmp), vector=True)
        plain, _ = build(Path(tmp), vector=False)
        data: dict[str, Any] = {"machine": machine(), "flags": flags,
                                "bits": same_bits(fast, plain),
                                "statistics": moments(fast, args.d, args.keys),
                                "timings": timings(fast, args.d, args.reps)}
    return finish(data, start, "gaussian-generator", args.out or None, render)


if __name__ == "__main__":
    main()
