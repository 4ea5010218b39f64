"""Distributed queries (``opt.distributed``): steps with 1 and 2 gloo processes.

    python -m benchmarks.perf.distributed [--q 20] [--steps 5] [--sleep-ms 50]
                                     [--out docs/benchmarks] [--quick]

Sharded steps: ZOAdam steps with 1 process and with 2 gloo processes on this machine (loopback
rendezvous, one torch thread each), on two objectives whose query costs about 50 ms:

- ``sleep``: the closure sleeps (a remote black box: the ranks wait, they do not compute),
- ``mlp``: the cross-entropy of an MLP on a fixed batch (compute-bound: the ranks need a core
  each, and the machine's other jobs compete for them).

Each run takes a warm-up step, then ``--steps`` timed steps, each started after a barrier; the
median step time of rank 0 is reported. The ideal speed-up with ``W`` ranks is ``(q + 1) / (1 +
ceil(q / W))`` (every rank queries f(x) itself). After the steps every rank's parameters are
compared bit for bit with the other rank's and with the single-process run's.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from tools.launch import exit_worker, launch_ranks
from torchzo.optim import ZOAdam

from .._common import (
    OUT,
    finish,
    fmt_spread,
    fmt_time,
    machine,
    sig3,
    spread,
)
from .._report import md_table, paragraphs, section
from .batched_mlp import make_mlp

MODULE = "benchmarks.perf.distributed"


# -- the objectives -------------------------------------------------------------------------------

def _sleep_problem(cfg: dict[str, Any]) -> tuple[list[torch.Tensor], Callable[[], Any]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg["sleep_d"], generator=g).requires_grad_(True)
    target = torch.randn(cfg["sleep_d"], generator=g)
    delay = cfg["sleep_ms"] / 1000

    def closure() -> torch.Tensor:
        time.sleep(delay)
        return ((x - target) ** 2).sum()
    return [x], closure


def _mlp_problem(cfg: dict[str, Any]) -> tuple[list[torch.Tensor], Callable[[], Any]]:
    model, x, y = make_mlp(*cfg["mlp"])
    return list(model.parameters()), lambda: F.cross_entropy(model(x), y)


PROBLEMS = {"sleep": _sleep_problem, "mlp": _mlp_problem}


# -- sharded steps: one process per rank ----------------------------------------------------------

def _worker(out: str, cfg: dict[str, Any], rank: int, world: int) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    if world > 1:
        # A file rendezvous (no port to pick); gloo's connections go over the loopback device.
        dist.init_process_group("gloo", init_method=(Path(out) / f"rendezvous{world}").as_uri(),
                                rank=rank, world_size=world, timeout=timedelta(seconds=300))
    results: dict[str, Any] = {}
    try:
        for case in cfg["cases"]:
            params, closure = PROBLEMS[case](cfg)
            opt = ZOAdam(params, lr=1e-3, q=cfg["q"], seed=0)
            opt.distributed = world > 1
            opt.step(closure)  # warm-up: allocates the optimizer state, warms caches
            query_s = []
            with torch.no_grad():  # as the step calls it: no graph to build
                for _ in range(3):
                    t0 = time.perf_counter()
                    closure()
                    query_s.append(time.perf_counter() - t0)
            times = []
            for _ in range(cfg["steps"]):
                if world > 1:
                    dist.barrier()
                t0 = time.perf_counter()
                opt.step(closure)
                times.append(time.perf_counter() - t0)
            results[case] = {"times_s": times, "query_s": sorted(query_s)[1],
                             "params": [p.detach().clone() for p in params]}
        if world > 1:  # the bare collective of a step's exchange, back to back
            words = torch.zeros(cfg["q"] + 3 * world, dtype=torch.int64)
            lat = []
            for _ in range(60):
                t0 = time.perf_counter()
                dist.all_reduce(words)
                lat.append(time.perf_counter() - t0)
            results["allreduce_s"] = lat[10:]
        torch.save(results, Path(out) / f"world{world}-rank{rank}.pt")
        if world > 1:
            # Tear gloo down together: a rank that leaves while the other still has traffic
            # in flight can abort at exit ("terminate called without an active exception");
            # exit_worker skips the exit code where the rest of those aborts happen.
            dist.barrier()
    finally:
        if world > 1:
            dist.destroy_process_group()


def launch(out: str, cfg: dict[str, Any], world: int, timeout: float) -> list[dict[str, Any]]:
    """Run the cases with ``world`` processes (gloo on loopback); each rank's results."""
    done = launch_ranks(["-m", MODULE, "--worker", out, json.dumps(cfg)], world, timeout)
    for r, p in enumerate(done):
        if p.returncode != 0:
            raise RuntimeError(f"rank {r} of {world} failed:\n{p.stdout[-4000:]}")
    return [torch.load(Path(out) / f"world{world}-rank{r}.pt", weights_only=False)
            for r in range(world)]


