"""A black-box adversarial attack on a classifier you can only query for scores.

The attacker sees a function from images to class scores, nothing else: no weights, no
gradients. ``torchzo.attack`` searches for a small (l1) perturbation that changes the predicted
class, spending q + 1 queries per step in one batched call. This compares the learned optimizer
shipped for MNIST attacks with ZO-Adam at the same query budget. Run:

    python -m torchzo.datasets fetch mnist            # once: the MNIST files (docs/datasets.md)
    python -m torchzo.tasks.targets --data mnist      # once: trains and caches the target
    python examples/blackbox_attack.py
    python examples/blackbox_attack.py --images 2 --steps 30 --train-limit 2000   # a smoke run

Training the target took 518 s and 612 s in two runs on the project's shared 2-core machine;
it prints its progress. Without a cached target the script trains one itself, for one epoch
(on ``--train-limit`` images). The data folder is ``--root``, else ``$TORCHZO_DATA``, else
the default of ``torchzo.datasets.data_root``.
"""
from __future__ import annotations

import argparse

import torch

import torchzo
from torchzo.datasets import load_mnist
from torchzo.tasks.targets import load_target, train_target


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--root", help="folder holding mnist/ (the original IDX .gz files)")
    ap.add_argument("--train-limit", type=int, help="train images for a target made here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # one image at a time: more threads only add overhead

    try:
        model = load_target("mnist")
    except FileNotFoundError:
        print("no cached target: training one here")
        model = train_target("mnist", epochs=1, root=args.root, limit=args.train_limit,
                             progress=True)[0]
    queries = 0

    @torch.no_grad()
    def black_box(images: torch.Tensor) -> torch.Tensor:  # all the attacker may call
        nonlocal queries
        queries += len(images)
        return model(images)

    x, y = load_mnist("test", args.root)
    right = black_box(x[:500]).argmax(-1) == y[:500]
    picks = right.nonzero().flatten()[: args.images].tolist()
    queries = 0

    optimizers = {"ZOAdam (lr 0.01)": dict(optimizer="ZOAdam", lr=0.01)}
    if "mnist-attack" in torchzo.pretrained.available():
        optimizers["ZOLSTM (mnist-attack)"] = dict(optimizer="ZOLSTM", pretrained="mnist-attack")
    summary = {}
    for name, kwargs in optimizers.items():
        results = [torchzo.attack(black_box, x[i], int(y[i]), steps=args.steps, q=20, seed=i,
                                  **kwargs) for i in picks]
        hits = [r for r in results if r.success]
        summary[name] = {
            "success_rate": len(hits) / len(results),
            "final_loss": sum(r.losses[-1] for r in results) / len(results),
            "l1_distortion": sum(r.distortion for r in hits) / max(1, len(hits)),
            "queries_per_image": results[0].queries,
        }
        s = summary[name]
        print(f"{name:24s} success {100 * s['success_rate']:3.0f}%  mean final loss "
              f"{s['final_loss']:.3f}  l1 distortion {s['l1_distortion']:.2f}  "
              f"{s['queries_per_image']} queries per image")
    print(f"{queries} queries to the black box in all")
    return summary


if __name__ == "__main__":
    main()
