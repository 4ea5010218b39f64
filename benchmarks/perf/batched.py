"""Batched vs sequential queries on the MNIST attack: the step time of each path.

    python -m benchmarks.perf.batched [--reps N] [--number N] [--q Q ...] [--threads N ...]
                                 [--malloc default|kept ...] [--out DIR] [--quick]

One ZOAdam step on the black-box attack of one 28 x 28 image against the paper's MNIST CNN
(conv 20 - conv 50 - fc 500, channels-last as the attack task loads it; timing does not
depend on its weights, so an untrained copy is used and no data or cached target is needed).
*sequential*: the closure API, the perturbation a parameter and every one of the q + 1
queries one forward pass of one image; *batched*: the same objective as a
:class:`torchzo.Batched` function, all q + 1 images in one forward pass; *batched NCHW*: the
batched path with the model in its default memory layout, which measures what channels-last is
worth; *sequential, oneDNN off*: the closure path with oneDNN switched off and the default
layout, its fastest backend for one image. Repetitions alternate in a shuffled order; each is
the mean of ``--number`` back-to-back steps of one path, as a training loop runs them; medians
and interquartile ranges.

*malloc*: glibc's allocator as it comes, or *kept*: after
:func:`torchzo.cpu.keep_freed_memory`, measured after the default cases in the same process
(the setting lasts for the rest of the process). *faults*: minor page faults per batched step
after the timing. Whether glibc hands a step's freed activations back to the system, to fault
them in again at the next step, depends on what else lives at the top of its heap, so the
default's faults (and their cost) vary with a process's history; *kept* removes them. The last
table runs each path alone in fresh processes, built as a user's script builds it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from torchzo.cpu import keep_freed_memory
from torchzo.optim import ZOAdam
from torchzo.oracle import Batched
from torchzo.progress import Progress
from torchzo.tasks.attack import attack_loss
from torchzo.tasks.targets import for_queries, make_model

from .._common import (
    OUT,
    faults_per_call,
    fmt_spread,
    fmt_time,
    interleaved_times,
    machine,
    malloc_settings,
    minor_faults,
    spread,
    write_results,
)
from .._report import doc_paragraphs, md_table, paragraphs, section

# Switching oneDNN off warns (once) about TF32 on Intel GPUs, which has nothing to do with it.
warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")

PATHS = ("sequential", "batched", "batched NCHW", "sequential, oneDNN off")
CHECK_STEPS = 20


def _one_image(model: torch.nn.Module, image: torch.Tensor, delta: torch.Tensor
               ) -> torch.Tensor:
    return attack_loss(model, image, 3, delta.unsqueeze(0))[0]


def _images(model: torch.nn.Module, image: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    return attack_loss(model, image, 3, X)


def contender(path: str, q: int) -> tuple[Callable[[], Any], torch.Tensor]:
    """One attack step of ``path`` and the perturbation it moves; every path, built in any
    process, starts from the same model, image and optimizer seed."""
    torch.manual_seed(0)
    plain = make_model("mnist").eval()
    # "batched NCHW" keeps the model's default layout, to measure what channels-last (as the
    # attack task loads its targets) is worth.
    # "sequential, oneDNN off" too: torch's own convolution, which beats oneDNN's on one
    # image, is fastest with the default layout.
    net = (plain if path in ("batched NCHW", "sequential, oneDNN off")
           else for_queries(make_model("mnist").eval()))
    net.load_state_dict(plain.state_dict())
    image = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(1))
    delta = torch.zeros(784)
    opt = ZOAdam([delta], lr=0.01, q=q, seed=0)
    if path.startswith("sequential"):
        closure = partial(_one_image, net, image, delta)
        if path == "sequential":
            return partial(opt.step, closure), delta

        def native_step() -> Any:
            with torch.backends.mkldnn.flags(enabled=False):
                return opt.step(closure)

        return native_step, delta
    return partial(opt.step, Batched(partial(_images, net, image))), delta


def _attack(q: int, channels_last: bool = True
            ) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, ZOAdam]:
    """The attack as a user's script sets it up: one model, the image, the perturbation and
    its optimizer."""
    torch.manual_seed(0)
    model = make_model("mnist").eval()
    model = for_queries(model) if channels_last else model
    image = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(1))
    delta = torch.zeros(784)
    return model, image, delta, ZOAdam([delta], lr=0.01, q=q, seed=0)


def _parts(q: int) -> dict[str, Callable[[], Any]]:
    """The batched step in two parts: one call of its objective on q + 1 images, and the
    step with an objective that costs nothing (directions, rows, checks, estimate, update)."""
    net, image, _, opt = _attack(q)
    free = Batched(lambda X: X[:, 0])
    return {"objective only": partial(_images, net, image, torch.zeros(q + 1, 784)),
            "step, free objective": partial(opt.step, free)}


def case(q: int, reps: int, threads: int = 1, number: int = 1, malloc: str = "default"
         ) -> dict[str, Any]:
    torch.set_num_threads(threads)
    steps = {path: contender(path, q)[0] for path in PATHS}
    with torch.no_grad():
        samples = interleaved_times({**steps, **_parts(q)}, reps, number=number)
        faults = {path: faults_per_call(step) for path, step in steps.items()}
        # The same check on fresh copies after a fixed number of steps: the timed copies took
        # different numbers of steps, and rounding differences grow along an attack.
        deltas = {}
        for path in PATHS:
            step, deltas[path] = contender(path, q)
            for _ in range(CHECK_STEPS):
                step()
    seq, bat, nchw, native = (samples[p] for p in PATHS)
    return {"q": q, "threads": threads, "malloc": malloc, "reps": reps, "number": number,
            "step_s": {k: spread(v) for k, v in samples.items()},
            "faults_per_step": faults,
            "speedup": spread([s / b for s, b in zip(seq, bat)]),
            "channels_last_gain": spread([n / b for n, b in zip(nchw, bat)]),
            "speedup_over_native": spread([n / b for n, b in zip(native, bat)]),
            "native_delta_diff": float(
                (deltas["sequential"] - deltas["sequential, oneDNN off"]).abs().max()),
            "max_abs_delta_diff": float((deltas["sequential"] - deltas["batched"]).abs().max()),
            "layout_delta_diff": float((deltas["batched"] - deltas["batched NCHW"]).abs().max()),
            "final_delta": deltas["batched"].tolist()}


def _plain_loop(path: str, malloc: str, q: int, threads: int, steps: int, out: Any) -> None:
    """A fresh process running one path the way a user's script would: the model, one
    optimizer and the objective, then the loop. Reports (seconds per step, faults per step)
    over ``steps`` steps after as many warm-up steps."""
    if malloc == "kept":
        keep_freed_memory()
    torch.set_num_threads(threads)
    # Not contender(): its second (NCHW) model changes the heap's history, and with it whether
    # glibc trims; this is the script a user writes.
    native = path == "sequential, oneDNN off"
    model, image, delta, opt = _attack(q, channels_last=not native)
    objective = (partial(_one_image, model, image, delta) if path.startswith("sequential")
                 else Batched(partial(_images, model, image)))
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=not native):
        for _ in range(steps):  # warm-up, and the heap reaches its steady state
            opt.step(objective)
        before = minor_faults()
        blocks = []  # the median of 10 blocks: robust to a moment of load on a shared machine
        for _ in range(10):
            t0 = time.perf_counter()
            for _ in range(steps // 10):
                opt.step(objective)
            blocks.append((time.perf_counter() - t0) / (steps // 10))
    faults = (minor_faults() - before) / (steps // 10 * 10)
    out.put((statistics.median(blocks), faults))


LOOPS = (("sequential", 1, "default"), ("sequential", 1, "kept"),
         ("sequential, oneDNN off", 1, "default"), ("batched", 2, "default"),
         ("batched", 2, "kept"))


def plain_loops(runs: int, q: int = 20, steps: int = 200) -> dict[str, Any]:
    """Each of ``LOOPS`` (path, threads, malloc) alone in fresh processes, ``runs`` each, taking
    turns: the sequential path on the thread count it is fastest on, the batched on torch's
    default here, with glibc's malloc as it comes and kept. The sequential path runs ``steps``
    steps, the batched ``5 * steps`` (about as long)."""
    ctx = mp.get_context("spawn")
    found: dict[str, list[tuple[float, float]]] = {" ".join(map(str, k)): [] for k in LOOPS}
    for _ in range(runs):
        for (path, threads, malloc), got in zip(LOOPS, found.values()):
            out = ctx.Queue()
            n = steps if path.startswith("sequential") else 5 * steps
            proc = ctx.Process(target=_plain_loop, args=(path, malloc, q, threads, n, out))
            proc.start()
            got.append(out.get(timeout=600))
            proc.join()
    return {"q": q, "steps": steps, "runs": runs,
            "loops": [{"path": path, "threads": threads, "malloc": malloc,
                       "step_s": spread([t for t, _ in got]),
                       "faults_per_step": spread([f for _, f in got])}
                      for (path, threads, malloc), got in zip(LOOPS, found.values())]}


def best_threads(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per q and malloc setting, each path at its own fastest thread count (by median): what a
    user who tunes threads for the path they use gets; then per q, each path at its fastest
    of every setting measured (malloc "any"). Only where more than one case was measured."""
    out = []
    for q in sorted({c["q"] for c in cases}):
        settings = list(dict.fromkeys(c.get("malloc", "default") for c in cases))
        for malloc in settings + (["any"] if len(settings) > 1 else []):
            mine = [c for c in cases if c["q"] == q
                    and malloc in ("any", c.get("malloc", "default"))]
            if len(mine) < 2:
                continue
            seq = min(mine, key=lambda c: c["step_s"]["sequential"]["median"])
            bat = min(mine, key=lambda c: c["step_s"]["batched"]["median"])
            s, b = seq["step_s"]["sequential"]["median"], bat["step_s"]["batched"]["median"]
            out.append({"q": q, "malloc": malloc,
                        "sequential_threads": seq["threads"],
                        "sequential_malloc": seq.get("malloc", "default"), "sequential_s": s,
                        "batched_threads": bat["threads"],
                        "batched_malloc": bat.get("malloc", "default"), "batched_s": b,
                        "speedup": s / b})
            if all("sequential, oneDNN off" in c["step_s"] for c in mine):
                nat = min(mine, key=lambda c: c["step_s"]["sequential, oneDNN off"]["median"])
                n = nat["step_s"]["sequential, oneDNN off"]["median"]
                out[-1].update(native_threads=nat["threads"], native_malloc=nat["malloc"],
                               native_s=n, speedup_over_native=n / b)
    return out


