"""Fine-tuning shapes: a step's extra memory and its time over its forward passes, per memory mode.

    python -m benchmarks.perf.finetune [--models M ...] [--optimizers O ...] [--q Q ...]
                                       [--memory exact|inference ...] [--steps N] [--out DIR]
                                       [--name NAME] [--quick]

Each case runs in a fresh process, on one thread, with a model built from its configuration with
random weights (float32; no download) and one fixed batch of 8 sequences of 128 tokens: *lm-25m*,
a plain torch causal transformer (6 layers, width 512, vocabulary 8192); *opt-125m* and
*opt-350m*, Hugging Face's OPT at those shapes (needs ``transformers``). The objective is the
model's language-modelling loss on the batch, under ``model.eval()``.

*Extra memory*: the peak resident memory of ``--steps`` optimizer steps (forward estimator, q
directions, Gaussian directions; *MeZO*: ZOSGD with central differences and ``loss_at_x=False``,
MeZO's q = 1 only) less the peak of the same model's forward passes alone under
``torch.no_grad()``, as a fraction of the weights' bytes (Linux's VmHWM, reset before each
phase, with glibc's allocator returning freed blocks of 64 KiB or more to the system so that
resident memory follows what is in use; both phases after two warm-up steps of the optimizer on
a small tensor, which page in its code); *state*: what the optimizer keeps between steps.
*Step / forwards*: a step's time over the time its closure (its forward passes: q + 1, or 2 q
for MeZO) took inside that step, the median over the steps after the first: 1.00 would be an
optimizer that costs nothing, and both times are taken together, so that a change in the
machine's load moves them alike. *Step*: that median step's time. *Forward pass*: one pass alone
under ``torch.no_grad()``, for scale.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import subprocess
import sys
import time
from typing import Any

import torch
from torch import nn

from torchzo.progress import Progress

from .._common import OUT, finish, machine
from .._report import doc_paragraphs, md_table, section

MODELS = ("lm-25m", "opt-125m", "opt-350m")
# glibc's allocator hands every block of 64 KiB or more back to the system when it is freed, so
# that the resident memory follows what is in use: otherwise freed activations stay resident,
# and where a later block lands decides the peak as much as what is allocated.
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
# name -> (torchzo optimizer, its options beyond lr, q, seed and memory). "MeZO": MeZO's step
# (with q = 1): central differences, two forward passes a direction, none at x.
OPTIMIZERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ZOSGD": ("ZOSGD", {}), "ZOSignSGD": ("ZOSignSGD", {}), "ZOAdam": ("ZOAdam", {}),
    "MeZO": ("ZOSGD", {"estimator": "central", "loss_at_x": False}),
}
BATCH, TOKENS = 8, 128


class TinyLM(nn.Module):
    """A causal transformer LM of plain torch modules (pre-norm, learned positions, tied head)."""

    def __init__(self, vocab: int = 8192, width: int = 512, layers: int = 6, heads: int = 8,
                 context: int = 512) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Embedding(context, width)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.vocab = vocab

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        h = self.embed(tokens) + self.position(torch.arange(n, device=tokens.device))
        mask = nn.Transformer.generate_square_subsequent_mask(n, device=tokens.device)
        h = self.norm(self.blocks(h, mask=mask, is_causal=True))
        return h @ self.embed.weight.T

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = self(tokens[:, :-1])
        return nn.functional.cross_entropy(logits.reshape(-1, self.vocab),
                                           tokens[:, 1:].reshape(-1))


def build(name: str) -> tuple[nn.Module, Any]:
    """The model (eval mode, seeded weights) and its loss closure on one fixed batch."""
    torch.manual_seed(0)
    if name == "lm-25m":
        lm = TinyLM().eval()
        tokens = torch.randint(0, lm.vocab, (BATCH, TOKENS + 1))
        return lm, lambda: lm.loss(tokens)
    from transformers import OPTConfig, OPTForCausalLM
    width, layers, heads, project = {"opt-125m": (768, 12, 12, 768),
                                     "opt-350m": (1024, 24, 16, 512)}[name]
    config = OPTConfig(vocab_size=50272, hidden_size=width, num_hidden_layers=layers,
                       ffn_dim=4 * width, num_attention_heads=heads, word_embed_proj_dim=project,
                       max_position_embeddings=2048, do_layer_norm_before=name != "opt-350m")
    opt = OPTForCausalLM(config).eval()
    tokens = torch.randint(0, config.vocab_size, (BATCH, TOKENS))
    return opt, lambda: opt(input_ids=tokens, labels=tokens).loss


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(case: dict[str, Any]) -> dict[str, Any]:
    """One case, in this (fresh) process."""
    import torchzo

    torch.set_num_threads(1)
    model, loss = build(case["model"])
    params = [p for p in model.parameters() if p.requires_grad]
    weights = sum(p.numel() * p.element_size() for p in params)
    name, options = OPTIMIZERS[case["optimizer"]]
    make = functools.partial(getattr(torchzo, name), **options)
    # Warm: the forward pass's lazy initialisations, and the optimizer's code paged in by two
    # steps on a small tensor (a constant, not memory that grows with the model).
    small = torch.zeros(1 << 17)
    warm = make([small], lr=1e-6, q=case["q"], seed=0, memory=case["memory"])
    for _ in range(2):
        warm.step(lambda: (small - 1).pow(2).sum())
    del warm
    with torch.no_grad():
        loss()
        _reset_peak()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            loss()
            times.append(time.perf_counter() - start)
        forward_peak = _kib("VmHWM")
    rss_before = _kib("VmRSS")
    opt = make(params, lr=1e-6, q=case["q"], seed=0, memory=case["memory"])
    inside = [0.0]

    def timed() -> torch.Tensor:  # the step's forward passes, timed where they run
        start = time.perf_counter()
        try:
            return loss()
        finally:
            inside[0] += time.perf_counter() - start

    _reset_peak()
    steps, forwards = [], []
    for _ in range(case["steps"]):
        inside[0] = 0.0
        start = time.perf_counter()
        opt.step(timed)
        steps.append(time.perf_counter() - start)
        forwards.append(inside[0])
    peak = _kib("VmHWM")
    state = sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values()
                if isinstance(v, torch.Tensor))
    later = list(zip(steps, forwards))[1:] or list(zip(steps, forwards))
    ratios = sorted((s / f, s) for s, f in later)
    return {**case, "params": sum(p.numel() for p in params), "weights_bytes": weights,
            "forward_s": sorted(times)[1], "step_s": steps, "forwards_in_step_s": forwards,
            "extra_peak_fraction": (peak - forward_peak) / weights,
            "state_fraction": state / weights,
            "rss_growth_fraction": (_kib("VmRSS") - rss_before) / weights,
            "step_over_forwards": ratios[len(ratios) // 2][0],
            "median_step_s": ratios[len(ratios) // 2][1],
            "kernels": torchzo.oracle.kernels.available()}


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """:func:`child` in a new process (so that each peak is its own)."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.perf.finetune", "--child",
                           json.dumps(case)], capture_output=True, text=True, check=False,
                          env={**os.environ, **MALLOC})
    if done.returncode != 0:
        return {**case, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def render(data: dict[str, Any]) -> str:
    m = data["machine"]
    rows = []
    for c in data["cases"]:
        if "error" in c:
            rows.append([c["model"], c["optimizer"], c["memory"], c["q"], "failed: "
                         + " ".join(c["error"]), "", "", "", ""])
            continue
        name = c["optimizer"] + ("" if c.get("kernels", True) else " (no kernels)")
        rows.append([c["model"], name, c["memory"], c["q"],
                     f"{100 * c['extra_peak_fraction']:.1f} %",
                     f"{100 * c['state_fraction']:.0f} %", f"{c['step_over_forwards']:.2f}",
                     f"{c['median_step_s']:.2f} s" if "median_step_s" in c else "",
                     f"{c['forward_s']:.2f} s"])
    models = {c["model"]: c.get("params") for c in data["cases"]}
    sizes = ", ".join(f"{k}: {v / 1e6:.1f}M parameters" for k, v in models.items() if v)
    return "\n".join(section(
        "Fine-tuning shapes: memory and time of a step", *doc_paragraphs(__doc__),
        f"`{data['command']}`" + (" (**--quick: not results**)" if data["quick"] else "")
        + f". Machine: {m['cpu']}, torch {m['torch']}, one thread, load average "
        f"{m['loadavg'][0]:.2f} at the start; {sizes}.",
        md_table(["model", "optimizer", "memory", "q", "extra peak / weights",
                  "state / weights", "step / forwards", "step", "forward pass"], rows),
        f"Total time {data['elapsed_s']:.0f} s.", level=1))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.perf.finetune",
                                 description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--optimizers", nargs="+", choices=list(OPTIMIZERS),
                    default=list(OPTIMIZERS))
    ap.add_argument("--q", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--memory", nargs="+", choices=["exact", "inference"],
                    default=["exact", "inference"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="lm-25m, ZOSGD, q = 1, 2 steps")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=OUT, help="'' to write nothing")
    ap.add_argument("--name", default="finetune", help="the results' file name (no suffix)")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return {}
    if args.quick:
        args.models, args.optimizers, args.q, args.steps = ["lm-25m"], ["ZOSGD"], [1], 2
    start = time.perf_counter()
    data: dict[str, Any] = {
        "benchmark": "finetune", "quick": args.quick, "machine": machine(),
        "command": " ".join(["python -m benchmarks.perf.finetune",
                             *(sys.argv[1:] if argv is None else argv)]), "cases": []}
    cases = [{"model": m, "optimizer": o, "memory": mem, "q": q, "steps": args.steps}
             for m in args.models for q in args.q for o in args.optimizers
             for mem in args.memory if o != "MeZO" or q == 1]
    with Progress(desc="finetune", unit="case", total=len(cases)) as progress:
        for case in cases:
            data["cases"].append(run_case(case))
            progress.update(last=f"{case['model']} {case['optimizer']} {case['memory']} "
                                 f"q={case['q']}")
    assert all(math.isfinite(c.get("step_over_forwards", 0.0)) for c in data["cases"])
    return finish(data, start, args.name, args.out, render)


if __name__ == "__main__":
    main()
