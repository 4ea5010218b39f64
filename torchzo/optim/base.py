"""``ZOOptimizer``: the torch.optim plumbing every torchzo optimizer shares.

A step is: the oracle's estimate (:func:`torchzo.oracle.estimate_gradient`, which restores
every parameter exactly afterwards, or on any error), then each param group's estimate to the
subclass's update rule. Param groups with the same ``(estimator, q, mu, directions_kind)`` are
perturbed together and share one estimate; groups that differ are estimated separately. This
class keeps the torch.optim plumbing: groups, validation, state, RNG and counters, restore on
error.

With the ``distributed`` option, the queries of a step are shared among the ranks of a
``torch.distributed`` process group (see :mod:`torchzo.oracle.distributed`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..oracle import Batched, Estimate, Part, Query, Scheme, default_mu, estimate_gradient
from ..oracle.closure import ClosureError, guard_batched
from ..oracle.directions import check_kind
from ..oracle.directions.counter import GAUSSIAN_STREAM
from ..oracle.directions.kinds import SEEKABLE_KINDS
from ..oracle.distributed import check_distributed
from ..oracle.scratch import Scratch
from ..oracle.seeded import SeededEstimate
from ._checkpoint import Slot, check_entry, check_state_dict, warn_old_stream
from ._guard import NonFiniteUpdateError, StepGuard, check_estimate, check_hyperparameters
from ._inference import step_inference
from ._validation import check_number, check_params

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["MEMORY_MODES", "ZOOptimizer"]

#: How a step holds the parameters while it perturbs them (see ``ZOOptimizer``'s ``memory``).
MEMORY_MODES = ("exact", "inference")

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]


class ZOOptimizer(Optimizer):
    """Base class of torchzo's optimizers; subclasses implement :meth:`_update_group`.

    Args:
        params: parameters or param groups, as for any ``torch.optim`` optimizer.
        defaults: per-group defaults; must hold ``lr``, ``q``, ``mu``, ``estimator``, ``maximize``
            (``directions_kind``, the kind of query directions, defaults to ``"gaussian"``).
        seed: seeds the optimizer's own generator (query directions never touch the global RNG).
        generator: a ``torch.Generator`` to draw query seeds from instead of ``seed``.
            With neither, the seed is drawn from the global RNG, so ``torch.manual_seed``
            makes runs reproducible.
        distributed: share each step's queries among the ranks of a ``torch.distributed``
            process group; see :attr:`distributed`. Can also be set after construction.
        memory: ``"exact"`` (the default) keeps an exact copy of the parameters during a step,
            so that every query and a failed step restore them bit for bit. ``"inference"``
            keeps none, nor any d-sized direction or estimate: parameters are perturbed in
            place and updated from directions regenerated from their seeds, a chunk at a
            time (MeZO's scheme, for every estimator and ``q``), so a step needs the memory
            of the forward passes plus the optimizer's own state (ZOAdam's moments). The
            parameters are then restored to rounding, not bit for bit, after each query and
            after a failed step (state, RNG and counters still exactly); directions must be
            ``"gaussian"`` or ``"rademacher"`` and the objective a closure. See
            docs/fine-tuning.md.
        loss_at_x: whether a step queries the loss at the parameters themselves and returns
            it (the default). The two-sided estimators (``"central"``, ``"antithetic"``) use
            it for nothing else: with ``False`` a step skips that forward pass (MeZO's two
            passes a step at ``q=1``, not three) and returns the mean of its queried losses
            instead, a 0-dim tensor (an estimate of the loss smoothed over the directions,
            ``O(mu^2)`` from it). Every group's estimator must then be two-sided.
    """

    #: Whether the update holds on to the step's estimates (ZOLSTM keeps them in its state):
    #: if not, their memory is kept for the next step's (see ``torchzo.oracle.scratch.Scratch``).
    _keeps_estimates = False

    #: What each key of a parameter's state holds, for :meth:`load_state_dict` to check.
    _state_slots: Mapping[str, Slot] = MappingProxyType({})

    def __init__(self, params: ParamsT, defaults: dict[str, Any], *, seed: int | None = None,
                 generator: torch.Generator | None = None,
                 distributed: bool | ProcessGroup | None = None,
                 memory: str = "exact", loss_at_x: bool = True) -> None:
        if memory not in MEMORY_MODES:
            raise ValueError(f"memory must be one of {MEMORY_MODES}, got {memory!r}")
        if not isinstance(loss_at_x, bool):
            raise ValueError(f"loss_at_x must be a bool, got {loss_at_x!r}")
        self.memory = memory
        self.loss_at_x = loss_at_x
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
        self.last_loss: float | None = None  # what the latest completed step returned, as a float
        self.distributed = distributed
        self._guard: StepGuard | None = None  # the undo record of the step under way
        self._scratch = Scratch()  # the step's parameter copy, kept for the next step's
        self._zero_signal_warned = False
        # The loss of the first step this object estimated (not saved: a resumed optimizer
        # starts a new reference), against which a zero-signal step is judged.
        self._first_loss: float | None = None
        super().__init__(params, {"directions_kind": "gaussian", **defaults})
        if not any(g["params"] for g in self.param_groups):
            raise ValueError(f"{type(self).__name__} got only empty param groups: there is "
                             "nothing to optimize")

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
        """Add a group; its hyperparameters and tensors are validated like the constructor's.

        Raises ``ValueError`` for a bad hyperparameter, and ``TypeError``/``ValueError`` for
        tensors that cannot be perturbed and updated in place: sparse, on the ``meta`` device,
        not floating point or 8-bit floats, inference tensors, tensors whose elements share
        memory (``zeros(1).expand(4)``) or that share memory with another parameter; and a
        :class:`~torchzo.oracle.ClosureError` during a step (from its closure).
        """
        self._refuse_during_step("add_param_group()")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        others = [p for g in self.param_groups[:-1] for p in g["params"]]
        try:
            check_params(group["params"], others)
            self._validate_group(group)
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise

    def _validate_group(self, group: dict[str, Any]) -> None:
        """Raise ``ValueError`` for a bad hyperparameter; subclasses extend it."""
        check_number("lr", group["lr"], allow_zero=True)
        if Scheme(group["estimator"], group["q"]).name == "forward" and not self.loss_at_x:
            raise ValueError("loss_at_x=False skips the loss at x, which the forward estimator "
                             "needs: use estimator='central' or 'antithetic'")
        if group["mu"] is not None:
            check_number("mu", group["mu"])
        if not isinstance(group["maximize"], bool):
            raise ValueError(f"maximize must be a bool, got {group['maximize']!r}")
        check_kind(group["directions_kind"], "directions_kind")
        if self.memory == "inference" and group["directions_kind"] not in SEEKABLE_KINDS:
            raise ValueError(f"memory='inference' regenerates directions piece by piece, which "
                             f"directions_kind={group['directions_kind']!r} cannot be: use one "
                             f"of {SEEKABLE_KINDS}")

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
        """torch.optim's state dict plus a ``"zo"`` entry: generator state, step and query
        counts, and the version of the Gaussian direction stream."""
        sd = super().state_dict()
        sd["zo"] = {**self._counters, "generator": self._generator.get_state(),
                    "gaussian_stream": GAUSSIAN_STREAM}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the run resumes bit-exactly (RNG included).

        Everything is checked before anything changes: the ``"zo"`` entry, the param groups
        (their number and sizes, and the hyperparameters by the constructor's rules) and each
        parameter's state (its keys, and tensors that are dense, finite, shaped for it and
        each its own memory; step counts that are ints >= 0). A state dict that fails raises
        ``ValueError`` and leaves the optimizer exactly as it was (as does a call from a
        step's closure, which raises :class:`~torchzo.oracle.ClosureError`).
        """
        self._refuse_during_step("load_state_dict()")
        zo, rest = check_state_dict(self, state_dict)
        warn_old_stream(zo, {g["directions_kind"] for g in rest["param_groups"]})
        before = (self.state, self.param_groups, self._generator.get_state(),
                  dict(self._counters))
        try:
            super().load_state_dict(rest)
            self._generator.set_state(zo["generator"].clone())
            self._counters = {"steps": zo["steps"], "queries": zo["queries"]}
            self._commit_loaded(state_dict, rest)
        except BaseException:
            self.state, self.param_groups = before[0], before[1]
            self._generator.set_state(before[2])
            self._counters = before[3]
            raise

    def _check_saved_state(self, p: Tensor, group: dict[str, Any], entry: dict[str, Any],
                           where: str) -> None:
        """A ``ValueError`` unless ``entry`` can be ``p``'s state: the keys of
        :attr:`_state_slots`, each holding what its slot says (tensors dense, finite, shaped
        like ``p``, each element in memory of its own); subclasses may refine it."""
        check_entry(p, entry, where, self._state_slots)

    def _check_loaded(self, state_dict: dict[str, Any]) -> None:
        """Subclasses: raise ``ValueError`` for what else in ``state_dict`` (with a checked
        ``"zo"`` entry) is wrong, before the state entries are checked and anything loaded."""

    def _commit_loaded(self, state_dict: dict[str, Any], rest: dict[str, Any]) -> None:
        """Subclasses: load what else ``state_dict`` holds (already checked); an exception
        here undoes the whole load."""

    # -- the step -----------------------------------------------------------------------------

    def _partition_key(self, group: dict[str, Any]) -> tuple[Any, ...]:
        """What groups must share, beyond ``(estimator, q, mu, directions_kind)``, to share one
        estimate."""
        return ()

    def _partitions(self) -> list[tuple[Scheme, float, list[dict[str, Any]]]]:
        parts: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for group in self.param_groups:
            if not group["params"]:  # an empty group (allowed by torch.optim) costs no queries
                continue
            key = (group["estimator"], group["q"], self.resolved_mu(group),
                   group["directions_kind"], *self._partition_key(group))
            parts.setdefault(key, []).append(group)
        return [(Scheme(name, q), mu, groups) for (name, q, mu, *_), groups in parts.items()]

    def _params(self) -> list[Tensor]:
        """Every parameter, in param-group order: the positions the oracle's parts index."""
        return [p for g in self.param_groups for p in g["params"]]

    def _parts(self) -> list[Part]:
        """:meth:`_partitions` as the oracle's parts, indexing :meth:`_params`."""
        position = {p: i for i, p in enumerate(self._params())}
        return [Part(tuple(position[p] for g in groups for p in g["params"]), scheme, mu,
                     groups[0]["directions_kind"]) for scheme, mu, groups in self._partitions()]

    @torch.no_grad()
    def _estimate(self, objective: Callable[[], Any] | Batched, queries: list[Query]
                  ) -> Estimate:
        """The oracle's estimate for every parameter along the step's planned ``queries``
        (:func:`torchzo.oracle.estimate_gradient`).

        Inside a step, also what makes the update undoable: a batched objective is watched for
        writes to the parameters (which are copied before its calls), a closure's parameters
        are copied once the oracle has put them back; and the estimate must be finite.
        """
        params, guard = self._params(), self._guard
        if isinstance(objective, Batched) and guard is not None:
            guard.save_params()
            objective = Batched(guard_batched(objective.fn, params), objective.chunk_size,
                                objective.params)
        found = estimate_gradient(objective, params, queries,
                                  getattr(self, "_distributed", None),
                                  self._scratch if guard is not None else None, self.loss_at_x)
        if check_estimate(found.grads, queries, self.param_groups,
                          self._may_warn_zero(found.loss)):
            self._zero_signal_warned = True
        if guard is not None:
            # The oracle's copy of a closure step's parameters is as good as a new one: it
            # has just put them back from it.
            backup = found.backup
            same = backup is not None and len(backup.params) == len(params) and all(
                a is b for a, b in zip(backup.params, params))
            guard.save_params(backup if same else None)
            if backup is not None and not self._keeps_estimates:
                guard.lend(found.grads)
        return found

    def step(  # type: ignore[override]
            self, closure: Callable[[], Any] | Batched | None = None) -> Any:
        """Estimate the gradient from loss queries and update the parameters.

        Args:
            closure: returns the loss at the current parameters, without calling ``backward()``
                and without writing the parameters; or a :class:`torchzo.oracle.Batched`
                objective. Required.

        Returns:
            The loss at the parameters before the step (what the closure returned); with
            ``loss_at_x=False``, the mean of the step's queried losses.

        A step completes or changes nothing. If the closure raises, returns a non-scalar or
        non-finite loss, calls ``backward()``, writes a parameter gradient or writes a
        parameter in place, the step raises (a :class:`~torchzo.oracle.ClosureError` for all
        but the closure's own exceptions) and the parameters (bit for bit), their ``.grad``,
        the optimizer state, the RNG and the counters are as before. The closure sees
        ``p.grad`` as ``None``; the gradients are put back when the step ends.

        The step also refuses a non-finite update: a NaN or infinite hyperparameter in a param
        group raises ``ValueError`` before anything runs, and a non-finite estimate, or an
        update that leaves a parameter or the optimizer state non-finite, raises
        :class:`NonFiniteUpdateError` with everything restored, except that the LSTM states
        of :class:`ZOLSTM` with the paper's architecture are overwritten in place, not copied
        (that would cost a fifth of its step): after a non-finite learned update they have
        advanced, and stay finite.

        A closure that calls this optimizer's ``step()``, ``add_param_group()`` or
        ``load_state_dict()`` gets a :class:`~torchzo.oracle.ClosureError` from that call, which
        changes nothing (so the outer step fails and is undone as above, unless the closure
        catches it).

        With :attr:`distributed` on, this holds on every rank, and a failure on some ranks
        raises on all of them (a :class:`~torchzo.oracle.RankFailedError` on the others).
        """
        if closure is None:
            raise ValueError(f"{type(self).__name__}.step() needs a closure that returns the "
                             "loss: opt.step(lambda: loss_fn(model(x), y))")
        self._refuse_during_step("step()")
        check_hyperparameters(self.param_groups)
        self._check_scalars()
        rng = self._generator.get_state()
        self._guard = guard = StepGuard(self, self._params())
        try:
            estimate = self._step(closure)
            bad = guard.nonfinite_after_update()
            if bad is not None:
                raise NonFiniteUpdateError(
                    f"the update made {bad} non-finite; the step was undone: parameters, "
                    f"optimizer state{self._not_restored()}, RNG and counters are as before. "
                    "Check the hyperparameters (a smaller lr?), the loss's magnitude and the "
                    "parameters' dtype range")
            last_loss = float(estimate.loss)
        except BaseException:
            guard.restore()
            self._generator.set_state(rng)
            raise
        finally:
            guard.release()
            self._guard = None
        self._counters["steps"] += 1
        self._counters["queries"] += estimate.queries
        self.last_loss = last_loss
        return estimate.loss

    def _may_warn_zero(self, loss: Any) -> bool:
        """Whether a step whose estimate is exactly zero is worth a ``ZeroSignalWarning``:
        once per optimizer, and only while the loss has not moved from the first step's. A run
        that has made progress and then meets a flat objective has most likely solved it or
        reached its floor (an example's policy that balances the pole every time)."""
        if self._zero_signal_warned:
            return False
        value = (float(loss.detach()) if isinstance(loss, Tensor)
                 else float(loss) if isinstance(loss, (int, float)) else math.nan)
        if self._first_loss is None:
            self._first_loss = value
        return value == self._first_loss

    def _not_restored(self) -> str:
        """What of the state a failed update leaves advanced, for messages (``""``: none)."""
        return ""

    def _refuse_during_step(self, call: str) -> None:
        """A ClosureError if a step is under way: ``call`` from its closure would change what
        the step has planned and will undo (its counters, state, groups and RNG)."""
        if self._guard is not None:
            raise ClosureError(
                f"{type(self).__name__}.{call} was called during a step of the same optimizer "
                "(from its closure or objective); a closure only returns the loss. Nothing "
                "was changed")

    @torch.no_grad()
    def _step(self, objective: Callable[[], Any] | Batched) -> Estimate | SeededEstimate:
        """Plan, estimate, update; nothing may change before the estimate is complete."""
        queries = [part.draw(self._generator) for part in self._parts()]
        if self.memory == "inference":
            return step_inference(self, objective, queries)
        estimate = self._estimate(objective, queries)
        if self._guard is not None:
            self._guard.save_state()
        self._update(estimate.grads)
        return estimate

    @torch.no_grad()
    def _update(self, grads: list[Tensor]) -> None:
        """Every group's update rule applied to its estimates (``grads``: one per parameter, in
        param-group order)."""
        by_param = dict(zip(self._params(), grads))
        for group in self.param_groups:
            if group["params"]:
                self._update_group(group, group["params"],
                                   [by_param[p].to(p.dtype) for p in group["params"]])

    def _update_group(self, group: dict[str, Any], params: list[Tensor],
                      estimates: list[Tensor]) -> None:
        """The group's update rule on whole tensors: :meth:`_apply` over :meth:`_states`."""
        self._apply(group, params, estimates, self._states(group, params))

    def _states(self, group: dict[str, Any], params: list[Tensor], complete: bool = False
                ) -> list[dict[str, Any]]:
        """Each parameter's state for this step, its counters advanced (once per step);
        ``complete``: every tensor the update writes already made (an update applied to
        pieces of the parameters cannot make them). Default: no state."""
        return [{} for _ in params]

    def _apply(self, group: dict[str, Any], params: list[Tensor], estimates: list[Tensor],
               states: list[dict[str, Any]]) -> None:
        """The update rule, elementwise: ``params``, ``estimates`` and the state tensors shaped
        like the parameters may be whole or the same piece of each (the inference memory
        mode's chunks)."""
        raise NotImplementedError

    def _update_scalars(self, group: dict[str, Any]) -> dict[str, float]:
        """The numbers (by name) that the group's update rule hands torch as scalars of its
        parameters' dtype: torch refuses one beyond that dtype's range with a bare error."""
        return {k: float(group[k]) for k in ("lr", "weight_decay", "momentum", "eps")
                if isinstance(group.get(k), (int, float))}

    def _check_scalars(self) -> None:
        """A ``ValueError``, before anything changes, where an update scalar does not fit
        the dtype of a group's parameters (``lr=1e5`` with float16 weights, say)."""
        for i, group in enumerate(self.param_groups):
            dtypes = {p.dtype for p in group["params"] if p.is_floating_point()}
            if not dtypes:
                continue
            dtype = min(dtypes, key=lambda d: torch.finfo(d).max)
            for name, value in self._update_scalars(group).items():
                if abs(value) > torch.finfo(dtype).max:
                    raise ValueError(
                        f"param_groups[{i}]: {name} = {value:g} is beyond the range of "
                        f"{dtype}, the dtype of the group's parameters, in which the update "
                        "applies it (nothing was changed)")

    def _update_bound(self, group: dict[str, Any], estimate: float, param: float,
                      state: dict[str, list[Tensor]]) -> float:
        """A bound on the magnitude of every value :meth:`_apply` computes for the group (its
        results and temporaries) in exact arithmetic, given bounds on the magnitudes of the
        estimate's entries and of the parameters, and the group's state tensors by key; ``inf``
        (the default) where there is none, NaN or ``inf`` in, ``inf`` or NaN out. The inference
        memory mode skips its trial pass where this is far below the dtypes' range."""
        return math.inf