def _ratio(x: float) -> str:
    return f"{x:.2f}"


def _cases_section(data: dict[str, Any]) -> list[str]:
    """Every case's step times, and how far the paths' results are apart."""
    cases, m = data["cases"], data["machine"]
    kept = [c["malloc_delta_diff"] for c in cases
            if c["malloc"] == "kept" and c.get("malloc_delta_diff") is not None]
    rows = [[c["q"], c.get("threads", 1), c.get("malloc", "default"),
             f"{c['faults_per_step']['batched']:.0f}" if "faults_per_step" in c else "-",
             fmt_spread(c["step_s"]["sequential"], fmt_time),
             fmt_spread(c["step_s"]["batched"], fmt_time), fmt_spread(c["speedup"], _ratio),
             fmt_spread(c["channels_last_gain"], _ratio), f"{c['max_abs_delta_diff']:.1e}"]
            for c in cases]
    return section(
        "Batched vs sequential queries: MNIST attack", *doc_paragraphs(__doc__),
        "Written by `python -m benchmarks.perf.batched`"
        + (" (**--quick: not results**)" if data["quick"] else "") + f". Machine: {m['cpu']}, "
        f"torch {m['torch']}, {m.get('logical_cpus', '?')} logical CPUs, load average "
        f"{m['loadavg'][0] if m['loadavg'] else 'n/a'}; *threads*: torch intra-op threads "
        f"for every path; each sample is the mean of {cases[0].get('number', 1)} "
        "back-to-back steps.",
        md_table(["q", "threads", "malloc", "faults", "sequential step (IQR)",
                  "batched step (IQR)", "speed-up: sequential / batched (IQR)",
                  "batched, NCHW / channels-last model (IQR)",
                  f"max |delta| difference after {CHECK_STEPS} steps"], rows),
        "The paths see the same directions; the last column is float32 rounding between "
        f"a batch of images and single images carried through {CHECK_STEPS} of Adam's steps "
        "(fresh copies, not the timed ones). The two layouts end at the same delta up to "
        f"{max(c.get('layout_delta_diff', 0.0) for c in cases):.1e}"
        + ("" if not kept else ", and each path ends at the same delta under both malloc "
           f"settings up to {max(kept):.1e}") + ".", level=1)