def _same_bits(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(
        x.dtype == y.dtype and x.shape == y.shape
        and torch.equal(x.contiguous().view(torch.uint8), y.contiguous().view(torch.uint8))
        for x, y in zip(a, b))


def sharded_cases(cfg: dict[str, Any], worlds: list[int], timeout: float) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as out:
        runs = {}
        for w in worlds:
            print(f"sharded steps: {w} process(es) ...", file=sys.stderr, flush=True)
            runs[w] = launch(out, cfg, w, timeout)
    rows: list[dict[str, Any]] = []
    for case in cfg["cases"]:
        single = runs[1][0][case]
        base = spread(single["times_s"])["median"]
        for w in worlds:
            ranks = [r[case] for r in runs[w]]
            t = spread(ranks[0]["times_s"])
            rows.append({
                "case": case, "world": w, "q": cfg["q"],
                "query_s": spread([r["query_s"] for r in ranks])["median"],
                "step_s": t, "steps_per_s": 1 / t["median"],
                "speedup": base / t["median"],
                # What the step takes beyond its queries on the busiest rank.
                "overhead_s": t["median"] - (1 + math.ceil(cfg["q"] / w)) * spread(
                    [r["query_s"] for r in ranks])["median"],
                "ideal_speedup": (cfg["q"] + 1) / (1 + math.ceil(cfg["q"] / w)),
                "ranks_identical": all(_same_bits(r["params"], ranks[0]["params"])
                                       for r in ranks),
                "equals_single_process": all(_same_bits(r["params"], single["params"])
                                             for r in ranks),
                "bytes_exchanged_per_rank_step": 8 * (cfg["q"] + 3 * w) if w > 1 else 0,
            })
    for w in worlds[1:]:
        rows.append({"case": "allreduce", "world": w,
                     "allreduce_s": spread(runs[w][0]["allreduce_s"])})
    return rows


# -- report ---------------------------------------------------------------------------------------

def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def render(data: dict[str, Any]) -> str:
    m, cfg = data["machine"], data["config"]
    latency = {r["world"]: r["allreduce_s"] for r in data["sharded"] if r["case"] == "allreduce"}
    rows = [[r["case"], r["world"], fmt_time(r["query_s"]), fmt_spread(r["step_s"], fmt_time),
             fmt_time(r["overhead_s"]), sig3(r["steps_per_s"]), f"{r['speedup']:.2f}",
             f"{r['ideal_speedup']:.2f}", _yes(r["ranks_identical"]),
             _yes(r["equals_single_process"]), r["bytes_exchanged_per_rank_step"]]
            for r in data["sharded"] if r["case"] != "allreduce"]
    return "\n".join([
        *section("Distributed queries",
                 f"`{data['command']}` on {m['cpu']} ({m['cpus_usable']} usable CPUs, shared "
                 f"with other jobs: load average {m['loadavg'][0]:.2f} at the start, "
                 f"{data['loadavg_end'][0]:.2f} at the end), torch {m['torch']}, one torch "
                 "thread per process.", level=1),
        *section(f"Sharded steps (ZOAdam, q={cfg['q']}, forward estimator, gloo on loopback)",
                 f"Median of {cfg['steps']} steps after a warm-up step, rank 0's clock, each "
                 "step started after a barrier. *sleep*: the closure sleeps "
                 f"{cfg['sleep_ms']:g} ms (a remote black box), d={cfg['sleep_d']}; *mlp*: the "
                 f"cross-entropy of a {cfg['mlp'][1]}-{cfg['mlp'][2]}-10 MLP on a batch of "
                 f"{cfg['mlp'][0]} (compute-bound, d={data['mlp_d']})."),
        md_table(["case", "processes", "query", "step (IQR)", "beyond queries", "steps/s",
                  "speed-up", "ideal", "ranks bit-identical", "= 1 process, bit for bit",
                  "bytes exchanged / rank / step"], rows),
        *paragraphs(
            "*query*: one closure call after the warm-up step (median of 3, median over "
            "ranks); *beyond queries*: the step time minus the queries of the busiest rank "
            f"(f(x) and ceil({cfg['q']} / processes) others): the exchange, the barrier's skew, "
            "direction sampling and the update. The bare `all_reduce` of the exchange, back to "
            "back: " + ", ".join(f"{fmt_spread(v, fmt_time)} with {w} processes"
                                 for w, v in latency.items())
            + "; within a step it mostly waits for the other rank, whose wake-up on a machine "
            "with more runnable jobs than cores takes milliseconds.",
            "*sleep* shows the scaling when the ranks wait on a black box rather than compute. "
            "*mlp* needs a free core per rank: where the second process makes each query slower "
            "(compare the *query* column), the machine had no idle core to give it, and the "
            "speed-up measures that rather than the sharding.",
            f"Total time {data['elapsed_s']:.0f} s.")])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    ap.add_argument("--q", type=int, default=20)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--sleep-ms", type=float, default=50.0)
    ap.add_argument("--out", default=OUT, help="'' to write nothing")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per launch")
    ap.add_argument("--quick", action="store_true", help="a tiny run (smoke test)")
    ap.add_argument("--worker", nargs=4, metavar=("OUT", "CONFIG", "RANK", "WORLD"),
                    help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.worker:
        out, config, rank, world = args.worker
        _worker(out, json.loads(config), int(rank), int(world))
        exit_worker()
        return None
    argv = sys.argv[1:] if argv is None else argv
    start = time.perf_counter()
    cfg: dict[str, Any] = {
        "q": args.q, "steps": args.steps, "sleep_ms": args.sleep_ms, "sleep_d": 1000,
        "cases": ["sleep", "mlp"],
        # (batch, inputs, hidden): 50 ms (Intel Xeon) to 90 ms (AMD EPYC) per forward pass on
        # one core of the machines these numbers were taken on.
        "mlp": [8192, 512, 768],
    }
    if args.quick:
        cfg.update(q=4, steps=2, sleep_ms=5.0, mlp=[256, 32, 64])
    torch.set_num_threads(1)
    data: dict[str, Any] = {
        "benchmark": "distributed",
        "command": " ".join([f"python -m {MODULE}", *argv]),
        "machine": machine(),
        "config": cfg,
        "mlp_d": sum(p.numel() for p in make_mlp(*cfg["mlp"])[0].parameters()),
    }
    data["sharded"] = sharded_cases(cfg, [1, 2], args.timeout)
    return finish(data, start, "distributed", args.out, render)


if __name__ == "__main__":
    main()
