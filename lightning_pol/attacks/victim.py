"""The victim an attack targets, and the spoofed proof it produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_pol.attacks.toolkit import Setup, State


@dataclass
class Victim:
    """What the adversary has: the training setup and data, and the honest final weights W_T.

    ``proof`` is the honest proof (its public parts: the data commitment and
    settings); ``train_seconds`` is the honest training's cost, the unit of an
    attack's ``cost_ratio``. ``delta`` is the verifier's tolerance the attack
    aims under (None: exact replay, no tolerance); ``q`` and ``random`` are the
    verifier's public segment-selection settings.
    """

    setup: Setup
    proof: Path
    final: State
    steps: int
    train_seconds: float
    delta: dict[str, float] | None = None
    q: int = 1
    random: int = 1


@dataclass
class Spoof:
    """A complete spoofed proof and what it cost to make (wall-clock seconds, same machine as the honest run)."""

    proof: Path
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    #: A weights file the verifier trusts as a root for this spoof (a published model it claims to start from).
    roots: Path | None = None
    #: A directory the verifier has on its import path for this spoof: the code it installed for the classes the
    #: proof names (None: the suite's own).
    installed: Path | None = None
