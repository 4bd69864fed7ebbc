"""Concurrent verification: two verifiers of one proof at once, and a multirun into one registry (issue 9)."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_pol import ProofReader
from lightning_pol.verification.registry import Registry
from tests.conftest import train_with_proof
from tests.unseen_project import UnseenDataModule, UnseenModule

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def proofs(tmp_path_factory):
    root = tmp_path_factory.mktemp("concurrent")
    a, _, _ = train_with_proof(root / "a", UnseenModule, UnseenDataModule(num_workers=2), max_epochs=2)
    b, _, _ = train_with_proof(root / "b", UnseenModule, UnseenDataModule(num_workers=0), seed=1, max_epochs=1)
    return a, b


def _verify(args: tuple[Path, Path]) -> tuple[bool, list[str]]:
    from lightning_pol import verify_proof

    proof, registry = args
    report = verify_proof(proof, q=0, registry=registry)
    return report.valid, report.reasons


def _files(proof: Path) -> dict[str, bytes]:
    return {str(p.relative_to(proof)): p.read_bytes() for p in sorted(proof.rglob("*")) if p.is_file()}


def test_two_verifiers_of_one_proof_at_once(proofs, tmp_path):
    proof, _ = proofs
    before = _files(proof)
    db = tmp_path / "registry.sqlite"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_verify, [(proof, db), (proof, db)])
    assert results == [(True, []), (True, [])]
    assert Registry(db).count() == 2
    assert _files(proof) == before  # a verifier reads the proof and writes nothing into it


def test_multirun_over_two_proofs_into_one_registry_loses_nothing(proofs, tmp_path):
    a, b = proofs
    db = tmp_path / "registry.sqlite"
    done = subprocess.run(
        [sys.executable, "-m", "lightning_pol.verify", "--multirun", f"proof_dir={a},{b}", "verifier.q=1", f"registry={db}",
         "hydra/launcher=local", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    registry = Registry(db)
    assert registry.count() == 2
    for proof in (a, b):
        record = registry.lookup(ProofReader(proof).identity)
        assert record is not None and record["valid"]
