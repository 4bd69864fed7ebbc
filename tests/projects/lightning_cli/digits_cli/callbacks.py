"""A project's own callback that changes every optimizer step."""

from lightning.pytorch import Callback


class ScaleGradients(Callback):
    """Scale the gradients by ``factor`` before each optimizer step (a hand-rolled gradient scaling)."""

    def __init__(self, factor: float = 0.5) -> None:
        self.factor = factor

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        for p in pl_module.parameters():
            if p.grad is not None:
                p.grad.mul_(self.factor)
