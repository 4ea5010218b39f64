"""The learned architectures by name, the presets that ship, and their stored form.

A weights file stores its architecture as ``{"kind": "general", "config": {...}}``
(:meth:`Architecture.to_dict`); :func:`from_dict` reads that and the flat form that files
written before the architectures had modules of their own hold (one dict of every setting of
every kind): it keeps the kind's own settings and drops the others where the kind never read
them, or where they hold the value that made them do nothing.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any

from .base import Architecture, HistoryState, TensorState, Weights, detached, replace
from .general import ControlState, GeneralConfig, GeneralState
from .lean import LeanConfig, LeanControl, LeanState
from .paper import PaperConfig, PaperState

__all__ = ["ARCHITECTURES", "PRESETS", "Architecture", "ControlState", "GeneralConfig",
           "GeneralState", "HistoryState", "LeanConfig", "LeanControl", "LeanState",
           "PaperConfig", "PaperState", "TensorState", "Weights", "detached", "from_dict",
           "replace"]

ARCHITECTURES: dict[str, type[Architecture]] = {"paper": PaperConfig, "general": GeneralConfig,
                                                "lean": LeanConfig}

#: The configurations of the shipped weights (pretrained/manifest.json names them).
PRESETS: dict[str, Architecture] = {
    "paper": PaperConfig(),
    "generalist": GeneralConfig(hidden=8, noise_inputs=True, query_net=False, max_step=0.5,
                                sigma_rate=0.25, directions_kind="auto"),
}

# Every setting of the flat form, whatever its kind.
_FLAT = ("hidden", "horizon", "momenta", "base", "beta2", "eps", "init_lr", "coord_hidden",
         "floor", "gain", "noise_inputs", "query_net", "sgd_mix", "mix_gain", "max_step",
         "sigma_rate", "directions_kind")


def from_dict(d: dict[str, Any] | None) -> Architecture:
    """The architecture stored as ``d`` (either form); ``None`` or ``{}`` (the oldest files)
    is the paper's. Raises ``ValueError`` or ``TypeError`` for an unknown kind or setting."""
    if not d:
        return PaperConfig()
    if not isinstance(d, dict):
        raise TypeError(f"an architecture is a dict, got {type(d).__name__}")
    kind = d.get("kind", "paper")
    if kind not in ARCHITECTURES:
        raise ValueError(f"arch kind must be one of {tuple(ARCHITECTURES)}, got {kind!r}")
    cls = ARCHITECTURES[kind]
    if set(d) == {"kind", "config"} and isinstance(d["config"], dict):
        config = dict(d["config"])
    else:
        config = _from_flat(cls, {k: v for k, v in d.items() if k != "kind"})
    if isinstance(config.get("momenta"), list):
        config["momenta"] = tuple(config["momenta"])
    return cls(**config)


def _from_flat(cls: type[Architecture], flat: dict[str, Any]) -> dict[str, Any]:
    """The settings of ``cls`` in a flat dict. Another kind's setting is dropped (``cls``
    never read it), and so is one that ``cls`` read once but has no more
    (:attr:`Architecture.retired`) when it holds the value at which it did nothing; at any
    other value the file is refused, since these networks cannot step as it did."""
    own = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    out = {}
    for key, value in flat.items():
        if key in own:
            out[key] = value
        elif key in cls.retired:
            if value != cls.retired[key]:
                raise ValueError(f"{key}={value!r}: the {cls.kind} architecture no longer has "
                                 f"{key!r} (no shipped weights used it)")
        elif key not in _FLAT:
            raise TypeError(f"unknown architecture setting {key!r}")
    return out
