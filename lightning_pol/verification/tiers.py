"""Replaying a tiered proof: which segments a selection costs, where only some checkpoints hold a state.

A segment whose start is digest-only is replayed from the nearest full state before it, through every
checkpoint in between (its *lead-in*: each of those segments is judged against its digest too, and counts as
verified). A tolerant replay cannot be compared with a digest, which only a bit-exact state matches: it judges
only spans between full states, and says which selected segments it checked only as part of a span.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping

from lightning_pol.format.manifest import CheckpointEntry
from lightning_pol.verification.report import Segment


def plan_replay(selected: list[Segment], entries: Mapping[int, CheckpointEntry], epoch_of: Callable[[int], int],
                mode: str) -> tuple[list[Segment], list[dict[str, object]]]:
    """The segments to replay for ``selected`` (sorted by start), and the selected segments a tolerant replay
    could not judge on their own (``{"segment": [start, end], "span": [start, end], "reason"}``)."""
    steps = sorted(entries)
    full = [s for s in steps if entries[s].full]
    if len(full) == len(steps):
        return selected, []
    if mode == "exact":
        return _with_lead_ins(selected, steps, full, epoch_of), []
    return _spans(selected, full, epoch_of)


def _with_lead_ins(selected: list[Segment], steps: list[int], full: list[int], epoch_of: Callable[[int], int]) -> list[Segment]:
    out = {s.start_step: s for s in selected}
    for s in selected:
        start = full[bisect.bisect_right(full, s.start_step) - 1]  # the nearest full state at or before it
        i, j = bisect.bisect_left(steps, start), bisect.bisect_left(steps, s.start_step)
        for a, b in zip(steps[i:j], steps[i + 1 : j + 1]):
            out.setdefault(a, Segment(a, b, epoch_of(a), "lead-in"))
    return sorted(out.values(), key=lambda s: s.start_step)


def _spans(selected: list[Segment], full: list[int], epoch_of: Callable[[int], int]) -> tuple[list[Segment], list[dict[str, object]]]:
    spans: dict[int, Segment] = {}
    unchecked: list[dict[str, object]] = []
    for s in selected:
        a = full[bisect.bisect_right(full, s.start_step) - 1]
        b = full[bisect.bisect_left(full, s.end_step)]  # the last checkpoint is full: always found
        if (a, b) == (s.start_step, s.end_step):
            spans[a] = s
            continue
        spans.setdefault(a, Segment(a, b, epoch_of(a), "span"))
        unchecked.append({"segment": [s.start_step, s.end_step], "span": [a, b],
                          "reason": f"a tolerant replay cannot be compared with a digest: checked only as part of {a}->{b}, between full states"})
    return sorted(spans.values(), key=lambda s: s.start_step), unchecked
