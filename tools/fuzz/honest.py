"""The honest proof every mutant is derived from: ten steps of a width-4 DigitsCNN, k = 4.

Small on purpose: a mutant is a fresh copy of it (about 150 kB), and a
campaign writes ten thousand of them.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from lightning_pol.format.reader import ProofReader
from lightning_pol.verification.integrity import check_integrity


def is_usable(proof: Path) -> bool:
    """True when ``proof`` is a complete proof whose files match its manifest (a reused honest proof)."""
    try:
        reader = ProofReader(proof)
        return reader.manifest.complete and not check_integrity(reader).problems
    except Exception:
        return False


def train_honest(proof: Path) -> Path:
    """Train (about two seconds) or reuse the honest proof in ``proof``."""
    if is_usable(proof):
        return proof
    import lightning.pytorch as pl

    from lightning_pol.prover.callback import ProofOfLearning
    from lightning_pol.zoo import DigitsCNN, DigitsDataModule

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    pl.seed_everything(0, verbose=False)
    pol = ProofOfLearning(proof, every_n_steps=4, seed=0, overwrite=True, fsync=False, background=False)
    trainer = pl.Trainer(
        max_steps=10, max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0, accelerator="cpu", devices=1,
        callbacks=[pol], logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=proof.parent,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(DigitsCNN(width=4), datamodule=DigitsDataModule(batch_size=32))
    return proof
