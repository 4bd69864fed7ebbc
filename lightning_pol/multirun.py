"""MergeShards: the Hydra callback that turns a verification multirun into one verdict.

Example (registered in ``conf/verify.yaml``)::

    python -m lightning_pol.verify --multirun proof_dir=DIR \\
        verifier.num_shards=2 verifier.shard=0,1 hydra/launcher=local

- ``on_multirun_start`` draws one verifier seed for the whole sweep (written to
  the sweep directory), so every shard computes the same random selection
  when ``verifier.seed`` is not given.
- ``on_multirun_end`` groups the jobs' reports by verification (proof and
  settings, shard aside), merges each sharded group into one report with the
  schema and verdict of a single run, writes ``verification.json`` (one group)
  or ``verification-<n>.json`` (a sweep over settings) and ``summary.md`` to the
  sweep directory, prints the summary table, and exits like a single run:
  0 all valid, 1 a proof rejected, 2 unusable input.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lightning_pol.verify import ERROR, REPORT, SHARED_SEED


class MergeShards(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        sweep.mkdir(parents=True, exist_ok=True)
        seed_file = sweep / SHARED_SEED
        if not seed_file.exists():
            seed_file.write_text(str(int.from_bytes(os.urandom(8), "little") >> 1))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        code = merge_sweep(Path(config.hydra.sweep.dir))
        if code:
            sys.exit(code)


def _group_key(report: dict[str, Any]) -> str:
    sel, mode = report.get("selection", {}), report.get("mode", {})
    return json.dumps(
        [report.get("proof_dir"), sel.get("q"), sel.get("random"), sel.get("seed"), sel.get("num_shards"),
         mode.get("requested"), mode.get("delta"), report.get("checks", {}).get("data", {}).get("full_dataset")],
        sort_keys=True,
    )


def merge_sweep(sweep: Path) -> int:
    """Merge the reports under ``sweep``; returns the exit code of the merged verdicts."""
    reports: list[tuple[Path, dict[str, Any]]] = []
    errors: list[str] = []
    for job in sorted((p for p in sweep.iterdir() if p.is_dir()), key=lambda p: (len(p.name), p.name)):
        if (job / REPORT).exists():
            reports.append((job, json.loads((job / REPORT).read_text())))
        elif (job / ERROR).exists():
            errors.append(f"job {job.name}: {json.loads((job / ERROR).read_text()).get('error')}")
    groups: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for job, r in reports:
        groups.setdefault(_group_key(r), []).append((job, r))
    merged: list[dict[str, Any]] = []
    for members in groups.values():
        try:
            merged.append(merge_reports([r for _, r in members]))
        except ValueError as e:
            errors.append(str(e))
    names = [REPORT] if len(merged) == 1 else [f"verification-{i}.json" for i in range(len(merged))]
    for name, report in zip(names, merged):
        (sweep / name).write_text(json.dumps(report, indent=1))
    rows = ["| report | q | random | shards | segments | failed | coverage | verdict |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in zip(names, merged):
        sel, replay = r["selection"], r["checks"].get("replay", {})
        rows.append(
            f"| {name} | {sel.get('q')} | {sel.get('random')} | {sel.get('num_shards')} | {len(r['segments'])} | "
            f"{len(replay.get('failed', []))} | {r.get('coverage', {}).get('measured', 0):.3f} | {'VALID' if r['valid'] else 'INVALID'} |"
        )
    rows += [f"\nerror: {e}" for e in errors]
    (sweep / "summary.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))
    if errors or not merged:
        return 2
    return 0 if all(r["valid"] for r in merged) else 1


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from the shards of one verification (or the report itself when unsharded)."""
    n = reports[0]["selection"].get("num_shards", 1)
    shards = sorted(r["selection"].get("shard", 0) for r in reports)
    if shards != list(range(n)):
        raise ValueError(f"verification of {reports[0]['proof_dir']}: shards {shards} of {n} finished; cannot merge")
    if n == 1:
        return reports[0]
    first = reports[0]
    merged = json.loads(json.dumps(first))
    merged["segments"] = sorted((s for r in reports for s in r["segments"]), key=lambda s: s["start_step"])
    failed = sorted(f for r in reports for f in r["checks"].get("replay", {}).get("failed", []))
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
    merged["selection"].update(shard=None, replayed_here=len(merged["segments"]))
    cov = merged.setdefault("coverage", {})
    cov["replayed_steps"] = sum(s["end_step"] - s["start_step"] for s in merged["segments"])
    cov["measured"] = _measured_coverage(first["proof_dir"], merged["segments"], cov.get("measured"))
    merged["valid"] = all(r["valid"] for r in reports)
    chain = merged["checks"].get("chain")
    if chain is not None:  # the VSR over all shards' segments, times the parent chain's
        others = [c for name, c in merged["checks"].items() if name not in ("replay", "chain")]
        segs = merged["segments"]
        own = 0.0 if any(c.get("passed") is False for c in others) else (sum(1 for x in segs if x.get("passed")) / len(segs) if segs else 1.0)
        chain["vsr"] = own * float(chain.get("parent_vsr", 1.0))
    return merged


def _measured_coverage(proof_dir: str, segments: list[dict[str, Any]], fallback: float | None) -> float | None:
    from lightning_pol.reader import ProofFormatError, ProofReader

    try:
        reader = ProofReader(proof_dir)
        log = reader.index_log()
        seen = {int(i) for s in segments for t in range(s["start_step"], s["end_step"]) for i in log.step(t).tolist()}
        return len(seen) / max(1, reader.manifest["data"]["size"])
    except (ProofFormatError, OSError, ValueError):
        return fallback
