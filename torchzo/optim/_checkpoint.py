"""Checking a state dict before ``ZOOptimizer.load_state_dict`` changes anything.

The module is private to the package; its names are public to the modules that import it.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from ..oracle.directions.counter import GAUSSIAN_STREAM
from ._guard import all_finite, user_stacklevel
from ._validation import first_overlap, overlaps_itself

__all__ = ["GAUSSIAN_STREAMS", "Checked", "Slot", "check_entry", "check_state_dict",
           "check_state_tensor", "saved_positions", "warn_old_stream"]


@dataclass(frozen=True)
class Slot:
    """What one key of a parameter's state holds: a tensor shaped like the parameter
    (``kind="tensor"``) or a step count (``kind="count"``, an int >= 0)."""

    kind: str = "tensor"
    #: Whether a saved entry must have it (an empty entry is a parameter with no state yet).
    required: bool = True
    #: Whether it may be ``None`` (torch.optim's SGD saves a momentum buffer of None).
    none: bool = False
    #: Whether its elements must be >= 0 (a second moment, whose square root the update takes).
    nonnegative: bool = False


class Checked(Protocol):
    """What :func:`check_state_dict` asks of the optimizer it checks a state dict against
    (``ZOOptimizer`` and its subclasses)."""

    param_groups: list[dict[str, Any]]
    _generator: torch.Generator

    def _validate_group(self, group: dict[str, Any]) -> None: ...

    def _check_loaded(self, state_dict: dict[str, Any]) -> None: ...

    def _check_saved_state(self, p: Tensor, group: dict[str, Any], entry: dict[str, Any],
                           where: str) -> None: ...


def check_state_dict(opt: Checked, state_dict: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(zo, rest)``: the checked ``"zo"`` entry (steps, queries, generator state) and the
    torch.optim part to load, whose groups carry this optimizer's value of any hyperparameter
    the file predates. A ``ValueError`` says what is wrong; nothing is changed."""
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"a state dict is a dict, got {type(state_dict).__name__}")
    if "zo" not in state_dict:
        raise ValueError("state_dict has no 'zo' entry (RNG and query counters): it was not "
                         "saved by a torchzo optimizer")
    zo = _check_zo(state_dict["zo"], opt._generator)
    opt._check_loaded(dict(state_dict))
    groups, state = state_dict.get("param_groups"), state_dict.get("state")
    if not isinstance(groups, list) or not all(isinstance(g, Mapping) for g in groups):
        raise ValueError("state_dict['param_groups'] must be a list of dicts")
    if not isinstance(state, Mapping):
        raise ValueError("state_dict['state'] must be a dict")
    if len(groups) != len(opt.param_groups):
        raise ValueError(f"the state dict has {len(groups)} param groups, this optimizer "
                         f"{len(opt.param_groups)}")
    merged = []
    for i, (now, saved) in enumerate(zip(opt.param_groups, groups)):
        ids = saved.get("params")
        if not isinstance(ids, list) or len(ids) != len(now["params"]):
            raise ValueError(f"state_dict['param_groups'][{i}] must list {len(now['params'])} "
                             f"parameters (as this optimizer's group {i}), got {ids!r}")
        # A file from before a hyperparameter existed keeps this optimizer's value of it.
        group = {**{k: v for k, v in now.items() if k != "params"}, **saved}
        try:
            opt._validate_group({**group, "params": now["params"]})
        except (TypeError, ValueError) as err:
            raise ValueError(f"state_dict['param_groups'][{i}]: {err}") from err
        merged.append(group)
    positions = saved_positions(merged)
    params = [(p, g) for g in opt.param_groups for p in g["params"]]
    for key, entry in state.items():
        if key not in positions:
            raise ValueError(f"state_dict['state'] has an entry for parameter {key!r}, which "
                             "no param group lists")
        if not isinstance(entry, Mapping):
            raise ValueError(f"state_dict['state'][{key!r}] must be a dict, got "
                             f"{type(entry).__name__}")
        p, group = params[positions[key]]
        opt._check_saved_state(p, group, dict(entry), f"state_dict['state'][{key!r}]")
    rest = {k: v for k, v in state_dict.items() if k != "zo"}
    rest["param_groups"] = merged
    rest["state"] = _own_memory(state, [p for p, _ in params])
    return zo, rest


def check_entry(p: Tensor, entry: Mapping[str, Any], where: str,
                slots: Mapping[str, Slot]) -> None:
    """A ``ValueError`` unless ``entry`` can be ``p``'s state under ``slots``: exactly their
    keys (an empty entry is state not made yet), each holding what its slot says."""
    if not entry:
        return
    unknown = sorted((k for k in entry if k not in slots), key=str)
    missing = [k for k, slot in slots.items() if slot.required and k not in entry]
    if unknown or missing:
        raise ValueError(f"{where} has unknown entries {unknown} and lacks {missing}: this "
                         f"optimizer's state holds {sorted(slots)}")
    for key, value in entry.items():
        slot, at = slots[key], f"{where}[{key!r}]"
        if value is None and slot.none:
            continue
        if slot.kind == "count":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{at} must be a step count (an int >= 0), got {value!r}")
            continue
        check_state_tensor(value, at)
        if value.shape != p.shape:
            raise ValueError(f"{at} has shape {tuple(value.shape)}, the parameter "
                             f"{tuple(p.shape)}")
        if not all_finite([value]):
            raise ValueError(f"{at} holds non-finite values")
        if slot.nonnegative and bool((value < 0).any()):
            raise ValueError(f"{at} holds negative values (it is a second moment)")


