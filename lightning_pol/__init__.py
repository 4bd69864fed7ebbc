"""lightning-pol: Proof-of-Learning for PyTorch Lightning.

``ProofOfLearning`` writes a proof while a run trains; ``ProofReader`` is the
only way to load one; ``verify_proof`` (or ``python -m lightning_pol.verify``)
checks it, replaying segments through ``PoLVerifierModule``.
"""

from lightning_pol.callback import ProofOfLearning
from lightning_pol.errors import PoLError
from lightning_pol.proof_format import FORMAT_VERSION, INIT_STRATEGIES
from lightning_pol.reader import ProofFormatError, ProofReader
from lightning_pol.replay import PoLVerifierModule
from lightning_pol.verifier import verify_proof

__all__ = [
    "FORMAT_VERSION",
    "INIT_STRATEGIES",
    "PoLError",
    "PoLVerifierModule",
    "ProofFormatError",
    "ProofOfLearning",
    "ProofReader",
    "verify_proof",
]
__version__ = "0.1.0"
