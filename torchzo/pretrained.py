"""Shipped learned-optimizer weights: list them, load them offline, verify them.

The weights live in the repository's top-level ``pretrained/`` folder, which the wheel installs
as the package ``torchzo._weights``. ``manifest.json`` there names each file with its sha256, the
task it was trained on and the command that reproduces it; a file whose hash does not match is
refused. Files load with ``torch.load(weights_only=True)``.

Every way in (a shipped name, a path, a state dict, a module) is checked before the networks
are built: the tensors must be exactly those of the declared architecture (names and shapes,
compared on the ``meta`` device, so a file that declares a huge network allocates nothing),
finite, and of a sane magnitude (at most :data:`MAX_ABS_WEIGHT`); and the architecture's
per-coordinate networks and state at most :data:`MAX_COORDINATE_WIDTH` wide, since what a step
allocates grows with that width times the number of parameters. A file must be a
``torch.save`` archive of at most :data:`MAX_FILE_BYTES` with uncompressed entries, so reading
it never takes more memory than its size. Anything else raises :class:`PretrainedError` saying
what is wrong.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .learned.arch import Architecture, from_dict
from .learned.nets import LearnedZO

__all__ = ["MAX_ABS_WEIGHT", "MAX_COORDINATE_WIDTH", "MAX_FILE_BYTES", "PretrainedError",
           "available", "check_nets", "check_weights", "default_name", "from_state_dict", "info",
           "load", "load_file", "manifest", "save", "sha256", "weights_dir"]

#: The largest magnitude a weight may have (trained ZO-LSTM weights are of order 1; a huge one
#: would turn every step into an overflow).
MAX_ABS_WEIGHT = 1e6
#: The largest weights file read (the shipped ones are kilobytes).
MAX_FILE_BYTES = 256 * 2**20
_MAX_HIDDEN = 2**16
#: The widest per-coordinate layer or state an architecture may declare
#: (:attr:`~torchzo.learned.arch.Architecture.coordinate_width`; the shipped ones are 8 and 10
#: wide): a step allocates a few times this many floats per parameter element, so a small file
#: could otherwise ask for gigabytes (coord_hidden=65536: half a megabyte per element).
MAX_COORDINATE_WIDTH = 1024

PathLike = str | os.PathLike[str]


class PretrainedError(RuntimeError):
    """A weights file, state dict or manifest is missing, altered, or not ZO-LSTM weights."""


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
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise PretrainedError(f"{path} is not valid JSON: {err}") from err
    problem = _manifest_problem(data)
    if problem:
        raise PretrainedError(f"{path} is malformed: {problem}")
    return data  # type: ignore[no-any-return]


def _manifest_problem(data: Any) -> str | None:
    if not isinstance(data, dict) or not isinstance(data.get("weights"), list):
        return "expected an object with a 'weights' list"
    for i, entry in enumerate(data["weights"]):
        if not isinstance(entry, dict):
            return f"weights[{i}] is not an object"
        for key in ("name", "file", "sha256"):
            if not isinstance(entry.get(key), str):
                return f"weights[{i}] has no string {key!r}"
    if not isinstance(data.get("default"), str):
        return "no string 'default'"
    return None


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
    return _load(path, entry["sha256"], "its manifest")


def sha256(path: PathLike) -> str:
    """The hex sha256 of a file, as ``manifest.json`` and the training metadata record it."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_file(path: PathLike, sha256: str | None = None) -> LearnedZO:
    """Weights from a file written by :func:`save` (or ``torch.save(nets.state_dict())``).

    ``sha256``: the file's expected hex digest; a file with another one is refused.
    """
    return _load(Path(path), sha256, "the given sha256")


