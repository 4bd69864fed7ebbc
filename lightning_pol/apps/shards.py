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
  0 all valid, 1 a proof rejected, 2 unusable input, 3 a job crashed.

The reports are merged by :func:`lightning_pol.verification.merge.merge_reports`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lightning_pol.apps import EXIT_BAD_INPUT, EXIT_CRASH
from lightning_pol.apps.verify import ERROR, REPORT, SHARED_SEED
from lightning_pol.apps.tracker_verdict import log_verdict
from lightning_pol.attestation.verdict import AttestSettings, attest_verdict
from lightning_pol.errors import PoLError
from lightning_pol.verification.merge import IncompleteShardsError, merge_reports


class MergeShards(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        sweep.mkdir(parents=True, exist_ok=True)
        seed_file = sweep / SHARED_SEED
        if not seed_file.exists():
            seed_file.write_text(str(int.from_bytes(os.urandom(8), "little") >> 1))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        storage = config.get("storage_options")
        code = merge_sweep(Path(config.hydra.sweep.dir), config.get("tracker"), config.get("attest"),
                           OmegaConf.to_container(storage, resolve=True) if storage else None)
        if code:
            sys.exit(code)


def _group_key(report: dict[str, Any]) -> str:
    """One verification: the proof and the settings it ran under, the shard aside."""
    settings = {k: v for k, v in report.get("settings", {}).items() if k != "shard"}
    return json.dumps([report.get("proof_dir"), settings], sort_keys=True, default=str)


def merge_sweep(sweep: Path, tracker: Any = None, attest: Any = None, storage_options: Any = None) -> int:
    """Merge the reports under ``sweep``; returns the exit code of the merged verdicts. ``tracker``: the app's
    ``tracker`` config; each merged verdict is logged to it (a shard's alone would be partial). ``attest``: the
    app's ``attest`` config; the merged verdict is attested (one file: a sweep over settings cannot be)."""
    reports: list[tuple[Path, dict[str, Any]]] = []
    errors: list[str] = []
    crashed = False
    for job in sorted((p for p in sweep.iterdir() if p.is_dir()), key=lambda p: (len(p.name), p.name)):
        if (job / REPORT).exists():
            reports.append((job, json.loads((job / REPORT).read_text())))
        elif (job / ERROR).exists():
            error = json.loads((job / ERROR).read_text())
            crashed = crashed or error.get("exit_code") == EXIT_CRASH
            errors.append(f"job {job.name}: {error.get('error')}")
    groups: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for job, r in reports:
        groups.setdefault(_group_key(r), []).append((job, r))
    merged: list[dict[str, Any]] = []
    for members in groups.values():
        try:
            merged.append(merge_reports([r for _, r in members]))
        except IncompleteShardsError as e:
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
    for name, r in zip(names, merged):
        if tracker is not None:
            try:
                rows.append(f"\nverdict of {name} logged to {log_verdict(tracker, r['valid'], r['proof_identity'], sweep / name)}")
            except PoLError as e:
                errors.append(str(e))
    if attest and attest.get("out") and merged:
        try:
            settings = AttestSettings.from_config(attest)
            if len(merged) > 1:
                raise PoLError(f"attest.out names one file, and this sweep merged {len(merged)} verifications: attest one at a time")
            if settings is not None:
                rows.append(f"\n{attest_verdict(merged[0], settings, storage_options)}")
        except PoLError as e:
            errors.append(str(e))
    rows += [f"\nerror: {e}" for e in errors]
    (sweep / "summary.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))
    if crashed:
        return EXIT_CRASH
    if errors or not merged:
        return EXIT_BAD_INPUT
    return 0 if all(r["valid"] for r in merged) else 1
