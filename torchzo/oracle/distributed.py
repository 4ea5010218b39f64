"""Sharding a step's queries over the ranks of a ``torch.distributed`` process group.

A ZO step is a list of loss queries along directions that anyone holding the step's seeds can
rebuild. With an optimizer's ``distributed`` option on, every rank of the group

1. queries ``f(x)`` itself (so ``step()`` returns the closure's own result on every rank, and
   the ranks can check that they optimize the same function from the same point),
2. draws the same seeds from its own copy of the optimizer's generator and queries a contiguous,
   balanced share of the step's other queries (about ``queries / world_size`` of them),
3. joins one ``all_reduce`` of a vector of ``3 * world_size + queries`` int64 words: the query
   values' float64 bits (each written by the one rank that made the query, zero elsewhere, so
   that the sum is exact), an error flag per rank, and each rank's fingerprint of the seeds and
   of ``f(x)`` (closure) or of ``x`` (batched objective),
4. rebuilds every direction from its seed and adds ``c_i u_i`` in index order with the same code
   as a single-process step (:func:`~torchzo.oracle.estimator.assemble_closure`,
   :func:`~torchzo.oracle.estimator.assemble_batched`), and applies the same update.

No parameter, gradient or direction crosses the network: a step moves ``8 * (queries + 3 *
world_size)`` bytes per rank, whatever the model size. In exchange each rank generates its own
share of directions twice (once to query, once to assemble) on top of all the others once.

The ranks hold bit-identical parameters and optimizer state after every step, equal to a
single-process run with the same seed (closure path; for a :class:`~torchzo.oracle.Batched`
objective see :func:`estimate_batched_sharded`), provided that every rank starts from the same
parameters with the same optimizer seed and that its closure computes the same function (same
data, deterministic). The fingerprints check this at every step: ranks that disagree raise a
:class:`~torchzo.oracle.ClosureError` on every rank instead of silently drifting apart.

If the closure (or anything else before the exchange) raises on some ranks, they still join the
exchange; then every rank restores its parameters and raises: the failing ranks their own
exception, the others a :class:`RankFailedError` naming the failed ranks and their errors. No
rank waits for one that gave up. (``KeyboardInterrupt`` and other non-``Exception`` errors are
re-raised at once; the other ranks then wait for the process group's timeout.)

A ``torchrun`` script (``torchrun --nproc-per-node 4 train.py``)::

    import torch
    import torch.distributed as dist
    import torchzo

    torch.manual_seed(0)              # the same initial model on every rank
    model = make_model()
    opt = torchzo.ZOAdam(model.parameters(), lr=1e-3, q=64, seed=0)  # the same seed everywhere
    # The group after the first optimizer (docs/getting-started.md, "Several processes").
    dist.init_process_group("gloo")   # "nccl" with one GPU per rank (torch.cuda.set_device)
    opt.distributed = True            # or a ProcessGroup; False/None turns it off
    for x, y in batches:              # the same batch on every rank
        loss = opt.step(lambda: loss_fn(model(x), y))
    dist.destroy_process_group()
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .backup import ParameterBackup
from .closure import LOSS_DTYPES, ClosureError, call_closure, check_losses, mean_loss
from .directions import Direction, Layout
from .estimator import (
    assemble_batched,
    assemble_closure,
    chunk_plan,
    chunk_rows,
    query_closure,
)
from .query import Query
from .scratch import Scratch

__all__ = ["RankFailedError", "Ranks", "agreed", "check_distributed", "fingerprint", "float_bits",
           "estimate_batched_sharded", "estimate_closure_sharded", "ranks_for"]


class RankFailedError(ClosureError):
    """The step failed on other ranks of the process group (raised on the ranks that did not fail).

    The parameters, the optimizer state and its RNG are left as before the step on every rank.
    ``failures`` maps each failed rank to its error, as ``"Type: message"``.
    """

    def __init__(self, message: str, failures: dict[int, str]) -> None:
        super().__init__(message)
        self.failures = failures


def check_distributed(value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is ``None``, a bool or a ``ProcessGroup``."""
    if value is None or isinstance(value, bool):
        return
    dist = _dist()
    if dist is None or not isinstance(value, dist.ProcessGroup):
        raise ValueError(f"distributed must be None, a bool or a torch.distributed.ProcessGroup, "
                         f"got {type(value).__name__}")


def ranks_for(distributed: Any) -> Ranks | None:
    """The ranks that share the queries for the option ``distributed``; ``None`` when off.

    ``True`` means the default process group. A group of one rank is the same as off.
    """
    if distributed is None or distributed is False:
        return None
    dist = _dist()
    if dist is None or not dist.is_initialized():
        raise RuntimeError("distributed queries need torch.distributed.init_process_group() to "
                           "have been called on every rank before the step")
    group = dist.group.WORLD if distributed is True else distributed
    ranks = Ranks(group)
    return None if ranks.size == 1 else ranks


