"""ZOLSTM's state between the learned step's typed values and torch.optim's dicts of tensors.

The learned step takes and returns typed state (:class:`torchzo.learned.LearnedState`: one
``NamedTuple`` per tensor, one per param group where the architecture has group-level state).
``ZOLSTM`` keeps torch.optim's convention, ``self.state[p]`` a dict of tensors per parameter,
so that ``state_dict()`` stays torch-shaped; this module is the one place that converts.

Layout (``state_dict()["zo"]["version"]``):

- **2**: ``state[p]`` holds the fields of ``p``'s tensor state (``query_out`` only where it
  was computed ahead); the state of a param group (the generalist's step-size controller) is
  held once, in the state of the group's first parameter, under the field names prefixed
  ``"group."`` (``"group.log_sigma"``, ...);
- **1** (no ``"version"``: files saved before the typed state): the group's fields unprefixed
  and repeated, with equal values, in every tensor's state. :func:`current_layout` translates
  it on loading: the first parameter's copy becomes the group's, the others are dropped (a
  step read only the first).

The module is private to the package; its names are public to the modules that import it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..learned.arch import Architecture, TensorState

__all__ = ["GROUP", "VERSION", "current_layout", "group_state", "state_shapes", "stored",
           "tensor_state"]

#: The prefix of a group-level field in the state of its group's first parameter.
GROUP = "group."
#: The layout ``state_dict()`` writes.
VERSION = 2


def tensor_state(arch: Architecture, p: Tensor, entry: Mapping[str, Tensor] | None,
                 dtype: torch.dtype) -> TensorState:
    """``p``'s typed state from its stored ``entry``; a fresh one (``compact`` fields in
    ``dtype``, as a step would store them) if it has none yet."""
    if not entry or arch.state_type._fields[0] not in entry:  # type: ignore[attr-defined]
        return _compact(arch, arch.init_state(p), dtype)
    fields = arch.state_type._fields  # type: ignore[attr-defined]
    return arch.state_type(**{k: entry[k] for k in fields if k in entry})  # type: ignore[no-any-return]


def group_state(arch: Architecture, first: Tensor, entry: Mapping[str, Tensor] | None) -> Any:
    """The typed state of the group whose first parameter is ``first`` (stored in its
    ``entry``), fresh if none is stored; ``None`` for an architecture without one."""
    kind = arch.group_state_type
    if kind is None:
        return None
    if not entry or GROUP + kind._fields[0] not in entry:  # type: ignore[attr-defined]
        return arch.init_group_state(first)
    return kind(**{k: entry[GROUP + k] for k in kind._fields})  # type: ignore[attr-defined]


def stored(arch: Architecture, st: TensorState, group: Any, dtype: torch.dtype
           ) -> dict[str, Tensor]:
    """A parameter's ``self.state[p]``: its tensor state (the architecture's
    ``compact_keys`` in ``dtype``), and ``group``'s fields if it is its group's first."""
    entry = {k: v for k, v in _compact(arch, st, dtype)._asdict().items() if v is not None}
    if group is not None:
        entry.update({GROUP + k: v for k, v in group._asdict().items()})
    return entry


def state_shapes(arch: Architecture, p: Tensor, first: bool) -> dict[str, tuple[int, ...]]:
    """The shapes of ``p``'s stored state (``first``: of its group's first parameter, with the
    group's fields), ``query_out`` included; computed on the meta device where the
    architecture allows (nothing allocated)."""
    try:
        probe = torch.empty(p.shape, device="meta")
        fresh, group = arch.init_state(probe), arch.init_group_state(probe) if first else None
    except (NotImplementedError, RuntimeError):
        fresh, group = arch.init_state(p), arch.init_group_state(p) if first else None
    shapes = {k: tuple(v.shape) for k, v in stored(arch, fresh, group, torch.float32).items()}
    shapes.setdefault("query_out", (p.numel(),))
    return shapes


def current_layout(state_dict: Any, arch: Architecture) -> Any:
    """``state_dict`` in the layout this version reads (a new dict; the tensors shared). A
    malformed one is returned as it is, for the checks to report; an unknown version raises
    ``ValueError``."""
    zo = state_dict.get("zo") if isinstance(state_dict, Mapping) else None
    if not isinstance(zo, Mapping):
        return state_dict
    version = zo.get("version", 1)
    if version == VERSION:
        return state_dict
    if version != 1 or isinstance(version, bool):
        raise ValueError(f"state_dict['zo']['version'] is {version!r}; this ZOLSTM reads "
                         f"layouts 1 and {VERSION}")
    groups, state = state_dict.get("param_groups"), state_dict.get("state")
    kind = arch.group_state_type
    if kind is None or not isinstance(groups, list) or not isinstance(state, Mapping):
        return {**state_dict, "zo": {**zo, "version": VERSION}}
    fields = kind._fields  # type: ignore[attr-defined]
    new = dict(state)
    for g in groups:
        ids = g.get("params") if isinstance(g, Mapping) else None
        for j, pid in enumerate(ids if isinstance(ids, list) else []):
            entry = state.get(pid) if isinstance(pid, int) else None
            if not isinstance(entry, Mapping):
                continue
            own = {k: v for k, v in entry.items() if k not in fields}
            if j == 0:
                own.update({GROUP + k: v for k, v in entry.items() if k in fields})
            new[pid] = own
    return {**state_dict, "state": new, "zo": {**zo, "version": VERSION}}


def _compact(arch: Architecture, st: TensorState, dtype: torch.dtype) -> TensorState:
    """``st`` with the architecture's ``compact_keys`` in ``dtype`` (the rest float32)."""
    if dtype == torch.float32 or not arch.compact_keys:
        return st
    return st._replace(**{k: getattr(st, k).to(dtype)  # type: ignore[attr-defined, no-any-return]
                          for k in arch.compact_keys})
