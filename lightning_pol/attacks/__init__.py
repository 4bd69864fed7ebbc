"""Red-team suite: the spoofs of the Proof-of-Learning literature, built with this project's own proof writer.

``python -m lightning_pol.attacks`` builds an honest proof, every spoof, and
runs the verifier on each (see docs/security.md). Each attack is a function
``attack(victim, out_dir, **params) -> Spoof``, so researchers can run one
against their own verifier settings::

    from lightning_pol.attacks import ATTACKS
    spoof = ATTACKS["blindfold_topq"](victim, Path("spoof/"))
    verify_proof(spoof.proof, q=1, random=1)
"""

from __future__ import annotations

from collections.abc import Callable

from lightning_pol.attacks.adversarial_examples import adversarial_examples
from lightning_pol.attacks.initialization import lucky_init, stolen_finetune
from lightning_pol.attacks.interpolation import (
    blindfold_topq,
    infinitesimal_update,
    structurally_correct,
)
from lightning_pol.attacks.pretrained import (
    lucky_init_pretrained,
    stolen_as_root,
    stolen_finetune_pretrained,
)
from lightning_pol.attacks.replay_aware import replay_aware
from lightning_pol.attacks.retraining import data_substitution, retraining
from lightning_pol.attacks.toolkit import Setup
from lightning_pol.attacks.victim import Spoof, Victim

#: The attacks by the names ``attacks.json`` uses.
ATTACKS: dict[str, Callable[..., Spoof]] = {
    "retraining": retraining,
    "structurally_correct": structurally_correct,
    "infinitesimal_update": infinitesimal_update,
    "blindfold_topq": blindfold_topq,
    "adversarial_examples": adversarial_examples,
    "lucky_init": lucky_init,
    "stolen_finetune": stolen_finetune,
    "stolen_as_root": stolen_as_root,
    "lucky_init_pretrained": lucky_init_pretrained,
    "stolen_finetune_pretrained": stolen_finetune_pretrained,
    "data_substitution": data_substitution,
    "replay_aware": replay_aware,
}

__all__ = ["ATTACKS", "Setup", "Spoof", "Victim"]
