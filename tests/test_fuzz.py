"""Issue 9, hostile proofs: a small fuzz campaign ends without findings, and the real CLI gives clean verdicts.

The full campaign (10,000 mutants) is ``python -m tools.fuzz``; its
numbers are in docs/security.md ("Fuzz campaign").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lightning_pol.format import layout as pf
from lightning_pol.format.checkpoint import checkpoint_bytes
from tools.fuzz.campaign import Worker, run_campaign
from tools.fuzz.honest import train_honest
from tools.fuzz.mutations import CLASSES, Env, Honest, Mutant

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def honest(tmp_path_factory) -> Path:
    return train_honest(tmp_path_factory.mktemp("fuzz") / "honest" / "proof")


PER_CLASS = 16


def test_small_campaign_ends_every_mutant_in_a_clean_verdict(honest, tmp_path):
    result = run_campaign(tmp_path / "campaign", cases=PER_CLASS * len(CLASSES), seed=0, full=11, others=8, proof=honest)
    stats = result.stats()
    assert [f"{c.id} {c.cls} {c.desc}: {c.findings}" for c in result.findings] == []
    assert result.canary_files == [] and not any((tmp_path / "campaign" / "canary").iterdir())
    by_class = result.by_class()
    assert sorted(by_class) == sorted(CLASSES) and all(t["cases"] == PER_CLASS for t in by_class.values())
    assert stats["exit_1"] > 0 and stats["exit_2"] > 0 and stats["exit_1"] + stats["exit_2"] + stats["wellformed"] == stats["cases"]
    assert stats["max_seconds"] < 30 and stats["max_rss_growth_mb"] < 200
    assert stats["full_cases"] >= 15 and set(stats["full_exits"]) <= {"1", "2"}
    assert json.loads((tmp_path / "campaign" / "summary.json").read_text())["stats"]["cases"] == PER_CLASS * len(CLASSES)
    # The well-formed lies have no verdict but the full one: every semantic mutant is verified in full, and rejected.
    semantic = [c for c in result.cases if c.cls == "semantic"]
    assert len(semantic) == PER_CLASS and all(c.full is not None and c.full["exit"] == 1 for c in semantic), \
        [(c.desc, c.full) for c in semantic if c.full is None or c.full["exit"] != 1]
    # So are a tiered proof's lies (a digest, an update norm, a forged full state): exit 1, or 2 for a malformed entry.
    tiers = [c for c in result.cases if c.cls == "tiers"]
    assert len(tiers) == PER_CLASS and all(c.full is not None and c.full["exit"] in (1, 2) for c in tiers)
    assert any("does not replay" in (c.full["reason"] or "") for c in tiers)


def test_worker_reports_hangs_and_memory(tmp_path):
    # The campaign's bounds must be able to fail: a case that sleeps past its bound, or allocates 300 MB.
    worker = Worker(tmp_path / "worker.log")
    try:
        assert worker.ask({"id": 0, "dir": str(tmp_path), "mode": "selftest", "sleep": 30}, timeout=2) is None
        assert worker.restarts == 1
        reply = worker.ask({"id": 1, "dir": str(tmp_path), "mode": "selftest", "allocate_mb": 300}, timeout=60)
        assert reply is not None and reply["rss_growth_mb"] > 250
        reply = worker.ask({"id": 2, "dir": str(tmp_path), "mode": "selftest"}, timeout=60)
        assert reply is not None and reply["rss_growth_mb"] < 50  # the peak is reset before every case
    finally:
        worker.close()


def _cli(proof: Path, run_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "lightning_pol.verify", f"proof_dir={proof}", "verifier.q=0", "verifier.random=0",
                           f"hydra.run.dir={run_dir}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_cli_gives_exit_1_or_a_one_line_exit_2(honest, tmp_path):
    h = Honest.load(honest)
    env = Env(outside=tmp_path / "outside", canary=tmp_path / "canary")
    env.canary.mkdir()
    marker = env.canary / "ran"

    def utf16(mu: Mutant) -> None:
        mu.manifest_raw = mu.manifest_bytes().decode().encode("utf-16")

    def popen(mu: Mutant) -> None:
        mu.m["module"] = {"class": "subprocess:Popen", "hparams": {"args": [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]}}

    def nan_weights(mu: Mutant) -> None:
        state = dict(h.states[h.checkpoints[1]])
        state["model"] = {k: v.clone().fill_(float("nan")) if v.is_floating_point() else v for k, v in state["model"].items()}
        mu.put(h.checkpoints[1], checkpoint_bytes(state))

    def flipped(mu: Mutant) -> None:
        data = bytearray(mu.files[h.index_log])
        data[-1] ^= 1
        mu.put(h.index_log, bytes(data), resign=False)

    # popen: the proof names a module its code identity does not, so the code check rejects it (exit 1) before
    # anything is imported; under verifier.code=report the class gate refuses it (exit 2, tests/test_reader.py)
    cases = (("utf16", utf16, 2), ("popen", popen, 1), ("nan", nan_weights, 1), ("flip", flipped, 1))
    for name, mutate, _ in cases:
        mutant = Mutant(h, env, tmp_path / name)
        mutate(mutant)
        mutant.write()
    with ThreadPoolExecutor(max_workers=2) as pool:  # independent processes, most of each spent importing
        runs = list(pool.map(lambda case: _cli(tmp_path / case[0], tmp_path / f"{case[0]}.run"), cases))
    for (name, _, expected), done in zip(cases, runs):
        assert "Traceback" not in done.stderr, done.stderr
        assert done.returncode == expected, (name, done.returncode, done.stderr[-2000:])
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == (1 if expected == 2 else 0), (name, done.stderr[-2000:])
    assert not marker.exists()
    assert pf.MANIFEST in os.listdir(tmp_path / "flip")
