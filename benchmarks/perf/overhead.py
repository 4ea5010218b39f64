"""Per-step overhead and memory of torchzo's optimizers, next to ``torch.optim.Adam``.

    python -m benchmarks.perf.overhead [--dims 1000 100000 1000000] [--q 20] [--reps 80]
                                  [--split-dims D ...] [--out docs/benchmarks] [--quick]

Time: the closure returns a precomputed 0-dim tensor, and the time of ``q + 1`` bare closure
calls, measured in the same repetition, is subtracted, so what is left is the optimizer's own
work (seeds, direction sampling, perturb/restore, accumulation, the update). It is reported as a
ratio to ``torch.optim.Adam.step()`` (``.grad`` pre-filled, default ``foreach``) on the same
shapes, and as a multiple of the memory floor: ``q + 1`` add passes over the d floats (one add
pass and one copy are contenders of the same repetitions). ZOSGD is timed with its default
Gaussian directions, as ``ZOSGD (Rademacher)`` with ``directions_kind="rademacher"``, and as
``ZOSGD (orthogonal)`` with ``directions_kind="orthogonal"``.
Every contender is timed once per repetition, in a shuffled order, so slow phases of a shared
machine hit all of them alike; medians and interquartile ranges over the repetitions are
reported. The oracle's parts are timed the same way, through the library's own objects, to
show where the overhead goes, and every ZO step is split into oracle, update and closure time
for d up to 1e7.

Memory: allocator events recorded by ``torch.profiler`` (``profile_memory=True``) give the peak
of bytes allocated during a step beyond what existed before it; the optimizer state's tensors
and the scratch copies a ZO optimizer keeps give the bytes held between steps. The method is
checked on ``torch.optim.Adam`` (8 bytes/param of state for float32) and against the
resident-set high-water mark of a fresh process at a large ``d``.
"""
from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import random
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from tools.launch import checkout_env
from torchzo import learned
from torchzo.learned import GeneralConfig, LearnedZO
from torchzo.learned.arch import LeanConfig
from torchzo.optim import ZOLSTM, ZOSGD, ZOAdam, ZOSignSGD
from torchzo.oracle import Layout, ParameterBackup, call_closure, kernels

from .._common import OUT, finish, machine, spread
from ._overhead_report import (
    GENERALIST,
    INFERENCE,
    KEY,
    LEAN,
    ORTHOGONAL,
    PARTS,
    RADEMACHER,
    RADEMACHER_TORCH,
    render,
)

__all__ = ["KEY", "PARTS", "main", "render"]

# ZOLSTM with untrained paper-size networks: its cost does not depend on the weights. The
# generalist's architecture likewise, with its query net; the shipped generalist as it runs
# (its bar: at most 3x ZOAdam's overhead); the lean architecture at inference memory beside
# ZOSGD there.
ZO: dict[str, Callable[..., Any]] = {
    "ZOSGD": ZOSGD, RADEMACHER: functools.partial(ZOSGD, directions_kind="rademacher"),
    RADEMACHER_TORCH: functools.partial(ZOSGD, directions_kind="rademacher"),
    ORTHOGONAL: functools.partial(ZOSGD, directions_kind="orthogonal"),
    "ZOSignSGD": ZOSignSGD, "ZOAdam": ZOAdam,
    "ZOLSTM": functools.partial(ZOLSTM, pretrained=LearnedZO()),
    "ZOLSTM (general)": functools.partial(
        ZOLSTM, pretrained=LearnedZO(arch=GeneralConfig(hidden=8))),
    GENERALIST: functools.partial(ZOLSTM, pretrained="generalist"),
    INFERENCE: functools.partial(ZOSGD, memory="inference"),
    LEAN: functools.partial(ZOLSTM, pretrained=LearnedZO(arch=LeanConfig()), memory="inference"),
}
ALL = ["Adam", *ZO]
# Measured for memory only: the timing tables compare the default configurations.
MEMORY_ONLY: dict[str, Callable[..., Any]] = {
    "ZOLSTM (bf16 state)": functools.partial(ZOLSTM, pretrained=LearnedZO(),
                                             state_dtype=torch.bfloat16)}
