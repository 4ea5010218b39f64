"""Maintainer tools of the torchzo repository, not part of the wheel.

``python -m tools.ship`` adds trained weights to ``pretrained/``; :mod:`tools.launch` starts
the processes of local multi-process runs for the benchmarks and the tests.
"""
from pathlib import Path

# The repository root: the tools' and the benchmarks' default paths resolve against it, not
# against the working directory.
ROOT = Path(__file__).resolve().parent.parent
