"""Shipped learned-optimizer weights: list them, load them offline, verify them.

The weights live in the repository's top-level ``pretrained/`` folder, which the wheel installs
as the package ``torchzo._weights``. ``manifest.json`` there names each file with its sha256, the
task it was trained on and the command that reproduces it; a file whose hash does not match is
refused. Files load with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from .learned.nets import Arch, LearnedZO

__all__ = ["PretrainedError", "available", "default_name", "from_state_dict", "info", "load",
           "load_file", "manifest", "save", "sha256", "weights_dir"]


class PretrainedError(RuntimeError):
    """A shipped weights file is missing, altered, or not a ZO-LSTM state dict."""


def weights_dir() -> Path:
    """Where the shipped weights are: the installed package, else this checkout's pretrained/."""
    try:
        import torchzo._weights as installed  # type: ignore[import-not-found]

        return Path(next(iter(installed.__path__)))
    except ImportError:
        return Path(__file__).resolve().parent.parent / "pretrained"


def manifest() -> dict[str, Any]:
    """The parsed ``manifest.json``: the default name and one entry per weights file."""
    path = weights_dir() / "manifest.json"
    if not path.is_file():
        raise PretrainedError(f"no manifest of shipped weights at {path}")
    return json.loads(path.read_text())


def available() -> list[str]:
    """Names of the shipped optimizers."""
    return [w["name"] for w in manifest()["weights"]]


def default_name() -> str:
    """The weights ``ZOLSTM`` loads when given no ``pretrained`` argument."""
    return str(manifest()["default"])


def info(name: str) -> dict[str, Any]:
    """The manifest entry of ``name`` (task, sha256, how it was trained and measured)."""
    for entry in manifest()["weights"]:
        if entry["name"] == name:
            return dict(entry)
    raise ValueError(f"no shipped optimizer named {name!r}; available: {available()}")


def load(name: str | None = None) -> LearnedZO:
    """The shipped optimizer ``name`` (default: :func:`default_name`), checked against its hash."""
    entry = info(name or default_name())
    path = weights_dir() / entry["file"]
    if not path.is_file():
        raise PretrainedError(f"shipped weights {entry['name']!r} missing: expected {path}")
    digest = sha256(path)
    if digest != entry["sha256"]:
        raise PretrainedError(f"{path} does not match its manifest (sha256 {digest}, expected "
                              f"{entry['sha256']}): the file was altered or truncated")
    return load_file(path)


def sha256(path: Path) -> str:
    """The hex sha256 of a file, as ``manifest.json`` and the training metadata record it."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_file(path: Path) -> LearnedZO:
    """Weights from a file written by ``torchzo.meta`` (or ``torch.save(nets.state_dict())``)."""
    if not Path(path).is_file():
        raise PretrainedError(f"no weights file at {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise PretrainedError(f"{path} is not a loadable weights file: {err}") from err
    if isinstance(blob, dict) and "weights" in blob:
        return from_state_dict(blob["weights"], blob.get("arch"), source=str(path))
    return from_state_dict(blob, source=str(path))


def from_state_dict(weights: Any, arch: dict[str, Any] | Arch | None = None,
                    source: str = "state dict") -> LearnedZO:
    """A :class:`LearnedZO` of architecture ``arch`` (default: the paper's) holding ``weights``."""
    try:
        if not isinstance(arch, Arch):
            arch = Arch.from_dict(arch)
        hidden = weights["update.head.weight"].shape[1]
        nets = LearnedZO(hidden, arch)
        nets.load_state_dict(weights)
    except (KeyError, TypeError, RuntimeError, AttributeError, ValueError) as err:
        raise PretrainedError(f"{source} does not hold ZO-LSTM weights: {err}") from err
    return nets


def save(nets: LearnedZO, path: Path, meta: dict[str, Any] | None = None) -> None:
    """Write ``nets`` (weights, architecture and ``meta``) in the format :func:`load_file` reads."""
    torch.save({"weights": nets.state_dict(), "arch": nets.arch.to_dict(), "meta": meta or {}},
               path)
