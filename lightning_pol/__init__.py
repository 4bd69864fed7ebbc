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

from lightning_pol.errors import PoLError
from lightning_pol.format.layout import FORMAT_VERSION
from lightning_pol.format.manifest import INIT_STRATEGIES
from lightning_pol.format.reader import ProofFormatError, ProofReader
from lightning_pol.prover.callback import ProofOfLearning
from lightning_pol.verification.replay import PoLVerifierModule
from lightning_pol.verification.settings import VerifierSettings
from lightning_pol.verification.verifier import verify_proof

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
