"""``python -m torchzo.meta train --task NAME --out FILE``: meta-train a ZO-LSTM.

``python -m torchzo.meta es --out DIR``: meta-train the generalist with evolution strategies
(:mod:`torchzo.meta.es`) on the training families; resumes from ``DIR``; ``--export FILE``
writes the best weights so far as a weights file.

Writes ``FILE`` (the weights and their metadata, loadable with ``weights_only=True`` and by
``torchzo.ZOLSTM(pretrained=FILE)``) and ``FILE.json`` (the metadata, the training history and
the sha256 of ``FILE``). Adding such a file to the repository's ``pretrained/`` is a maintainer
tool of the checkout, not of the package: ``python -m tools.ship``.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..learned.arch import GeneralConfig, LeanConfig, from_dict
from ..oracle.directions import KINDS
from ..pretrained import load_file, save, sha256
from ..tasks import TASK_NAMES, get_task
from .trainer import MetaConfig, StageConfig, evaluate, meta_train

PRESETS = {
    # The paper's recipe: 20 epochs x 10 problems for the UpdateRNN (Adam 1e-3), then
    # 40 epochs x 10 problems for the QueryRNN (Adam 5e-3), unroll 20, lambda 0.005.
    "paper": MetaConfig(),
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m torchzo.meta", description=__doc__)
    sub = ap.add_subparsers(dest="action", required=True)
    tr = sub.add_parser("train", help="meta-train a ZO-LSTM on a task")
    tr.add_argument("--task", required=True, choices=TASK_NAMES, help="the task to train on")
    tr.add_argument("--out", required=True, type=Path, help="weights file to write (.pt)")
    tr.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--stages", default="update,query", help="comma-separated: update,query")
    tr.add_argument("--update-epochs", type=int)
    tr.add_argument("--query-epochs", type=int)
    tr.add_argument("--problems", type=int, help="training problems per epoch")
    tr.add_argument("--q", type=int, help="queries per step (default: the task's)")
    tr.add_argument("--mu", type=float, help="smoothing radius (default: the dtype's)")
    tr.add_argument("--horizon", type=int)
    tr.add_argument("--unroll", type=int)
    tr.add_argument("--val-problems", type=int)
    tr.add_argument("--meta-batch", type=int, help="problems per meta-gradient")
    tr.add_argument("--weighting", choices=["linear", "uniform"],
                    help="meta-loss weight of step t: t (paper eq. 4) or 1 (area under the curve)")
    tr.add_argument("--clip", type=float, help="meta-gradient clipping threshold")
    tr.add_argument("--clip-mode", choices=["elementwise", "norm"])
    tr.add_argument("--update-lr", type=float, help="meta learning rate, stage 1")
    tr.add_argument("--query-lr", type=float, help="meta learning rate, stage 2")
    tr.add_argument("--query-grad", choices=["full", "u"])
    tr.add_argument("--grad-mode", choices=["true", "fd"])
    tr.add_argument("--init", type=Path, help="start from these weights (e.g. a stage-1 result)")
    tr.add_argument("--checkpoint", type=Path, help="trainer state, saved every epoch; resumes")
    tr.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest for the small coordinatewise LSTMs)")
    tr.add_argument("--no-progress", action="store_true")
    es = sub.add_parser("es", help="meta-train the generalist with evolution strategies")
    es.add_argument("--out", required=True, type=Path, help="run folder (checkpoints; resumes)")
    es.add_argument("--hours", type=float, help="stop (with a checkpoint) after this long")
    es.add_argument("--export", type=Path, help="write the best weights to this file and exit")
    for name, kind in (("pairs", int), ("sigma", float), ("lr", float), ("instances", int),
                       ("seed", int), ("iterations", int), ("val_every", int),
                       ("checkpoint_s", float), ("init", str), ("tail", float),
                       ("ema", float), ("val_instances", int), ("val_steps", int),
                       ("progress_floor", float)):
        es.add_argument("--" + name.replace("_", "-"), type=kind, dest=name)
    es.add_argument("--val-families", type=lambda text: tuple(text.split(",")),
                    help="comma-separated families to validate on (default: the val split)")
    es.add_argument("--steps", type=int, nargs=2, metavar=("MIN", "MAX"),
                    help="training horizons, log-uniform between MIN and MAX")
    es.add_argument("--qs", type=int, nargs="+", metavar="Q",
                    help="queries per step in training, one drawn per instance")
    _add_arch_flags(es)
    es.add_argument("--check", type=int, metavar="N",
                    help="with --export: write the run's check at iteration N, not its best")
    es.add_argument("--threads", type=int, default=2)
    return ap


_TRAINED = (GeneralConfig, LeanConfig)  # the architectures ES trains


def _arch_fields() -> dict[str, dataclasses.Field]:
    """The settings of the architectures ES trains, by name (the first's where they share
    one)."""
    out: dict[str, dataclasses.Field] = {}
    for cls in _TRAINED:
        for f in dataclasses.fields(cls):
            out.setdefault(f.name, f)
    return out


def _add_arch_flags(parser: argparse.ArgumentParser) -> None:
    """``--arch`` (a new run's kind) and one flag per setting of the architectures ES trains
    (``--max-step``, ``--no-query-net``, ...): a new run's architecture, or with ``--export``
    the exported file's. The settings' documentation is
    :class:`~torchzo.learned.arch.GeneralConfig` and :class:`~torchzo.learned.arch.LeanConfig`;
    a flag that the run's kind does not have is an error."""
    group = parser.add_argument_group(
        "architecture", "settings of torchzo.learned.arch.GeneralConfig or LeanConfig: a new "
        "run's architecture, or with --export the exported file's")
    group.add_argument("--arch", choices=[cls.kind for cls in _TRAINED], dest="arch_kind",
                       help="a new run's architecture (default: general)")
    for f in _arch_fields().values():
        flag, dest, metavar = "--" + f.name.replace("_", "-"), "arch_" + f.name, f.name.upper()
        if isinstance(f.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, dest=dest)
        elif isinstance(f.default, tuple):
            group.add_argument(flag, type=float, nargs="+", dest=dest, metavar=metavar)
        elif f.name == "directions_kind":
            group.add_argument(flag, choices=KINDS, dest=dest)
        else:
            group.add_argument(flag, type=type(f.default), dest=dest, metavar=metavar)


def _arch_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The architecture flags given, by setting."""
    return {name: tuple(v) if isinstance(v, list) else v for name in _arch_fields()
            if (v := getattr(args, "arch_" + name)) is not None}


def run_es(args: argparse.Namespace) -> None:
    from .es import ESConfig, train_es
    from .export import export

    torch.set_num_threads(args.threads)
    if args.export:
        meta = export(args.out, args.export, args.invocation, _arch_overrides(args),
                      check=args.check)
        print(f"wrote {args.export} and {args.export}.json (iteration {meta['es_iteration']})")
        return
    if args.check is not None:
        raise SystemExit("--check chooses the check an export writes: use it with --export")
    cfg = ESConfig()
    saved = args.out / "config.json"
    if saved.exists():  # a resumed run keeps its configuration
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) and k != "arch" else v
                                  for k, v in json.loads(saved.read_text()).items()}
        # runs from before the val split grew validated on its first three families
        values.setdefault("val_families", ("huber", "quartic", "softmax"))
        cfg = ESConfig(**values)
    for name in ("pairs", "sigma", "lr", "instances", "seed", "iterations", "val_every",
                 "checkpoint_s", "init", "tail", "ema", "val_instances", "val_steps",
                 "val_families", "progress_floor"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.steps is not None:
        cfg.steps = tuple(args.steps)
    if args.qs is not None:
        if min(args.qs) < 1:
            raise SystemExit(f"--qs: queries per step must be positive, got {args.qs}")
        cfg.qs = tuple(args.qs)
    if args.arch_kind is not None:
        if saved.exists() and args.arch_kind != cfg.arch["kind"]:
            raise SystemExit(f"--arch {args.arch_kind}: this run's architecture is "
                             f"{cfg.arch['kind']!r}")
        cfg.arch = from_dict({"kind": args.arch_kind, "config": {}}).to_dict()
    overrides = _arch_overrides(args)
    if overrides:
        arch = from_dict(cfg.arch)
        known = {f.name for f in dataclasses.fields(arch)}  # type: ignore[arg-type]
        if set(overrides) - known:
            raise SystemExit(f"the {arch.kind} architecture has no setting "
                             f"{sorted(set(overrides) - known)}")
        cfg.arch = dataclasses.replace(arch, **overrides).to_dict()  # type: ignore[type-var]
    deadline = time.time() + 3600 * args.hours if args.hours else None
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "commands.txt").open("a") as f:  # what the export records
        f.write(args.invocation + "\n")
    train_es(cfg, args.out, log=lambda line: print(line, flush=True), deadline=deadline)


def config_from_args(args: argparse.Namespace) -> MetaConfig:
    base = PRESETS[args.preset]
    cfg = copy.deepcopy(base)
    cfg.seed = args.seed
    for name in ("horizon", "unroll", "query_grad", "grad_mode", "val_problems", "meta_batch",
                 "clip", "clip_mode", "mu", "weighting"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    task = get_task(args.task)
    cfg.q = args.q or task.q
    if args.mu is None:
        cfg.mu = task.mu
    u, q = base.update_stage, base.query_stage
    cfg.update_stage = StageConfig(args.update_epochs or u.epochs, args.problems or u.problems,
                                   args.update_lr or u.lr)
    cfg.query_stage = StageConfig(args.query_epochs or q.epochs, args.problems or q.problems,
                                  args.query_lr or q.lr)
    cfg.__post_init__()
    return cfg


def train(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    task = get_task(args.task)
    cfg = config_from_args(args)
    stages = tuple(s for s in args.stages.split(",") if s)
    # A resumed run's time includes the epochs its checkpoint already holds.
    earlier = 0.0
    if args.checkpoint and args.checkpoint.is_file():
        saved = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        earlier = sum(row["seconds"] for row in saved["history"]["epochs"])
    start = time.time() - earlier
    init = load_file(args.init) if args.init else None
    nets, history = meta_train(task, cfg, nets=init, stages=stages, checkpoint=args.checkpoint,
                               progress=not args.no_progress)
    use_query = "query" in stages
    meta = {
        "task": args.task, "preset": args.preset, "stages": list(stages), "seed": args.seed,
        "command": args.invocation,
        "init": str(args.init) if args.init else None, "arch": cfg.arch.kind,
        "config": history["config"], "use_query": use_query,
        "val_final_loss": evaluate(nets, task, "val", cfg, use_query, cfg.val_problems),
        "train_seconds": round(time.time() - start, 1), "torch": str(torch.__version__),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save(nets, args.out, meta)
    meta["sha256"] = sha256(args.out)
    meta["history"] = history["epochs"]
    Path(f"{args.out}.json").write_text(json.dumps(meta, indent=1))
    print(json.dumps({k: meta[k] for k in ("task", "val_final_loss", "train_seconds", "sha256")}))
    return meta


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raw = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(raw)
    args.invocation = "python -m torchzo.meta " + shlex.join(raw)
    if args.action == "train":
        train(args)
    elif args.action == "es":
        run_es(args)


if __name__ == "__main__":
    main()
