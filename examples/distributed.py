"""Share each step's queries across processes: one black box, several workers querying it.

Each query of the loss takes a while (here a sleep stands in for a remote model or a
simulator). With ``distributed=True`` every rank evaluates about 1 / world_size of a step's
queries, the ranks exchange only the loss values, and every rank takes the same step, bit for
bit the step of a single process. Run:

    torchrun --standalone --nproc-per-node 2 examples/distributed.py   # two processes
    python examples/distributed.py                                     # one, same trajectory

Both print the same parameter checksum; the two-process run takes about half the time.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import time

import torch
import torch.distributed as dist
from torch import nn

import torchzo


def make_data(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    return x, (x @ torch.randn(10, generator=g) > 0).long()


def checksum(params: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--delay-ms", type=float, default=20.0, help="time one query takes")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    # Every rank builds the same model, data and optimizer seed.
    torch.manual_seed(0)
    x, y = make_data()
    model = nn.Linear(10, 2)
    opt = torchzo.ZOAdam(model.parameters(), lr=0.05, q=20, seed=0)

    # torchrun sets WORLD_SIZE (and the rendezvous address); plain python runs one process.
    # The process group comes after the optimizer: with torch 2.13 and gloo, the modules torch
    # imports when the first optimizer of a process is built keep a process group that exists
    # then alive past destroy_process_group(), and its threads can then abort the process at
    # exit (docs/getting-started.md, "Several processes").
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if launched:
        dist.init_process_group("gloo")  # "nccl" with one GPU per rank (torch.cuda.set_device)
        opt.distributed = True
    rank = dist.get_rank() if launched else 0

    def closure() -> torch.Tensor:
        time.sleep(args.delay_ms / 1000)  # the black box's latency
        return nn.functional.cross_entropy(model(x), y)

    start = time.perf_counter()
    first = last = float(opt.step(closure))
    for _ in range(args.steps - 1):
        last = float(opt.step(closure))
    seconds = time.perf_counter() - start

    digest = checksum(list(model.parameters()))
    if launched:  # every rank holds the same parameters: gather the checksums to show it
        digests: list[str | None] = [None] * dist.get_world_size()
        dist.all_gather_object(digests, digest)
        assert all(d == digest for d in digests), digests
        dist.destroy_process_group()
    if rank == 0:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        who = f"shared by the {world} processes" if world > 1 else "made by this one process"
        print(f"{world} process(es): loss {first:.4f} -> {last:.4f} in {args.steps} steps, "
              f"{seconds / args.steps * 1000:.0f} ms per step, {opt.queries} queries {who}, "
              f"parameters {digest}")
    return {"first": first, "last": last, "checksum": digest, "seconds": seconds}


if __name__ == "__main__":
    main()