Shapes = list[tuple[int, ...]]


def model_shapes(d: int, pairs: int = 5) -> Shapes:
    """``d`` split like an MLP: ``pairs`` (weight matrix, bias) tensors, remainder in the last."""
    if d < 4 * pairs:
        raise ValueError(f"d={d} is too small to split into {2 * pairs} tensors")
    size = d // pairs
    h = math.isqrt(size)
    w = (size - h) // h
    shapes: Shapes = [(h, w), (h,)] * pairs
    shapes[-1] = (h + d - pairs * (h * w + h),)
    return shapes


def _params(shapes: Shapes, seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def make_step(name: str, shapes: Shapes, q: int) -> tuple[Callable[[], Any], Any]:
    """A zero-argument step of optimizer ``name`` on fresh parameters, and the optimizer."""
    params = _params(shapes)
    if name == "Adam":
        for p in params:
            p.grad = torch.randn_like(p)
        adam = torch.optim.Adam(params)
        return adam.step, adam
    zero = torch.tensor(0.0)
    opt = {**ZO, **MEMORY_ONLY}[name](params, q=q, seed=0)
    if name == RADEMACHER_TORCH:
        def without_kernels() -> Any:
            with kernels.disabled():
                return opt.step(lambda: zero)
        return without_kernels, opt
    return (lambda: opt.step(lambda: zero)), opt


def _closure_calls(q: int) -> tuple[Callable[[], torch.Tensor], Callable[[], None]]:
    """The free closure, and its q + 1 bare calls (what a step's closure calls cost alone)."""
    zero = torch.tensor(0.0)

    def closure() -> torch.Tensor:
        return zero

    def closure_calls() -> None:
        for _ in range(q + 1):
            closure()

    return closure, closure_calls


def _contenders(shapes: Shapes, q: int) -> dict[str, Callable[[], Any]]:
    closure, closure_calls = _closure_calls(q)
    fns: dict[str, Callable[[], Any]] = {"closure": closure_calls}
    fns.update({name: make_step(name, shapes, q)[0] for name in ALL})

    # The oracle's parts, each repeated as often as one forward-estimator step does it.
    params = _params(shapes, seed=1)
    layout, backup, index = Layout(params), ParameterBackup(params), range(len(params))
    g, u = layout.zeros(), layout.sample(0)
    seeds = range(q)
    fns["wrapper"] = lambda: [call_closure(closure, params, "f(x)") for _ in range(q + 1)]
    fns["directions"] = lambda: [layout.sample(s) for s in seeds]

    def perturb() -> None:
        for _ in seeds:
            backup.perturb(index, u, 1e-3)

    fns["perturb"] = perturb
    fns["accumulate"] = lambda: [torch._foreach_add_(g, u, alpha=0.5) for _ in seeds]
    signs, step_seeds = Layout(params, "rademacher"), list(seeds)
    fns["directions_rademacher"] = lambda: [signs.direction(step_seeds, k) for k in seeds]
    # The memory floor: one add pass over the d floats (the accumulate of one direction), and
    # one copy, on the case's tensors.
    acc, v, dst = layout.zeros(), [t.clone() for t in u], [t.clone() for t in u]
    fns["floor:add"] = lambda: torch._foreach_add_(acc, v, alpha=0.5)
    fns["floor:copy"] = lambda: torch._foreach_copy_(dst, v)
    return fns


def _timed(fn: Callable[[], Any], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def _interleaved(fns: dict[str, Callable[[], Any]], reps: int, min_sample_s: float
                 ) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Seconds per call of each contender, ``reps`` shuffled rounds; and the calls per sample."""
    for fn in fns.values():  # first steps allocate optimizer state and warm caches
        fn()
        fn()
    # Fast contenders are repeated within a sample so timer and scheduler jitter stay small.
    inner = {k: max(1, math.ceil(min_sample_s / min(_timed(f, 1) for _ in range(3))))
             for k, f in fns.items()}
    samples: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    rng = random.Random(0)
    for _ in range(reps):
        rng.shuffle(order)
        gc.collect()
        gc.disable()  # a collection inside one contender's sample would bias it
        try:
            for k in order:
                samples[k].append(_timed(fns[k], inner[k]))
        finally:
            gc.enable()
    return samples, inner


def time_case(shapes: Shapes, q: int, reps: int, min_sample_s: float) -> dict[str, Any]:
    fns = _contenders(shapes, q)
    samples, inner = _interleaved(fns, reps, min_sample_s)

    # Per-repetition differences and ratios pair numbers taken moments apart.
    closure, adam = samples["closure"], samples["Adam"]
    overhead = {n: [s - c for s, c in zip(samples[n], closure)] for n in ZO}
    wrapper = [s - c for s, c in zip(samples["wrapper"], closure)]
    parts = {"wrapper": spread(wrapper), **{k: spread(samples[k]) for k in PARTS[1:]}}
    zosgd = spread(overhead["ZOSGD"])["median"]
    parts["other"] = {"median": zosgd - sum(p["median"] for p in parts.values())}
    parts["directions_rademacher"] = spread(samples["directions_rademacher"])
    floor = [(q + 1) * a for a in samples["floor:add"]]
    return {
        "d": sum(math.prod(s) for s in shapes),
        "shapes": [list(s) for s in shapes],
        "inner_loops": inner,
        "samples_s": samples,
        "time_s": {k: spread(v) for k, v in samples.items()},
        "overhead_s": {n: spread(v) for n, v in overhead.items()},
        "ratio_to_adam": {n: spread([o / a for o, a in zip(v, adam)])
                          for n, v in overhead.items()},
        "per_query_s": {n: spread([o / (q + 1) for o in v]) for n, v in overhead.items()},
        # The floor of a step: q + 1 add passes over the d floats, from the same repetitions.
        "floor_s": {"add": spread(samples["floor:add"]), "copy": spread(samples["floor:copy"]),
                    "step": spread(floor)},
        "over_floor": {n: spread([o / f for o, f in zip(v, floor)]) for n, v in overhead.items()},
        # The learned optimizer's price over the hand-designed one it competes with.
        "zolstm_over_zoadam": spread([a / b for a, b in zip(overhead["ZOLSTM"],
                                                            overhead["ZOAdam"])]),
        "generalist_over_zoadam": spread([a / b for a, b in zip(overhead[GENERALIST],
                                                                overhead["ZOAdam"])]),
        "lean_over_zosgd_inference": spread([a / b for a, b in zip(overhead[LEAN],
                                                                   overhead[INFERENCE])]),
        "zosgd_breakdown_s": parts,
    }


def split_reps(d: int, reps: int) -> int:
    """Fewer repetitions at large d, where one ZOLSTM step takes seconds."""
    return max(5, min(reps, int(2e7 // d)))


def _update(opt: Any, grads: list[torch.Tensor]) -> Callable[[], None]:
    """What ``opt``'s step runs once its estimate is ``grads``: the update rule of each group;
    for ZOLSTM the plan of the step (its QueryRNN's scales, computed ahead, and mix draw) and
    the learned update, the next step's QueryRNN included."""
    if not isinstance(opt, ZOLSTM):
        return functools.partial(opt._update, grads)

    @torch.no_grad()
    def learned_update() -> None:
        params, state, groups = opt._learned_groups()
        weights = opt.nets.weights()
        plan = learned.plan(weights, opt.nets.arch, params, state, groups, opt._parts(),
                            opt._generator)
        opt._update_learned(weights, params, state, groups, plan, grads, None)
    return learned_update


def split_case(d: int, q: int, reps: int, min_sample_s: float) -> dict[str, Any]:
    """One flat tensor of ``d``: each ZO optimizer's step split into closure calls, update
    and oracle (the rest: seeds, directions, perturb/restore, accumulation)."""
    fns: dict[str, Callable[[], Any]] = {"closure": _closure_calls(q)[1]}
    for name in ZO:
        step, opt = make_step(name, [(d,)], q)
        (x,) = opt.param_groups[0]["params"]
        estimate = {x: torch.randn(d, generator=torch.Generator().manual_seed(2))}
        # What a step runs after its estimate (ZOLSTM's next QueryRNN included).
        fns[f"step:{name}"], fns[f"update:{name}"] = step, _update(opt, [estimate[x]])
    samples, _ = _interleaved(fns, reps, min_sample_s)
    closure = samples["closure"]
    out: dict[str, Any] = {"d": d, "reps": reps, "closure_s": spread(closure), "optimizers": {}}
    for name in ZO:
        steps, updates = samples[f"step:{name}"], samples[f"update:{name}"]
        oracle = [s - c - u for s, c, u in zip(steps, closure, updates)]
        out["optimizers"][name] = {
            "step_s": spread(steps), "update_s": spread(updates), "oracle_s": spread(oracle),
            "oracle_share": spread([o / s for o, s in zip(oracle, steps)])}
    return out


def allocations(fn: Callable[[], Any]) -> tuple[int, int]:
    """Peak and net bytes allocated (beyond what existed before) while ``fn`` runs."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # The raw allocator events (+bytes on allocation, -bytes on free) have no public accessor;
    # the aggregated per-op memory columns cannot give a peak.
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak, current


def state_bytes(opt: Any) -> int:
    return sum(v.nbytes for s in opt.state.values() for v in s.values()
               if isinstance(v, torch.Tensor))


def scratch_bytes(opt: Any) -> int:
    """The memory a ZO optimizer keeps between steps for its next parameter copy."""
    scratch = getattr(opt, "_scratch", None)
    return 0 if scratch is None else scratch.nbytes()


def memory_case(name: str, d: int, q: int) -> dict[str, Any]:
    step, opt = make_step(name, [(d,)], q)
    first, steady = allocations(step), allocations(step)
    return {
        "optimizer": name, "d": d,
        "first_step": {"peak_extra_bytes_per_param": first[0] / d,
                       "net_bytes_per_param": first[1] / d},
        "steady_step": {"peak_extra_bytes_per_param": steady[0] / d,
                        "net_bytes_per_param": steady[1] / d},
        "state_bytes_per_param": state_bytes(opt) / d,
        "scratch_bytes_per_param": scratch_bytes(opt) / d,
    }


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def rss_probe(name: str, d: int, q: int) -> dict[str, Any]:
    """Peak resident memory above the baseline during a first and a steady step.

    Meant for a fresh process and a ``d`` whose tensors exceed glibc's largest mmap threshold
    (32 MiB), so every buffer is mapped on allocation and unmapped on free.
    """
    small, _ = make_step(name, [(1000,)], q)
    small()  # load lazily initialised code before the baseline
    small()
    step, _ = make_step(name, [(d,)], q)
    out: dict[str, Any] = {"optimizer": name, "d": d}
    for phase in ("first_step", "steady_step"):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the VmHWM high-water mark (Linux >= 4.0)
        base = _proc_status("VmRSS")
        step()
        out[phase] = {"peak_extra_bytes_per_param": (_proc_status("VmHWM") - base) / d,
                      "net_bytes_per_param": (_proc_status("VmRSS") - base) / d}
    return out


def rss_check(d: int, q: int) -> list[dict[str, Any]]:
    env = checkout_env()
    rows = []
    for name in ALL:
        cmd = [sys.executable, "-m", "benchmarks.perf.overhead", "--rss-probe", name,
               "--q", str(q), "--rss-d", str(d)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        try:
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        except (IndexError, ValueError):
            rows.append({"optimizer": name, "d": d, "error": res.stderr.strip()[-500:]})
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.perf.overhead",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[1000, 100_000, 1_000_000])
    ap.add_argument("--model-dims", type=int, nargs="*", default=[100_000],
                    help="sizes also timed with the model-like layout of ~10 tensors")
    ap.add_argument("--q", type=int, default=20, help="queries per ZO step (forward estimator)")
    ap.add_argument("--reps", type=int, default=80, help="timing repetitions per case")
    ap.add_argument("--min-sample-ms", type=float, default=10.0,
                    help="fast contenders are looped within a sample to last at least this")
    ap.add_argument("--split-dims", type=int, nargs="*",
                    default=[1000, 10_000, 100_000, 1_000_000, 10_000_000],
                    help="sizes of the oracle / update / closure split (one thread)")
    ap.add_argument("--rss-d", type=int, default=10_000_000,
                    help="d of the RSS cross-check of the memory method (0: skip)")
    ap.add_argument("--threads", type=int, nargs="+", default=None,
                    help="torch intra-op thread counts to time (default: 1)")
    ap.add_argument("--out", default=None,
                    help="output folder (default docs/benchmarks; with --quick, none)")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run, writes only with --out")
    ap.add_argument("--rss-probe", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.dims, args.model_dims, args.q, args.reps = [1000], [1000], 4, 3
        args.split_dims = [1000]
        args.min_sample_ms, args.rss_d = 1.0, 0
    elif args.out is None:
        args.out = OUT
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.rss_probe:
        print(json.dumps(rss_probe(args.rss_probe, args.rss_d, args.q)))
        return None
    argv = sys.argv[1:] if argv is None else argv
    start = time.perf_counter()
    data: dict[str, Any] = {
        "benchmark": "overhead",
        "command": " ".join(["python -m benchmarks.perf.overhead", *argv]),
        "machine": machine(),
        "kernels": kernels.info(),
        "config": {"dims": args.dims, "model_dims": args.model_dims, "q": args.q,
                   "estimator": "forward", "reps": args.reps,
                   "min_sample_ms": args.min_sample_ms, "rss_d": args.rss_d,
                   "split_dims": args.split_dims},
        "timing": [],
    }
    default_threads = torch.get_num_threads()
    # One thread by default: torch's CPU Gaussian generator, the oracle's main cost, is serial,
    # and with other jobs on the cores multi-threaded ops mostly time OpenMP barrier stalls.
    threads = args.threads or [1]
    data["config"]["threads"] = threads
    cases: list[tuple[str, int, list[tuple[int, ...]]]] = [("flat", d, [(d,)]) for d in args.dims]
    cases += [("model", d, model_shapes(d)) for d in args.model_dims]
    for layout, d, shapes in cases:
        for t in threads:
            print(f"timing d={d} {layout} threads={t} ...", file=sys.stderr, flush=True)
            torch.set_num_threads(t)
            case = time_case(shapes, args.q, args.reps, args.min_sample_ms / 1000)
            data["timing"].append({"layout": layout, "threads": t, **case})
    torch.set_num_threads(1)
    data["split"] = []
    for d in args.split_dims:
        print(f"split d={d} ...", file=sys.stderr, flush=True)
        data["split"].append(split_case(d, args.q, split_reps(d, args.reps),
                                        args.min_sample_ms / 1000))
    torch.set_num_threads(default_threads)
    mem_dims = sorted(set(args.dims) | ({args.rss_d} if args.rss_d else set()))
    print(f"memory d={mem_dims} ...", file=sys.stderr, flush=True)
    data["memory"] = [memory_case(n, d, args.q) for d in mem_dims
                      for n in [*ALL, *MEMORY_ONLY]]
    data["rss_check"] = rss_check(args.rss_d, args.q) if args.rss_d else []
    return finish(data, start, "overhead", args.out, render)


if __name__ == "__main__":
    main()
