"""``python -m torchzo.datasets``: get the data sets of the paper's attack experiments.

    python -m torchzo.datasets fetch mnist            # the original MNIST IDX files
    python -m torchzo.datasets fetch cifar10          # the official archive, then the subset
    python -m torchzo.datasets fetch all --root DIR   # both, into DIR
    python -m torchzo.datasets check                  # what is there, verified

Files go to ``--root``, else ``$TORCHZO_DATA``, else the default data folder (see
``torchzo.datasets.data_root``), and are checked against their sha256.
"""
from __future__ import annotations

import argparse
import sys

from .fetch import DATASETS, fetch, needed_files
from .files import DataError, data_root, verified


def _check(root: str | None) -> int:
    base = data_root(root)
    print(f"data folder: {base}")
    missing = 0
    for dataset in DATASETS:
        for name in needed_files(dataset):
            try:
                verified(base, name)
                state = "ok, sha256 verified"
            except DataError as e:
                missing += 1
                state = "missing" if not (base / name).is_file() else f"not usable: {e}"
            print(f"  {name}: {state}")
    if missing:
        print(f"get what is missing with 'python -m torchzo.datasets fetch all"
              f"{'' if root is None else ' --root ' + root}'")
    return 1 if missing else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m torchzo.datasets", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    fe = sub.add_parser("fetch", help="download, verify and build a data set")
    fe.add_argument("dataset", choices=[*DATASETS, "all"])
    fe.add_argument("--root", help="data folder (default: $TORCHZO_DATA, else ../shared/data "
                    "beside a checkout where it exists, else ~/.cache/torchzo/data)")
    fe.add_argument("--base-url", help="fetch every file from BASE_URL/<file name> (a mirror)")
    fe.add_argument("--archive", help="cifar10: a cifar-10-python.tar.gz you already have")
    fe.add_argument("--timeout", type=float, default=60.0, help="seconds without data")
    fe.add_argument("--deadline", type=float, default=3600.0,
                    help="seconds for each file in all")
    ch = sub.add_parser("check", help="list the data files and whether they verify")
    ch.add_argument("--root", help="data folder (default: as for fetch)")
    args = ap.parse_args(argv)
    if args.command == "check":
        return _check(args.root)
    try:
        for dataset in DATASETS if args.dataset == "all" else [args.dataset]:
            fetch(dataset, args.root, base_url=args.base_url, archive=args.archive,
                  timeout=args.timeout, deadline=args.deadline)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
