"""ZOLSTM: the learned zeroth-order optimizer (Ruan et al., ICLR 2020) as a torch optimizer."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..learned import core
from ..learned.nets import LearnedZO
from ..oracle import Guide
from .base import ParamsT, ZOOptimizer, _check_positive
from .zosgd import zo_sgd

__all__ = ["DIRECTIONS", "ZOLSTM"]

DIRECTIONS = ("learned", "gaussian", "guided_es")
STATE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# The per-coordinate LSTM states: 40 of the 43 numbers ZO-LSTM keeps per coordinate.
_LSTM_KEYS = ("update_h", "update_c", "query_h", "query_c")


class ZOLSTM(ZOOptimizer):
    r"""The learned ZO optimizer: a QueryRNN shapes the query distribution, an UpdateRNN steps.

    Each step the QueryRNN predicts a per-coordinate standard deviation ``|s|`` of the query
    directions from the previous estimate and update (``trace(Sigma) = d``); with probability
    ``query_prob`` the oracle samples ``u = |s| z``, otherwise ``u = z`` (the bias/variance mix
    of the paper). The UpdateRNN maps the estimate to the update, which is added to the
    parameters after scaling by ``lr`` (the paper's output scale alpha; schedulers work on it).

    The networks are the ones that ``torchzo.meta`` trains: both run the functions of
    :mod:`torchzo.learned.core`. All coordinates of the parameters in a step share one
    normalisation of the QueryRNN's output.

    Args:
        params: parameters or param groups.
        pretrained: a shipped name (see ``torchzo.pretrained.available()``), a path to a weights
            file, a state dict of :class:`~torchzo.learned.LearnedZO`, or a ``LearnedZO`` module
            (used as is, e.g. during meta-training). ``None``: the shipped default.
        lr: output scale alpha. With ``use_update=False``: the ZO-SGD step size.
        q, mu, estimator, maximize: as for :class:`ZOSGD`.
        query_prob: probability that a step samples from the learned covariance (one draw per
            step and estimate).
        directions: ``"learned"`` (the QueryRNN), ``"gaussian"`` (the paper's no-query ablation:
            standard Gaussian directions) or ``"guided_es"`` (the GuidedES ablation: directions
            guided towards the span of the previous estimate and update, see
            :class:`torchzo.oracle.Guide`).
        use_update: ``False`` is the no-update ablation (the queries above, a ZO-SGD step).
        guide_alpha: GuidedES's weight of the full space (``directions="guided_es"`` only).
        seed, generator: the source of query directions and of the mix draws.
        state_dtype: storage dtype of the per-coordinate LSTM states (``torch.float32``,
            ``torch.bfloat16`` or ``torch.float16``). They are computed in float32 either way;
            bfloat16 storage takes the optimizer state from 172 to 92 bytes per parameter
            (docs/benchmarks/overhead.md), at the cost of rounding the states between steps
            (the shipped weights were trained in float32).
    """

    def __init__(self, params: ParamsT, pretrained: Any = None, lr: float = 1.0, q: int = 20,
                 mu: float | None = None, estimator: str = "forward", query_prob: float = 0.5,
                 directions: str = "learned", use_update: bool = True, maximize: bool = False, *,
                 guide_alpha: float = 0.5, seed: int | None = None,
                 generator: torch.Generator | None = None,
                 distributed: Any = None, state_dtype: torch.dtype = torch.float32) -> None:
        if state_dtype not in STATE_DTYPES:
            raise ValueError(f"state_dtype must be one of {STATE_DTYPES}, got {state_dtype!r}")
        self.state_dtype = state_dtype
        self.nets = _load_nets(pretrained)
        if directions not in DIRECTIONS:
            raise ValueError(f"directions must be one of {DIRECTIONS}, got {directions!r}")
        if not isinstance(use_update, bool):
            raise ValueError(f"use_update must be a bool, got {use_update!r}")
        for name, value in (("query_prob", query_prob), ("guide_alpha", guide_alpha)):
            _check_positive(name, value, allow_zero=True)
            if value > 1:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        self.directions, self.use_update = directions, use_update
        self.query_prob, self.guide_alpha = query_prob, guide_alpha
        self._pending: dict[Tensor, core.State] = {}
        defaults = dict(lr=lr, q=q, mu=mu, estimator=estimator, maximize=maximize)
        super().__init__(params, defaults, seed=seed, generator=generator,
                         distributed=distributed)

    def _states(self, params: list[Tensor]) -> list[core.State]:
        return [self.state[p] if p in self.state else self._store(core.init_state(p, self.nets))
                for p in params]

    def _store(self, st: core.State) -> core.State:
        if self.state_dtype == torch.float32:
            return st
        return {k: v.to(self.state_dtype) if k in _LSTM_KEYS else v for k, v in st.items()}

    @torch.no_grad()
    def _query_distribution(self, params: list[Tensor]
                            ) -> tuple[list[Tensor] | None, Guide | None]:
        if self.directions == "gaussian":
            return None, None
        states = self._states(params)
        if self.directions == "guided_es":
            history = [[st["prev_estimate"] for st in states], [st["prev_update"] for st in states]]
            return None, Guide.orthonormal(history, self.guide_alpha)
        scales, new = self._scales(states)
        self._pending.update(zip(params, new))
        use_learned = core.mix_draw(self._generator, self.query_prob)
        return ([s.view_as(p) for s, p in zip(scales, params)] if use_learned else None), None

    def _update_group(self, group: dict[str, Any], params: list[Tensor],
                      estimates: list[Tensor]) -> None:
        if group["maximize"]:
            estimates = [-g for g in estimates]
        states = self._states(params)
        if self.use_update:
            updates, new = core.learned_update(self.nets, estimates, states, group["lr"],
                                               in_place=True)
            for p, step in zip(params, updates):
                p.add_(step.view_as(p).to(p.dtype))
        else:
            zo_sgd(params, estimates, [None] * len(params), lr=group["lr"])
            new = [{"prev_estimate": g.reshape(-1).float(),
                    "prev_update": (-group["lr"] * g).reshape(-1).float()} for g in estimates]
        for p, st, fresh in zip(params, states, new):
            self.state[p] = self._store({**st, **self._pending.pop(p, {}), **fresh})

    def _scales(self, states: list[core.State]) -> tuple[list[Tensor], list[core.State]]:
        """The learned query scales for the next step, and QueryRNN states not yet stored."""
        if all("query_out" in st for st in states):
            return core.scales_from_outputs(self.nets, [st["query_out"] for st in states]), []
        outs, new = core.query_outputs(self.nets, states)  # a first step: nothing computed ahead
        return core.scales_from_outputs(self.nets, outs), new

    @torch.no_grad()
    def next_query_scales(self, params: list[Tensor] | None = None) -> list[Tensor]:
        """The per-coordinate standard deviations of the next step's learned query directions.

        For ``params`` (default: every parameter, normalised together as when they share
        directions); the next step uses them when its mix draw picks the learned covariance.
        Changes nothing.
        """
        if params is None:
            params = [p for g in self.param_groups for p in g["params"]]
        scales, _ = self._scales(self._states(params))
        return [s.view_as(p) for s, p in zip(scales, params)]

    @torch.no_grad()
    def _after_update(self) -> None:
        # The QueryRNN's next outputs depend only on this step's results, so they are computed
        # now, over the same sets of tensors that share directions, writing its new states over
        # the old ones: the next step can then fail at any query and leave the state as it is,
        # with no fresh (n, hidden) buffers. Same values as running it at the next step's start.
        if self.directions != "learned":
            return
        for _, _, groups in self._partitions():
            params = [p for g in groups for p in g["params"]]
            states = [self.state[p] for p in params]
            outs, _ = core.query_outputs(self.nets, states, in_place=True)
            for st, o in zip(states, outs):
                st["query_out"] = o

    def state_dict(self) -> dict[str, Any]:
        """The base state dict plus the network weights; LSTM states live in ``state``."""
        sd = super().state_dict()
        sd["zo"]["nets"] = {k: v.clone() for k, v in self.nets.state_dict().items()}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore weights, per-coordinate LSTM states and the RNG: resumes bit-exactly."""
        super().load_state_dict(state_dict)
        if "nets" in state_dict["zo"]:
            self.nets.load_state_dict(state_dict["zo"]["nets"])
        # torch.optim casts loaded state to the parameter dtype; ZO-LSTM state keeps its own.
        params = [p for g in self.param_groups for p in g["params"]]
        saved = state_dict["state"]
        for i, p in enumerate(params):
            if i in saved:
                for k in (*core.STATE_KEYS, "query_out"):
                    if k in saved[i]:
                        dtype = self.state_dtype if k in _LSTM_KEYS else torch.float32
                        self.state[p][k] = saved[i][k].to(p.device, dtype)


def _load_nets(pretrained: Any) -> LearnedZO:
    if isinstance(pretrained, LearnedZO):
        return pretrained
    from .. import pretrained as shipped

    if pretrained is None or (isinstance(pretrained, str) and pretrained in shipped.available()):
        return shipped.load(pretrained)
    if isinstance(pretrained, (str, Path)):
        return shipped.load_file(Path(pretrained))
    if isinstance(pretrained, dict):
        return shipped.from_state_dict(pretrained)
    raise ValueError(f"pretrained must be a shipped name, a path, a state dict or a LearnedZO, "
                     f"got {type(pretrained).__name__}")
