"""The outer loop of meta-training, whatever estimates the meta-gradient.

A gradient estimator (:class:`~torchzo.meta.es_gradient.ESGradient`: evolution strategies over
whole runs; :class:`~torchzo.meta.tbptt.TruncatedGradient`: backprop through truncated
rollouts) turns the meta-parameters and the run's random stream into one gradient estimate.
:class:`MetaLoop` does the rest: it applies each estimate with the optimizer it is given
(``torch.optim.Adam``), validates every ``val_every`` iterations and keeps the best weights,
checkpoints every few minutes or iterations, and resumes from its checkpoint bit-exactly: the
weights, the optimizer's moments, the random stream and the estimator's position are all in it.
Its one random stream is a generator seeded with the run's seed; nothing draws from the global
one.

With a run ``folder`` it also writes ``history.jsonl`` (one row per iteration), ``best.pt``
(the best weights so far, their iteration and validation values) and, with ``keep_checks``,
``checks/N.pt`` (the weights validated at iteration N).
"""
from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple, Protocol

import torch
from torch import Tensor

__all__ = ["Estimate", "GradientEstimator", "LoopConfig", "MetaLoop", "Validation", "save_atomic"]


@dataclass
class Estimate:
    """One iteration's meta-gradient: ``grads`` aligned with the meta-parameters (``None``:
    none for that one), and ``stats`` for the iteration's history row."""

    grads: list[Tensor | None]
    stats: dict[str, Any] = field(default_factory=dict)