def _dist() -> Any:
    import torch.distributed as dist

    return dist if dist.is_available() else None


def _collective_device(group: Any) -> torch.device:
    """Where the group's collectives take tensors: the CPU where it can, else its accelerator."""
    try:
        types = [d.type for d in group._device_types]
    except AttributeError:  # not in every torch version
        types = []
    if not types:
        types = ["cuda" if "nccl" in str(_dist().get_backend(group)).lower() else "cpu"]
    if "cpu" in types:
        return torch.device("cpu")
    kind = types[0]
    module: Any = getattr(torch, kind, None)
    index = module.current_device() if hasattr(module, "current_device") else 0
    return torch.device(kind, index)


def fingerprint(seeds: Sequence[int]) -> int:
    return hash(tuple(seeds))  # int hashing is not randomised: equal on every process


def float_bits(value: float) -> int:
    return int(torch.tensor(value, dtype=torch.float64).view(torch.int64))


def _describe(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    return text if len(text) <= 1000 else text[:997] + "..."


class Ranks:
    """This process's place in the process group that shares a step's queries."""

    def __init__(self, group: Any) -> None:
        dist = _dist()
        self.group = group
        self.rank = dist.get_rank(group)
        if self.rank < 0:
            raise ValueError("this process is not a member of the optimizer's process group")
        self.size = dist.get_world_size(group)
        self.device = _collective_device(group)

    def share(self, total: int) -> range:
        """This rank's contiguous, balanced share of ``total`` items."""
        return range(self.rank * total // self.size, (self.rank + 1) * total // self.size)

    def exchange(self, values: Tensor, checks: Sequence[int], failure: BaseException | None,
                 checked: Sequence[str]) -> Tensor:
        """Sum the float64 ``values`` of all ranks (each slot set on one rank, +0.0 elsewhere).

        The sum runs on the values' bits as int64, so it is exact whatever the backend does with
        floats. Raises on every rank if any rank reports a ``failure``, or if the ranks'
        ``checks`` (named ``checked``) differ.
        """
        dist = _dist()
        w, k, r = self.size, len(checks), self.rank
        words = torch.zeros(w * (1 + k) + values.numel(), dtype=torch.int64)
        if failure is None:
            words[w + r * k:w + (r + 1) * k] = torch.tensor(list(checks), dtype=torch.int64)
            words[w * (1 + k):] = values.to(torch.float64).contiguous().view(torch.int64)
        else:
            words[r] = 1
        summed = words.to(self.device)
        dist.all_reduce(summed, group=self.group)
        words = summed.cpu()
        failed = words[:w].nonzero().flatten().tolist()
        if failed:
            messages: list[Any] = [None] * w
            dist.all_gather_object(messages, None if failure is None else _describe(failure),
                                   group=self.group)
            if failure is not None:
                raise failure
            failures = {i: str(messages[i]) for i in failed}
            listed = "; ".join(f"rank {i}: {m}" for i, m in failures.items())
            raise RankFailedError(f"the step failed on {len(failed)} of {w} ranks ({listed}); "
                                  "the parameters were restored on every rank", failures)
        table = words[w:w * (1 + k)].view(w, k)
        bad = [name for j, name in enumerate(checked)
               if not bool((table[:, j] == table[0, j]).all())]
        if bad:
            raise ClosureError(
                f"the ranks disagree on {' and '.join(bad)}: every rank must start from the same "
                "parameters, with the same optimizer seed, and query the same deterministic "
                "function (same data); the parameters were restored")
        return words[w * (1 + k):].view(torch.float64)


def agreed(params: Sequence[Tensor], f0: float, at_x: bool) -> int:
    """What the ranks check they agree on besides the seeds: f(x), which also shows that
    their closures compute the same function, or, where a step does not query it, the
    parameters' sum."""
    if at_x:
        return float_bits(f0)
    return float_bits(math.fsum(float(p.detach().sum(dtype=torch.float64)) for p in params))


def estimate_closure_sharded(ranks: Ranks, closure: Callable[[], Any], backup: ParameterBackup,
                             queries: Sequence[Query], scratch: Scratch | None = None,
                             at_x: bool = True) -> tuple[Any, list[list[Tensor]]]:
    """The closure-path step of one rank: ``(loss, estimates)``, the same bits on every rank.

    ``queries``: the step's planned queries, the same on every rank. The parameters are left
    perturbed; the caller restores them. The estimates' memory comes from ``scratch`` where
    that has some, as in a single process. Without ``at_x``, f(x) is not queried and the loss
    is the mean of the queried ones (:func:`~torchzo.oracle.closure.mean_loss`).
    """
    failure: Exception | None = None
    loss: Any = None
    f0 = 0.0
    layouts = [Layout([backup.params[i] for i in q.index], q.kind) for q in queries]
    local = torch.zeros(sum(q.queries for q in queries), dtype=torch.float64)
    try:
        if at_x:
            loss, f0 = call_closure(closure, backup.params, "f(x)")
        flat = [(j, k, sign) for j, q in enumerate(queries) for k in range(len(q.seeds))
                for sign in q.scheme.signs]
        current: tuple[int, int] | None = None
        previous: int | None = None
        u: Direction = []
        for n in ranks.share(len(flat)):
            j, k, sign = flat[n]
            q = queries[j]
            if previous is not None and previous != j:
                backup.restore(queries[previous].index)  # q queries around x, as in one process
            if current != (j, k):
                u, current = layouts[j].direction(q.seeds, k, q.scale, q.guide), (j, k)
            local[n] = query_closure(closure, backup, q, u, k, sign)
            previous = j
    except Exception as err:
        failure = err
    seeds = [s for q in queries for s in q.seeds]
    values = ranks.exchange(local, [fingerprint(seeds), agreed(backup.saved, f0, at_x)],
                            failure, ["the query seeds", "f(x)" if at_x else "the parameters"]
                            ).tolist()
    if not at_x:
        loss = mean_loss(values)
    out = []
    offset = 0
    for q, layout in zip(queries, layouts):
        n = len(q.scheme.signs)
        mine = values[offset:offset + q.queries]

        def lookup(k: int, u: Direction, mine: list[float] = mine,
                   n: int = n) -> tuple[float, ...]:
            return tuple(mine[k * n:(k + 1) * n])

        out.append(assemble_closure(layout, q, f0, lookup, scratch))
        offset += q.queries
    return loss, out


def estimate_batched_sharded(ranks: Ranks, fn: Callable[[Tensor], Tensor], x: Tensor,
                             query: Query, chunk_size: int | None = None, at_x: bool = True
                             ) -> tuple[Tensor, Tensor]:
    """:func:`~torchzo.oracle.estimate_batched` with the calls of ``fn`` spread over the ranks.

    The calls are those of a single-process step with the same ``chunk_size``; call ``c`` runs
    on rank ``c % world_size`` (with ``chunk_size=None``, calls of ``ceil(queries /
    world_size)`` rows: about one per rank). Each call evaluates exactly the rows it would in a
    single process, so the result is bit-identical to ``estimate_batched`` with that chunk size
    (for an ``fn`` that gives the same output for the same input); without ``at_x``, none
    holds f(x), and the loss returned is the mean of the queried ones. Not differentiable.
    """
    if x.dim() != 1:
        raise ValueError(f"x must be a flat vector, got shape {tuple(x.shape)}")
    if not query.seeds:
        raise ValueError("a sharded estimate needs at least one direction")
    scheme = query.scheme
    signs = len(scheme.signs)
    rows = chunk_size or -(-scheme.queries // ranks.size)
    plan = chunk_plan(len(query.seeds), signs, rows, at_x)
    offsets = [0]
    for _, n, base in plan:
        offsets.append(offsets[-1] + int(base) + n * signs)
    # The last slot carries the dtype of the losses, from the rank that made call 0 (every
    # one of LOSS_DTYPES is exact in float64).
    local = torch.zeros(offsets[-1] + 1, dtype=torch.float64)
    failure: Exception | None = None
    try:
        layout = Layout([x], query.kind)
        scale = None if query.scale is None else query.scale[0]
        for c in range(ranks.rank, len(plan), ranks.size):
            start, n, base = plan[c]
            u = layout.rows(query.seeds, start, n, scale, query.guide)
            X = chunk_rows(x, u, scheme, query.mu, base)
            values = fn(X)
            check_losses(values, X.shape[0], 1 + start * signs - int(base))
            local[offsets[c]:offsets[c + 1]] = values.detach().to("cpu", torch.float64)
            if c == 0:
                local[-1] = 1 + LOSS_DTYPES.index(values.dtype)
    except Exception as err:
        failure = err
    checks = [fingerprint(query.seeds), float_bits(float(x.detach().double().sum()))]
    summed = ranks.exchange(local, checks, failure, ["the query seeds", "the parameters"])
    dtype = LOSS_DTYPES[int(summed[-1]) - 1]
    values = summed[:-1].to(x.device, dtype)

    def lookup(c: int, u: Tensor) -> Tensor:
        return values[offsets[c]:offsets[c + 1]]

    f0, g = assemble_batched(x, query, plan, lookup)
    if not at_x:
        return mean_loss(summed[:-1].tolist()), g
    assert f0 is not None
    return f0, g
