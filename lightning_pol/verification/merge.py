"""One report from the shards of one verification: the one place where shard reports are merged."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from lightning_pol.errors import PoLError
from lightning_pol.format.reader import ProofReader
from lightning_pol.verification.coverage import coverage, success_rate


class IncompleteShardsError(PoLError):
    """A sharded verification cannot be merged: some of its shards did not finish."""


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report, with the schema and verdict of a single run, from the shard reports (``to_dict()`` form) of one
    verification; a single unsharded report is returned as it is."""
    n = reports[0]["settings"]["num_shards"]
    shards = sorted(r["settings"]["shard"] for r in reports)
    if shards != list(range(n)):
        raise IncompleteShardsError(f"verification of {reports[0]['proof_dir']}: shards {shards} of {n} finished; cannot merge")
    if n == 1:
        return reports[0]
    merged = json.loads(json.dumps(reports[0]))
    merged["segments"] = _distinct(s for r in reports for s in r["segments"])
    failed = [list(f) for f in sorted({tuple(f) for r in reports for f in r["checks"].get("replay", {}).get("failed", [])})]
    replay = merged["checks"].setdefault("replay", {})
    replay.update(
        passed=all(r["checks"].get("replay", {}).get("passed") for r in reports),
        segments=len(merged["segments"]), failed=failed,
        summary=f"{len(merged['segments']) - len(failed)}/{len(merged['segments'])} segments, {n} shards",
    )
    data = merged["checks"].setdefault("data", {})
    data["mismatched_samples"] = sorted({i for r in reports for i in r["checks"].get("data", {}).get("mismatched_samples", [])})
    data["passed"] = all(r["checks"].get("data", {}).get("passed") for r in reports)
    for name in merged["checks"]:
        values = [r["checks"].get(name, {}).get("passed") for r in reports]
        merged["checks"][name]["passed"] = False if False in values else values[0]
    merged["reasons"] = sorted({x for r in reports for x in r.get("reasons", [])})
    if merged["selection"]:
        merged["selection"].update(shard=None, replayed_here=len(merged["segments"]))
    merged["settings"] = {**merged.get("settings", {}), "shard": None}
    merged["coverage"] = _coverage(merged)
    merged["valid"] = all(r["valid"] for r in reports)
    chain = merged["checks"].get("chain")
    if chain is not None:  # the VSR over all shards' segments, times the parent chain's
        others_failed = any(c.get("passed") is False for name, c in merged["checks"].items() if name not in ("replay", "chain"))
        own = success_rate(others_failed, [s.get("passed") for s in merged["segments"]], replay["passed"])
        chain["vsr"] = own * float(chain.get("parent_vsr", 1.0))
    return merged


def _distinct(segments: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each segment once, in step order: shards of a tiered proof may replay one lead-in each (a failed copy wins)."""
    out: dict[tuple[int, int], dict[str, Any]] = {}
    for s in segments:
        key = (s["start_step"], s["end_step"])
        if key not in out or (s.get("passed") is False and out[key].get("passed") is not False):
            out[key] = s
    return [out[key] for key in sorted(out)]


def _coverage(merged: dict[str, Any]) -> dict[str, Any]:
    """The coverage of all shards' segments, from the proof (one shard's, with the merged step count, where the
    proof cannot be read again from here)."""
    spans = [(s["start_step"], s["end_step"]) for s in merged["segments"]]
    if not merged.get("coverage"):
        return {}  # the shards replayed nothing (the proof failed before)
    try:
        reader = ProofReader(merged["proof_dir"])
        return coverage(reader.manifest, reader.index_log(), spans, merged["settings"]["q"])
    except (PoLError, OSError):
        return {**merged.get("coverage", {}), "replayed_steps": sum(b - a for a, b in spans)}
