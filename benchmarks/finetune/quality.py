"""Fine-tuning quality: zeroth-order methods against first-order Adam on a small pretrained LM.

    python -m benchmarks.finetune.quality [--budget N] [--seeds N] [--model 128x2]
        [--lean WEIGHTS] [--methods PREFIXES] [--name STEM] [--out DIR] [--quick]

A byte-level causal transformer (``benchmarks.perf.finetune.TinyLM``: 2 layers, width 128,
context 128; ``--model WIDTHxLAYERS`` for another size) is pretrained with backprop (AdamW)
on the Python standard library's top-level modules named a to m (cached under
``cache/finetune/``), then fine-tuned on two tasks it did not see:

- *text*: the ``email`` package's source, language modelling; scored by the loss (nats per
  byte) on held-out files of that package;
- *kind*: MeZO's protocol, a classification phrased as a prompt with the loss on the label
  word: ``"<name> is a"`` followed by ``" d"`` (defined by ``def``) or ``" c"`` (by
  ``class``), names taken from the modules named n to z; scored by the accuracy of the label
  the model prefers on held-out names.

Every zeroth-order method runs at inference memory with the same budget of ``--budget`` forward
passes (``f(x)`` included where queried) on batches of 16; a first-order Adam run gets a third
of it in steps (a backward pass costs about two forward passes). Each method's learning rate is
tuned by ``benchmarks._tuning.tune_step`` on a validation split's loss (seed 0), then it runs
``--seeds`` seeds at that rate; MeZO's algorithm (ZO-SGD, central, q = 1, two forward passes a
step: ``loss_at_x=False``) also at half and twice its best rate. The learned default
(``ZOLSTM()``) runs untuned (``lr = 1``, as trained) in the exact memory mode, which is all it
has; lean learned weights (``--lean``) run untuned at inference memory.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import re
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import torchzo

from .._common import OUT, finish, machine
from .._report import doc_paragraphs, md_table, section
from .._tuning import Grid, tune_step
from ..perf.finetune import TinyLM
from ..weights import resolve

CACHE = Path(__file__).resolve().parents[2] / "cache" / "finetune"
CONTEXT, BATCH = 128, 16
GRID = Grid(coarse=(1e-4, 1e-3, 1e-2, 1e-1), per_decade=2, max_extend=3, bounds=(1e-7, 10.0))


def _files(pattern: str) -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.glob(pattern) if p.is_file())


def corpus() -> dict[str, Any]:
    """The texts (bytes) and the kind task's (name, label) pairs, with their digest."""
    first = [p for p in _files("*.py") if p.name[0] <= "m"]
    email = _files("email/*.py")
    # The kind task's names: every other module (packages included, tests not), unseen.
    later = [p for p in _files("**/*.py") if p not in first and p not in email
             and not {"test", "tests", "site-packages", "dist-packages"} & set(p.parts)]
    found = {(m.group(2), b"d" if m.group(1) == b"def" else b"c")
             for p in later for m in re.finditer(rb"^[ \t]*(def|class) (\w{3,24})\b",
                                                 p.read_bytes(), re.M)}
    # As many of each label: the first names of each, in sorted order.
    by_label = {lab: sorted(n for n, b in found if b == lab) for lab in (b"d", b"c")}
    n = min(len(v) for v in by_label.values())
    pairs = sorted((name, lab) for lab, names in by_label.items() for name in names[:n])
    digest = hashlib.sha256()
    for p in [*first, *later, *email]:
        digest.update(p.read_bytes())
    return {"pretrain": b"\n".join(p.read_bytes() for p in first),
            "text_train": b"\n".join(p.read_bytes() for p in email[::2]),
            "text_test": b"\n".join(p.read_bytes() for p in email[1::2]),
            "pairs": pairs, "sha256": digest.hexdigest()[:16],
            "python": sys.version.split()[0]}


def _windows(text: bytes, n: int, g: torch.Generator) -> torch.Tensor:
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    starts = torch.randint(0, len(data) - CONTEXT - 1, (n,), generator=g)
    return torch.stack([data[s:s + CONTEXT + 1] for s in starts.tolist()])


#: The model's (width, layers); the quick run's is tiny.
Arch = tuple[int, int]


def lm(arch: Arch) -> TinyLM:
    return TinyLM(vocab=256, width=arch[0], layers=arch[1], heads=4, context=CONTEXT)


