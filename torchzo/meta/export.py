"""The weights of an ES run folder (:mod:`torchzo.meta.es`): loading them, and exporting
them as a weights file that ``ZOLSTM(pretrained=...)`` loads."""
from __future__ import annotations

import json
import platform
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..learned.nets import Arch, LearnedZO
from .flat import blank, grown, weights_of

__all__ = ["export", "load_best", "load_check"]


def load_best(out: Path) -> LearnedZO:
    """The best-on-validation weights of the ES run in folder ``out``."""
    return load_check(out / "best.pt", out)


def load_check(path: Path, out: Path | None = None) -> LearnedZO:
    """The weights of a saved check of an ES run (``best.pt``, or ``checks/N.pt``), laid
    out by the architecture in the run's ``config.json``; ``out``: the run folder (default:
    the one ``checks/N.pt`` sits in)."""
    out = Path(path).parent.parent if out is None else out
    config = json.loads((out / "config.json").read_text())
    theta = torch.load(path, weights_only=True)["theta"]
    return weights_of(theta, Arch.from_dict(config["arch"]))


def export(out: Path, path: Path, command: str, query_net: bool = True,
           sgd_mix: float | None = None, mix_gain: float = 0.0,
           max_step: float = 0.0, sigma_rate: float | None = None,
           check: int | None = None, directions_kind: str | None = None) -> dict[str, Any]:
    """Write the best weights of run ``out`` to ``path`` (a weights file) and ``path.json``
    (what ``python -m tools.ship`` records: the commands that made it, its validation scores,
    the seconds of ES iterations up to it, and for a run started from another, that run's).
    ``query_net=False`` leaves the query net out (its directions become the Gaussian ones;
    every other weight is the run's). ``sgd_mix``: give the exported optimizer ZO-SGD's
    direction at this constant weight in [0, 1] (``Arch(sgd_mix=True)``, its controller row
    zero; the weight is chosen on the validation families, research/log.md), and
    ``mix_gain`` the gain of its hypergradient rule (``Arch.mix_gain``). ``max_step``: cap
    sigma at this multiple of the parameters' RMS (``Arch.max_step``; 0: no cap).
    ``sigma_rate``: the factor on each step's change of log sigma (``Arch.sigma_rate``;
    ``None``: the run's). ``check``: write the run's saved check at this iteration
    (``checks/N.pt``, chosen afterwards on more instances) instead of its best.
    ``directions_kind``: the query directions the exported optimizer runs with
    (``Arch.directions_kind``; ``None``: the run's)."""
    from ..pretrained import save, sha256

    if sgd_mix is not None and not 0 <= sgd_mix <= 1:
        raise ValueError(f"sgd_mix must be in [0, 1], got {sgd_mix}")
    if max_step < 0:
        raise ValueError(f"max_step must be >= 0, got {max_step}")
    if mix_gain and sgd_mix is None:
        raise ValueError("mix_gain adapts the SGD mix: give sgd_mix too")

    config = json.loads((out / "config.json").read_text())
    source = out / "best.pt" if check is None else out / "checks" / f"{check}.pt"
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such check of run {out}")
    best = torch.load(source, weights_only=True)
    it = int(best["iteration"])
    runs = [(out, it)]  # each run that led here, and its iteration the next one took
    if config.get("init"):
        init = Path(config["init"])
        start = init if init.is_file() else init / "best.pt"  # a check, or a run's best
        runs.insert(0, (init.parent.parent if init.is_file() else init,
                        int(torch.load(start, weights_only=True)["iteration"])))
    commands, seconds = [], 0.0
    for run, limit in runs:
        listed = run / "commands.txt"
        commands += listed.read_text().split("\n") if listed.exists() else []
        history = run / "history.jsonl"
        rows = [json.loads(r) for r in history.read_text().splitlines() if r] \
            if history.exists() else []
        seconds += sum(r["seconds"] for r in rows if r["iteration"] <= limit)
    nets = weights_of(best["theta"], Arch.from_dict(config["arch"]))
    changes: dict[str, Any] = {}
    if not query_net:
        changes["query_net"] = False
    if sgd_mix is not None:
        changes.update(sgd_mix=True, mix_gain=float(mix_gain))
    if max_step:
        changes["max_step"] = float(max_step)
    if sigma_rate is not None:
        changes["sigma_rate"] = float(sigma_rate)
    if directions_kind is not None:
        changes["directions_kind"] = directions_kind
    if changes:  # the run's weights in the exported architecture (dropped, grown or as they are)
        target = blank(replace(nets.arch, **changes))
        weights = grown(nets.weights(), target.weights(), str(out))
        if sgd_mix is not None:
            weights["mix"] = torch.tensor(float(sgd_mix))
        target.load_state_dict(weights, strict=True)
        nets = target
    meta: dict[str, Any] = {
        "task": "generalist", "preset": "es", "arch": "general",
        "command": " && ".join([c for c in commands if c] + [command]),
        "es_iteration": it, "config": config, "val_final_loss": None,
        "val_final_log_progress": round(float(best["val"].mean()), 4),
        "train_seconds": round(seconds, 1), "torch": str(torch.__version__),
        "machine": f"{platform.machine()}, 1 torch thread",
        "query_net": nets.arch.query_net,
        "sgd_mix": float(nets.mix.detach()) if nets.arch.sgd_mix else None,
        "mix_gain": nets.arch.mix_gain, "max_step": nets.arch.max_step,
        "sigma_rate": nets.arch.sigma_rate, "directions_kind": nets.arch.directions_kind,
    }
    save(nets, path, meta)
    meta["sha256"] = sha256(path)
    Path(f"{path}.json").write_text(json.dumps(meta, indent=1))
    return meta
