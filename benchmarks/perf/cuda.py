"""The oracle on a GPU, in one run sized for a short loan of one.

    python -m benchmarks.cuda [--dims 1000000 100000000] [--q 20] [--reps 10] [--out DIR]
    python -m benchmarks.cuda --device cpu --quick --no-tests --out /tmp/x   # its smoke test

On a lent GPU machine (its own torch, no install): ``PYTHONUNBUFFERED=1 PYTHONPATH=. python3
-m benchmarks.cuda --out $OUT``, then copy ``cuda.json`` and ``cuda.md`` into
``docs/benchmarks/``. About 5 minutes on an H200 is the aim (the loan is 15 minutes, start-up
included).

Five parts, each recorded whatever the others do:

- *tests*: ``pytest -m cuda`` (the CUDA tests: every optimizer's closure, foreach and batched
  paths agree on the device; the sign words match the CPU kernel's), its exit status and
  summary line.
- *overhead*: one step of ZOSGD (Gaussian and Rademacher directions), ZOAdam and the shipped
  generalist ZOLSTM with a free closure (a precomputed 0-dim tensor on the device), next to
  ``torch.optim.Adam`` and to the memory floor (an add pass, ``torch._foreach_add_``, over
  the d floats), at each ``--dims``. Every sample is bracketed by ``synchronize()``;
  contenders take turns in a shuffled order. A ZO step's losses come back to the host (the
  step checks each), so each query pays a device-to-host sync: that is part of its cost here.
- *attack*: one ZOAdam step of the MNIST attack (the paper's CNN, untrained: timing does not
  depend on its weights) on the device, the closure path against the batched one, and the two
  paths' perturbations after a few steps (the same directions; float rounding apart).
- *nccl*: one process in an NCCL group of one (gloo off a GPU): ZOSGD with ``distributed``
  on against the same optimizer without it, bit for bit, and their step times. A group of
  one rank is the same as off (``torchzo.oracle.distributed.ranks_for``), so this checks that
  the option runs under NCCL, not the exchange: two ranks need two GPUs.
- *finetune*: the 25M-parameter language model of ``benchmarks.perf.finetune`` on the device
  (batch 8 x 128 tokens), three steps of ZOSGD (central, q = 1: MeZO's step) at each memory
  mode: the peak device memory beyond that of the forward passes alone, over the weights'
  bytes (``torch.cuda.max_memory_allocated``; not measured on a CPU), and a step's time over
  its three forward passes'; and whether the device's Gaussian stream (torch ops) has the bits
  of the CPU's (the compiled kernel where it runs).

Writes ``cuda.json`` and ``cuda.md`` under ``--out`` (default ``docs/benchmarks``).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from tools import ROOT
from torchzo.optim import ZOLSTM, ZOSGD, ZOAdam
from torchzo.oracle import Batched
from torchzo.tasks.targets import make_model

from .._common import OUT, finish, fmt_time, interleaved_times, machine, spread
from .._report import md_table, section
from .batched import _images, _one_image

OPTIMIZERS: dict[str, Callable[..., Any]] = {
    "ZOSGD": ZOSGD,
    "ZOSGD (Rademacher)": partial(ZOSGD, directions_kind="rademacher"),
    "ZOAdam": ZOAdam,
    "ZOLSTM (generalist)": partial(ZOLSTM, pretrained="generalist"),
}


def _synced(fn: Callable[[], Any], device: torch.device) -> Callable[[], None]:
    def call() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return call


def run_tests() -> dict[str, Any]:
    """``pytest -m cuda`` in a child process: its exit status and last line."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda",
                           "-p", "no:cacheprovider", "tests"],
                          cwd=ROOT, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    return {"rc": proc.returncode, "summary": lines[-1] if lines else proc.stderr[-300:],
            "seconds": time.perf_counter() - t0}


def _free_step(make: Callable[..., Any], x0: torch.Tensor, q: int, zero: torch.Tensor
               ) -> Callable[[], Any]:
    """A step of a fresh optimizer from ``make`` at ``x0``, with a free closure, run once."""
    opt = make([torch.nn.Parameter(x0.clone())], q=q, seed=0)
    step = partial(opt.step, lambda: zero)
    step()
    return step


