"""``python -m tools.ship --weights FILE --name NAME``: add trained weights to ``pretrained/``.

Copies ``FILE`` (written by ``python -m torchzo.meta train``) to ``DEST/NAME.pt`` and records it
in ``DEST/manifest.json`` with its sha256 and the commands that reproduce it; the wheel ships
``pretrained/`` as ``torchzo._weights``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from tools import ROOT
from torchzo.learned import PaperConfig
from torchzo.pretrained import load_file, save, sha256

PROG = "python -m tools.ship"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--weights", required=True, type=Path, help="a file written by 'train'")
    ap.add_argument("--name", required=True)
    ap.add_argument("--command", default=None,
                    help="the commands that reproduce the file (default: the 'train' command "
                    "recorded with the weights, then this command)")
    ap.add_argument("--dest", type=Path, default=ROOT / "pretrained")
    ap.add_argument("--default", action="store_true", help="make it ZOLSTM's default")
    ap.add_argument("--alpha", type=float, default=None,
                    help="bake in a tuned output scale: the shipped file at lr=1 steps as the "
                    "given file at lr=ALPHA (a transferred optimizer; paper architecture)")
    ap.add_argument("--task", default=None, help="the task it is shipped for (default: the "
                    "one it was trained on)")
    return ap


def ship(args: argparse.Namespace) -> dict[str, Any]:
    """Copy a trained file into ``dest`` and record it in ``dest/manifest.json``."""
    meta = json.loads(Path(f"{args.weights}.json").read_text())
    nets = load_file(args.weights)  # refuse anything that does not load
    command = args.command
    if command is None:
        if "command" not in meta:
            raise SystemExit(f"{args.weights}.json does not record its train command: pass "
                             "--command")
        command = f"{meta['command']} && {args.invocation}"
    target = args.dest / f"{args.name}.pt"
    if args.alpha is None:
        shutil.copyfile(args.weights, target)
    else:
        # The paper's step is lr * head(h): scaling the read-out is the same step at lr = 1.
        if not isinstance(nets.arch, PaperConfig):
            raise SystemExit("--alpha needs the paper architecture (its step is lr * output)")
        with torch.no_grad():
            nets.update.head.weight.mul_(args.alpha)  # type: ignore[union-attr, operator]
        save(nets, target, {**meta, "alpha": args.alpha, "transferred_from": str(args.weights)})
    manifest_path = args.dest / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {
        "default": args.name, "weights": []}
    entry = {
        "name": args.name, "file": target.name, "sha256": sha256(target),
        "task": args.task or meta["task"], "preset": meta["preset"],
        "arch": meta.get("arch", "paper"), "command": command,
        **({} if args.alpha is None else {"trained_on": meta["task"], "alpha": args.alpha}),
        # A transferred file was validated on its own task, not this one.
        "val_final_loss": meta["val_final_loss"] if args.alpha is None else None,
        "train_seconds": meta["train_seconds"], "torch": meta["torch"],
        "machine": meta["machine"],
        # An ES run's: which iteration was kept and its validation score.
        **{k: meta[k] for k in ("es_iteration", "val_final_log_progress") if k in meta},
    }
    manifest["weights"] = [w for w in manifest["weights"] if w["name"] != args.name] + [entry]
    if args.default:
        manifest["default"] = args.name
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps(entry))
    return entry


def main(argv: list[str] | None = None) -> dict[str, Any]:
    raw = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(raw)
    args.invocation = f"{PROG} {shlex.join(raw)}"
    return ship(args)


if __name__ == "__main__":
    main()
