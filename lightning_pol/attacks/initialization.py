"""Spoofs that start from trained weights and claim a fresh start: ``lucky_init`` and ``stolen_finetune``."""

from __future__ import annotations

from pathlib import Path

from lightning_pol.attacks.toolkit import (
    Stopwatch,
    load_into,
    snapshot,
    train_plain,
    train_with_proof,
)
from lightning_pol.attacks.victim import Spoof, Victim


def lucky_init(victim: Victim, out: Path, donor_epochs: int = 1, seed_offset: int = 2) -> Spoof:
    """W_0 is another model's trained weights; the run from there is honest and declares a fresh initialization.

    The donor is trained (without a proof) for ``donor_epochs`` on the same
    data with another seed; its cost counts toward the attack's.
    """
    seed = victim.setup.seed + seed_offset
    clock = Stopwatch()
    with clock:
        donor = train_plain(victim.setup, victim.setup.fresh_model(seed), seed, {"max_epochs": donor_epochs, "max_steps": -1})
        model = victim.setup.make_model()
        load_into(model, snapshot(donor))
        train_with_proof(victim.setup, out, seed=seed, model=model)
    return Spoof(out, clock.seconds, {"donor_epochs": donor_epochs})


def stolen_finetune(victim: Victim, out: Path, steps: int | None = None, seed_offset: int = 3) -> Spoof:
    """Fine-tune the stolen W_T for a few steps (default 2k) and claim a fresh start.

    Everything after W_0 is honest training, so every replayed segment is
    bit-exact: only the initialization check can catch it.
    """
    steps = steps if steps is not None else 2 * victim.setup.every_n_steps
    seed = victim.setup.seed + seed_offset
    clock = Stopwatch()
    with clock:
        model = victim.setup.make_model()
        load_into(model, victim.final)
        train_with_proof(victim.setup, out, seed=seed, model=model, trainer_overrides={"max_steps": steps})
    return Spoof(out, clock.seconds, {"finetune_steps": steps})