def _load(path: Path, expected: str | None, against: str) -> LearnedZO:
    if not path.is_file():
        raise PretrainedError(f"no weights file at {path}")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise PretrainedError(f"{path} has {size} bytes, more than ZO-LSTM weights take "
                              f"(at most {MAX_FILE_BYTES})")
    data = path.read_bytes()  # hashed and loaded from the same bytes
    if expected is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected.lower():
            raise PretrainedError(f"{path} does not match {against} (sha256 {digest}, expected "
                                  f"{expected}): the file was altered, truncated or replaced")
    problem = _archive_problem(data)
    if problem:
        raise PretrainedError(f"{path} is not a loadable weights file: {problem}")
    try:
        blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise PretrainedError(f"{path} is not a loadable weights file: {err}") from err
    if isinstance(blob, dict) and "weights" in blob:
        return from_state_dict(blob["weights"], blob.get("arch"), source=str(path))
    return from_state_dict(blob, source=str(path))


def _archive_problem(data: bytes) -> str | None:
    """Why ``data`` is not an archive that ``torch.load`` reads in memory bounded by its size."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return "not a torch.save archive (a zip file)"
    if any(e.compress_type != zipfile.ZIP_STORED for e in entries):
        return "it has compressed entries, which torch.save never writes"
    return None


def from_state_dict(weights: Any, arch: dict[str, Any] | Architecture | None = None,
                    source: str = "state dict") -> LearnedZO:
    """A :class:`LearnedZO` of architecture ``arch`` (default: the paper's) holding ``weights``.

    ``arch``: an architecture, or its stored form (:func:`torchzo.learned.arch.from_dict`:
    ``{"kind": ..., "config": {...}}``, or the flat dict of older files). Without ``arch``
    the hidden size is read from the UpdateRNN's read-out (files from before the
    architecture was saved). The weights are checked against the architecture before
    anything is allocated.
    """
    if not isinstance(weights, Mapping):
        raise PretrainedError(f"{source} does not hold ZO-LSTM weights: it holds a "
                              f"{type(weights).__name__}, not a state dict (name -> tensor)")
    declared = arch is not None
    try:
        built = arch if isinstance(arch, Architecture) else from_dict(arch)
    except (TypeError, ValueError, AttributeError) as err:
        raise PretrainedError(f"{source} declares an invalid architecture: {err}") from err
    hidden = built.hidden
    head = weights.get("update.head.weight")
    if not declared and isinstance(head, Tensor) and head.dim() == 2:
        hidden = int(head.shape[1])
    problem = _arch_problem(_settings(arch, built), hidden)
    if problem is None and hidden != built.hidden:  # read from an old file's weights
        built = dataclasses.replace(built, hidden=hidden)  # type: ignore[type-var]
    if problem is None and built.coordinate_width > MAX_COORDINATE_WIDTH:
        problem = (f"its per-coordinate networks or state ({built.kind}, hidden "
                   f"{built.hidden}) are {built.coordinate_width} wide, more than "
                   f"{MAX_COORDINATE_WIDTH}: a step would allocate "
                   f"{built.coordinate_width * 8} bytes or more per parameter element")
    if problem:
        raise PretrainedError(f"{source} declares an invalid architecture: {problem}")
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in LearnedZO(hidden, built).state_dict().items()}
    except (TypeError, ValueError, RuntimeError) as err:
        raise PretrainedError(f"{source} declares an invalid architecture: {err}") from err
    _check_tensors(weights, expected, f"{source} does not hold ZO-LSTM weights of its "
                   f"architecture ({built.kind}, hidden {hidden})")
    nets = LearnedZO(hidden, built)
    with torch.no_grad():
        nets.load_state_dict(dict(weights))
    return nets


def _settings(stored: Any, built: Architecture) -> dict[str, Any]:
    """Every setting a file declares (those its architecture drops from an older file's
    flat form included: they are held to the same bounds), over ``built``'s own."""
    settings = dict(vars(built))
    if isinstance(stored, dict):
        declared = stored.get("config") if set(stored) == {"kind", "config"} else stored
        if isinstance(declared, dict):
            settings.update({k: v for k, v in declared.items() if k != "kind"})
    return settings


