"""Resuming with Lightning's ckpt_path continues the same proof."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_pol import PoLError, ProofOfLearning, ProofReader
from lightning_pol.format import layout as pf
from tests.conftest import make_trainer
from tests.test_determinism import replay
from tests.unseen_project import UnseenDataModule, UnseenModule


class Crash(Exception):
    pass


class CrashAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Crash(f"simulated crash at step {self.step}")


def run(root, module, crash_at=None, ckpt_path=None):
    callbacks = [ModelCheckpoint(dirpath=root / "ckpt", save_last=True, every_n_epochs=1, save_top_k=-1),
                 ProofOfLearning(root / "proof", every_n_steps=8)]
    if crash_at is not None:
        callbacks.insert(0, CrashAt(crash_at))
    trainer = make_trainer(callbacks, root, max_epochs=3, gradient_clip_val=1.0, enable_checkpointing=True)
    trainer.fit(module, datamodule=UnseenDataModule(num_workers=2), ckpt_path=ckpt_path)
    return trainer


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    pl.seed_everything(0, verbose=False)
    first = UnseenModule()
    with pytest.raises(Crash):
        run(root, first, crash_at=66)  # last.ckpt is from the end of epoch 0 (step 57); the proof has reached step 64
    crashed = ProofReader(root / "proof")
    assert crashed.manifest.status == pf.STATUS_IN_PROGRESS
    assert [c.step for c in crashed.checkpoints][-1] == 64
    second = UnseenModule()
    run(root, second, ckpt_path=root / "ckpt" / "last.ckpt")
    return ProofReader(root / "proof"), first, second


def test_resumed_proof_is_complete_and_clean(resumed):
    reader, _, _ = resumed
    assert reader.manifest.status == pf.STATUS_COMPLETE
    assert reader.verify_files() == []
    assert [c.step for c in reader.checkpoints] == list(range(0, 171, 8)) + [171]
    assert [c.path for c in reader.manifest.index_log] == [pf.INDEX_LOG_FINAL]


def test_index_log_keeps_what_was_trained_before_the_checkpoint_and_after_the_resume(resumed):
    reader, first, second = resumed
    log = reader.index_log()
    indices, offsets = log.indices, log.offsets
    log = [indices[offsets[t] : offsets[t + 1]].tolist() for t in range(171)]
    assert log == first.seen[:57] + second.seen
    assert len(first.seen) == 66  # steps 57..65 were trained, then thrown away with the crash
    assert reader.manifest.sample_epochs == [[0, 0], [57, 1], [114, 2]]


def test_segment_across_the_resume_point_replays_exactly(resumed):
    reader, _, _ = resumed
    module, _ = replay(reader, 56, 8)
    target = reader.load_checkpoint(reader.checkpoints[8])
    assert reader.checkpoints[8].step == 64
    for key, value in module.state_dict().items():
        assert torch.equal(value, target["model"][key]), key


def test_resume_within_the_first_epoch_commits_the_data_and_verifies(tmp_path):
    """A run killed in epoch 0 has not committed to its data yet; the resumed run commits to it, and the
    proof verifies although Lightning reshuffled the rest of the epoch."""
    from lightning_pol import verify_proof
    from lightning_pol.runtime.leaves import compute_leaves
    from tests.unseen_project import NoisyDigits

    def fit(module, crash_at=None, ckpt_path=None):
        callbacks = [ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=20, save_top_k=-1),
                     ProofOfLearning(tmp_path / "proof", every_n_steps=8)]
        if crash_at is not None:
            callbacks.insert(0, CrashAt(crash_at))
        trainer = make_trainer(callbacks, tmp_path, max_epochs=2, enable_checkpointing=True)
        trainer.fit(module, datamodule=UnseenDataModule(num_workers=2), ckpt_path=ckpt_path)

    pl.seed_everything(0, verbose=False)
    with pytest.raises(Crash):
        fit(UnseenModule(), crash_at=30)  # epoch 0 has 57 steps; last.ckpt is from step 20
    crashed = ProofReader(tmp_path / "proof")
    assert crashed.manifest.data.root is None and crashed.manifest.status == pf.STATUS_IN_PROGRESS
    fit(UnseenModule(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    reader = ProofReader(tmp_path / "proof")
    assert torch.equal(reader.leaves(), compute_leaves(NoisyDigits(augment=True)))
    # Lightning resumes mid-epoch with a fresh shuffle: the resumed part of epoch 0 is a run of its own.
    assert reader.manifest.sample_epochs == [[0, 0], [20, 0], [57, 1]]
    report = verify_proof(tmp_path / "proof", q=0)
    assert report.valid, report.reasons
    assert report.checks["replay"].summary.startswith(f"{len(reader.checkpoints) - 1}/")
    assert report.checks["data"].permutation["split_epochs"] == [0]  # shown to whoever reads the report


def test_sigkill_after_the_fourth_lightning_checkpoint_then_resume_verifies(tmp_path):
    """Issue 9, acceptance 1: SIGKILL a 4-epoch run (k=8, Lightning checkpoints every 20 steps) after its
    fourth Lightning checkpoint, resume from last.ckpt, and verify the whole proof by full replay."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from lightning_pol import verify_proof

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo))
    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "tests.kill_resume_target", str(tmp_path)], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        steps = sorted(ckpt.glob("epoch=*-step=*.ckpt"), key=lambda p: p.stat().st_mtime) if ckpt.is_dir() else []
        last = ckpt / "last.ckpt"
        # killed once last.ckpt has been written after the fourth checkpoint (never while it is being written)
        if len(steps) >= 4 and last.exists() and last.stat().st_mtime >= steps[3].stat().st_mtime:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the training process ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = ProofReader(tmp_path / "proof")
    assert killed.manifest.status == pf.STATUS_IN_PROGRESS
    resumed = subprocess.run([sys.executable, "-m", "tests.kill_resume_target", str(tmp_path), str(ckpt / "last.ckpt")],
                             cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    reader = ProofReader(tmp_path / "proof")
    assert reader.manifest.status == pf.STATUS_COMPLETE and reader.manifest.final_step == 4 * 57
    assert reader.checkpoints[-1].step == 4 * 57
    report = verify_proof(tmp_path / "proof", q=0)
    assert report.valid, report.reasons
    assert report.checks["replay"].summary == f"{len(reader.checkpoints) - 1}/{len(reader.checkpoints) - 1} segments bit-exact"


# -- what a resume refuses, leaving the proof as it was ---------------------------------------

@pytest.fixture
def crashed(tmp_path):
    """A run that crashed at step 66 of epoch 1: its proof (committed data, checkpoints to 64) and last.ckpt (step 57).

    Per test, in place: the callback's state in last.ckpt is keyed by its dirpath, as ModelCheckpoint's is."""
    root = tmp_path / "run"
    pl.seed_everything(0, verbose=False)
    with pytest.raises(Crash):
        run(root, UnseenModule(), crash_at=66)
    return root


def _resume_refused(root, edit_manifest=None, datamodule=None) -> str:
    import json

    from lightning_pol.format.manifest import manifest_bytes

    manifest = root / "proof" / pf.MANIFEST
    if edit_manifest is not None:
        m = json.loads(manifest.read_text())
        edit_manifest(m)
        manifest.write_bytes(manifest_bytes(m))
    listed = [pf.MANIFEST, *json.loads(manifest.read_text())["files"]]
    before = {rel: (root / "proof" / rel).read_bytes() for rel in listed}
    callbacks = [ModelCheckpoint(dirpath=root / "ckpt", save_last=True, every_n_epochs=1, save_top_k=-1),
                 ProofOfLearning(root / "proof", every_n_steps=8)]
    trainer = make_trainer(callbacks, root, max_epochs=3, gradient_clip_val=1.0, enable_checkpointing=True)
    with pytest.raises(PoLError) as refused:
        trainer.fit(UnseenModule(), datamodule=datamodule or UnseenDataModule(num_workers=2), ckpt_path=root / "ckpt" / "last.ckpt")
    after = {rel: (root / "proof" / rel).read_bytes() for rel in listed}
    assert after == before  # nothing of the proof is lost or changed by the refusal (unlisted files are not part of it)
    return str(refused.value)


def test_resume_with_other_training_data_is_refused(crashed):
    reason = _resume_refused(crashed, datamodule=UnseenDataModule(num_workers=2, augment=False))
    assert reason == "cannot resume: the training data differs from the data this proof committed to"


def test_resume_into_another_runs_proof_is_refused(crashed):
    def other_run(m):
        m["run_id"] = "0123456789abcdef0123456789abcdef"

    reason = _resume_refused(crashed, edit_manifest=other_run)
    assert "holds the proof of run 0123456789abcdef0123456789abcdef, not of run" in reason


def test_resume_from_a_proof_that_records_fewer_steps_than_the_checkpoint_expects_is_refused(crashed):
    def forget_steps(m):
        for chunk in m["index_log"]:
            del m["files"][chunk["path"]]
        m["index_log"] = []

    reason = _resume_refused(crashed, edit_manifest=forget_steps)
    assert reason == "cannot resume: the proof records 0 steps but the Lightning checkpoint expects 56"
