"""Modules a verifier could not re-create from a proof (importable, so the failure is about hparams)."""

from __future__ import annotations

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
