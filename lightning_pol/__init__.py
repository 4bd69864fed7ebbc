"""lightning-pol: Proof-of-Learning for PyTorch Lightning.

``ProofOfLearning`` writes a proof while a run trains; ``ProofReader`` is the
only way to load one.
"""

from lightning_pol.callback import ProofOfLearning
from lightning_pol.errors import PoLError
from lightning_pol.proof_format import FORMAT_VERSION, INIT_STRATEGIES
from lightning_pol.reader import ProofFormatError, ProofReader

__all__ = ["FORMAT_VERSION", "INIT_STRATEGIES", "PoLError", "ProofFormatError", "ProofOfLearning", "ProofReader"]
__version__ = "0.1.0"