def pretrained(data: dict[str, Any], steps: int, arch: Arch) -> dict[str, Any]:
    """The pretrained weights, from the cache or trained now (AdamW, seed 0)."""
    path = CACHE / f"lm-{data['sha256']}-{arch[0]}x{arch[1]}-{steps}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    torch.manual_seed(0)
    model = lm(arch)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 3e-3 * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(
                math.pi * step / steps))
        loss = model.loss(_windows(data["pretrain"], 32, g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.state_dict()


def kind_batch(pairs: list[tuple[bytes, bytes]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts ``"<name> is a "`` right-aligned in 32 bytes (spaces before), and labels."""
    rows = [(b" " * 32 + b"\n" + name + b" is a ")[-32:] for name, _ in pairs]
    prompts = torch.tensor([list(r) for r in rows])
    return prompts, torch.tensor([lab[0] for _, lab in pairs])


def kind_loss(model: TinyLM, prompts: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(prompts)[:, -1], labels)


def kind_accuracy(model: TinyLM, prompts: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(prompts)[:, -1, [ord("d"), ord("c")]]
    return float((torch.tensor([ord("d"), ord("c")])[logits.argmax(1)] == labels).double().mean())


class Task:
    """A fine-tuning task: batches by step, a validation score and a test score."""

    def __init__(self, name: str, data: dict[str, Any]) -> None:
        self.name = name
        self.val: Any
        self.test: Any
        g = torch.Generator().manual_seed(123)
        if name == "text":
            self.train = data["text_train"]
            self.val = _windows(data["text_train"], 64, g)
            self.test = _windows(data["text_test"], 256, g)
        else:
            pairs = [data["pairs"][i] for i in torch.randperm(len(data["pairs"]), generator=g)]
            self.pairs, self.val, self.test = pairs[:-900], kind_batch(pairs[-900:-600]), \
                kind_batch(pairs[-600:])

    def batch(self, g: torch.Generator) -> Any:
        if self.name == "text":
            return _windows(self.train, BATCH, g)
        idx = torch.randint(0, len(self.pairs), (BATCH,), generator=g).tolist()
        return kind_batch([self.pairs[i] for i in idx])

    def loss(self, model: TinyLM, batch: Any) -> torch.Tensor:
        return model.loss(batch) if self.name == "text" else kind_loss(model, *batch)

    def score(self, model: TinyLM, split: str) -> float:
        """Lower is better: the loss (validation, and the text task's test), or 1 - accuracy
        (the kind task's test)."""
        batch = self.val if split == "val" else self.test
        if self.name == "kind" and split == "test":
            return 1 - kind_accuracy(model, *batch)
        with torch.no_grad():
            return float(self.loss(model, batch))


METHODS: dict[str, Callable[..., Any]] = {
    "MeZO (ZO-SGD, central, q = 1)": lambda p, lr, s: torchzo.ZOSGD(
        p, lr=lr, q=1, mu=1e-3, estimator="central", seed=s, memory="inference",
        loss_at_x=False),
    "ZO-SGD (forward, q = 4)": lambda p, lr, s: torchzo.ZOSGD(
        p, lr=lr, q=4, mu=1e-3, seed=s, memory="inference"),
    "ZO-Adam (forward, q = 4)": lambda p, lr, s: torchzo.ZOAdam(
        p, lr=lr, q=4, mu=1e-3, seed=s, memory="inference"),
    "ZO-LSTM, learned default": lambda p, lr, s: torchzo.ZOLSTM(p, lr=lr, seed=s),
}
#: Learned methods run at lr 1, untuned, as trained.
UNTUNED = ("ZO-LSTM, learned default", "ZO-LSTM lean")


def lean_method(weights: Any) -> Callable[..., Any]:
    """A lean learned optimizer (``--lean``: a weights file, or an ES run folder's best) at
    inference memory, q = 4, no mu: its own radius."""
    nets = resolve(weights)
    return lambda p, lr, s: torchzo.ZOLSTM(p, pretrained=nets, lr=lr, q=4, seed=s,
                                           memory="inference")


def run(task: Task, weights: dict[str, Any], arch: Arch, make: Callable[..., Any] | None,
        lr: float, seed: int, budget: int, split: str) -> float:
    """Fine-tune from ``weights`` within ``budget`` forward passes with the optimizer
    ``make(params, lr, seed)`` (``None``: first-order Adam, a third of the budget in steps);
    the score on ``split`` (infinity where it diverged)."""
    torch.manual_seed(seed)
    model = lm(arch)
    model.load_state_dict(weights)
    model.eval()
    g = torch.Generator().manual_seed(1000 + seed)
    try:
        if make is None:
            opt = torch.optim.Adam(model.parameters(), lr=lr)
            for _ in range(budget // 3):
                loss = task.loss(model, task.batch(g))
                opt.zero_grad()
                loss.backward()
                opt.step()
        else:
            zo = make(list(model.parameters()), lr, seed)
            while zo.queries + zo.queries // max(zo.steps, 1) <= budget:
                batch = task.batch(g)
                zo.step(lambda batch=batch: task.loss(model, batch))
    except (torchzo.optim.NonFiniteUpdateError, torchzo.ClosureError):
        return math.inf
    score = task.score(model, split)
    return score if math.isfinite(score) else math.inf


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.finetune.quality",
                                 description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--budget", type=int, default=1500, help="forward passes per run")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--pretrain-steps", type=int, default=1500)
    ap.add_argument("--quick", action="store_true", help="a tiny model, budget 40, 1 seed")
    ap.add_argument("--out", default=OUT, help="'' to write nothing")
    ap.add_argument("--lean", default=None,
                    help="also run these lean weights (a file, or an ES run folder's best)")
    ap.add_argument("--methods", default=None,
                    help="comma-separated prefixes of the methods to run (default: all)")
    ap.add_argument("--name", default="finetune-quality", help="output file stem")
    ap.add_argument("--model", default="128x2",
                    help="WIDTHxLAYERS of the language model (pretrained once per size)")
    args = ap.parse_args(argv)
    methods = dict(METHODS)
    if args.lean:
        methods["ZO-LSTM lean"] = lean_method(args.lean)
    chosen = [m for m in [*methods, "Adam (first order)"]
              if not args.methods or any(m.startswith(p) for p in args.methods.split(","))]
    start = time.perf_counter()
    torch.set_num_threads(1)
    data = corpus()
    width, layers = (int(v) for v in args.model.split("x"))
    arch, steps = ((32, 1), 20) if args.quick else ((width, layers), args.pretrain_steps)
    budget, seeds = (40, 1) if args.quick else (args.budget, args.seeds)
    weights = pretrained(data, steps, arch)
    out: dict[str, Any] = {
        "benchmark": "finetune_quality", "quick": args.quick, "machine": machine(),
        "command": " ".join(["python -m benchmarks.finetune.quality",
                             *(sys.argv[1:] if argv is None else argv)]),
        "corpus": {"sha256": data["sha256"], "python": data["python"]},
        "budget": budget, "seeds": seeds, "model": f"{arch[0]}x{arch[1]}", "tasks": {}}
    for name in ("text", "kind"):
        task = Task(name, data)
        base = lm(arch)
        base.load_state_dict(weights)
        rows: dict[str, Any] = {"pretrained": task.score(base.eval(), "test")}
        for method in chosen:
            edges: list[str] = []
            if method in UNTUNED:
                best = 1.0
            else:
                cache: dict[float, float] = {}

                def score(lr: float, method: str = method, cache: dict = cache,
                          task: Task = task) -> float:
                    if lr not in cache:
                        cache[lr] = run(task, weights, arch, methods.get(method), lr, 0, budget,
                                        "val")
                    return cache[lr]
                best, edges = tune_step(score, GRID)
            rates = [best] + ([best / 2, best * 2] if method.startswith("MeZO") else [])
            rows[method] = {"lr": best, "edges": edges, "test": {
                f"{lr:.3g}": [run(task, weights, arch, methods.get(method), lr, s, budget,
                                  "test") for s in range(seeds)] for lr in rates}}
        out["tasks"][name] = rows
    return finish(out, start, args.name, args.out, render)


def render(data: dict[str, Any]) -> str:
    m, parts = data["machine"], []
    for name, rows in data["tasks"].items():
        unit = "test loss (nats/byte)" if name == "text" else "test error"
        table = [["pretrained, not fine-tuned", "-", f"{rows['pretrained']:.4f}", "-"]]
        for method, r in rows.items():
            if method == "pretrained":
                continue
            for lr, scores in r["test"].items():
                finite = [s for s in scores if math.isfinite(s)]
                mean = sum(finite) / len(finite) if finite else math.inf
                sd = (sum((s - mean) ** 2 for s in finite) / max(len(finite) - 1, 1)) ** 0.5
                table.append([method, lr + (" (edge)" if r["edges"] else ""),
                              f"{mean:.4f} +- {sd:.4f}", f"{len(scores) - len(finite)}"])
        parts += section(f"Task: {name}", md_table(["method", "lr", unit, "diverged"], table))
    return "\n".join([*section(
        "Fine-tuning quality: zeroth-order methods and first-order Adam",
        *doc_paragraphs(__doc__),
        f"`{data['command']}`" + (" (**--quick: not results**)" if data["quick"] else "")
        + f". Machine: {m['cpu']}, torch {m['torch']}, one thread; corpus: Python "
        f"{data['corpus']['python']}'s standard library (sha256 {data['corpus']['sha256']}); "
        f"model width x layers {data.get('model', '128x2')}; "
        f"budget {data['budget']} forward passes, {data['seeds']} seeds. Total time "
        f"{data['elapsed_s']:.0f} s.", level=1), *parts])


if __name__ == "__main__":
    main()
