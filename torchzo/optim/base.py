"""``ZOOptimizer``: the torch.optim plumbing every torchzo optimizer shares.

A step is: draw query seeds, estimate the gradient with the oracle (all parameters restored
exactly afterwards, or on any error), then hand each param group's estimate to the subclass's
update rule. Param groups with the same ``(estimator, q, mu)`` are perturbed together and share
one estimate; groups that differ are estimated separately. ``f(x)`` is queried once per step.

With the ``distributed`` option, the queries of a step are shared among the ranks of a
``torch.distributed`` process group (see :mod:`torchzo.oracle.distributed`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..oracle import (
    Batched,
    Guide,
    Layout,
    ParameterBackup,
    Scheme,
    call_closure,
    default_mu,
    draw_seeds,
    estimate_batched,
    estimate_closure,
)
from ..oracle.distributed import (
    ClosureEstimate,
    Ranks,
    check_distributed,
    estimate_batched_sharded,
    estimate_closure_sharded,
    ranks_for,
)

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["ZOOptimizer"]

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]


def _check_positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


class ZOOptimizer(Optimizer):
    """Base class of torchzo's optimizers; subclasses implement :meth:`_update_group`.

    Args:
        params: parameters or param groups, as for any ``torch.optim`` optimizer.
        defaults: per-group defaults; must hold ``lr``, ``q``, ``mu``, ``estimator``, ``maximize``.
        seed: seeds the optimizer's own generator (query directions never touch the global RNG).
        generator: a ``torch.Generator`` to draw query seeds from instead of ``seed``.
            With neither, the seed is drawn from the global RNG, so ``torch.manual_seed``
            makes runs reproducible.
        distributed: share each step's queries among the ranks of a ``torch.distributed``
            process group; see :attr:`distributed`. Can also be set after construction.
    """

    def __init__(self, params: ParamsT, defaults: dict[str, Any], *, seed: int | None = None,
                 generator: torch.Generator | None = None,
                 distributed: bool | ProcessGroup | None = None) -> None:
        if seed is not None and generator is not None:
            raise ValueError("pass either seed or generator, not both")
        if generator is None:
            if seed is None:
                seed = int(torch.randint(0, 2**62, ()).item())
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise ValueError(f"seed must be an int, got {seed!r}")
            generator = torch.Generator().manual_seed(seed)
        elif not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self._generator = generator
        self._counters = {"steps": 0, "queries": 0}
        self.last_loss: float | None = None  # f(x) before the latest completed step
        self.distributed = distributed
        super().__init__(params, defaults)

    @property
    def distributed(self) -> bool | ProcessGroup | None:
        """Whether, and among which ranks, each step's queries are shared.

        ``None`` or ``False`` (the default): this process makes every query. ``True``: the
        ranks of the default ``torch.distributed`` process group share them; a
        ``ProcessGroup``: the ranks of that group. The group must be initialised before the
        first step (gloo, or NCCL with ``torch.cuda.set_device`` called on each rank), and a
        group of one rank is the same as off.

        Every rank queries ``f(x)`` and about ``1 / world_size`` of the other queries; the ranks
        then exchange the query values only (``8 * (queries + 3 * world_size)`` bytes per
        rank and step: no parameters, gradients or directions), and each rebuilds the whole
        estimate from the shared seeds and applies the same update. The parameters and the
        optimizer state stay bit-identical on every rank and equal to a single-process run
        with the same seed, provided every rank starts from the same parameters with the same
        ``seed`` and its closure computes the same function (same data): the ranks check this
        at every step and raise a ``ClosureError`` on every rank if not. A closure that raises
        on some ranks makes the step raise on all of them (the others a
        :class:`~torchzo.oracle.distributed.RankFailedError`), with the parameters restored
        everywhere. ``queries`` counts the step's queries as a single process would. A
        :class:`~torchzo.oracle.Batched` objective's calls are spread over the ranks (see
        :func:`~torchzo.oracle.distributed.estimate_batched_sharded`). Set it to the same
        value on every rank; it is not part of ``state_dict()``.

        Example (``torchrun --nproc-per-node 4 train.py``)::

            torch.manual_seed(0)
            model = make_model()  # the same on every rank
            opt = torchzo.ZOAdam(model.parameters(), q=64, seed=0)
            # After the optimizer: see docs/getting-started.md, "Several processes".
            dist.init_process_group("gloo")
            opt.distributed = True
            for x, y in batches:  # the same batches on every rank
                opt.step(lambda: loss_fn(model(x), y))
        """
        return self._distributed

    @distributed.setter
    def distributed(self, value: bool | ProcessGroup | None) -> None:
        check_distributed(value)
        self._distributed = value

    # -- configuration ------------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its hyperparameters are validated like the constructor's."""
        super().add_param_group(param_group)
        try:
            self._validate_group(self.param_groups[-1])
        except ValueError:
            self.param_groups.pop()
            raise

    def _validate_group(self, group: dict[str, Any]) -> None:
        """Raise ``ValueError`` for a bad hyperparameter; subclasses extend it."""
        _check_positive("lr", group["lr"], allow_zero=True)
        Scheme(group["estimator"], group["q"])
        if group["mu"] is not None:
            _check_positive("mu", group["mu"])
        if not isinstance(group["maximize"], bool):
            raise ValueError(f"maximize must be a bool, got {group['maximize']!r}")
        for p in group["params"]:
            if not p.is_floating_point():
                raise ValueError(f"zeroth-order optimizers need floating-point parameters, "
                                 f"got {p.dtype}")

    @staticmethod
    def resolved_mu(group: dict[str, Any]) -> float:
        """The group's ``mu``, or the default for its least precise parameter dtype."""
        if group["mu"] is not None:
            return float(group["mu"])
        eps_dtype = max((p.dtype for p in group["params"]), key=lambda d: torch.finfo(d).eps)
        return default_mu(eps_dtype)

    # -- counters and state -------------------------------------------------------------------

    @property
    def queries(self) -> int:
        """Function evaluations made by completed steps."""
        return self._counters["queries"]

    @property
    def steps(self) -> int:
        return self._counters["steps"]

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state dict plus a ``"zo"`` entry: generator state and query count."""
        sd = super().state_dict()
        sd["zo"] = {**self._counters, "generator": self._generator.get_state()}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the run resumes bit-exactly (RNG included)."""
        if "zo" not in state_dict:
            raise ValueError("state_dict has no 'zo' entry (RNG and query counters): it was not "
                             "saved by a torchzo optimizer")
        zo = state_dict["zo"]
        rest = {k: v for k, v in state_dict.items() if k != "zo"}
        super().load_state_dict(rest)
        self._generator.set_state(zo["generator"].clone())
        self._counters = {"steps": int(zo["steps"]), "queries": int(zo["queries"])}

    # -- the step -----------------------------------------------------------------------------

    def _partitions(self) -> list[tuple[Scheme, float, list[dict[str, Any]]]]:
        parts: dict[tuple[str, int, float], list[dict[str, Any]]] = {}
        for group in self.param_groups:
            if not group["params"]:  # an empty group (allowed by torch.optim) costs no queries
                continue
            key = (group["estimator"], group["q"], self.resolved_mu(group))
            parts.setdefault(key, []).append(group)
        return [(Scheme(name, q), mu, groups) for (name, q, mu), groups in parts.items()]

    def _query_distribution(self, params: list[Tensor]
                            ) -> tuple[list[Tensor] | None, Guide | None]:
        """How this step's directions deviate from N(0, I) for ``params``.

        Returns per-coordinate standard deviations (``None``: all ones) and a GuidedES
        subspace (``None``: none). Called once per estimate, after the seeds are drawn.
        """
        return None, None

    def _estimate(self, closure: Callable[[], Any] | Batched
                  ) -> tuple[Any, dict[Tensor, Tensor], int]:
        """The loss at x, an estimate per parameter, and the queries spent."""
        params = [p for g in self.param_groups for p in g["params"]]
        ranks = ranks_for(getattr(self, "_distributed", None))
        if isinstance(closure, Batched):
            return self._estimate_batched(closure, params, ranks)
        if ranks is not None:
            return self._estimate_closure_sharded(closure, params, ranks)
        return self._estimate_closure(closure, params)

    def _estimate_batched(self, objective: Batched, params: list[Tensor],
                          ranks: Ranks | None = None) -> tuple[Any, dict[Tensor, Tensor], int]:
        parts = self._partitions()
        if len(parts) != 1:
            raise ValueError("a Batched objective needs every param group to share "
                             "estimator, q and mu")
        if objective.params is not None and (
                len(objective.params) != len(params)
                or any(a is not b for a, b in zip(objective.params, params))):
            raise ValueError("the Batched objective's columns stand for other tensors, or the "
                             "same in another order, than the optimizer's parameters (in "
                             "param-group order)")
        scheme, mu, _ = parts[0]
        layout = Layout(params)
        if len(layout.blocks) != 1:
            raise ValueError("a Batched objective needs all parameters on one device")
        dtype = layout.blocks[0].dtype
        with torch.no_grad():
            x = torch.cat([p.detach().reshape(-1).to(dtype) for p in params])
            # Seeds first, then the query distribution: the order every path (and
            # meta-training) uses.
            seeds = draw_seeds(self._generator, scheme.directions)
            scale, guide = self._query_distribution(params)
            flat_scale = None if scale is None else torch.cat(
                [s.reshape(-1).to(dtype) for s in scale])
            if ranks is None:
                f0, g = estimate_batched(objective.fn, x, seeds, scheme, mu, flat_scale,
                                         objective.chunk_size, guide)
            else:
                f0, g = estimate_batched_sharded(ranks, objective.fn, x, seeds, scheme, mu,
                                                 flat_scale, objective.chunk_size, guide)
        pieces = g.split([p.numel() for p in params])
        return f0, {p: gp.view_as(p) for p, gp in zip(params, pieces)}, scheme.queries

    def _estimate_closure(self, closure: Callable[[], Any], params: list[Tensor]
                          ) -> tuple[Any, dict[Tensor, Tensor], int]:
        position = {p: i for i, p in enumerate(params)}
        estimates: dict[Tensor, Tensor] = {}
        backup = ParameterBackup(params)
        try:
            loss, f0 = call_closure(closure, params, "f(x)")
            queries = 1
            parts = self._partitions()
            for k, (scheme, mu, groups) in enumerate(parts):
                part = [p for g in groups for p in g["params"]]
                index = [position[p] for p in part]
                seeds = draw_seeds(self._generator, scheme.directions)
                scale, guide = self._query_distribution(part)
                g = estimate_closure(closure, backup, index, Layout(part), seeds, scheme, mu, f0,
                                     scale, guide)
                estimates.update(zip(part, g))
                queries += scheme.queries - 1
                if k + 1 < len(parts):  # the next estimate queries around x, not around here
                    backup.restore(index)
        finally:
            backup.restore()
        return loss, estimates, queries

    def _estimate_closure_sharded(self, closure: Callable[[], Any], params: list[Tensor],
                                  ranks: Ranks) -> tuple[Any, dict[Tensor, Tensor], int]:
        """:meth:`_estimate_closure` with the queries shared among ``ranks``; the same bits."""
        position = {p: i for i, p in enumerate(params)}
        parts = self._partitions()
        parted = [[p for g in groups for p in g["params"]] for _, _, groups in parts]

        def plan() -> list[ClosureEstimate]:
            out = []
            for (scheme, mu, _), part in zip(parts, parted):
                seeds = draw_seeds(self._generator, scheme.directions)
                scale, guide = self._query_distribution(part)
                out.append(ClosureEstimate([position[p] for p in part], Layout(part), seeds,
                                           scheme, mu, scale, guide))
            return out

        backup = ParameterBackup(params)
        try:
            loss, found = estimate_closure_sharded(
                ranks, closure, backup, sum(s.queries - 1 for s, _, _ in parts), plan)
        finally:
            backup.restore()
        estimates = {p: g for part, gs in zip(parted, found) for p, g in zip(part, gs)}
        return loss, estimates, 1 + sum(s.queries - 1 for s, _, _ in parts)

    def step(  # type: ignore[override]
            self, closure: Callable[[], Any] | Batched | None = None) -> Any:
        """Estimate the gradient from loss queries and update the parameters.

        Args:
            closure: returns the loss at the current parameters, without calling ``backward()``;
                or a :class:`torchzo.oracle.Batched` objective. Required.

        Returns:
            The loss at the parameters before the step (what the closure returned).

        If the closure raises, returns a non-scalar or non-finite loss, or calls ``backward()``,
        every parameter, the optimizer state and the RNG are left exactly as before the step.
        With :attr:`distributed` on, this holds on every rank, and a failure on some ranks
        raises on all of them (a :class:`~torchzo.oracle.RankFailedError` on the others).
        """
        if closure is None:
            raise ValueError(f"{type(self).__name__}.step() needs a closure that returns the "
                             "loss: opt.step(lambda: loss_fn(model(x), y))")
        rng = self._generator.get_state()
        try:
            loss, estimates, queries = self._estimate(closure)
        except BaseException:
            self._generator.set_state(rng)
            raise
        self._apply(estimates)
        self._counters["steps"] += 1
        self._counters["queries"] += queries
        self.last_loss = float(loss)
        return loss

    @torch.no_grad()
    def _apply(self, estimates: dict[Tensor, Tensor]) -> None:
        """The update of every group from the step's estimates, then the work for the next."""
        for group in self.param_groups:
            params = group["params"]
            if not params:
                continue
            self._update_group(group, params, [estimates[p].to(p.dtype) for p in params])
        self._after_update()

    def _update_group(self, group: dict[str, Any], params: list[Tensor],
                      estimates: list[Tensor]) -> None:
        raise NotImplementedError

    def _after_update(self) -> None:
        """Work for the next step that needs only this step's results (all groups updated)."""
