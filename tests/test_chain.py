"""Chain of trust: warm starts name the proof of their weights; a registry records verified proofs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lightning_pol import PoLError, ProofOfLearning, ProofReader, verify_proof
from lightning_pol.format import layout as pf
from lightning_pol.verification.registry import Registry
from lightning_pol.zoo import DigitsCNN, DigitsDataModule
from tests.conftest import forge_checkpoint, make_trainer, write_checkpoint

REPO = Path(__file__).resolve().parents[1]


def train(root: Path, module: pl.LightningModule, epochs: int, **pol: object) -> Path:
    proof = root / "proof"
    trainer = make_trainer([ProofOfLearning(proof, every_n_steps=10, **pol)], root, max_epochs=epochs)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=64, augment=True))
    return proof


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    base = tmp_path_factory.mktemp("chain")
    pl.seed_everything(0, verbose=False)
    parent_model = DigitsCNN()
    parent = train(base / "parent", parent_model, 2)
    pl.seed_everything(1, verbose=False)
    child_model = DigitsCNN()
    child_model.load_state_dict(parent_model.state_dict())
    child = train(base / "child", child_model, 1, init_strategy="warm_start", parent=parent)
    pl.seed_everything(2, verbose=False)
    thief = DigitsCNN()
    thief.load_state_dict(parent_model.state_dict())
    # Claims a fresh start and no parent; the callback's own fit-start test of W_0 would stop it, so the thief skips it.
    stolen = train(base / "stolen", thief, 1, check_recreation=False)
    return base, parent, child, stolen


def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "lightning_pol.verify", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_child_records_its_parent(family):
    _, parent, child, _ = family
    p, c = ProofReader(parent), ProofReader(child)
    assert c.manifest.init.strategy == "warm_start"
    assert c.manifest.parent["identity"] == p.identity
    assert c.manifest.parent["final_checkpoint_sha256"] == p.checkpoints[-1].sha256


def test_child_verifies_with_empty_registry_then_from_registry(family, tmp_path):
    _, parent, child, _ = family
    db = tmp_path / "registry.sqlite"
    first = verify_proof(child, q=1, registry=db)
    assert first.valid, first.summary()
    chain = first.checks["chain"]
    assert chain.proofs == [ProofReader(child).identity, ProofReader(parent).identity]
    assert chain.parent_from_registry is False and chain.vsr == 1.0
    second = verify_proof(child, q=1, registry=db)
    assert second.valid and second.checks["chain"].parent_from_registry is True
    assert second.checks["chain"].proofs == chain.proofs
    assert Registry(db).count() == 3  # parent, child, child again
    # each link's code (issue 21): the chain shows it, the registry records it, a lookup of the parent brings it back
    codes = [ProofReader(child).code.digest, ProofReader(parent).code.digest]
    assert chain.codes == codes and second.checks["chain"].codes == codes and codes[0][:12] in chain.summary
    record = Registry(db).lookup(ProofReader(child).identity)["settings"]
    assert record["code"] == codes[0] == record["code_installed"] and record["chain_codes"] == codes
    assert record["code_policy"] == "match"


def test_stolen_weights_claiming_a_fresh_start_are_rejected(family, tmp_path):
    _, _, _, stolen = family
    done = cli(f"proof_dir={stolen}", "verifier.q=1", f"hydra.run.dir={tmp_path / 'v'}")
    assert done.returncode == 1
    report = json.loads((tmp_path / "v" / "verification.json").read_text())
    assert report["checks"]["initialization"]["passed"] is False


def test_stolen_weights_declared_fresh_are_refused_at_fit_start(family, tmp_path):
    base, parent, _, _ = family
    thief = DigitsCNN()
    thief.load_state_dict(ProofReader(parent).load_checkpoint(ProofReader(parent).checkpoints[-1])["model"])
    with pytest.raises(PoLError, match=r"^W_0 is not a fresh pytorch_default draw, so the verifier would reject this proof \(features"):
        train(tmp_path, thief, 1)
    assert not (tmp_path / "proof").exists()


def test_parent_weights_plus_noise_are_rejected(family, tmp_path):
    base, _, child, _ = family
    forged = tmp_path / "forged"
    shutil.copytree(child, forged)
    torch.manual_seed(0)
    forge_checkpoint(forged, 0, lambda state: state.update(
        model={k: v + 1e-3 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state["model"].items()}))
    done = cli(f"proof_dir={forged}", "verifier.q=1", f"hydra.run.dir={tmp_path / 'v'}", f"registry={tmp_path / 'r.sqlite'}")
    assert done.returncode == 1
    report = json.loads((tmp_path / "v" / "verification.json").read_text())
    assert report["checks"]["chain"]["passed"] is False
    assert "W_0 is not the parent's final state" in report["checks"]["chain"]["summary"]


def test_tampered_parent_rejects_the_child(family, tmp_path):
    base, parent, child, _ = family
    bad_parent = tmp_path / "parents" / "p"
    shutil.copytree(parent, bad_parent)
    reader = ProofReader(bad_parent)
    steps = [c.step for c in reader.checkpoints]
    mid = steps[len(steps) // 2]
    before, after = (reader.load_checkpoint(reader.checkpoints[steps.index(s)])["model"] for s in (steps[steps.index(mid) - 1], steps[steps.index(mid) + 1]))
    entry = reader.checkpoints[steps.index(mid)]
    state = reader.load_checkpoint(entry)
    state["model"] = {k: (before[k] + after[k]) / 2 if before[k].is_floating_point() else state["model"][k] for k in state["model"]}
    write_checkpoint(bad_parent, entry.path, state)
    # the child names the honest parent's identity; the tampered copy has another identity, so point the
    # child at a copy whose recorded parent is the tampered one, as a prover who controls every file would
    forged_child = tmp_path / "child"
    shutil.copytree(child, forged_child)
    m = json.loads((forged_child / pf.MANIFEST).read_text())
    m["parent"]["identity"] = ProofReader(bad_parent).identity
    m["parent"]["path"] = str(bad_parent)
    from lightning_pol.format.manifest import manifest_bytes

    (forged_child / pf.MANIFEST).write_bytes(manifest_bytes(m))
    report = verify_proof(forged_child, q=0, registry=tmp_path / "fresh.sqlite")
    assert not report.valid and report.checks["chain"].passed is False
    assert "parent proof is not valid" in report.checks["chain"].summary


def test_parent_found_through_a_search_directory(family, tmp_path):
    _, parent, child, _ = family
    moved_parent = tmp_path / "archive" / "run7" / "proof"
    shutil.copytree(parent, moved_parent)
    moved_child = tmp_path / "child"
    shutil.copytree(child, moved_child)
    m = json.loads((moved_child / pf.MANIFEST).read_text())
    m["parent"]["path"] = str(tmp_path / "gone")
    from lightning_pol.format.manifest import manifest_bytes

    (moved_child / pf.MANIFEST).write_bytes(manifest_bytes(m))
    missing = verify_proof(moved_child, q=1, random=0)
    assert not missing.valid and "not found" in missing.checks["chain"].summary
    found = verify_proof(moved_child, q=1, random=0, parents=tmp_path / "archive")
    assert found.valid, found.summary()


def test_warm_start_refusals(family, tmp_path):
    _, parent, _, _ = family
    with pytest.raises(PoLError, match="parent=PARENT_PROOF_DIR"):
        ProofOfLearning(tmp_path, init_strategy="warm_start")
    with pytest.raises(PoLError, match="set init_strategy='warm_start'"):
        ProofOfLearning(tmp_path, parent=parent)
    pl.seed_everything(5, verbose=False)
    with pytest.raises(PoLError, match="W_0 is not the parent proof's final state"):
        train(tmp_path, DigitsCNN(), 1, init_strategy="warm_start", parent=parent)
    assert not (tmp_path / "proof" / pf.MANIFEST).exists()


def test_concurrent_writers_lose_no_record(tmp_path):
    db = tmp_path / "r.sqlite"
    Registry(db)

    def write(i: int) -> None:
        reg = Registry(db)
        for j in range(25):
            reg.record(f"id-{i}-{j}", "d", True, 1.0, {}, {})

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Registry(db).count() == 200


def test_chain_of_three(family, tmp_path):
    _, parent, child, _ = family
    child_final = ProofReader(child)
    pl.seed_everything(3, verbose=False)
    grandchild_model = DigitsCNN()
    grandchild_model.load_state_dict(child_final.load_checkpoint(child_final.checkpoints[-1])["model"])
    grandchild = train(tmp_path / "grandchild", grandchild_model, 1, init_strategy="warm_start", parent=child)
    report = verify_proof(grandchild, q=1, random=0, registry=tmp_path / "r.sqlite")
    assert report.valid, report.summary()
    assert report.checks["chain"].proofs == [ProofReader(p).identity for p in (grandchild, child, parent)]
    assert report.checks["chain"].vsr == 1.0


def test_a_registry_record_of_an_invalid_verification_is_not_trusted_for_a_parent(family, tmp_path):
    """The registry records every verification, rejections too: a parent recorded invalid is verified again, not looked up."""
    _, parent, child, _ = family
    db = tmp_path / "registry.sqlite"
    p = ProofReader(parent)
    Registry(db).record(p.identity, p.checkpoints[-1].sha256, False, 0.0, {"chain": [p.identity]}, {})
    report = verify_proof(child, q=1, random=0, registry=db)
    chain = report.checks["chain"]
    assert chain.parent_from_registry is False and chain.parent_report["valid"] is True
    assert report.valid and chain.vsr == 1.0
    # the parent's record is now the valid one just made, and a second verification takes it from the registry
    assert verify_proof(child, q=1, random=0, registry=db).checks["chain"].parent_from_registry is True
