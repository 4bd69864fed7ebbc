"""Spoofs that do real training, but not the training they claim: ``retraining`` and ``data_substitution``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lightning_pol.attacks.toolkit import (
    SteerWeights,
    Stopwatch,
    patch_training_step,
    rewrite_claims,
    train_with_proof,
)
from lightning_pol.attacks.victim import Spoof, Victim
from lightning_pol.format import layout as pf
from lightning_pol.format.reader import ProofReader
from lightning_pol.verification.distances import distances


def _add_to_loss(out: Any, extra: torch.Tensor) -> Any:
    if isinstance(out, dict):
        return {**out, "loss": out["loss"] + extra}
    return out + extra


def retraining(victim: Victim, out: Path, pull: float = 1.0, seed_offset: int = 1) -> Spoof:
    """Retrain toward W_T from another initialization with other batches, and claim that run ended at W_T.

    The adversary trains for the victim's full schedule from its own fresh
    W_0 (another seed, so other draws and another batch order), with a
    proximal term ``pull/2 · ||W - W_T||²`` added to every step's loss so the
    run heads for W_T, and lands exactly on W_T at the last step. The proof
    declares the victim's module, whose loss has no such term.
    """
    seed = victim.setup.seed + seed_offset
    target = victim.final
    details: dict[str, Any] = {"seed": seed, "pull": pull}
    clock = Stopwatch()
    with clock:
        model = victim.setup.fresh_model(seed)

        def step(module: Any, batch: Any, batch_idx: int, real: Any) -> Any:
            gap = sum(((p - target[n].to(p)) ** 2).sum() for n, p in module.named_parameters() if n in target)
            return _add_to_loss(real(batch, batch_idx), 0.5 * pull * gap)

        def land(done: int, state: dict[str, torch.Tensor]) -> Any:
            if done != victim.steps:
                return None
            details["distance_to_W_T_before_landing"] = distances(state, target)
            return target

        patch_training_step(model, step)
        train_with_proof(victim.setup, out, seed=seed, model=model, callbacks=[SteerWeights(land)])
    return Spoof(out, clock.seconds, details)


def data_substitution(victim: Victim, out: Path, data_overrides: dict[str, Any] | None = None) -> Spoof:
    """Train on other data and claim the committed dataset.

    The run is honest except for its data (the datamodule built with
    ``data_overrides``, by default another train/validation split). The proof
    then claims the victim's datamodule and data commitment: Merkle root,
    leaves and size, so every committed hash is the real data's.
    """
    overrides = dict(data_overrides if data_overrides is not None else {"split_seed": 1})
    honest = ProofReader(victim.proof)
    clock = Stopwatch()
    with clock:
        train_with_proof(victim.setup, out, seed=victim.setup.seed, datamodule=victim.setup.make_datamodule(**overrides))
        claimed = honest.manifest.to_json()
        leaves = honest.read_file(claimed["data"]["leaves"])

        def claim(m: dict[str, Any]) -> None:
            m["datamodule"] = claimed["datamodule"]
            m["data"] = claimed["data"]

        rewrite_claims(out, claim, {pf.LEAVES: leaves})
    return Spoof(out, clock.seconds, {"trained_on": overrides})