def _arch_problem(settings: dict[str, Any], hidden: Any) -> str | None:
    """What is out of range in an architecture's ``settings`` (with hidden size ``hidden``),
    if anything."""
    def integer(v: Any, low: int, high: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high

    def real(v: Any, low: float, high: float, closed: bool = True) -> bool:
        return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                and low <= v and (v <= high if closed else v < high))

    bounds = {"coord_hidden": lambda v: integer(v, 1, _MAX_HIDDEN),
              "horizon": lambda v: integer(v, 1, 2**62), "base": lambda v: integer(v, 0, 2**10),
              "momenta": lambda v: isinstance(v, (list, tuple)) and len(v) <= 2**10
              and all(real(m, 0, 1, closed=False) for m in v),
              "beta2": lambda v: real(v, 0, 1, closed=False), "eps": lambda v: real(v, 0, 1),
              "init_lr": lambda v: real(v, 1e-30, 1e30), "floor": lambda v: real(v, 1e-30, 1e30),
              "gain": lambda v: real(v, -1e30, 1e30), "max_step": lambda v: real(v, 0, 1e30)}
    values = {**settings, "hidden": hidden}

    def fits(key: str, value: Any) -> bool:
        if key == "hidden":
            return integer(value, 1, _MAX_HIDDEN)
        return key not in bounds or bounds[key](value)

    bad = [k for k, v in values.items() if not fits(k, v)]
    if not bad:
        return None
    values = {k: values[k] for k in bad}
    return "out of range or of the wrong type: " + ", ".join(f"{k}={v!r}"
                                                             for k, v in values.items())


def check_nets(nets: LearnedZO, source: str = "the networks") -> None:
    """A :class:`PretrainedError` unless every weight of ``nets`` is finite and of sane size."""
    state = nets.state_dict()
    _check_tensors(state, {k: tuple(v.shape) for k, v in state.items()}, source)


def check_weights(weights: Any, like: LearnedZO, source: str) -> None:
    """A :class:`PretrainedError` unless ``weights`` would load into ``like`` unchanged in shape:
    the same names and shapes, finite, of sane size (what ``ZOLSTM.load_state_dict`` checks)."""
    if not isinstance(weights, Mapping):
        raise PretrainedError(f"{source} is a {type(weights).__name__}, not a state dict")
    expected = {k: tuple(v.shape) for k, v in like.state_dict().items()}
    _check_tensors(weights, expected, f"{source} does not fit these networks "
                   f"({like.arch.kind}, hidden {like.arch.hidden})")


def _check_tensors(weights: Mapping[Any, Any], expected: Mapping[str, tuple[int, ...]],
                   what: str) -> None:
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        raise PretrainedError(f"{what}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, shape in expected.items():
        value = weights[key]
        if not isinstance(value, Tensor) or value.layout != torch.strided \
                or not value.is_floating_point() or value.device.type == "meta":
            kind = (f"a {value.layout} {value.dtype} tensor" if isinstance(value, Tensor)
                    else f"a {type(value).__name__}")
            raise PretrainedError(f"{what}: {key} is {kind}, not a dense floating tensor")
        if tuple(value.shape) != shape:
            raise PretrainedError(f"{what}: {key} has shape {tuple(value.shape)}, expected "
                                  f"{shape}")
        largest = float(value.detach().abs().max()) if value.numel() else 0.0
        if not math.isfinite(largest):
            raise PretrainedError(f"{what}: {key} holds non-finite values")
        if largest > MAX_ABS_WEIGHT:
            raise PretrainedError(f"{what}: {key} holds a weight of magnitude {largest:.3g}, "
                                  f"more than {MAX_ABS_WEIGHT:g} (trained weights are of order 1)")


def save(nets: LearnedZO, path: PathLike, meta: dict[str, Any] | None = None) -> None:
    """Write ``nets`` (weights, architecture and ``meta``) in the format :func:`load_file` reads."""
    torch.save({"weights": nets.state_dict(), "arch": nets.arch.to_dict(), "meta": meta or {}},
               path)
