"""lightning-pol: Proof-of-Learning for PyTorch Lightning.

``ProofOfLearning`` writes a proof while a run trains; ``ProofReader`` is the
only way to load one; ``verify_proof`` (or ``python -m lightning_pol.verify``)
checks it under ``VerifierSettings``, replaying segments through
``PoLVerifierModule``.

The package, by layer (each uses only the ones below it; docs/architecture.md):

- ``apps``: the ``python -m lightning_pol.*`` commands;
- ``prover`` (the callback) and ``verification`` (``verify_proof``); ``attacks``;
- ``runtime``: what a training run and its replay both drive;
- ``format``: the proof's files, as docs/proof-format.md defines them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lightning_pol.errors import PoLError

if TYPE_CHECKING:
    from lightning_pol.format.layout import FORMAT_VERSION
    from lightning_pol.format.manifest import INIT_STRATEGIES
    from lightning_pol.format.reader import ProofFormatError, ProofReader
    from lightning_pol.prover.callback import ProofOfLearning
    from lightning_pol.verification.replay import PoLVerifierModule
    from lightning_pol.verification.settings import VerifierSettings
    from lightning_pol.verification.verifier import verify_proof

#: Where each public name lives. Imported when first used, so that a command that needs no torch
#: (``python -m lightning_pol.attest verify``) does not pay for importing Lightning.
_PUBLIC = {
    "FORMAT_VERSION": "lightning_pol.format.layout",
    "INIT_STRATEGIES": "lightning_pol.format.manifest",
    "ProofFormatError": "lightning_pol.format.reader",
    "ProofReader": "lightning_pol.format.reader",
    "ProofOfLearning": "lightning_pol.prover.callback",
    "PoLVerifierModule": "lightning_pol.verification.replay",
    "VerifierSettings": "lightning_pol.verification.settings",
    "verify_proof": "lightning_pol.verification.verifier",
}


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'lightning_pol' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


__all__ = [
    "FORMAT_VERSION",
    "INIT_STRATEGIES",
    "PoLError",
    "PoLVerifierModule",
    "ProofFormatError",
    "ProofOfLearning",
    "ProofReader",
    "VerifierSettings",
    "verify_proof",
]
__version__ = "0.1.0"
