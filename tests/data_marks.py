"""Skip marks for tests that read the real data sets, with a reason that says how to get them."""
from __future__ import annotations

import pytest

from torchzo.datasets import data_root
from torchzo.datasets.fetch import needed_files


def have(dataset: str) -> bool:
    """Whether every file the readers of ``dataset`` read is in the default data folder."""
    return all((data_root() / name).is_file() for name in needed_files(dataset))


def needs(*datasets: str) -> pytest.MarkDecorator:
    missing = [d for d in datasets if not have(d)]
    return pytest.mark.skipif(
        bool(missing), reason=f"no {' or '.join(missing)} data in {data_root()}: get it with "
        + " && ".join(f"'python -m torchzo.datasets fetch {d}'" for d in missing)
        + " (or point TORCHZO_DATA at a folder holding it)")


needs_mnist = needs("mnist")
needs_cifar10 = needs("cifar10")
