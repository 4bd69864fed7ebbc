"""Replaying the selected segments and judging each against the proof's next checkpoint."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from lightning_pol.errors import PoLError, one_line
from lightning_pol.format.checkpoint import checkpoint_digest
from lightning_pol.format.manifest import CheckpointEntry
from lightning_pol.runtime.update_norms import norms_disagree, update_norms
from lightning_pol.verification.distances import METRICS, distances, identical
from lightning_pol.verification.replay import PoLVerifierModule
from lightning_pol.verification.report import ReplayCheck, Report, Segment

#: ``state(step)``: the proof's decoded state at checkpoint ``step``, or None where it holds only a digest.
State = Callable[[int], "dict[str, Any] | None"]
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
    lead_ins = sum(s.reason == "lead-in" for s in segments)
    report.checks["replay"] = ReplayCheck(
        not failed, f"{len(segments) - len(failed)}/{len(segments)} segments " + ("bit-exact" if judge.mode == "exact" else "within delta")
        + (f" ({lead_ins} of them replayed to reach a selected one from a full state)" if lead_ins else ""),
        mode=judge.mode, segments=len(segments), failed=[[s.start_step, s.end_step] for s in failed],
    )
    for s in failed[:3]:
        report.reasons.append(f"segment {s.start_step}->{s.end_step} does not replay" + (f": {s.error}" if s.error else ""))


class Judge:
    """How a replayed segment is judged: bit for bit (``exact``), or within ``delta`` per metric (``tolerant``).

    A segment ending at a digest-only checkpoint (a tiered proof) is bit-exact when the replayed state's checkpoint
    digest is the recorded one; a bit-exact segment of a tiered proof must also reproduce its recorded update norms.
    """

    def __init__(self, mode: str, delta: Mapping[str, float], d_ref: Mapping[str, float] | None) -> None:
        self.mode, self.delta, self.d_ref = mode, dict(delta), dict(d_ref or {})

    def __call__(self, seg: Segment, got: dict[str, Any], target: dict[str, Any] | None, entry: CheckpointEntry,
                 start_model: dict[str, Any] | None) -> None:
        if target is None:  # only a bit-exact replay can match a digest; the plan sends tolerant replays to full states
            seg.bit_exact = seg.passed = checkpoint_digest(got) == entry.sha256
        else:
            seg.bit_exact = identical(comparable(got), comparable(target))
            # Identical states are at distance 0: the float64 copies of the distances cost more than the replay of a
            # large model's segment (a GPT-2-sized LoRA: 20 s a segment, docs/performance.md).
            seg.distances = dict.fromkeys(METRICS, 0.0) if seg.bit_exact else distances(got["model"], target["model"])
            if self.d_ref:
                seg.normalized = {k: seg.distances[k] / self.d_ref[k] for k in seg.distances if self.d_ref.get(k)}
            seg.passed = seg.bit_exact if self.mode == "exact" else all(seg.distances[k] <= v for k, v in self.delta.items())
        if seg.bit_exact and entry.norms is not None and start_model is not None:
            wrong = norms_disagree(entry.norms, update_norms(start_model, got["model"]))
            if wrong:
                seg.passed, seg.error = False, wrong


def comparable(state: Mapping[str, Any]) -> dict[str, Any]:
    """What a replay must reproduce: the whole state, its counters (epoch, batch index) included."""
    return {k: state.get(k) for k in ("model", "optimizers", "lr_schedulers", "grad_scaler", "rng", "peer_rng", "peer_buffers", "callbacks", "progress")}


def chains(segments: list[Segment], breaks: Callable[[int], bool] = lambda step: False) -> list[list[Segment]]:
    """Runs of consecutive segments (each ending where the next starts), each replayed in one Lightning run; a run
    also ends at a step where ``breaks(step)``."""
    runs: list[list[Segment]] = []
    for seg in segments:
        if runs and runs[-1][-1].end_step == seg.start_step and not breaks(seg.start_step):
            runs[-1].append(seg)
        else:
            runs.append([seg])
    return runs


def replay_segments(verifier: PoLVerifierModule, segments: list[Segment], state: State, judge: Judge,
                    progress: Progress | None = None) -> None:
    """Replay ``segments`` and judge each against the next checkpoint, chain by chain.

    Within a chain, a segment starts from the proof's state where the proof holds one (re-seated into the running
    fit), else from the state the replay reached (a tiered proof's digest-only checkpoint, just judged). A chain
    that raises a :class:`~lightning_pol.errors.PoLError` (the proof's code raised, or its state does not load)
    leaves the segments it finished judged; the segment it was in fails with the reason, and the rest are replayed
    one by one where they start from a state of the proof, so one broken segment never hides the others. Anything
    else is the verifier's own fault, and is raised.
    """
    done, with_steps = 0, progress is not None and takes_steps(progress)
    entries = {c.step: c for c in verifier.manifest.checkpoints}
    previous = {b.step: a.step for a, b in zip(verifier.manifest.checkpoints, verifier.manifest.checkpoints[1:])}
    reached: tuple[int, dict[str, Any]] | None = None  # the step and replayed model the last judged segment ended at
    diverged: set[int] = set()  # digest-only steps the replay reached in another state than the proof's

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
        nonlocal reached
        start_model = None
        if previous.get(seg.end_step) == seg.start_step:  # recorded update norms span one checkpoint interval
            start = state(seg.start_step)
            start_model = start["model"] if start is not None else (reached[1] if reached and reached[0] == seg.start_step else None)
        judge(seg, got, state(seg.end_step), entries[seg.end_step], start_model)
        if not seg.passed and seg.start_step in diverged and not seg.error:
            seg.error = f"it starts from step {seg.start_step}, which the replay already reached in another state than the proof's"
        if not seg.passed and not entries[seg.end_step].full:
            diverged.add(seg.end_step)
        reached = (seg.end_step, got["model"])
        count(seg)

    def fail(seg: Segment, e: PoLError | str) -> None:
        seg.passed = False
        seg.error = e if isinstance(e, str) else one_line(e)
        count(seg)

    tell(None)
    # A replayed callback keeps state a running fit cannot be re-seated into (param groups it added, SWA's
    # scheduler): a chain of such a proof ends wherever it would re-seat, at each state the proof holds.
    cannot_reseat = bool(verifier.manifest.callbacks)
    runs = chains(segments, lambda step: cannot_reseat and entries[step].full)
    if verifier.processes is not None:  # a W-process replay: one start of the processes for every chain
        verifier.processes.prepare([[seg.start_step for seg in chain] + [chain[-1].end_step] for chain in runs])
    try:
        _replay_runs(verifier, runs, state, judged, fail)
    finally:
        if verifier.processes is not None:
            verifier.processes.close()


def _replay_runs(verifier: PoLVerifierModule, runs: list[list[Segment]], state: State,
                 judged: Callable[[Segment, dict[str, Any]], None], fail: Callable[[Segment, PoLError | str], None]) -> None:
    for chain in runs:
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
                start_state = state(seg.start_step)
                if start_state is None:
                    fail(seg, "not replayed: it starts from a digest-only checkpoint, and the replay leading to it failed")
                    continue
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        judged(seg, verifier.replay(seg.start_step, seg.end_step, start_state=start_state))
                except PoLError as e2:
                    fail(seg, e2)
