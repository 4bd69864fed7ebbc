"""Run the red-team suite: an honest proof, every spoof, the verifier on each; write attacks.json and attacks.md."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_pol.attacks import ATTACKS
from lightning_pol.attacks.replay_aware import installed, verdicts
from lightning_pol.attacks.toolkit import (
    Setup,
    Stopwatch,
    snapshot,
    train_plain,
    train_with_proof,
)
from lightning_pol.attacks.victim import Spoof, Victim
from lightning_pol.errors import PoLError
from lightning_pol.format.reader import ProofReader
from lightning_pol.verification.distances import distances
from lightning_pol.verification.report import Report
from lightning_pol.verification.segments import takes_steps
from lightning_pol.verification.selection import detection_probability
from lightning_pol.verification.settings import VerifierSettings
from lightning_pol.verification.verifier import verify_proof

log = logging.getLogger(__name__)

#: The order in which a rejection is attributed: the first failed check is the one that caught the spoof.
CHECK_ORDER = ("integrity", "code", "initialization", "hyperparameters", "chain", "data", "replay")


def caught_by(report: Report) -> list[str]:
    """The checks that failed, in :data:`CHECK_ORDER`."""
    failed = [name for name, c in report.checks.items() if c.passed is False]
    return sorted(failed, key=lambda n: CHECK_ORDER.index(n) if n in CHECK_ORDER else len(CHECK_ORDER))


def _row(name: str, report: Report, seconds: float, unit: float, details: Mapping[str, Any]) -> dict[str, Any]:
    failed = caught_by(report)
    return {
        "name": name,
        "verdict": "accepted" if report.valid else "rejected",
        "caught_by": failed[0] if failed else None,
        "failed_checks": failed,
        "cost_ratio": seconds / unit if unit > 0 else math.inf,
        "seconds": seconds,
        "reasons": report.reasons[:3],
        "verifier_seed": report.selection.get("seed"),
        "details": dict(details),
    }


def blindfold_detection(spoof: Spoof, verifier: VerifierSettings, trials: int) -> dict[str, Any]:
    """Detection of a blindfold spoof: the stated probability of the random segments, and the rate over ``trials`` verifier seeds.

    Also verifies with top-Q alone (``random=0``): the attack is only sound if that accepts.
    """
    q, r = verifier.q, verifier.random
    per_epoch = []
    for e, segments in spoof.details["segments_by_epoch"].items():
        fakes = spoof.details["fake_segments_by_epoch"][e]
        per_epoch.append(detection_probability(max(0, segments - q), r, fakes))
    miss = math.prod(1.0 - p for p in per_epoch)
    topq_only = verify_proof(spoof.proof, verifier.replace(random=0)).valid
    rejected = sum(not verify_proof(spoof.proof, verifier.replace(seed=s)).valid for s in range(trials))
    return {
        "detection_probability": 1.0 - miss,
        "detection_probability_per_epoch": per_epoch,
        "empirical_detection_rate": rejected / trials if trials else None,
        "trials": trials,
        "accepted_by_topq_only": topq_only,
    }


def calibrate(setup: Setup, victim: Victim, noise_threads: int = 1) -> dict[str, float]:
    """A quick δ for tolerant mode: the honest proof's reproduction error under another thread count, against d_ref."""
    from lightning_pol.verification.reproducibility import (
        mean_std,
        reproduction_errors,
        suggested_delta,
    )

    k = setup.full_every_n_steps or setup.every_n_steps  # a tiered proof's tolerant replay judges spans of K steps
    eps = reproduction_errors(victim.proof, [k], noise="threads", noise_threads=noise_threads, max_segments=4)[k]["max"]
    other = train_plain(setup, setup.fresh_model(setup.seed + 100), setup.seed + 100)
    d_ref = mean_std([distances(victim.final, snapshot(other))])
    return suggested_delta(eps, d_ref)