def check_state_tensor(value: Any, where: str) -> None:
    """A ``ValueError`` unless ``value`` is a tensor a step can read and update in place, as
    parameters must be: dense, with data, floating point of 16 bits or more, not an inference
    tensor, each element in memory of its own (not ``zeros(1).expand(5)``)."""
    if not isinstance(value, Tensor):
        raise ValueError(f"{where} must be a tensor, got {type(value).__name__}")
    problem = None
    if value.layout != torch.strided:
        problem = f"has layout {value.layout} (state tensors are dense)"
    elif value.device.type == "meta":
        problem = "is on the meta device (it holds no values)"
    elif not value.is_floating_point() or value.dtype.itemsize < 2:
        problem = f"is {value.dtype}, not floating point of 16 bits or more"
    elif value.is_inference():
        problem = "is an inference tensor, which cannot be updated in place"
    elif overlaps_itself(value):
        problem = (f"has elements that share memory (strides {value.stride()} for shape "
                   f"{tuple(value.shape)}, as from expand())")
    if problem is not None:
        raise ValueError(f"{where} {problem}")


def _own_memory(state: Mapping[Any, Any], params: list[Tensor]) -> Mapping[Any, Any]:
    """``state``, or where two of its tensors, or one and a parameter, share memory (as a
    file's tensors saved from views of one buffer do), a copy whose tensors are copies: the
    update writes each in place, which would change the other."""
    tensors = [v for entry in state.values() for v in entry.values() if isinstance(v, Tensor)]
    if first_overlap([*params, *tensors], len(params)) is None:
        return state
    return {key: {k: v.clone() if isinstance(v, Tensor) else v for k, v in entry.items()}
            for key, entry in state.items()}


def saved_positions(groups: Sequence[Mapping[str, Any]]) -> dict[Any, int]:
    """Each saved parameter id's position in param-group order (how torch.optim maps them)."""
    ids = [i for g in groups for i in g["params"]]
    if len(set(ids)) != len(ids) or any(isinstance(i, (bool, float)) for i in ids):
        raise ValueError(f"the param groups' parameter ids must be distinct ints, got {ids!r}")
    return {i: k for k, i in enumerate(ids)}


def _check_zo(zo: Any, generator: torch.Generator) -> dict[str, Any]:
    if not isinstance(zo, Mapping):
        raise ValueError(f"state_dict['zo'] must be a dict, got {type(zo).__name__}")
    out: dict[str, Any] = {}
    for key in ("steps", "queries"):
        value = zo.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"state_dict['zo'][{key!r}] must be an int >= 0, got {value!r}")
        out[key] = int(value)
    state = zo.get("generator")
    if not isinstance(state, Tensor) or state.dtype != torch.uint8:
        raise ValueError("state_dict['zo']['generator'] must be a generator state (a uint8 "
                         f"tensor), got {type(state).__name__}")
    try:  # a scratch generator of the same kind tells whether the state fits
        torch.Generator(device=generator.device).set_state(state.clone())
    except (RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"state_dict['zo']['generator'] is not a state of this optimizer's "
                         f"{generator.device} generator: {err}") from err
    out["generator"] = state
    stream = zo.get("gaussian_stream", 1)  # absent: saved before the stream had a version
    if isinstance(stream, bool) or stream not in GAUSSIAN_STREAMS:
        raise ValueError(f"state_dict['zo']['gaussian_stream'] must be one of "
                         f"{GAUSSIAN_STREAMS} (this torchzo's Gaussian streams), got {stream!r}")
    out["gaussian_stream"] = stream
    return out


#: The Gaussian direction streams a state dict may name: 1, torch's generator (state dicts of
#: earlier torchzo versions, which carry no number), and :data:`GAUSSIAN_STREAM`.
GAUSSIAN_STREAMS = (1, GAUSSIAN_STREAM)


def warn_old_stream(zo: Mapping[str, Any], kinds: set[str]) -> None:
    """Warn where a state dict saved with the old Gaussian stream resumes a run that draws
    Gaussian directions: it continues with the same distribution, not the same draws."""
    if zo["gaussian_stream"] != GAUSSIAN_STREAM and kinds & {"gaussian", "orthogonal", "auto"}:
        warnings.warn(
            "this state dict was saved by a torchzo that drew Gaussian directions from torch's "
            "generator; they now come from torchzo's own counter-based stream (the same "
            "distribution, other draws), so the run resumes but does not repeat the old one "
            "bit for bit", UserWarning, stacklevel=user_stacklevel())