def _parts_section(cases: list[dict[str, Any]]) -> list[str]:
    """The batched step split into its objective and the rest."""
    rows = []
    for c in cases:
        med = {k: v["median"] for k, v in c["step_s"].items()}
        if "objective only" in med:
            rows.append([c["q"], c["threads"], c["malloc"], fmt_time(med["batched"]),
                         fmt_time(med["objective only"]), fmt_time(med["step, free objective"]),
                         f"{100 * med['objective only'] / med['batched']:.0f}%"])
    return paragraphs(
        "Where the batched step's time goes: one call of its objective (the forward "
        "pass of q + 1 images and the attack loss) and the same step with an objective "
        "that costs nothing (seeds, directions, query rows, checks, the estimate, Adam's "
        "update), each timed on its own in the same repetitions (medians):",
        md_table(["q", "threads", "malloc", "batched step", "objective only",
                  "step, free objective", "objective share"], rows)) if rows else []


def _native_section(cases: list[dict[str, Any]]) -> list[str]:
    """The closure path on its fastest backend for one image."""
    rows = [[c["q"], c["threads"], c["malloc"], fmt_spread(c["step_s"]["sequential"], fmt_time),
             fmt_spread(c["step_s"]["sequential, oneDNN off"], fmt_time),
             fmt_spread(c["speedup_over_native"], _ratio), f"{c['native_delta_diff']:.1e}"]
            for c in cases if "speedup_over_native" in c]
    return paragraphs(
        "The closure path with oneDNN switched off (`torch.backends.mkldnn.flags("
        "enabled=False)` around the step) and the model in its default layout: torch's own "
        "convolution is faster on one image, so this is the closure path at its fastest "
        "backend; the batched path keeps oneDNN and channels-last, its fastest. The last "
        f"column: the two closure paths' delta after {CHECK_STEPS} steps.",
        md_table(["q", "threads", "malloc", "sequential step (IQR)",
                  "sequential, oneDNN off (IQR)",
                  "speed-up: sequential, oneDNN off / batched (IQR)",
                  "max |delta| difference"], rows)) if rows else []


