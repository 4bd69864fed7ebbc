"""Modules for the callbacks the replay runs: a digits CNN with a ``backbone`` (fine-tuning), and a GAN-style
module with two optimizers under manual optimization."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_pol.zoo.classification import ClassificationSteps


class BackboneDigits(ClassificationSteps):
    """A digits CNN (BatchNorm, dropout) whose features are the ``backbone`` BackboneFinetuning freezes; the
    optimizer takes what trains at fit start, as fine-tuning recipes do."""

    def __init__(self, width: int = 8, lr: float = 0.05, momentum: float = 0.9) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(2 * width * 16, 10))
        self.val_acc = MulticlassAccuracy(num_classes=10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def configure_optimizers(self):  # type: ignore[override]
        h = self.hparams
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=h.lr, momentum=h.momentum)


class DigitsGAN(pl.LightningModule):
    """A GAN on the 8x8 digits under manual optimization: each batch steps the discriminator (with dropout)
    and then the generator, two ``optimizer.step()`` calls, so Lightning's ``global_step`` counts two a batch."""

    def __init__(self, latent: int = 16, hidden: int = 64, lr: float = 2e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, 64), nn.Tanh())
        self.discriminator = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.LeakyReLU(0.2), nn.Dropout(0.3), nn.Linear(hidden, 1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        real, _ = batch
        real = real.flatten(1) / real.abs().amax().clamp(min=1.0)
        opt_g, opt_d = self.optimizers()
        fake = self.generator(torch.randn(real.shape[0], self.hparams.latent, device=real.device))
        ones, zeros = torch.ones(real.shape[0], 1, device=real.device), torch.zeros(real.shape[0], 1, device=real.device)
        d_loss = (F.binary_cross_entropy_with_logits(self.discriminator(real), ones)
                  + F.binary_cross_entropy_with_logits(self.discriminator(fake.detach()), zeros))
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        g_loss = F.binary_cross_entropy_with_logits(self.discriminator(fake), ones)
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.log_dict({"d_loss": d_loss, "g_loss": g_loss})

    def configure_optimizers(self):  # type: ignore[override]
        lr = self.hparams.lr
        return [torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(0.5, 0.999)),
                torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.999))]
