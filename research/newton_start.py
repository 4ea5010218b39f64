"""Where should the lean rule's distance scale start? A check of a start measured by a probe.

The lean architecture starts its distance scale ``s`` at ``0.01 * rms(x0)``: safe at any d, and
far too small where a model is fine-tuned with minibatches (research/log.md, session 21). The
probe measures instead, at the first step, ``q`` central differences and ``f(x)`` at ten
times the optimizer's own first radius (``0.01 rms(x0)``; at the radius itself float32
rounding swamps the second differences of flat families): ``a_k = (f+ - f-) / (2 mu)`` and
``h_k = (f+ + f- - 2 f0) / mu^2`` along Gaussian ``u_k``. It sets ``s0 = C * s_N`` with the
Newton distance ``s_N = sqrt(d) * rms(a) / mean(h)`` (per coordinate; on ``L/2 |x - x*|^2``
it is the distance ``|x - x*| / sqrt(d)`` exactly; under minibatch noise it is inflated by
the noise in ``a``).

Prototype, not the optimizer: the untrained lean rule runs with ``lr = C * s_N / s0``, which
scales its steps as the measured start would and leaves its radius (which follows ``s``) at
the default; the start is capped at ``rms(x0)`` (``--no-cap``: not) and is the default where
the mean curvature is not positive. Families: the val split and the large-d training
families, 8 instances each, q = 20, 300 steps (the ES validation's protocol). Score: the mean
final log progress floored at 1e-4 (lower is better), and how many instances ended above
their start.

    python -m research.newton_start [--families a,b] [--instances 8] [--c 0.05,0.1,0.2]
        [--no-cap] [--out DIR] [--name STEM]
"""
from __future__ import annotations

import argparse
import math
import time
from typing import Any

import torch

import torchzo
from benchmarks._common import finish, machine
from benchmarks._report import md_table
from benchmarks.generalist.heldout import log_progress, run
from torchzo.learned.arch import LeanConfig
from torchzo.learned.nets import LearnedZO
from torchzo.tasks import Problem
from torchzo.tasks.families import FAMILIES, FAMILY_SPLITS

NAMES = (*FAMILY_SPLITS["val"], "wide-quadratic", "near-optimum", "minibatch-near-optimum")
SEED = 7_000_000  # instances no ES run or benchmark draws


def newton_distance(problem: Problem, seed: int, q: int = 4) -> tuple[float, float]:
    """``(s_N, s0)``: the probe's Newton distance at ``x0`` (on the first step's batch) and the
    lean rule's default start; ``s_N`` is nan where the mean curvature is not positive."""
    cfg = LeanConfig()
    x = problem.x0.detach().float()
    d = x.numel()
    s0 = max(cfg.init_lr * float(x.pow(2).mean().sqrt()), cfg.floor)
    mu = s0  # ten times the first radius: curvature above float32 rounding on most families
    batch = problem.sample_batch(torch.Generator().manual_seed(seed + 1))
    u = torch.randn(q, d, generator=torch.Generator().manual_seed(seed + 2))
    with torch.no_grad():
        f = problem.loss(torch.cat([x[None], x + mu * u, x - mu * u]), batch).double()
    f0, fp, fm = f[0], f[1:q + 1], f[q + 1:]
    a, h = (fp - fm) / (2 * mu), (fp + fm - 2 * f0) / mu ** 2
    hbar = float(h.mean())
    return (math.sqrt(d) * float(a.pow(2).mean().sqrt()) / hbar if hbar > 0 else math.nan), s0


def lean(lr: float) -> Any:
    nets = LearnedZO(arch=LeanConfig())
    return lambda p, s, mu: torchzo.ZOLSTM(p, pretrained=nets, lr=lr, mu=mu, seed=s)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--families", default=",".join(NAMES))
    ap.add_argument("--instances", type=int, default=8)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--c", default="0.05,0.1,0.2")
    ap.add_argument("--no-cap", action="store_true",
                    help="no cap at rms(x0) (which pins a start at x0 = 0 to the floor)")
    ap.add_argument("--out", default="research/results", help="'' to write nothing")
    ap.add_argument("--name", default="newton-start", help="output file stem")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cs = [float(c) for c in args.c.split(",")]
    out: dict[str, Any] = {"command": "python -m research.newton_start " + " ".join(argv or []),
                           "machine": machine(), "families": {}}
    start = time.perf_counter()
    for family in [FAMILIES[name] for name in args.families.split(",")]:
        rows: dict[str, list[float]] = {"default": [], **{f"C={c}": [] for c in cs}}
        ratios = []
        for i in range(args.instances):
            seed = SEED + 1000 * i
            problem = family.instance(torch.Generator().manual_seed(seed))
            s_n, s0 = newton_distance(problem, seed)
            ratios.append(s_n / s0)
            rows["default"].append(log_progress(
                run(problem, lean(1.0), args.steps, seed, args.steps)[0], problem.f_min, 1e-4))
            for c in cs:
                # capped at the parameters' RMS (the lean rule's max_scale); no curvature
                # measured: the default start
                rms = float(problem.x0.float().pow(2).mean().sqrt())
                cap = math.inf if args.no_cap else max(rms, s0)
                lr = min(c * s_n, cap) / s0 if math.isfinite(s_n) else 1.0
                rows[f"C={c}"].append(log_progress(
                    run(problem, lean(lr), args.steps, seed, args.steps)[0], problem.f_min,
                    1e-4))
        summary = {k: {"mean": sum(v) / len(v), "above_start": sum(x > 0 for x in v)}
                   for k, v in rows.items()}
        out["families"][family.name] = {"runs": rows, "summary": summary,
                                        "s_N_over_s0": ratios}
        print(family.name, " ".join(f"{k} {s['mean']:+.2f} ({s['above_start']})"
                                    for k, s in summary.items()),
              f"s_N/s0 median {sorted(ratios)[len(ratios) // 2]:.3g}", flush=True)
    out["seconds"] = round(time.perf_counter() - start)
    return finish(out, start, args.name, args.out, render)


def render(data: dict[str, Any]) -> str:
    """Mean final log progress per family and start (instances above their start)."""
    starts = list(next(iter(data["families"].values()))["summary"])
    table = [[family, *(f"{r['summary'][k]['mean']:+.2f} ({r['summary'][k]['above_start']})"
                        for k in starts)] for family, r in data["families"].items()]
    return "\n".join([
        "# Where the lean rule's distance scale starts: default against a probe", "",
        f"`{data['command'].strip()}`. Mean final log progress floored at 1e-4 (lower is "
        "better); in parentheses the instances that ended above their start.", "",
        md_table(["family", *starts], table)])


if __name__ == "__main__":
    main()
