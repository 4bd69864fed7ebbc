"""Which segments the verifier replays: the top-Q updates of each epoch, and random ones the prover cannot predict."""

from __future__ import annotations

import math
import random as _random
from collections.abc import Callable
from typing import Any

from lightning_pol.format.manifest import Manifest
from lightning_pol.runtime.update_norms import magnitude
from lightning_pol.verification.distances import distances
from lightning_pol.verification.report import Segment

DETECTION_FORMULA = "per epoch, with n segments outside the top-Q and R random picks: P(detect m fakes) = 1 - C(n-m, R) / C(n, R)"


def detection_probability(candidates: int, random_picks: int, fakes: int) -> float:
    """Chance that ``random_picks`` segments drawn without replacement from ``candidates`` hit one of ``fakes``."""
    if fakes <= 0 or random_picks <= 0 or candidates <= 0:
        return 0.0
    if random_picks > candidates - fakes:
        return 1.0
    return 1.0 - math.comb(candidates - fakes, random_picks) / math.comb(candidates, random_picks)


def update_size(manifest: Manifest, state: Callable[[int], Any]) -> Callable[[int, int], float]:
    """How top-Q measures the update of segment a->b: a tiered proof's recorded norms (most of its states are
    digests; the replay checks the norms), another proof's l2 distance between the states ``state(step)`` decodes."""
    if manifest.tiered:
        norms = {c.step: c.norms or {} for c in manifest.checkpoints}
        return lambda a, b: magnitude(norms[b])
    return lambda a, b: distances(state(a)["model"], state(b)["model"])["l2"]


def select_segments(steps: list[int], epoch_of: Callable[[int], int], magnitude: Callable[[int, int], float],
                    q: int, n_random: int, seed: int) -> tuple[list[Segment], dict[str, Any]]:
    """The segments between consecutive checkpoint ``steps`` to replay, and the report's ``selection``.

    Per epoch (of a segment's first step): the ``q`` largest by ``magnitude(a, b)``, plus ``n_random`` of the
    rest drawn with ``seed``; ``q == 0``: every segment (no magnitude is computed).
    """
    by_epoch: dict[int, list[tuple[int, int, float]]] = {}
    for a, b in zip(steps, steps[1:]):
        by_epoch.setdefault(epoch_of(a), []).append((a, b, magnitude(a, b) if q > 0 else math.nan))
    rng = _random.Random(seed)
    chosen: list[Segment] = []
    probabilities = {}
    for epoch, segs in sorted(by_epoch.items()):
        if q == 0:
            chosen.extend(Segment(a, b, epoch, "all") for a, b, _ in segs)
            continue
        ranked = sorted(segs, key=lambda s: (-s[2], s[0]))
        top, rest = ranked[:q], sorted(ranked[q:])
        picks = rng.sample(rest, min(n_random, len(rest)))
        chosen.extend(Segment(a, b, epoch, "topq") for a, b, _ in top)
        chosen.extend(Segment(a, b, epoch, "random") for a, b, _ in picks)
        probabilities[epoch] = detection_probability(len(rest), len(picks), 1)
    chosen.sort(key=lambda s: s.start_step)
    selection = {
        "q": q, "random": n_random, "seed": seed, "segments_in_proof": sum(len(v) for v in by_epoch.values()),
        "selected": len(chosen), "detection_probability_one_fake_per_epoch": probabilities, "detection_formula": DETECTION_FORMULA,
    }
    return chosen, selection
