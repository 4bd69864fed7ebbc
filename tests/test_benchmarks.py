"""The benchmark command runs (quick sizes) and reports what docs/performance.md needs; no timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks import breakdown

REPO = Path(__file__).resolve().parents[1]


def test_quick_benchmarks_run_and_report_every_measure(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res) >= {"machine", "overhead", "breakdown", "replay", "tiers", "storage", "commitment", "compression", "lora", "ddp", "object_storage"}
    (ddp,) = res["ddp"]["rows"].values()  # two ranks, one epoch: by two processes, and emulated in one
    assert ddp["valid"] and ddp["bit_exact"] and ddp["emulate_bit_exact"] and ddp["segments"] >= 2, ddp
    lora = res["lora"]  # a tiny GPT-2 here: its tied LM head and frozen base are references to the root, W_0 included
    assert lora["valid"] and lora["bit_exact"] and lora["smaller"] > 1
    assert all(size <= lora["checkpoint_bound"] for size in lora["checkpoint_bytes"]), lora
    rows = res["tiers"]["rows"]  # K = k, 4k, 8k of one training: fewer full states, fewer bytes
    assert [r["K"] for r in rows.values()] == [8, 32, 64] and rows["8"]["bytes_over_flat"] == 1
    assert rows["8"]["full_states"] > rows["32"]["full_states"] >= rows["64"]["full_states"]
    assert rows["64"]["proof_bytes"] < rows["32"]["proof_bytes"] < rows["8"]["proof_bytes"]
    assert all(r["full_compute_fraction"] == 1 for r in rows.values())
    for row in res["compression"].values():  # lossless (the round trip is checked inside), and smaller than the raw bytes
        assert all(0 < row[m]["ratio"] < 1 for m in ("zlib6", "zstd3", "shuffle_zstd3", "shuffle_zlib1"))
    for name, rows in res["overhead"].items():
        # k = 1, 16 and the whole run; the wider CNN at k = 16 alone
        assert (set(rows) == {"16"}) if "width 64" in name else ({"1", "16"} <= set(rows) and len(rows) == 3)
        assert all(r["lightning_pol"] > 0 and r["torch_save_baseline"] > 0 for r in rows.values())
        assert all(r["spread"][0] <= r["lightning_pol"] <= r["spread"][1] for r in rows.values())  # a median within its spread
    # A proof holds at least the raw bytes of its tensors; the rest is headers, the index log and the data commitment.
    for row in res["storage"].values():
        assert row["proof_over_raw"] >= row["checkpoints_over_raw"] >= 1.0
    assert 0 < res["replay"]["topq_theoretical_fraction"] <= 1
    # Every part of the callback was timed where it runs, the writer's own time apart; the replay's set-up apart from its steps.
    parts = res["breakdown"]["prover"]["rows"]
    assert {r["thread"] for r in parts} == {"training", "writer"} and all(r["calls"] > 0 and r["total_ms"] >= 0 for r in parts)
    assert {r["part"] for r in parts} == {label for label, *_ in breakdown.PROVER_PARTS}
    replay = res["breakdown"]["replay"]
    assert replay["replayed_steps"] > 0 and 0 < replay["replayed_steps_s"] < replay["verify_s"]
    assert all(r["calls"] > 0 for r in replay["rows"]), replay["rows"]
    assert "| k | lightning-pol |" in (tmp_path / "results.md").read_text()
    assert "**Tiered proofs**" in (tmp_path / "results.md").read_text()
    stored = res["object_storage"]["rows"]  # a proof written to the local S3 server, and to a local directory
    assert set(stored) == {"16"} and all(r["s3_over_local"] > 0 and r["proof_megabytes"] > 0 for r in stored.values())
    assert "**Proof on object storage**" in (tmp_path / "results.md").read_text()
