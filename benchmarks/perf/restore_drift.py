"""How far ``memory="inference"`` moves parameters that no update moves: restoring by rounding.

    python -m benchmarks.perf.restore_drift [--d N] [--steps N ...] [--out DIR] [--quick]

At inference memory a query moves the parameters to ``x + mu u`` in place and back by adding
``-mu u`` (both computed in float32 and rounded once to the parameters' dtype), so that the
parameters come back to rounding, not bit for bit. This runs ZO-SGD with ``lr = 0`` (its
update adds exactly zero), the forward and central estimators at q = 4, the dtype's default
``mu`` (1e-3 in float32, 1e-1 in bfloat16 and float16) and MeZO's 1e-3, on ``--d``
parameters drawn from N(0, 1), and reports after each number of steps how far the parameters
are from where they started: the share of entries that changed, and the root-mean-square
and the largest change relative to the parameters' root-mean-square, in units of the dtype's
machine epsilon (one ulp of a typical entry is 0.5 to 1 of them). The exact mode changes
nothing (checked in the same run).
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

import torchzo
from torchzo.progress import Progress

from .._common import OUT, finish, machine
from .._report import doc_paragraphs, md_table, section

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def drift(dtype: torch.dtype, kind: str, estimator: str, d: int, checkpoints: list[int],
          mu: float | None = None, memory: str = "inference") -> list[dict[str, Any]]:
    x0 = torch.randn(d, generator=torch.Generator().manual_seed(0)).to(dtype)
    x = x0.clone()
    opt = torchzo.ZOSGD([x], lr=0.0, q=4, mu=mu, estimator=estimator, directions_kind=kind,
                        seed=0, memory=memory)
    eps = torch.finfo(dtype).eps
    out, done = [], 0
    for n in sorted(checkpoints):
        for _ in range(n - done):
            opt.step(lambda: (x.float() ** 2).sum())
        done = n
        change = (x.double() - x0.double()).abs() / x0.double().pow(2).mean().sqrt()
        out.append({"steps": n, "changed": float((x != x0).double().mean()),
                    "max_rel_eps": float(change.max()) / eps,
                    "rms_rel_eps": float(change.pow(2).mean().sqrt()) / eps})
    return out


def render(data: dict[str, Any]) -> str:
    m = data["machine"]
    rows = [[c["dtype"], c["mu"], c["kind"], c["estimator"], r["steps"],
             f"{100 * r['changed']:.2f} %", f"{r['rms_rel_eps']:.3g}", f"{r['max_rel_eps']:.3g}"]
            for c in data["cases"] for r in c["drift"]]
    return "\n".join(section(
        "Inference memory: the drift of restoring by rounding", *doc_paragraphs(__doc__),
        f"`{data['command']}`" + (" (**--quick: not results**)" if data["quick"] else "")
        + f". Machine: {m['cpu']}, torch {m['torch']}; d = {data['d']}. Exact mode after the "
        f"most steps, every dtype: {'unchanged' if data['exact_unchanged'] else 'CHANGED'}.",
        md_table(["dtype", "mu", "directions", "estimator", "steps", "entries changed",
                  "RMS change / eps", "largest change / eps"], rows),
        f"Total time {data['elapsed_s']:.0f} s.", level=1))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.perf.restore_drift",
                                 description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--d", type=int, default=100_000)
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 10, 100, 1000])
    ap.add_argument("--quick", action="store_true", help="d = 1000, 1 and 10 steps")
    ap.add_argument("--out", default=OUT, help="'' to write nothing")
    args = ap.parse_args(argv)
    if args.quick:
        args.d, args.steps = 1000, [1, 10]
    start = time.perf_counter()
    data: dict[str, Any] = {
        "benchmark": "restore_drift", "quick": args.quick, "machine": machine(), "d": args.d,
        "command": " ".join(["python -m benchmarks.perf.restore_drift",
                             *(sys.argv[1:] if argv is None else argv)]), "cases": []}
    cases = [(name, mu, kind, est) for name in DTYPES
             for mu in ((None,) if name == "float32" else (None, 1e-3))
             for kind in ("gaussian", "rademacher") for est in ("forward", "central")]
    with Progress(desc="restore_drift", unit="case", total=len(cases)) as progress:
        for name, mu, kind, est in cases:
            found = drift(DTYPES[name], kind, est, args.d, args.steps, mu)
            data["cases"].append({"dtype": name, "mu": mu or "default", "kind": kind,
                                  "estimator": est, "drift": found})
            progress.update(last=f"{name} {kind} {est}")
    data["exact_unchanged"] = all(
        drift(dtype, "gaussian", "central", args.d, [max(args.steps)], memory="exact")[0][
            "changed"] == 0 for dtype in DTYPES.values())
    return finish(data, start, "restore-drift", args.out, render)


if __name__ == "__main__":
    main()