class GradientEstimator(Protocol):
    def estimate(self, params: list[Tensor], rng: torch.Generator) -> Estimate:
        """The meta-gradient at ``params``, drawing whatever is random from ``rng``."""

    @property
    def idle(self) -> bool:
        """Whether no unroll is under way, so that a checkpoint taken now resumes exactly."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Validation(NamedTuple):
    """A validation of some weights: ``score`` (lower is better), the per-instance
    ``values`` (saved with the weights) and the fields of the history row."""

    score: float
    values: Tensor
    record: dict[str, Any]


#: Validates weights given the start weights' values (``None``: these are the start weights).
Validate = Callable[[dict[str, Tensor], "Tensor | None"], Validation]


@dataclass
class LoopConfig:
    iterations: int
    val_every: int
    seed: int = 0
    #: A checkpoint after this many seconds since the last, and every ``checkpoint_every``
    #: iterations (0: by time only); only where the estimator is idle, and at the end.
    checkpoint_s: float = 300.0
    checkpoint_every: int = 0
    #: Decay of an exponential moving average of the weights, which is what is validated and
    #: kept as best (0: the weights themselves).
    ema: float = 0.0
    #: Save every validation's weights (``checks/N.pt``), to choose among them afterwards.
    keep_checks: bool = False


@dataclass
class _Best:
    score: float
    iteration: int
    weights: dict[str, Tensor]
    values: Tensor


class MetaLoop:
    """Meta-train ``params`` (named tensors, updated in place by ``optimizer``) with the
    gradients of ``estimator``, validated by ``validate``.

    ``checkpoint``: the file that holds everything to resume (with ``extra()``'s entries
    added, for the caller); ``folder``: the run folder (see the module's docstring);
    ``record``: called with each iteration's history row, before any checkpoint of it.
    """

    def __init__(self, params: Mapping[str, Tensor], optimizer: torch.optim.Optimizer,
                 estimator: GradientEstimator, validate: Validate, cfg: LoopConfig, *,
                 checkpoint: Path | None = None, folder: Path | None = None,
                 log: Callable[[str], None] = print,
                 record: Callable[[dict[str, Any]], None] | None = None,
                 extra: Callable[[], dict[str, Any]] | None = None) -> None:
        self.params, self.optimizer, self.estimator = params, optimizer, estimator
        self.validate, self.cfg = validate, cfg
        self.checkpoint_path, self.folder = checkpoint, folder
        self.log, self.record, self.extra = log, record, extra
        self.rng = torch.Generator().manual_seed(cfg.seed)
        self.iteration = 0
        self.average = self._copy(params) if cfg.ema else None
        self.start: Tensor | None = None
        self.best: _Best | None = None

    @staticmethod
    def _copy(weights: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {k: w.detach().clone() for k, w in weights.items()}

    def validated(self) -> dict[str, Tensor]:
        """The weights that are validated and kept: the average, or the weights themselves."""
        if self.average is not None:
            return self.average
        return {k: p.detach() for k, p in self.params.items()}

    def run(self, resume: dict[str, Any] | None = None,
            deadline: float | None = None) -> dict[str, Tensor]:
        """Run up to ``cfg.iterations`` (from ``resume``, a checkpoint's contents, if given)
        or until ``time.time()`` passes ``deadline``; returns the best weights."""
        if resume is not None:
            self.load_state_dict(resume)
            self.log(f"resumed at iteration {self.iteration}")
        else:
            self._validate_start()
        last_save = time.time()
        with self._history() as history:
            while self.iteration < self.cfg.iterations and (deadline is None
                                                             or time.time() < deadline):
                started = time.time()
                row = self._step()
                row["seconds"] = round(time.time() - started, 2)
                if self.iteration % self.cfg.val_every == 0:
                    row.update(self._validate())
                if history is not None:
                    history.write(json.dumps(row) + "\n")
                    history.flush()
                if self.record is not None:
                    self.record(row)
                every = self.cfg.checkpoint_every
                due = (every and self.iteration % every == 0) or (
                    time.time() - last_save > self.cfg.checkpoint_s)
                if due and self.estimator.idle:
                    self.save()
                    last_save = time.time()
        if self.estimator.idle:
            self.save()
        assert self.best is not None
        return self.best.weights

    def _step(self) -> dict[str, Any]:
        params = list(self.params.values())
        estimate = self.estimator.estimate(params, self.rng)
        for p, g in zip(params, estimate.grads, strict=True):
            p.grad = g
        self.optimizer.step()
        self.iteration += 1
        if self.average is not None:
            ema = self.cfg.ema
            self.average = {k: ema * self.average[k] + (1 - ema) * p.detach()
                            for k, p in self.params.items()}
        return {"iteration": self.iteration, **estimate.stats}

    def _validate_start(self) -> None:
        weights = self.validated()
        found = self.validate(weights, None)
        self.start = found.values
        self.best = _Best(found.score, 0, self._copy(weights), found.values)
        self._save_weights("best.pt", self.best)
        self.log(f"start: validation {float(found.values.mean()):.4g}")

    def _validate(self) -> dict[str, Any]:
        assert self.best is not None
        weights = self.validated()
        found = self.validate(weights, self.start)
        seen = _Best(found.score, self.iteration, self._copy(weights), found.values)
        if self.cfg.keep_checks:
            self._save_weights(f"checks/{self.iteration}.pt", seen)
        if found.score < self.best.score:
            self.best = seen
            self._save_weights("best.pt", seen)
        self.log(f"iteration {self.iteration}: validation {float(found.values.mean()):.4g}, "
                 f"score {found.score:+.4f} (best {self.best.score:+.4f} at iteration "
                 f"{self.best.iteration})")
        return dict(found.record)

    def _save_weights(self, name: str, kept: _Best) -> None:
        if self.folder is not None:
            path = self.folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            save_atomic(path, {**kept.weights, "iteration": kept.iteration, "val": kept.values})

    @contextlib.contextmanager
    def _history(self) -> Iterator[IO[str] | None]:
        if self.folder is None:
            yield None
            return
        path = self.folder / "history.jsonl"
        if path.exists():  # rows of iterations after the checkpoint are run again
            rows = [r for r in path.read_text().splitlines()
                    if r and json.loads(r)["iteration"] <= self.iteration]
            path.write_text("".join(r + "\n" for r in rows))
        with path.open("a") as f:
            yield f

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: the iteration, the parameters, Adam's state, the run's
        generator, the averaged weights, the best on validation so far and the estimator's
        own state."""
        assert self.best is not None
        return {"iteration": self.iteration, "params": self._copy(self.params),
                "optimizer": self.optimizer.state_dict(), "rng": self.rng.get_state(),
                "average": self.validated(), "start": self.start,
                "best": {"score": self.best.score, "iteration": self.best.iteration,
                         "weights": self.best.weights, "values": self.best.values},
                "estimator": self.estimator.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; the optimizer keeps the hyperparameters it was built
        with (a resumed run may change its learning rate) and takes the saved moments."""
        self.iteration = int(state["iteration"])
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(state["params"][k])
        settings = [{k: v for k, v in g.items() if k != "params"}
                    for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, setting in zip(self.optimizer.param_groups, settings):
            group.update(setting)
        self.rng.set_state(state["rng"])
        if self.cfg.ema:
            self.average = self._copy(state["average"])
        self.start = state["start"]
        self.best = _Best(**state["best"])
        self.estimator.load_state_dict(state["estimator"])

    def save(self) -> None:
        """Checkpoint now (atomically), if the loop has a checkpoint file."""
        if self.checkpoint_path is not None:
            extra = self.extra() if self.extra is not None else {}
            save_atomic(self.checkpoint_path, {**self.state_dict(), **extra})


def save_atomic(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file renamed into place: a reader sees the old file or
    the new one, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)