def overhead_case(d: int, q: int, reps: int, device: torch.device) -> dict[str, Any]:
    """Step times of each contender at ``d`` (one flat tensor), in seconds per sample."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(d, generator=g).to(device)
    steps: dict[str, Callable[[], Any]] = {}
    adam_p = torch.nn.Parameter(x0.clone())
    adam_p.grad = torch.randn(d, generator=g).to(device)
    steps["Adam"] = torch.optim.Adam([adam_p]).step
    acc, u = torch.zeros(d, device=device), torch.randn(d, generator=g).to(device)
    steps["add pass"] = partial(torch._foreach_add_, [acc], [u], alpha=1e-3)
    zero = torch.zeros((), device=device)
    skipped: dict[str, str] = {}
    for name, make in OPTIMIZERS.items():
        try:  # at d = 1e8 a learned optimizer's per-coordinate state may not fit: say so
            steps[name] = _free_step(make, x0, q, zero)
        except torch.cuda.OutOfMemoryError as err:
            skipped[name] = f"out of memory: {str(err).splitlines()[0]}"
            torch.cuda.empty_cache()
    times = interleaved_times({k: _synced(f, device) for k, f in steps.items()}, reps)
    med = {k: spread(v)["median"] for k, v in times.items()}
    floor = med["add pass"]
    timed = [k for k in OPTIMIZERS if k in med]
    return {"d": d, "median_s": med, "skipped": skipped,
            "per_query_floors": {k: med[k] / (q + 1) / floor for k in timed},
            "over_adam": {k: med[k] / med["Adam"] for k in timed}}


def attack_case(q: int, reps: int, device: torch.device, check_steps: int) -> dict[str, Any]:
    """The MNIST attack's ZOAdam step on ``device``: closure path against batched path."""
    torch.manual_seed(0)
    net = make_model("mnist").eval().to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    image = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(1)).to(device)
    batched_fn = Batched(partial(_images, net, image))
    deltas, steps = {}, {}
    for path in ("sequential", "batched"):
        delta = torch.zeros(784, device=device)
        opt = ZOAdam([delta], lr=0.01, q=q, seed=0)
        objective: Any = partial(_one_image, net, image, delta) if path == "sequential" \
            else batched_fn
        for _ in range(check_steps):
            opt.step(objective)
        deltas[path] = delta.detach().cpu()
        steps[path] = partial(opt.step, objective)
    times = interleaved_times({k: _synced(f, device) for k, f in steps.items()}, reps)
    med = {k: spread(v)["median"] for k, v in times.items()}
    return {"q": q, "median_s": med, "speedup": med["sequential"] / med["batched"],
            "max_delta_difference": float((deltas["sequential"] - deltas["batched"])
                                          .abs().max())}


def nccl_case(d: int, q: int, steps: int, device: torch.device) -> dict[str, Any]:
    """One process in a group of one: ``distributed`` on against off, bit for bit."""
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group(backend, init_method=(Path(tmp) / "rendezvous").as_uri(),
                                rank=0, world_size=1)
        try:
            target = torch.randn(d, generator=torch.Generator().manual_seed(2)).to(device)
            runs, timed = {}, {}
            for name, on in (("one process", False), ("NCCL group of one", True)):
                p = torch.nn.Parameter(torch.zeros(d, device=device))
                opt = ZOSGD([p], lr=1e-3, q=q, seed=0)
                opt.distributed = on

                def closure(p: torch.Tensor = p) -> torch.Tensor:
                    return (p - target).square().sum()
                for _ in range(steps):
                    opt.step(closure)
                runs[name] = p.detach().cpu().clone()
                timed[name] = partial(opt.step, closure)
            times = interleaved_times({k: _synced(f, device) for k, f in timed.items()}, 5)
        finally:
            dist.destroy_process_group()
    return {"backend": backend, "d": d, "steps": steps,
            "bit_identical": bool(torch.equal(runs["one process"], runs["NCCL group of one"])),
            "median_s": {k: spread(v)["median"] for k, v in times.items()}}


def finetune_case(device: torch.device, quick: bool) -> dict[str, Any]:
    from torchzo.oracle.directions.counter import gaussian_range

    from .finetune import BATCH, TOKENS, TinyLM

    torch.manual_seed(0)
    lm = (TinyLM(vocab=64, width=32, layers=1, heads=2) if quick else TinyLM()).to(device).eval()
    tokens = torch.randint(0, lm.vocab, (BATCH, TOKENS + 1), device=device)
    weights = sum(p.numel() * p.element_size() for p in lm.parameters())
    cuda = device.type == "cuda"

    def loss() -> torch.Tensor:
        return lm.loss(tokens)

    def peak() -> int | None:
        return torch.cuda.max_memory_allocated(device) if cuda else None

    out: dict[str, Any] = {"params": sum(p.numel() for p in lm.parameters()), "modes": {}}
    for memory in ("exact", "inference"):
        opt = ZOSGD(lm.parameters(), lr=1e-6, q=1, estimator="central", seed=0, memory=memory)
        with torch.no_grad():
            loss()
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            forward = spread(interleaved_times({"f": _synced(loss, device)}, 3)["f"])["median"]
        base = peak()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        times = interleaved_times({"step": _synced(partial(opt.step, loss), device)}, 3)
        top = peak()
        out["modes"][memory] = {
            "step_over_forwards": spread(times["step"])["median"] / (3 * forward),
            "extra_peak_fraction": None if top is None or base is None
            else (top - base) / weights}
    got = torch.empty(100_003, device=device)
    gaussian_range(123, 7, got)
    want = torch.empty(100_003)
    gaussian_range(123, 7, want)
    out["gaussian_bits_match_cpu"] = bool(torch.equal(got.cpu().view(torch.int32),
                                                      want.view(torch.int32)))
    return out


