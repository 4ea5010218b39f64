"""The weights of an ES run folder (:mod:`torchzo.meta.es`): loading them, and exporting
them as a weights file that ``ZOLSTM(pretrained=...)`` loads."""
from __future__ import annotations

import json
import platform
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..learned.arch import from_dict
from ..learned.nets import LearnedZO
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
    return weights_of(theta, from_dict(config["arch"]))


def export(out: Path, path: Path, command: str, overrides: dict[str, Any] | None = None,
           check: int | None = None) -> dict[str, Any]:
    """Write the best weights of run ``out`` to ``path`` (a weights file) and ``path.json``
    (what ``python -m tools.ship`` records: the commands that made it, its validation scores,
    the seconds of ES iterations up to it, and for a run started from another, that run's).
    ``overrides``: settings of the run's architecture to export with, e.g.
    ``{"query_net": False, "max_step": 0.5}`` (see
    :class:`~torchzo.learned.arch.GeneralConfig`); weights the new settings drop are left
    out (the query net: its directions become the Gaussian ones) and weights that grow
    start at zero in their new entries, so every other weight is the run's. ``check``: write
    the run's saved check at this iteration (``checks/N.pt``, chosen afterwards on more
    instances) instead of its best."""
    from ..pretrained import save, sha256

    config = json.loads((out / "config.json").read_text())
    arch = from_dict(config["arch"])
    if overrides:
        arch = replace(arch, **overrides)  # type: ignore[type-var]  # checks them first
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
    nets = weights_of(best["theta"], from_dict(config["arch"]))
    if overrides:  # the run's weights in the exported architecture (dropped, grown or as they are)
        target = blank(arch)
        target.load_state_dict(grown(nets.weights(), target.weights(), str(out)), strict=True)
        nets = target
    meta: dict[str, Any] = {
        "task": "generalist", "preset": "es", "arch": nets.arch.kind,
        "command": " && ".join([c for c in commands if c] + [command]),
        "es_iteration": it, "config": config, "val_final_loss": None,
        "val_final_log_progress": round(float(best["val"].mean()), 4),
        "train_seconds": round(seconds, 1), "torch": str(torch.__version__),
        "machine": f"{platform.machine()}, 1 torch thread",
        # the exported architecture's settings, as its file stores them
        **nets.arch.to_dict()["config"],
    }
    save(nets, path, meta)
    meta["sha256"] = sha256(path)
    Path(f"{path}.json").write_text(json.dumps(meta, indent=1))
    return meta
