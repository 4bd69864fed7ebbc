"""What a verification covered, and its success rate: computed here for a single run and for merged shards alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning_pol.format.index_log import IndexLog
from lightning_pol.format.manifest import Manifest


def coverage(manifest: Manifest, index_log: IndexLog, spans: Sequence[tuple[int, int]], q: int) -> dict[str, Any]:
    """The report's ``coverage`` of replaying the segments ``spans`` (``(start, end)`` steps) of a proof.

    ``expected``: the share of the dataset the paper's Eq. 4 expects top-Q replay to touch,
    1 - (1 - Q·k/S)^E; ``measured``: the share the replayed steps did touch;
    ``compute_fraction``: the share of training's steps replayed (``replayed_steps / total_steps``): Q·k/S per
    epoch for top-Q alone, more with random segments, and in a tiered proof the lead-ins from full states too.
    """
    final = manifest.final_step or 0
    steps_per_epoch = manifest.training_values().get("steps_per_epoch") or max(1, final)
    epochs = len({e for _, e in manifest.sample_epochs}) or 1
    fraction = 1.0 if q == 0 else min(1.0, q * manifest.every_n_steps / steps_per_epoch)
    replayed = {int(i) for a, b in spans for t in range(a, b) for i in index_log.step(t).tolist()}
    steps = sum(b - a for a, b in spans)
    return {
        "expected": 1.0 - (1.0 - fraction) ** epochs,
        "measured": len(replayed) / max(1, manifest.data.size),
        "compute_fraction": steps / final if final else 0.0,
        "replayed_steps": steps,
        "total_steps": final,
    }


def success_rate(other_checks_failed: bool, segments_passed: Sequence[bool | None], replay_passed: bool | None) -> float:
    """One proof's verification success rate (docs/verification.md, "Chain of trust"): 0 when a check other than
    replay and chain failed, else the share of replayed segments that passed (1 when none was replayed and the
    replay check passed). The chain's VSR is the product of its proofs'."""
    if other_checks_failed:
        return 0.0
    if not segments_passed:
        return 1.0 if replay_passed else 0.0
    return sum(1 for p in segments_passed if p) / len(segments_passed)
