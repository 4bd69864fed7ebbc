"""Replaying the selected segments and judging each against the proof's next checkpoint."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from lightning_pol.errors import PoLError, one_line
from lightning_pol.verification.distances import distances, identical
from lightning_pol.verification.replay import PoLVerifierModule
from lightning_pol.verification.report import ReplayCheck, Report, Segment

State = Callable[[int], dict[str, Any]]
#: ``progress(done, total)``, called with 0 before the first segment and after each is judged. A callback that
#: declares a ``steps`` parameter also gets ``steps=(start_step, end_step)`` of the segment just judged (None at 0),
#: so that a display can show steps per second; two-argument callbacks are called as before.
Progress = Callable[..., None]


def takes_steps(progress: Callable[..., Any]) -> bool:
    """Whether a progress callback declares ``steps`` (by name: ``**kwargs`` does not count)."""
    try:
        p = inspect.signature(progress).parameters.get("steps")
    except (TypeError, ValueError):
        return False
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def check_replay(verifier: PoLVerifierModule, segments: list[Segment], state: State, judge: Judge, report: Report,
                 progress: Progress | None = None) -> None:
    """Replay ``segments``, judge each, and record the replay check."""
    replay_segments(verifier, segments, state, judge, progress)
    report.segments = segments
    failed = [s for s in segments if not s.passed]
    report.checks["replay"] = ReplayCheck(
        not failed, f"{len(segments) - len(failed)}/{len(segments)} segments " + ("bit-exact" if judge.mode == "exact" else "within delta"),
        mode=judge.mode, segments=len(segments), failed=[[s.start_step, s.end_step] for s in failed],
    )
    for s in failed[:3]:
        report.reasons.append(f"segment {s.start_step}->{s.end_step} does not replay" + (f": {s.error}" if s.error else ""))


class Judge:
    """How a replayed segment is judged: bit for bit (``exact``), or within ``delta`` per metric (``tolerant``)."""

    def __init__(self, mode: str, delta: Mapping[str, float], d_ref: Mapping[str, float] | None) -> None:
        self.mode, self.delta, self.d_ref = mode, dict(delta), dict(d_ref or {})

    def __call__(self, seg: Segment, got: dict[str, Any], target: dict[str, Any]) -> None:
        seg.distances = distances(got["model"], target["model"])
        if self.d_ref:
            seg.normalized = {k: seg.distances[k] / self.d_ref[k] for k in seg.distances if self.d_ref.get(k)}
        seg.bit_exact = identical(comparable(got), comparable(target))
        seg.passed = seg.bit_exact if self.mode == "exact" else all(seg.distances[k] <= v for k, v in self.delta.items())


def comparable(state: Mapping[str, Any]) -> dict[str, Any]:
    """What a replay must reproduce: the whole state, its counters (epoch, batch index) included."""
    return {k: state.get(k) for k in ("model", "optimizers", "lr_schedulers", "grad_scaler", "rng", "peer_rng", "callbacks", "progress")}


def chains(segments: list[Segment]) -> list[list[Segment]]:
    """Runs of consecutive segments (each ending where the next starts): each is replayed in one Lightning run."""
    runs: list[list[Segment]] = []
    for seg in segments:
        if runs and runs[-1][-1].end_step == seg.start_step:
            runs[-1].append(seg)
        else:
            runs.append([seg])
    return runs


def replay_segments(verifier: PoLVerifierModule, segments: list[Segment], state: State, judge: Judge,
                    progress: Progress | None = None) -> None:
    """Replay ``segments`` and judge each against the next checkpoint, chain by chain.

    A chain that raises a :class:`~lightning_pol.errors.PoLError` (the proof's code raised, or its state does
    not load) leaves the segments it finished judged; the segment it was in fails with the reason, and the rest
    are replayed one by one, so one broken segment never hides the others. Anything else is the verifier's
    own fault, and is raised.
    """
    done, with_steps = 0, progress is not None and takes_steps(progress)

    def tell(seg: Segment | None) -> None:
        if progress is not None and with_steps:
            progress(done, len(segments), steps=None if seg is None else (seg.start_step, seg.end_step))
        elif progress is not None:
            progress(done, len(segments))

    def count(seg: Segment) -> None:
        nonlocal done
        done += 1
        tell(seg)

    def judged(seg: Segment, got: dict[str, Any]) -> None:
        judge(seg, got, state(seg.end_step))
        count(seg)

    def fail(seg: Segment, e: PoLError) -> None:
        seg.passed = False
        seg.error = one_line(e)
        count(seg)

    tell(None)
    # A replayed callback keeps state a running fit cannot be re-seated into (param groups it added, SWA's
    # scheduler): each segment of such a proof is a fit of its own.
    for chain in chains(segments) if not verifier.manifest.callbacks else [[seg] for seg in segments]:
        by_start = {seg.start_step: seg for seg in chain}
        finished: set[int] = set()

        def on_segment(start: int, end: int, got: dict[str, Any]) -> None:
            judged(by_start[start], got)
            finished.add(start)

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                verifier.replay_chain([seg.start_step for seg in chain] + [chain[-1].end_step], state, on_segment)
        except PoLError as e:
            rest = [seg for seg in chain if seg.start_step not in finished]
            if rest:
                fail(rest[0], e)
            for seg in rest[1:]:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        judged(seg, verifier.replay(seg.start_step, seg.end_step, start_state=state(seg.start_step)))
                except PoLError as e2:
                    fail(seg, e2)
