"""Batched vs sequential queries on the MNIST attack: the step time of each path.

    python -m torchzo.benchmarks.batched [--reps N] [--number N] [--q Q ...] [--threads N ...]
                                         [--out DIR] [--quick]

One ZOAdam step on the black-box attack of one 28 x 28 image against the paper's MNIST CNN
(conv 20 - conv 50 - fc 500, channels-last as the attack task loads it; timing does not
depend on its weights, so an untrained copy is used and no data or cached target is needed).
*sequential*: the closure API, the perturbation a parameter and every one of the q + 1
queries one forward pass of one image; *batched*: the same objective as a
:class:`torchzo.Batched` function, all q + 1 images in one forward pass; *batched NCHW*: the
batched path with the model in its default memory layout, which measures what channels-last is
worth. Repetitions alternate in a shuffled order; each is the mean of ``--number`` back-to-back
steps of one path, as a training loop runs them; medians and interquartile ranges.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..optim import ZOAdam
from ..oracle import Batched
from ..tasks.attack import attack_loss
from ..tasks.targets import for_queries, make_model
from ._common import (
    fmt_spread,
    fmt_time,
    interleaved_times,
    machine,
    md_table,
    spread,
    write_results,
)


def _one_image(model: torch.nn.Module, image: torch.Tensor, delta: torch.Tensor
               ) -> torch.Tensor:
    return attack_loss(model, image, 3, delta.unsqueeze(0))[0]


def _images(model: torch.nn.Module, image: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    return attack_loss(model, image, 3, X)


def _contenders(q: int) -> tuple[dict[str, Callable[[], Any]], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    plain = make_model("mnist").eval()
    model = for_queries(make_model("mnist").eval())
    model.load_state_dict(plain.state_dict())
    image = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(1))
    steps: dict[str, Callable[[], Any]] = {}
    deltas: dict[str, torch.Tensor] = {}
    # "batched NCHW": the batched path with the model's default layout, to measure what
    # channels-last (as the attack task loads its targets) is worth.
    for name, net in (("sequential", model), ("batched", model), ("batched NCHW", plain)):
        delta = torch.zeros(784)
        opt = ZOAdam([delta], lr=0.01, q=q, seed=0)
        steps[name] = partial(opt.step, partial(_one_image, net, image, delta)
                              if name == "sequential" else Batched(partial(_images, net, image)))
        deltas[name] = delta
    return steps, deltas


CHECK_STEPS = 20


def case(q: int, reps: int, threads: int = 1, number: int = 1) -> dict[str, Any]:
    torch.set_num_threads(threads)
    steps, deltas = _contenders(q)
    with torch.no_grad():
        samples = interleaved_times(steps, reps, number=number)
        # The same check on fresh copies after a fixed number of steps: the timed copies took
        # different numbers of steps, and rounding differences grow along an attack.
        steps, deltas = _contenders(q)
        for fn in steps.values():
            for _ in range(CHECK_STEPS):
                fn()
    ratios = [s / b for s, b in zip(samples["sequential"], samples["batched"])]
    layout = [n / b for n, b in zip(samples["batched NCHW"], samples["batched"])]
    return {"q": q, "threads": threads, "reps": reps, "number": number,
            "step_s": {k: spread(v) for k, v in samples.items()},
            "speedup": spread(ratios), "channels_last_gain": spread(layout),
            "max_abs_delta_diff": float((deltas["sequential"] - deltas["batched"]).abs().max()),
            "layout_delta_diff": float((deltas["batched"] - deltas["batched NCHW"]).abs().max())}


def best_threads(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per q, each path at its own fastest thread count (by median): what a user who tunes
    threads for the path they use gets. Only for q measured at more than one thread count."""
    out = []
    for q in sorted({c["q"] for c in cases}):
        mine = [c for c in cases if c["q"] == q]
        if len(mine) < 2:
            continue
        seq = min(mine, key=lambda c: c["step_s"]["sequential"]["median"])
        bat = min(mine, key=lambda c: c["step_s"]["batched"]["median"])
        s, b = seq["step_s"]["sequential"]["median"], bat["step_s"]["batched"]["median"]
        out.append({"q": q, "sequential_threads": seq["threads"], "sequential_s": s,
                    "batched_threads": bat["threads"], "batched_s": b, "speedup": s / b})
    return out


def render(data: dict[str, Any]) -> str:
    m = data["machine"]
    best = [[b["q"], f"{fmt_time(b['sequential_s'])} ({b['sequential_threads']})",
             f"{fmt_time(b['batched_s'])} ({b['batched_threads']})", f"{b['speedup']:.2f}"]
            for b in best_threads(data["cases"])]
    rows = [[c["q"], c.get("threads", 1), fmt_spread(c["step_s"]["sequential"], fmt_time),
             fmt_spread(c["step_s"]["batched"], fmt_time),
             fmt_spread(c["speedup"], lambda x: f"{x:.2f}"),
             fmt_spread(c["channels_last_gain"], lambda x: f"{x:.2f}"),
             f"{c['max_abs_delta_diff']:.1e}"]
            for c in data["cases"]]
    return "\n".join([
        "# Batched vs sequential queries: MNIST attack", "",
        (__doc__ or "").split("\n\n", 2)[2].strip().replace("\n", " "), "",
        "Written by `python -m torchzo.benchmarks.batched`"
        + (" (**--quick: not results**)" if data["quick"] else "") + f". Machine: {m['cpu']}, "
        f"torch {m['torch']}, {m.get('logical_cpus', '?')} logical CPUs, load average "
        f"{m['loadavg'][0] if m['loadavg'] else 'n/a'}; *threads*: torch intra-op threads "
        f"for every path; each sample is the mean of {data['cases'][0].get('number', 1)} "
        "back-to-back steps.", "",
        md_table(["q", "threads", "sequential step (IQR)", "batched step (IQR)",
                  "speed-up: sequential / batched (IQR)",
                  "batched, NCHW / channels-last model (IQR)",
                  f"max |delta| difference after {CHECK_STEPS} steps"], rows), "",
        "The paths see the same directions; the last column is float32 rounding between "
        f"a batch of images and single images carried through {CHECK_STEPS} of Adam's steps "
        "(fresh copies, not the timed ones). The two layouts "
        "end at the same delta up to "
        f"{max(c.get('layout_delta_diff', 0.0) for c in data['cases']):.1e}.", "",
        *(["Each path at its own fastest thread count (medians; threads in brackets). One "
           "image is too little work to share between threads, so the sequential path is "
           "fastest on one:", "",
           md_table(["q", "sequential step", "batched step",
                     "speed-up: sequential / batched"], best), ""] if best else [])])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m torchzo.benchmarks.batched",
                                 description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--q", type=int, nargs="+", default=[5, 20, 50])
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--number", type=int, default=10, help="back-to-back steps per repetition")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                    help="torch threads; a batch of images can use more than one core")
    ap.add_argument("--quick", action="store_true", help="q = 20 only, 3 repetitions")
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = ap.parse_args(argv)
    qs, reps, threads, number = (([20], 3, [1], 1) if args.quick
                                 else (args.q, args.reps, args.threads, args.number))
    data = {"benchmark": "batched", "quick": args.quick, "machine": machine(),
            "cases": [case(q, reps, n, number) for n in threads for q in qs]}
    data["best_threads"] = best_threads(data["cases"])
    write_results(args.out, "batched", data, render(data))
    for c in data["cases"]:
        print(f"q={c['q']} threads={c['threads']}: speed-up {c['speedup']['median']:.2f}")
    return data


if __name__ == "__main__":
    main()
