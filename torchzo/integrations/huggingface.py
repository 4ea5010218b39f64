"""A ``transformers.Trainer`` whose training step is a zeroth-order step (forward passes only).

``Trainer`` calls ``loss.backward()`` in ``training_step`` and ``optimizer.step()`` without a
closure; a ZO optimizer needs the closure and no backward. :class:`ZOTrainer` runs the whole
ZO step (every query on the same batch) inside ``training_step`` and hands the ``Trainer``
an optimizer whose closure-less ``step()`` does nothing, so that the rest of the loop
(schedulers, logging, evaluation, checkpoints, callbacks) works as it does for any optimizer::

    from torchzo.integrations.huggingface import ZOTrainer

    trainer = ZOTrainer(model=model, args=TrainingArguments(..., learning_rate=1e-6),
                        train_dataset=train, zo_optimizer=lambda params: torchzo.ZOSGD(
                            params, lr=1e-6, q=1, mu=1e-3, estimator="central",
                            memory="inference"))
    trainer.train()

The model runs in ``model.eval()`` mode during training steps: dropout off, so that every query
of a step evaluates the same function (a step compares losses; noise between them swamps the
difference). Batch statistics are not updated. Gradient accumulation does not apply (each
batch takes a whole ZO step); the learning rate the ``Trainer`` schedules is the torchzo
optimizer's ``lr``. Logs gain ``zo_queries``, the objective evaluations so far.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from transformers import Trainer

from ..optim.base import ZOOptimizer

__all__ = ["ZOTrainer"]

#: What ``ZOTrainer`` builds when given no optimizer: MeZO's step (central, q = 1) at
#: inference memory, with the ``Trainer``'s learning rate.
ZOFactory = Callable[[list[nn.Parameter]], ZOOptimizer]


class _StepInTrainingStep(Optimizer):
    """The face a torchzo optimizer shows the ``Trainer``: the same param groups and state, a
    ``step()`` that does nothing without a closure (the step has run in ``training_step``)."""

    def __init__(self, zo: ZOOptimizer) -> None:
        super().__init__([p for g in zo.param_groups for p in g["params"]], dict(zo.defaults))
        self.zo = zo
        self.param_groups = zo.param_groups  # shared, so that schedulers set the real lr
        self.state = zo.state

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        return None if closure is None else self.zo.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing to clear: ZO steps make no gradients."""

    def state_dict(self) -> dict[str, Any]:
        return self.zo.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.zo.load_state_dict(state_dict)
        # torch.optim's load_state_dict puts new group and state objects in place (accelerate
        # loads one when it prepares the optimizer): share those.
        self.param_groups, self.state = self.zo.param_groups, self.zo.state


class ZOTrainer(Trainer):
    """``transformers.Trainer`` with a torchzo optimizer (see the module docstring).

    Args:
        zo_optimizer: a function from the trainable parameters (``requires_grad``, in the
            model's order) to a torchzo optimizer; default: ``ZOSGD(params,
            lr=args.learning_rate, q=1, mu=1e-3, estimator="central", memory="inference")``.
            Or pass a built torchzo optimizer as ``optimizers=(opt, scheduler_or_None)``.
        Others as for ``transformers.Trainer``.
    """

    def __init__(self, *args: Any, zo_optimizer: ZOFactory | None = None, **kwargs: Any) -> None:
        self._zo_factory = zo_optimizer
        super().__init__(*args, **kwargs)
        if self.args.gradient_accumulation_steps != 1:
            raise ValueError("ZOTrainer takes a whole ZO step per batch: set "
                             "gradient_accumulation_steps=1")
        if isinstance(self.optimizer, ZOOptimizer):
            self.optimizer = _StepInTrainingStep(self.optimizer)
        elif self.optimizer is not None and not isinstance(self.optimizer, _StepInTrainingStep):
            raise TypeError(f"ZOTrainer needs a torchzo optimizer, got "
                            f"{type(self.optimizer).__name__}")

    @property
    def zo(self) -> ZOOptimizer:
        """The torchzo optimizer (built at the start of training where not passed in)."""
        if self.optimizer is None:
            self.create_optimizer()
        face: Any = self.optimizer
        while not isinstance(face, _StepInTrainingStep):  # accelerate's wrapper, if any
            face = face.optimizer
        return face.zo

    def create_optimizer(self, model: nn.Module | None = None) -> Optimizer:
        if self.optimizer is None:
            model = model if model is not None else self.model
            assert model is not None, "ZOTrainer needs a model"
            params = [p for p in model.parameters() if p.requires_grad]
            zo = (self._zo_factory(params) if self._zo_factory is not None else
                  _default(params, self.args.learning_rate))
            if not isinstance(zo, ZOOptimizer):
                raise TypeError(f"zo_optimizer must return a torchzo optimizer, got "
                                f"{type(zo).__name__}")
            self.optimizer = _StepInTrainingStep(zo)
        return self.optimizer

    def training_step(self, model: nn.Module, inputs: dict[str, Tensor | Any],
                      num_items_in_batch: Tensor | int | None = None) -> Tensor:
        """One ZO step on ``inputs``: every query sees this batch, with the model in eval
        mode; returns the loss at the parameters before the step."""
        model.eval()
        inputs = self._prepare_inputs(inputs)

        def closure() -> Any:
            with self.compute_loss_context_manager():
                return self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)

        loss = self.zo.step(closure)
        return torch.as_tensor(loss, dtype=torch.float32).detach().to(self.args.device)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self.optimizer is not None:
            logs = {**logs, "zo_queries": self.zo.queries}
        super().log(logs, *args, **kwargs)


def _default(params: Iterable[nn.Parameter], lr: float) -> ZOOptimizer:
    from ..optim import ZOSGD

    return ZOSGD(params, lr=lr, q=1, mu=1e-3, estimator="central", memory="inference")
