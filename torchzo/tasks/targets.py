"""Target classifiers for the black-box attack task, trained by the project's own script.

``python -m torchzo.tasks.targets --data mnist`` trains the paper's MNIST CNN (conv 20 - conv
50 - fc 500) deterministically and caches it outside git, under ``$TORCHZO_CACHE`` (default
``~/.cache/torchzo``) as ``targets/mnist.pt`` with its measured test accuracy in
``targets/mnist.json``. The models take images in [0, 1] and normalise inside. It shows its
progress on stderr (batches, loss, time left). Wall times on the project's 2-core machine,
shared with other jobs (so the CPU time was well below them): MNIST, 3 epochs, 518 s in one run
and 612 s in another (371 s of CPU time); CIFAR-10, 30 epochs on the subset, 751 s (340 s of
CPU time).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from ..datasets import load_cifar10_subset, load_mnist
from ..progress import Progress

__all__ = ["cache_dir", "load_target", "make_model", "target_info", "train_target"]

_STATS = {"mnist": ((0.1307,), (0.3081,)),
          "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))}


class _Normalise(nn.Module):
    mean: Tensor
    std: Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def make_model(data: str) -> nn.Module:
    """The target architecture for ``data`` ("mnist": the paper's; "cifar10": a small CNN)."""
    if data == "mnist":
        body = [nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.ReLU(),
                nn.MaxPool2d(2), nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10)]
    elif data == "cifar10":
        # Small on purpose: every attack step queries it q + 1 = 51 times on one CPU core.
        body = [nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                nn.Dropout(0.3), nn.Linear(1024, 128), nn.ReLU(), nn.Linear(128, 10)]
    else:
        raise ValueError(f"data must be 'mnist' or 'cifar10', got {data!r}")
    return nn.Sequential(_Normalise(*_STATS[data]), *body, nn.LogSoftmax(-1))


def _load(data: str, split: str, root: str | Path | None) -> tuple[Tensor, Tensor]:
    return (load_mnist if data == "mnist" else load_cifar10_subset)(split, root)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 1000) -> float:
    model.eval()
    hits = sum(int((model(x[i:i + batch]).argmax(-1) == y[i:i + batch]).sum())
               for i in range(0, len(x), batch))
    return hits / len(x)


def train_target(data: str, epochs: int = 3, seed: int = 0, root: str | Path | None = None,
                 limit: int | None = None, batch: int = 128, lr: float = 1e-3,
                 progress: bool = False) -> tuple[nn.Module, dict]:
    """Train the target for ``data`` with Adam; deterministic for a seed on one thread.

    ``progress``: show batches, epoch, loss and time left on stderr (:mod:`torchzo.progress`).
    """
    torch.manual_seed(seed)
    x, y = _load(data, "train", root)
    if limit:
        x, y = x[:limit], y[:limit]
    model = make_model(data)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    start = time.time()
    batches = -(-len(x) // batch)
    bar = Progress(total=epochs * batches, desc=f"training the {data} target", unit="batch",
                   disable=not progress)
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=order).split(batch):
            images = x[idx]
            if data == "cifar10":  # random horizontal flips: the subset is small
                flip = torch.rand(len(idx), generator=order) < 0.5
                images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            loss = nn.functional.nll_loss(model(images), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.update(epoch=f"{epoch + 1}/{epochs}", loss=float(loss.detach()))
    bar.close()
    xt, yt = _load(data, "test", root)
    arch = ("paper CNN (conv 20 - conv 50 - fc 500)" if data == "mnist"
            else "small CNN (conv 16 - 32 - 64 - fc 128)")
    info = {"data": data, "arch": arch, "epochs": epochs, "seed": seed, "train_images": len(x),
            "test_accuracy": accuracy(model, xt, yt), "test_images": len(xt),
            "seconds": round(time.time() - start, 1), "torch": str(torch.__version__)}
    return model.eval(), info


def cache_dir() -> Path:
    return Path(os.environ.get("TORCHZO_CACHE", Path.home() / ".cache" / "torchzo"))


def load_target(data: str, path: str | Path | None = None) -> nn.Module:
    """A trained target from ``path`` (default: the cache), in eval mode."""
    path = Path(path) if path else cache_dir() / "targets" / f"{data}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no trained {data} target at {path}: train it with "
                                f"'python -m torchzo.tasks.targets --data {data}'")
    model = make_model(data)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return for_queries(model.eval())


def for_queries(model: nn.Module) -> nn.Module:
    """``model`` with channels-last weights: a batched MNIST attack step is faster on the CPU
    with it, with the same result (measured in docs/benchmarks/batched.md)."""
    return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def target_info(data: str, path: str | Path | None = None) -> dict | None:
    """What the training script recorded next to the weights (accuracy, epochs, ...)."""
    path = Path(path) if path else cache_dir() / "targets" / f"{data}.pt"
    meta = Path(f"{path.with_suffix('')}.json")
    return json.loads(meta.read_text()) if meta.is_file() else None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m torchzo.tasks.targets", description=__doc__)
    ap.add_argument("--data", choices=["mnist", "cifar10"], required=True)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", help="data folder (default: TORCHZO_DATA, else the default of "
                    "torchzo.datasets.data_root)")
    ap.add_argument("--out", type=Path, help="weights file (default: the cache)")
    ap.add_argument("--limit", type=int, help="train on the first N images only")
    args = ap.parse_args(argv)
    epochs = args.epochs or (3 if args.data == "mnist" else 30)
    model, info = train_target(args.data, epochs, args.seed, args.root, args.limit,
                               progress=True)
    out = args.out or cache_dir() / "targets" / f"{args.data}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    Path(f"{out.with_suffix('')}.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))
    return info


if __name__ == "__main__":
    main()
