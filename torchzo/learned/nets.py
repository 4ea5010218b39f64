"""The networks of a learned ZO optimizer, as one module of the architecture that built them."""
from __future__ import annotations

from dataclasses import replace

from torch import Tensor, nn

from .arch import Architecture, PaperConfig

__all__ = ["LearnedZO"]


class LearnedZO(nn.Module):
    """The learned part of ZO-LSTM: the networks of architecture ``arch`` (default: the
    paper's UpdateRNN and QueryRNN; for :class:`~torchzo.learned.arch.GeneralConfig` the
    update and query MLPs and the step-size controller). ``hidden``: replaces
    ``arch.hidden``."""

    update: nn.Module
    query: nn.Module | None

    def __init__(self, hidden: int | None = None, arch: Architecture | None = None) -> None:
        super().__init__()
        arch = arch if arch is not None else PaperConfig()
        if hidden is not None and hidden != arch.hidden:
            arch = replace(arch, hidden=hidden)  # type: ignore[type-var]
        self.arch = arch
        # The built module's weights under the names files store (no prefix).
        built = arch.build()
        for name, p in built.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, module in built.named_children():
            self.add_module(name, module)
        if "query" not in self._modules:
            self.query = None

    def update_parameters(self) -> list[nn.Parameter]:
        """What meta-training's first stage trains (for the paper's networks, the UpdateRNN)."""
        return self.arch.update_parameters(self)

    def weights(self) -> dict[str, Tensor]:
        """The weights by name, as the architecture's functions take them (no copies)."""
        return dict(self.named_parameters())
