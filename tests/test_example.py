"""The README's main job: the default example trains with a proof and says where it is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lightning_pol import ProofReader

REPO = Path(__file__).resolve().parents[1]


def run_example(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "examples" / "train_digits.py"), *args], capture_output=True, text=True, cwd=REPO, timeout=600)


def test_example_trains_with_a_proof_and_refuses_to_overwrite_it(tmp_path):
    out = tmp_path / "run"
    first = run_example("--out", str(out), "--epochs", "1", "--every-n-steps", "10")
    assert first.returncode == 0, first.stderr[-2000:]
    proof = out / "proof"
    assert f"proof: {proof.resolve()}" in first.stdout
    reader = ProofReader(proof)
    assert f"identity: {reader.identity}" in first.stdout
    assert reader.verify_files() == [] and reader.manifest.status == "complete"
    assert [c.step for c in reader.checkpoints] == [0, 10, 20, 30, 40, 45]
    assert "verdict: VALID" in first.stdout and (out / "verification.json").exists()

    again = run_example("--out", str(out), "--epochs", "1")
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in again.stderr
    assert ProofReader(proof).identity == reader.identity