def run_suite(
    setup: Setup,
    out: Path,
    names: Sequence[str] | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    verifier: VerifierSettings | None = None,
    detection_trials: int = 20,
    tolerant: Mapping[str, Any] | None = None,
    progress: Callable[..., None] | None = None,
) -> dict[str, Any]:
    """Build the honest proof and every spoof under ``out``, verify each; returns what ``attacks.json`` holds.

    ``verifier``: the settings every proof is verified with (the default ones
    when None). ``tolerant``: ``{"delta": {...}}`` or
    ``{"calibration": PATH}`` or ``{}`` (calibrate here) to run the suite a
    second time against tolerant mode; None skips it. ``progress(message)`` says what is done (logged when
    None); one that declares ``steps`` also gets each verification's segments, as ``progress(attack, done=,
    total=, steps=)``.
    """
    names = list(ATTACKS) if names is None else list(names)
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        raise PoLError(f"unknown attacks {unknown}; choose from {list(ATTACKS)}")
    params = {n: dict(p or {}) for n, p in (params or {}).items()}
    verifier = verifier if verifier is not None else VerifierSettings()
    say = progress or log.info
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    clock = Stopwatch()
    say("honest proof: training")
    with clock:
        model = train_with_proof(setup, out / "honest", seed=setup.seed)
    steps = ProofReader(out / "honest").manifest.final_step
    assert steps is not None
    victim = Victim(setup, out / "honest", snapshot(model), steps, clock.seconds, q=verifier.q, random=verifier.random)
    say(f"honest proof: {steps} steps in {clock.seconds:.1f} s")
    result: dict[str, Any] = {
        "honest_train_seconds": clock.seconds,
        "verifier": verifier.to_dict(),
        "attacks": _attack_rows(victim, out / "default", names, params, verifier, detection_trials, say),
    }
    if tolerant is not None:
        if tolerant.get("delta"):
            delta, source = {k: float(v) for k, v in tolerant["delta"].items() if v is not None}, "given"
        elif tolerant.get("calibration"):
            from lightning_pol.verification.reproducibility import read_calibration

            delta, source = read_calibration(tolerant["calibration"])["delta"], str(tolerant["calibration"])
        else:
            say("tolerant mode: calibrating delta on the honest proof")
            delta, source = calibrate(setup, victim), "calibrated on the honest proof (1 thread vs the proof's)"
        say(f"tolerant mode: delta {delta}")
        tolerant_victim = dataclasses.replace(victim, delta=delta)
        settings = verifier.replace(mode="tolerant", delta=delta, calibration=None)
        result["tolerant"] = {
            "delta": delta, "delta_source": source,
            "attacks": _attack_rows(tolerant_victim, out / "tolerant", names, params, settings, detection_trials, say),
        }
    (out / "attacks.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "attacks.md").write_text(markdown(result))
    return result


def _attack_rows(victim: Victim, out: Path, names: Sequence[str], params: Mapping[str, Mapping[str, Any]],
                 verifier: VerifierSettings, trials: int, say: Callable[[str], None]) -> list[dict[str, Any]]:
    report = verify_proof(victim.proof, verifier, progress=_replaying(say, "honest"))
    rows = [_row("honest", report, victim.train_seconds, victim.train_seconds, {})]
    say(f"honest: {rows[0]['verdict']}")
    for name in names:
        say(f"{name}: building the spoof")
        spoof = ATTACKS[name](victim, out / name, **params.get(name, {}))
        settings = verifier.replace(roots=spoof.roots) if spoof.roots is not None else verifier
        with installed(spoof.installed):
            report = verify_proof(spoof.proof, settings, progress=_replaying(say, name))
        details = dict(spoof.details)
        if name == "replay_aware":
            say(f"{name}: verifying with the attacker's code installed, under verifier.code report, match and pinned")
            details.update(verdicts(spoof, verifier))
        if name == "blindfold_topq":
            say(f"{name}: verifying with top-Q alone and {trials} verifier seeds")
            details.update(blindfold_detection(spoof, verifier, trials))
        rows.append(_row(name, report, spoof.seconds, victim.train_seconds, details))
        say(f"{name}: {rows[-1]['verdict']} ({', '.join(rows[-1]['failed_checks']) or 'no check failed'}), cost {rows[-1]['cost_ratio']:.2f}x")
    return rows


def _replaying(say: Callable[..., None], label: str) -> Callable[..., None] | None:
    """``verify_proof``'s callback forwarding each replayed segment to ``say``, when ``say`` shows replays (declares ``steps``)."""
    if not takes_steps(say):
        return None

    def progress(done: int, total: int, steps: tuple[int, int] | None = None) -> None:
        say(label, done=done, total=total, steps=steps)

    return progress


def _note(row: Mapping[str, Any]) -> str:
    d = row["details"]
    if row["name"] == "blindfold_topq" and "detection_probability" in d:
        return (f"top-Q alone {'accepts' if d['accepted_by_topq_only'] else 'rejects'}; random segments detect with "
                f"P = {d['detection_probability']:.3f}, measured {d['empirical_detection_rate']:.2f} over {d['trials']} seeds")
    if row["name"] == "infinitesimal_update":
        return f"{d['segments']} segments of l2 spacing {d['spacing_l2']:.3g}" + (f" (needs {d['segments_needed']})" if d["capped"] else "")
    if row["name"] == "replay_aware" and "attacker_code_report" in d:
        return ("the attacker's code installed: " + ", ".join(f"{p} {d[f'attacker_code_{p}']['verdict']}" for p in ("report", "match", "pinned"))
                + "; the victim's installed: " + "; ".join(row["reasons"][:1]))
    if row["name"] == "adversarial_examples":
        return f"step error l2 mean {d['step_error_l2']['mean']:.3g}; {d['perturbed_samples']} perturbed samples committed"
    return "; ".join(row["reasons"][:1])


TRUST_BOUNDARY = (
    "Trust boundary (replay_aware): the verifier replays through the prover's code. The code check guarantees that "
    "the installed files are the ones the proof records (verifier.code=match) and, under verifier.code=pinned, files "
    "the verifier reviewed; it cannot make a package the verifier installs without review honest: with the attacker's "
    "code installed, report and match accept. Hiding the proof from that code is no substitute: it runs in the "
    "verifier's process and can ship the states it must reach. See docs/security.md."
)


def _table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["| attack | verdict | caught by | failed checks | cost ratio | notes |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        note = _note(r).replace("|", "\\|")
        lines.append(f"| {r['name']} | {r['verdict']} | {r['caught_by'] or '—'} | {', '.join(r['failed_checks']) or '—'} | {r['cost_ratio']:.2f} | {note} |")
    return lines


def markdown(result: Mapping[str, Any]) -> str:
    """The suite's results as Markdown tables (default verifier, then tolerant mode when run)."""
    v = result["verifier"]
    lines = [f"## Default verifier (q={v.get('q', 1)}, random={v.get('random', 1)}, mode={v.get('mode', 'auto')})", "",
             f"Cost ratio: the attack's wall-clock time over honest training's ({result['honest_train_seconds']:.1f} s), same machine, same run.", ""]
    lines += _table(result["attacks"])
    if any(r["name"] == "replay_aware" for r in result["attacks"]):
        lines += ["", TRUST_BOUNDARY]
    if "tolerant" in result:
        t = result["tolerant"]
        delta = ", ".join(f"{k}={x:.3g}" for k, x in t["delta"].items())
        lines += ["", f"## Tolerant mode (δ: {delta}; {t['delta_source']})", ""] + _table(t["attacks"])
    return "\n".join(lines) + "\n"
