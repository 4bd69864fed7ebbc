"""Modules a verifier could not re-create from a proof (importable, so the failure is about hparams)."""

from __future__ import annotations

import functools

import torch
from torch import nn

from tests.unseen_project import UnseenModule

WIDTH = 16


class NoHparams(UnseenModule):
    def __init__(self, width: int) -> None:  # forgets save_hyperparameters
        super(UnseenModule, self).__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        self.seen = []


class ObjectHparam(UnseenModule):
    def __init__(self, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()


class GlobalWidth(UnseenModule):
    """Its architecture depends on a module global, not on its hparams."""

    def __init__(self, lr: float = 3e-3, label_smoothing: float = 0.1) -> None:
        super(UnseenModule, self).__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, WIDTH), nn.ReLU(), nn.Linear(WIDTH, 10))
        self.seen = []


class LrAttribute(UnseenModule):
    """Records nothing; every argument has a default, so Class() builds, with the default lr."""

    def __init__(self, lr: float = 0.01) -> None:
        super(UnseenModule, self).__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        self.seen = []

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class LrInAClosure(LrAttribute):
    """Keeps its lr where no attribute shows it: only the optimizers it configures tell."""

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        del self.lr
        self.make_optimizer = functools.partial(torch.optim.SGD, lr=lr)

    def configure_optimizers(self):
        return self.make_optimizer(self.parameters())


class GlobalRandomData(UnseenModule):
    """Its training data is drawn from the global RNG in train_dataloader(), as Lightning's BoringModel's is."""

    def train_dataloader(self):
        x = torch.randn(64, 1, 8, 8)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.randint(0, 10, (64,)), torch.arange(64)), batch_size=16)


class DataInInit(UnseenModule):
    """Honest: makes its own training data in __init__, with its own seeded generator (the rehearsal builds it for real)."""

    def __init__(self, width: int = 16, dropout: float = 0.2, lr: float = 3e-3, label_smoothing: float = 0.1) -> None:
        super().__init__(width, dropout, lr, label_smoothing)  # its save_hyperparameters() records these
        g = torch.Generator().manual_seed(7)
        x = torch.rand(96, 1, 8, 8, generator=g)
        self.data = torch.utils.data.TensorDataset(x, torch.randint(0, 10, (96,), generator=g), torch.arange(96))

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.data, batch_size=16, shuffle=True)
