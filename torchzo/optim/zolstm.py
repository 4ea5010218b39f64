"""ZOLSTM: the learned zeroth-order optimizer (Ruan et al., ICLR 2020) as a torch optimizer."""
from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor

from .. import learned
from ..learned.arch import LeanConfig, TensorState, Weights
from ..learned.nets import LearnedZO
from ..learned.seeded import NonFiniteStepError, update_seeded
from ..learned.step import COVARIANCES, LearnedState, next_query_outputs, scales_from_outputs
from ..oracle import Batched, Estimate, Part, Scheme
from ..oracle.seeded import SeededEstimate
from . import _learned_state
from ._checkpoint import check_state_tensor, saved_positions
from ._guard import NonFiniteUpdateError, all_finite, max_abs, user_stacklevel
from ._inference import estimate_inference
from ._validation import check_number
from .base import ParamsT, ZOOptimizer

__all__ = ["COVARIANCES", "ZOLSTM"]
STATE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# ``covariance`` was called ``directions``, with these values, before the word meant only the
# query vectors themselves; the old name still works, with a warning.
_OLD_COVARIANCE = {"learned": "learned", "gaussian": "identity", "guided_es": "guided"}


class ZOLSTM(ZOOptimizer):
    r"""The learned ZO optimizer: a QueryRNN shapes the query distribution, an UpdateRNN steps.

    Each step the QueryRNN predicts a per-coordinate standard deviation ``|s|`` of the query
    directions from the previous estimate and update (``trace(Sigma) = d``); with probability
    ``query_prob`` the oracle samples ``u = |s| z``, otherwise ``u = z`` (the bias/variance mix
    of the paper). The UpdateRNN maps the estimate to the update, which is added to the
    parameters after scaling by ``lr`` (the paper's output scale alpha; schedulers work on it).
    That is the paper's architecture. The default weights are the generalist's
    (:class:`~torchzo.learned.GeneralConfig`): scale-free inputs, a normalised direction and
    a step size it sets and adapts itself, so ``lr=1`` is right on problems it never saw
    (docs/generalist.md).

    The step is :func:`torchzo.learned.plan` and :func:`torchzo.learned.update`, the functions
    that ``torchzo.meta`` trains. All coordinates of the parameters that share an estimate
    share one normalisation of the QueryRNN's output. Every argument but ``pretrained``,
    ``seed``, ``generator`` and ``distributed`` is a per-group hyperparameter: in
    ``param_groups`` (schedulers see them) and in ``state_dict()``; groups that differ in
    ``directions``, ``query_prob``, ``guide_alpha`` or ``directions_kind`` are estimated
    separately.

    Args:
        params: parameters or param groups.
        pretrained: a shipped name (see ``torchzo.pretrained.available()``), a path to a weights
            file, a state dict of :class:`~torchzo.learned.LearnedZO`, or a ``LearnedZO`` module
            (used as is, e.g. during meta-training). ``None``: the shipped default
            (``torchzo.pretrained.default_name()``, the scale-free ``generalist``, meant for
            problems it never saw; see docs/generalist.md).
        lr: output scale alpha. With ``use_update=False``: the ZO-SGD step size.
        q, mu, estimator, maximize: as for :class:`ZOSGD`.
        query_prob: probability that a step samples from the learned covariance (one draw per
            step and estimate).
        covariance: how the query directions are shaped: ``"learned"`` (the QueryRNN's),
            ``"identity"`` (the paper's no-query ablation: the unscaled draws ``z``) or
            ``"guided"`` (the GuidedES ablation: directions guided towards the span of the
            previous estimate and update, see :class:`torchzo.oracle.Guide`). Called
            ``directions`` (values ``"learned"``, ``"gaussian"``, ``"guided_es"``) before; that
            name still works, with a ``FutureWarning``.
        use_update: ``False`` is the no-update ablation (the queries above, a ZO-SGD step).
        guide_alpha: GuidedES's weight of the full space (``covariance="guided"`` only).
        seed, generator: the source of query directions and of the mix draws.
        memory: ``"exact"`` (the default), or ``"inference"`` for networks whose update runs a
            piece of a tensor at a time (the ``lean`` architecture): the parameters are
            perturbed in place and the update regenerates the directions from their seeds,
            so a step holds no copy of the parameters and no d-sized estimate (see
            :class:`~torchzo.optim.base.ZOOptimizer`; ``directions_kind="auto"`` then means
            Gaussian).
        state_dtype: storage dtype of the per-coordinate LSTM states (``torch.float32``,
            ``torch.bfloat16`` or ``torch.float16``). They are computed in float32 either way;
            bfloat16 storage about halves the optimizer state (measured in
            docs/benchmarks/overhead.md), at the cost of rounding the states between steps
            (the shipped weights were trained in float32).
        directions_kind: the distribution of the base draw ``z`` that every setting of
            ``covariance`` scales or guides: ``"gaussian"`` (standard normal),
            ``"rademacher"`` (independent signs +-1, the same unit variance),
            ``"orthogonal"`` (a step's Gaussian draws orthogonalised) or ``"auto"``
            (orthogonal where q is a sizeable fraction of d, Gaussian otherwise; see
            :mod:`torchzo.oracle.directions`). ``None``: the kind the weights name
            (``nets.arch.directions_kind``: what they are meant to run with; ``"auto"`` for the
            shipped ``generalist``, Gaussian for the paper's files). ``covariance="identity"``
            means unscaled ``z`` of this kind.
    """

    _keeps_estimates = True  # the previous estimate is an input of the next step

    def __init__(self, params: ParamsT, pretrained: Any = None, lr: float = 1.0, q: int = 20,
                 mu: float | None = None, estimator: str = "forward", query_prob: float = 0.5,
                 covariance: str = "learned", use_update: bool = True, maximize: bool = False,
                 *, guide_alpha: float = 0.5, seed: int | None = None,
                 generator: torch.Generator | None = None,
                 distributed: Any = None, state_dtype: torch.dtype = torch.float32,
                 directions_kind: str | None = None, directions: str | None = None,
                 memory: str = "exact") -> None:
        if directions is not None:
            covariance = _renamed({"directions": directions})["covariance"]
        self.nets = _load_nets(pretrained)
        if memory == "inference" and not self.nets.arch.chunked:
            raise ValueError(f"memory='inference' needs networks whose update runs a piece of "
                             f"a tensor at a time (the 'lean' architecture); the "
                             f"{self.nets.arch.kind!r} networks keep per-coordinate state "
                             f"that needs the whole estimate: use memory='exact'")
        if directions_kind is None:
            directions_kind = self.nets.arch.directions_kind
            if memory == "inference" and directions_kind == "auto":
                # Orthogonal directions cannot be drawn a piece at a time, and "auto" picks
                # Gaussian ones wherever d is large next to q, which is where memory matters.
                directions_kind = "gaussian"
        defaults = dict(lr=lr, q=q, mu=mu, estimator=estimator, maximize=maximize,
                        query_prob=query_prob, covariance=covariance, use_update=use_update,
                        guide_alpha=guide_alpha, state_dtype=state_dtype,
                        directions_kind=directions_kind)
        super().__init__(params, defaults, seed=seed, generator=generator,
                         distributed=distributed, memory=memory)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        if group["state_dtype"] not in STATE_DTYPES:
            raise ValueError(f"state_dtype must be one of {STATE_DTYPES}, "
                             f"got {group['state_dtype']!r}")
        if group["covariance"] not in COVARIANCES:
            raise ValueError(f"covariance must be one of {COVARIANCES}, "
                             f"got {group['covariance']!r}")
        if not isinstance(group["use_update"], bool):
            raise ValueError(f"use_update must be a bool, got {group['use_update']!r}")
        if not self.nets.arch.has_history and (group["covariance"] == "guided"
                                               or not group["use_update"]):
            raise ValueError(f"covariance='guided' and use_update=False need networks that "
                             f"keep the last estimate and update; the "
                             f"{self.nets.arch.kind!r} networks keep neither")
        for name in ("query_prob", "guide_alpha"):
            check_number(name, group[name], allow_zero=True, upper=1)

    def _partition_key(self, group: dict[str, Any]) -> tuple[Any, ...]:
        # Tensors that share an estimate share its query distribution.
        return group["covariance"], group["query_prob"], group["guide_alpha"]

    @torch.no_grad()
    def _parts(self, weights: Weights | None = None) -> list[Part]:
        """The base parts, with the radius the architecture gives from the group's ``mu``
        and the state of the group of the part's first tensor (the generalists grow it on
        zero-signal steps; the lean one sets it itself when ``mu`` is ``None``).
        ``weights``: the networks' weights, where the caller has fetched them already."""
        params, arch = self._params(), self.nets.arch
        weights = self.nets.weights() if weights is None else weights
        group_of = {p: g for g in self.param_groups for p in g["params"]}
        out = []
        for part in super()._parts():
            first = group_of[params[part.index[0]]]
            group = self._group_state(first)
            if group is None:
                out.append(part)
                continue
            given = first["mu"] if arch.owns_radius else part.mu  # part.mu: mu or the default
            mu = float(arch.radius(weights, group, given, [params[i] for i in part.index]))
            out.append(part if mu == part.mu else dataclasses.replace(part, mu=mu))
        return out

    def _state_of(self, p: Tensor, group: dict[str, Any]) -> TensorState:
        return _learned_state.tensor_state(self.nets.arch, p, self.state.get(p),
                                           group["state_dtype"])

    def _group_state(self, group: dict[str, Any]) -> Any:
        """A param group's own state, held in the state of its first parameter."""
        first = group["params"][0]
        return _learned_state.group_state(self.nets.arch, first, self.state.get(first))

    def _learned_groups(self) -> tuple[list[Tensor], LearnedState, list[learned.Group]]:
        """The learned step's view of the param groups: every parameter, the typed state of
        each parameter and group, and each group's settings (positions in that list)."""
        active = [g for g in self.param_groups if g["params"]]
        params = [p for g in active for p in g["params"]]
        state = LearnedState([self._state_of(p, g) for g in active for p in g["params"]],
                             [self._group_state(g) for g in active])
        groups, start = [], 0
        for g in active:
            index = tuple(range(start, start + len(g["params"])))
            start += len(index)
            groups.append(learned.Group(index, g["lr"], g["maximize"], g["use_update"],
                                        g["covariance"], g["query_prob"], g["guide_alpha"],
                                        Scheme(g["estimator"], g["q"]).directions))
        return params, state, groups

    @torch.no_grad()
    def _step(self, objective: Callable[[], Any] | Batched) -> Estimate | SeededEstimate:
        """:func:`torchzo.learned.plan`, the oracle's estimate, :func:`torchzo.learned.update`."""
        params, state, groups = self._learned_groups()
        weights = self.nets.weights()
        plan = learned.plan(weights, self.nets.arch, params, state, groups,
                            self._parts(weights), self._generator)
        if self.memory == "inference":
            seeded = estimate_inference(self, objective, plan.queries)
            try:
                new = update_seeded(weights, cast(LeanConfig, self.nets.arch), params, state,
                                    groups, seeded, lambda t: max_abs([t]))
            except NonFiniteStepError as err:
                raise NonFiniteUpdateError(f"{err}: parameters (to rounding), optimizer state, "
                                           "RNG and counters are as before") from err
            self._store(new)
            return seeded
        found = self._estimate(objective, plan.queries)
        if self._guard is not None:
            # The entries' items, not copies of their tensors: only the paper architecture's
            # LSTM states are overwritten in place (bounded, so finite), and copying them
            # would cost a fifth of its step; every other tensor is new, so the old is kept.
            self._guard.save_state(copy=False)
        self._update_learned(weights, params, state, groups, plan, found.grads,
                             float(found.loss))
        return found

    def _may_warn_zero(self, loss: Any) -> bool:
        # Networks that set the radius themselves grow it on zero-signal steps: "try a
        # larger mu" is what they are doing already.
        if self.nets.arch.owns_radius and all(g["mu"] is None for g in self.param_groups):
            return False
        return super()._may_warn_zero(loss)

    def _not_restored(self) -> str:
        # The recurrent states are what an architecture may store compactly, and what the
        # paper's overwrites in place.
        keys = self.nets.arch.compact_keys
        return f" (except the LSTM states {', '.join(keys)}: they have advanced)" if keys else ""

    @torch.no_grad()
    def _update_learned(self, weights: Weights, params: list[Tensor], state: LearnedState,
                        groups: list[learned.Group], plan: learned.Plan, grads: list[Tensor],
                        loss: float | None) -> None:
        """:func:`torchzo.learned.update` in place; stores the new states (LSTM states in each
        group's ``state_dtype``; a group's own state with its first parameter's)."""
        grads = [g.to(p.dtype) for g, p in zip(grads, params)]
        self._store(learned.update(weights, self.nets.arch, params, state, groups, grads, loss,
                                   plan, in_place=True).state)

    def _store(self, new: LearnedState) -> None:
        """The learned step's new states into ``self.state`` (see :meth:`_update_learned`)."""
        arch = self.nets.arch
        active = [g for g in self.param_groups if g["params"]]
        tensors = iter(new.tensors)
        for g, group_state in zip(active, new.groups):
            for j, p in enumerate(g["params"]):
                self.state[p] = _learned_state.stored(arch, next(tensors), group_state
                                                      if j == 0 else None, g["state_dtype"])

    @torch.no_grad()
    def next_query_scales(self, params: list[Tensor] | None = None) -> list[Tensor]:
        """The per-coordinate standard deviations of the next step's learned query directions.

        For ``params`` (default: every parameter, normalised together as when they share
        directions); the next step uses them when its mix draw picks the learned covariance.
        Changes nothing.
        """
        if params is None:
            params = self._params()
        if not self.nets.arch.has_query:
            return [torch.ones_like(p, dtype=torch.float32) for p in params]
        group_of = {p: g for g in self.param_groups for p in g["params"]}
        states = [self._state_of(p, group_of[p]) for p in params]
        outs, _ = next_query_outputs(self.nets.weights(), self.nets.arch, states,
                                     self._group_state(group_of[params[0]]))
        scales = scales_from_outputs(self.nets.arch, outs)
        return [s.view_as(p) for s, p in zip(scales, params)]

    def state_dict(self) -> dict[str, Any]:
        """The base state dict plus the network weights and the layout's version
        (``sd["zo"]["version"]``); LSTM states live in ``state``, a param group's own state
        in its first parameter's, under ``"group."`` keys (docs/zolstm.md, State)."""
        sd = super().state_dict()
        sd["zo"]["nets"] = {k: v.clone() for k, v in self.nets.state_dict().items()}
        sd["zo"]["version"] = _learned_state.VERSION
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore weights, per-coordinate LSTM states and the RNG: resumes bit-exactly.

        A file saved before the ZO-LSTM settings were hyperparameters keeps this optimizer's.
        As for every torchzo optimizer, everything is checked first (here also the network
        weights against these networks, and each state's entries and shapes against their
        architecture), and a state dict that fails changes nothing. A file that names the
        covariance setting by its old name (``directions``) loads as its new one, and one saved
        before the typed state (group-level entries in every tensor's state) as the same state.
        """
        state_dict = _learned_state.current_layout(state_dict, self.nets.arch)
        groups = state_dict.get("param_groups") if isinstance(state_dict, Mapping) else None
        if isinstance(groups, list) and any(isinstance(g, Mapping) and "directions" in g
                                            for g in groups):
            state_dict = {**state_dict, "param_groups": [
                _renamed(g, warn=False) if isinstance(g, Mapping) else g for g in groups]}
        super().load_state_dict(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As for every torchzo optimizer; a group may still name ``covariance`` by its old
        name ``directions`` (with a ``FutureWarning``)."""
        if "directions" in param_group:
            param_group = _renamed(param_group)
        super().add_param_group(param_group)

    def _update_scalars(self, group: dict[str, Any]) -> dict[str, float]:
        # The learned step multiplies its float32 tensors by lr, which overflows to inf (a
        # non-finite update the step refuses) rather than raising.
        return {}

    def _check_saved_state(self, p: Tensor, group: dict[str, Any], entry: dict[str, Any],
                           where: str) -> None:
        if not entry:
            return
        expected = _learned_state.state_shapes(self.nets.arch, p, p is group["params"][0])
        unknown = sorted(set(entry) - set(expected), key=str)
        missing = [k for k in expected if k != "query_out" and k not in entry]
        if unknown or missing:
            raise ValueError(f"{where} does not fit {self.nets.arch.kind!r} networks: unknown "
                             f"entries {unknown}, missing {missing}")
        for key, value in entry.items():
            check_state_tensor(value, f"{where}[{key!r}]")
            if tuple(value.shape) != expected[key]:
                raise ValueError(f"{where}[{key!r}] has shape {tuple(value.shape)}; these "
                                 f"networks (hidden {self.nets.arch.hidden}) and the parameter "
                                 f"need {expected[key]}")
        if not all_finite(entry.values()):
            raise ValueError(f"{where} holds non-finite values")
        for key, value in entry.items():
            if key.removeprefix(_learned_state.GROUP) in self.nets.arch.nonnegative_fields \
                    and bool((value < 0).any()):
                raise ValueError(f"{where}[{key!r}] holds negative values")

    def _check_loaded(self, state_dict: dict[str, Any]) -> None:
        if "nets" in state_dict["zo"]:
            from ..pretrained import PretrainedError, check_weights

            try:
                check_weights(state_dict["zo"]["nets"], self.nets, "state_dict['zo']['nets']")
            except PretrainedError as err:
                raise ValueError(str(err)) from err

    def _commit_loaded(self, state_dict: dict[str, Any], rest: dict[str, Any]) -> None:
        if "nets" in state_dict["zo"]:
            self.nets.load_state_dict(dict(state_dict["zo"]["nets"]))  # checked: cannot fail
        # torch.optim casts loaded state to the parameter dtype; ZO-LSTM state keeps its own.
        saved = rest["state"]
        positions = saved_positions(rest["param_groups"])
        params = [(p, g) for g in self.param_groups for p in g["params"]]
        for key, entry in saved.items():
            p, g = params[positions[key]]
            compact = self.nets.arch.compact_keys
            for k, value in entry.items():  # checked against the architecture's entries
                dtype = g["state_dtype"] if k in compact else torch.float32
                self.state[p][k] = value.to(p.device, dtype)


def _load_nets(pretrained: Any) -> LearnedZO:
    from .. import pretrained as shipped

    if isinstance(pretrained, LearnedZO):
        shipped.check_nets(pretrained, "the pretrained LearnedZO")
        return pretrained
    if pretrained is None:
        return shipped.load()
    if isinstance(pretrained, str):
        try:
            names = shipped.available()
        except shipped.PretrainedError as err:  # no (valid) manifest: a path can still load
            names, why = [], f"no shipped weights ({err})"
        else:
            why = f"available: {names}"
        if pretrained in names:
            return shipped.load(pretrained)
        if not Path(pretrained).is_file():
            raise shipped.PretrainedError(f"no weights file at {pretrained!r}, and no shipped "
                                          f"optimizer of that name; {why}")
        return shipped.load_file(pretrained)
    if isinstance(pretrained, os.PathLike):
        return shipped.load_file(pretrained)
    if isinstance(pretrained, Mapping):
        return shipped.from_state_dict(pretrained)
    raise ValueError(f"pretrained must be a shipped name, a path, a state dict or a LearnedZO, "
                     f"got {type(pretrained).__name__}")


def _renamed(group: Mapping[str, Any], warn: bool = True) -> dict[str, Any]:
    """``group`` with its old ``directions`` setting as ``covariance`` (values translated)."""
    out = {k: v for k, v in group.items() if k != "directions"}
    old = group["directions"]
    if "covariance" in group:
        raise ValueError("give covariance or its old name directions, not both")
    if not isinstance(old, str) or old not in _OLD_COVARIANCE:
        raise ValueError(f"directions (now covariance) must be one of "
                         f"{tuple(_OLD_COVARIANCE)}, got {old!r}")
    out["covariance"] = _OLD_COVARIANCE[old]
    if warn:
        warnings.warn(f"ZOLSTM's directions={old!r} is now covariance="
                      f"{out['covariance']!r}", FutureWarning, stacklevel=user_stacklevel())
    return out