def _best_section(cases: list[dict[str, Any]]) -> list[str]:
    """Each path at its fastest thread count."""
    def at(b: dict[str, Any], path: str) -> str:
        return f"{fmt_time(b[f'{path}_s'])} ({b[f'{path}_threads']}, {b[f'{path}_malloc']})"

    rows = [[b["q"], b["malloc"], at(b, "sequential"), at(b, "batched"), _ratio(b["speedup"]),
             at(b, "native") if "native_s" in b else "-",
             _ratio(b["speedup_over_native"]) if "native_s" in b else "-"]
            for b in best_threads(cases)]
    return paragraphs(
        "Each path at its own fastest thread count (medians; threads and malloc in "
        "brackets); *any*: at its fastest of every setting measured. One image is too little "
        "work to share between threads: the sequential path gains nothing from a second "
        "one, so it is fastest on one or within noise of it:",
        md_table(["q", "malloc", "sequential step", "batched step",
                  "speed-up: sequential / batched", "sequential, oneDNN off",
                  "speed-up: sequential, oneDNN off / batched"], rows)) if rows else []


def _loops_section(loops: dict[str, Any] | None) -> list[str]:
    """Each path alone in fresh processes."""
    if not loops:
        return []
    by_path = {(lp["path"], lp["malloc"]): lp["step_s"]["median"] for lp in loops["loops"]}
    seq = by_path["sequential", "default"]
    native = by_path.get(("sequential, oneDNN off", "default"))
    rows = [[lp["path"], lp["threads"], lp["malloc"], fmt_spread(lp["step_s"], fmt_time),
             fmt_spread(lp["faults_per_step"], lambda x: f"{x:.0f}"),
             _ratio(seq / lp["step_s"]["median"]),
             "-" if native is None else _ratio(native / lp["step_s"]["median"])]
            for lp in loops["loops"]]
    return paragraphs(
        "Each path alone, as a user's script runs it (model, optimizer, objective, then the "
        f"loop; q = {loops['q']}; {loops['steps']} sequential or {5 * loops['steps']} batched "
        "steps timed in 10 blocks after as many warm-up steps, the median block per process): "
        f"{loops['runs']} fresh processes each, taking turns; medians over the processes "
        "(IQR). Unlike the interleaved cases above, these compare numbers from different "
        "processes, so they carry the machine's process-to-process spread:",
        md_table(["path", "threads", "malloc", "step", "faults per step",
                  "speed-up over the sequential path",
                  "speed-up over the sequential path, oneDNN off"], rows))


