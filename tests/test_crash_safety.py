"""Atomic writes: a proof interrupted at any point is consistent up to its last recorded checkpoint."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lightning_pol import ProofReader
from lightning_pol.format import layout as pf
from lightning_pol.format.writer import ProofWriter
from tests.conftest import train_with_proof
from tests.unseen_project import UnseenDataModule, UnseenModule

REPO = Path(__file__).resolve().parents[1]


def assert_consistent(proof: Path) -> ProofReader:
    reader = ProofReader(proof)
    problems = [p for p in reader.verify_files() if not p.startswith("unlisted file")]
    assert problems == []
    steps = [c.step for c in reader.checkpoints]
    assert steps == sorted(steps) and steps[0] == 0
    for c in reader.checkpoints:  # a tiered proof's digest-only entries have no file; its full states are due ones
        if c.full:
            reader.load_checkpoint(c)
        assert c.full == reader.manifest.full_state_due(c.step)
    # the batches of every step up to the last checkpoint are recorded
    assert reader.recorded_steps >= steps[-1]
    log = reader.index_log()
    assert len(log.offsets) == reader.recorded_steps + 1
    return reader


@pytest.mark.parametrize("commit_every_s", [0.0, 30.0])
def test_failure_inside_a_write_leaves_the_previous_manifest(tmp_path, monkeypatch, commit_every_s):
    calls = {"n": 0}
    real_replace = os.replace

    def flaky_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 9:
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(OSError, match="disk full"):
        train_with_proof(tmp_path, UnseenModule, UnseenDataModule(num_workers=0), every_n_steps=2, max_epochs=1,
                         pol_kwargs={"commit_every_s": commit_every_s})
    proof = tmp_path / "proof"
    assert not [p for p in proof.rglob("*") if p.name.startswith(pf.TMP_PREFIX)]
    if commit_every_s == 0:  # every checkpoint was committed: those before the failed write are listed
        reader = assert_consistent(proof)
        assert [c.step for c in reader.checkpoints] == [0, 2]  # the ninth rename was the manifest listing step 4
    else:  # no commit was due after the first: the failure leaves that one, and nothing is written after it
        reader = ProofReader(proof)
        assert [p for p in reader.verify_files() if not p.startswith("unlisted file")] == []
        assert reader.checkpoints == [] and reader.manifest.index_log == []
    assert reader.manifest.status == pf.STATUS_IN_PROGRESS


def test_sigkill_at_random_points_leaves_a_consistent_proof(tmp_path):
    rng = random.Random(1234)
    for trial in range(3):
        root = tmp_path / str(trial)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        tiers = ["4"] if trial == 2 else []  # the last trial writes a tiered proof: full states every 4 steps
        proc = subprocess.Popen([sys.executable, "-m", "tests.kill_target", str(root), *tiers], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        manifest = root / "proof" / pf.MANIFEST
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:  # until two checkpoints are recorded, however slow the machine
            try:
                if len(json.loads(manifest.read_text())["checkpoints"]) >= 2:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        assert proc.poll() is None, "the training process ended before it could be killed"
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader = assert_consistent(root / "proof")
        assert len(reader.checkpoints) >= 2 and reader.manifest.tiered == bool(tiers)
        # reopening the run's proof removes what the manifest never listed
        ProofWriter.reopen(root / "proof", reader.manifest.run_id)
        assert ProofReader(root / "proof").verify_files() == []
