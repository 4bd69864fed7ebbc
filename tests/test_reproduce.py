"""Issue 6's acceptance: the reproducibility study on the embedded digits, and δ calibration for the verifier."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_pol import verify_proof
from lightning_pol.verification.distances import METRICS
from lightning_pol.verification.reproducibility import (
    read_calibration,
    reproduction_errors,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce") / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "lightning_pol.reproduce", "trainer.max_epochs=2", f"hydra.run.dir={out}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads((out / "table.json").read_text())


def test_table_shows_entropy_growth(study):
    out, table = study
    n = table["normalized"]
    assert set(n) == {"k=1", "k=E*S", "deterministic"}
    for m in METRICS:
        assert table["d_ref"][m] > 0
        assert n["k=1"][m] < n["k=E*S"][m], m
    assert n["k=E*S"]["l2"] >= 10 * n["k=1"]["l2"]
    assert set(table["raw"]["k=1"]) == set(METRICS)
    ks = sorted(int(k) for k in table["by_k"])
    assert ks[0] == 1 and ks[-1] == table["steps"] == 90
    assert (out / "table.md").read_text().count("|") > 20
    assert (out / "entropy_growth.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_noise_is_an_exact_control(study):
    out, _ = study
    eps = reproduction_errors(out / "prover" / "proof", [1, 90], noise="none", max_segments=3)
    assert all(eps[k]["max"][m] == 0.0 for k in (1, 90) for m in METRICS)


def test_calibration_feeds_tolerant_verification(study):
    out, table = study
    cal = read_calibration(out / "calibration.json")
    for m in METRICS:
        assert table["by_k"][str(cal["k"])]["max"][m] <= cal["delta"][m] < cal["d_ref"][m]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = verify_proof(out / "prover" / "proof", q=1, random=0, match_threads=False, calibration=out / "calibration.json")
    finally:
        torch.set_num_threads(threads)
    assert report.valid, report.summary()
    if threads != 1:
        assert report.mode["effective"] == "tolerant"
    assert all(s.normalized is not None and set(s.normalized) == set(METRICS) for s in report.segments)
    assert 0 < report.coverage["expected"] <= 1
