"""Spoofs that claim a pretrained start: published weights are the one link of a chain that has no proof.

- ``stolen_as_root``: the victim's final weights, presented as a "published" file, fine-tuned honestly from
  there under ``init_strategy="pretrained"``. Every segment replays; only the verifier's trust decides, and it
  never added that file.
- ``lucky_init_pretrained``, ``stolen_finetune_pretrained``: ``lucky_init`` and ``stolen_finetune``, their W_0
  claimed from a root the verifier does trust (a published model of the same architecture, not the weights
  they start from). The claim is self-consistent (each tensor's digest is W_0's own): the root's digests
  are what it is checked against.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from lightning_pol.attacks.initialization import lucky_init, stolen_finetune
from lightning_pol.attacks.toolkit import (
    Stopwatch,
    load_into,
    rewrite_claims,
    train_with_proof,
)
from lightning_pol.attacks.victim import Spoof, Victim
from lightning_pol.format.pretrained import read_weights, tensor_digest
from lightning_pol.format.reader import ProofReader

PUBLISHED = "published.safetensors"


def _publish(state: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, path)
    return path


def stolen_as_root(victim: Victim, out: Path, steps: int | None = None) -> Spoof:
    """Publish the victim's W_T as a weights file and fine-tune from it for a few steps (default 2k), honestly."""
    steps = steps if steps is not None else 2 * victim.setup.every_n_steps
    clock = Stopwatch()
    with clock:
        weights = _publish(victim.final, out.parent / f"{out.name}-{PUBLISHED}")
        setup = dataclasses.replace(victim.setup, init_strategy="pretrained", init_params={"weights": str(weights)})
        model = victim.setup.make_model()
        load_into(model, victim.final)
        train_with_proof(setup, out, seed=victim.setup.seed + 4, model=model, trainer_overrides={"max_steps": steps})
    return Spoof(out, clock.seconds, {"finetune_steps": steps, "root": str(weights)})


def claim_pretrained(proof: Path, weights: Path) -> None:
    """Rewrite ``proof``'s declared start as a pretrained one from ``weights``: every tensor of W_0 the weights have
    (same key, dtype, shape) claimed from them, with W_0's own digest."""
    digest, tensors = read_weights(weights)
    reader = ProofReader(proof)
    w0 = reader.load_checkpoint(reader.checkpoints[0])["model"]
    claimed = {k: tensor_digest(v) for k, v in w0.items()
               if k in tensors and tensors[k].dtype == v.dtype and tensors[k].shape == v.shape}

    def edit(m: dict[str, Any]) -> None:
        m["init"] = {"strategy": "pretrained", "params": {"root": {"sha256": digest, "file": weights.name}, "prefix": "",
                                                          "fresh": "pytorch_default", "fresh_params": {}, "redraw": [],
                                                          "tensors": claimed}}

    rewrite_claims(proof, edit)


def _trusted_root(victim: Victim, out: Path, seed_offset: int) -> Path:
    """A published model the verifier trusts: the victim's architecture, drawn under another seed."""
    return _publish(victim.setup.fresh_model(victim.setup.seed + seed_offset).state_dict(), out.parent / f"{out.name}-{PUBLISHED}")


def lucky_init_pretrained(victim: Victim, out: Path, **params: Any) -> Spoof:
    spoof = lucky_init(victim, out, **params)
    root = _trusted_root(victim, out, 11)
    claim_pretrained(out, root)
    return dataclasses.replace(spoof, roots=root, details={**spoof.details, "claimed_root": str(root)})


def stolen_finetune_pretrained(victim: Victim, out: Path, **params: Any) -> Spoof:
    spoof = stolen_finetune(victim, out, **params)
    root = _trusted_root(victim, out, 12)
    claim_pretrained(out, root)
    return dataclasses.replace(spoof, roots=root, details={**spoof.details, "claimed_root": str(root)})
