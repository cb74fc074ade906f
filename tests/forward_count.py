"""Count a model's forward passes from the outside (a forward pre-hook), so tests can prove a cache was read."""

from __future__ import annotations

from torch import nn


class ForwardCount:
    """Batches and images through ``model``'s forward, copies of the model included (the hook is a plain
    function, which ``copy.deepcopy`` shares: folded or channels-last copies count here too)."""

    def __init__(self, model: nn.Module) -> None:
        self.batches = 0
        self.images = 0

        def hook(module: nn.Module, args: tuple) -> None:
            self.batches += 1
            self.images += len(args[0])

        self.handle = model.register_forward_pre_hook(hook)
