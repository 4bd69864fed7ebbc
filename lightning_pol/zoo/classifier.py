"""An image classifier around a network from :mod:`lightning_pol.zoo.networks`, trained as in He et al. (2016)."""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassAccuracy

from lightning_pol.zoo.classification import ClassificationSteps
from lightning_pol.zoo.networks import build_network


class ImageClassifier(ClassificationSteps):
    """Example::

        model = ImageClassifier(net="resnet20", num_classes=10)
        trainer.fit(model, datamodule=CifarDataModule("cifar10"))

    SGD with momentum and weight decay, and a step schedule that multiplies the
    learning rate by ``gamma`` at each epoch in ``milestones`` (default
    ``[100, 150]``); ``net`` is a name :func:`build_network` knows.
    """

    def __init__(
        self,
        net: str = "resnet20",
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        nesterov: bool = False,
        milestones: list[int] | None = None,
        gamma: float = 0.1,
    ) -> None:
        super().__init__()
        milestones = [100, 150] if milestones is None else [int(m) for m in milestones]  # plain list in hparams
        self.save_hyperparameters()
        self.net = build_network(net, num_classes, in_channels=in_channels, input_size=input_size)
        self.val_acc = MulticlassAccuracy(num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def configure_optimizers(self):  # type: ignore[override]
        h = self.hparams
        opt = torch.optim.SGD(
            self.parameters(), lr=h.lr, momentum=h.momentum, weight_decay=h.weight_decay, nesterov=h.nesterov,
        )
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(h.milestones), gamma=h.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