def _overhead_section(data: dict[str, Any]) -> list[str]:
    rows = []
    for c in data["overhead"]:
        med = c["median_s"]
        rows += [[f"{c['d']:.0e}", name, why, "", "", "", ""]
                 for name, why in c["skipped"].items()]
        rows += [[f"{c['d']:.0e}", name, fmt_time(med[name]), fmt_time(med["Adam"]),
                  fmt_time(med["add pass"]), f"{c['over_adam'][name]:.3g}",
                  f"{c['per_query_floors'][name]:.3g}"] for name in c["over_adam"]]
    return section(
        "Step overhead (free closure, one flat tensor)",
        f"q = {data['q']}, forward estimator; medians over {data['reps']} interleaved "
        "repetitions. *per query / floor*: the step over q + 1 add passes.",
        md_table(["d", "optimizer", "step", "Adam step", "add pass", "step / Adam",
                  "per query / floor"], rows))


def render(data: dict[str, Any]) -> str:
    m, t, a, n = data["machine"], data.get("tests"), data["attack"], data["nccl"]
    tests = [] if t is None else [
        f"CUDA tests (`pytest -m cuda`): exit status {t['rc']}, `{t['summary']}`."]
    return "\n".join([
        *section("The oracle on a GPU",
                 "Written by `python -m benchmarks.cuda` (see its docstring for what each part "
                 f"measures). Device: {data['device_name']}; torch {m['torch']}; host CPU "
                 f"{m['cpu']}, {m['logical_cpus']} logical CPUs; {data['elapsed_s']:.0f} s.",
                 *tests, level=1),
        *_overhead_section(data),
        *section("MNIST attack, ZOAdam", md_table(
            ["q", "sequential step", "batched step", "speed-up",
             f"max |delta| difference after {data['check_steps']} steps"],
            [[str(a["q"]), fmt_time(a["median_s"]["sequential"]),
              fmt_time(a["median_s"]["batched"]), f"{a['speedup']:.3g}",
              f"{a['max_delta_difference']:.1e}"]])),
        *section("One process in a process group",
                 "A group of one rank is the same as `distributed` off: this checks that the "
                 "option runs under the backend, not the exchange of queries.",
                 md_table(["backend", "d", "bit-identical after steps", "step, off", "step, on"],
                          [[n["backend"], str(n["d"]), f"{n['bit_identical']} ({n['steps']})",
                            fmt_time(n["median_s"]["one process"]),
                            fmt_time(n["median_s"]["NCCL group of one"])]])),
        *_finetune_section(data.get("finetune"))])


def _finetune_section(f: dict[str, Any] | None) -> list[str]:
    if f is None:  # a run from before this part existed
        return []
    rows = [[mode, "not measured" if r["extra_peak_fraction"] is None
             else f"{100 * r['extra_peak_fraction']:.1f} %", f"{r['step_over_forwards']:.2f}"]
            for mode, r in f["modes"].items()]
    return section("Fine-tuning: MeZO's step at each memory mode",
                   f"{f['params'] / 1e6:.1f}M parameters; the device's Gaussian stream has the "
                   f"CPU's bits: {f['gaussian_bits_match_cpu']}.",
                   md_table(["memory", "extra peak / weights", "step / forwards"], rows))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dims", type=int, nargs="+", default=[1_000_000, 100_000_000])
    ap.add_argument("--q", type=int, default=20)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--no-tests", action="store_true", help="skip pytest -m cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--out", default=str(OUT), help="'' to write nothing")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu for the smoke test")
    if args.quick:
        args.dims, args.reps = [1000], 2
    start = time.perf_counter()
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    data: dict[str, Any] = {
        "machine": machine(), "q": args.q, "reps": args.reps, "check_steps": 3,
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else "CPU"),
        "tests": None if args.no_tests else run_tests()}
    print(f"tests: {data['tests']}", file=sys.stderr)
    data["overhead"] = [overhead_case(d, args.q, args.reps, device) for d in args.dims]
    data["attack"] = attack_case(args.q, 3 if args.quick else 5 * args.reps, device,
                                 data["check_steps"])
    data["nccl"] = nccl_case(1000 if args.quick else 1_000_000, args.q, 3, device)
    data["finetune"] = finetune_case(device, args.quick)
    return finish(data, start, "cuda", args.out or None, render)


if __name__ == "__main__":
    main()