def render(data: dict[str, Any]) -> str:
    cases = data["cases"]
    return "\n".join([*_cases_section(data), *_parts_section(cases), *_native_section(cases),
                      *_best_section(cases), *_loops_section(data.get("plain_loops"))])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.perf.batched",
                                 description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--q", type=int, nargs="+", default=[5, 20, 50])
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--number", type=int, default=10, help="back-to-back steps per repetition")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                    help="torch threads; a batch of images can use more than one core")
    ap.add_argument("--malloc", nargs="+", choices=["default", "kept"],
                    default=["default", "kept"],
                    help="glibc malloc as is, then after torchzo.cpu.keep_freed_memory()")
    ap.add_argument("--loops", type=int, default=8,
                    help="fresh processes per path for the plain-loop table (0: none)")
    ap.add_argument("--quick", action="store_true", help="q = 20 only, 3 repetitions")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    qs, reps, threads, number = (([20], 3, [1], 1) if args.quick
                                 else (args.q, args.reps, args.threads, args.number))
    cases = []
    # Between cases only: nothing is written while a case is timed.
    with Progress(desc="batched", unit="case") as progress:
        for malloc in malloc_settings(args.malloc):
            for n in threads:
                for q in qs:
                    cases.append(case(q, reps, n, number, malloc))
                    progress.update(last=f"q={q} threads={n} malloc={malloc}")
    for c in cases:  # malloc changes no bits: the same q and threads end at the same delta
        same = [o for o in cases if (o["q"], o["threads"]) == (c["q"], c["threads"])]
        c["malloc_delta_diff"] = max(
            float((torch.tensor(c["final_delta"]) - torch.tensor(o["final_delta"])).abs().max())
            for o in same)
    for c in cases:
        del c["final_delta"]
    data = {"benchmark": "batched", "quick": args.quick, "machine": machine(), "cases": cases}
    if args.loops:
        data["plain_loops"] = (plain_loops(1, steps=10) if args.quick
                               else plain_loops(args.loops))
    data["best_threads"] = best_threads(data["cases"])
    write_results(args.out, "batched", data, render(data))
    for c in data["cases"]:
        print(f"q={c['q']} threads={c['threads']} malloc={c['malloc']}: "
              f"speed-up {c['speedup']['median']:.2f}")
    return data


if __name__ == "__main__":
    main()
