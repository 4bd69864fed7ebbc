"""Issue 8's fast paths change nothing a verifier can see: background writing, chained replay, parallel hashing."""

from __future__ import annotations

import json
import shutil
import threading
import time

import lightning.pytorch as pl
import pytest
import torch

from lightning_pol import PoLVerifierModule, ProofOfLearning, ProofReader
from lightning_pol.format import layout as pf
from lightning_pol.prover.background import BackgroundWriter
from lightning_pol.runtime.leaves import compute_leaves
from lightning_pol.verification.distances import identical
from lightning_pol.verification.segments import comparable
from lightning_pol.verification.verifier import verify_proof
from tests.conftest import make_trainer, train_with_proof
from tests.test_verify import models, rewrite_model
from tests.unseen_project import UnseenDataModule, UnseenModule


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast")
    proof, _, _ = train_with_proof(root, UnseenModule, UnseenDataModule(), every_n_steps=8, max_epochs=2)
    return proof


def test_chained_replay_equals_separate_replays_across_an_epoch_boundary(honest):
    reader = ProofReader(honest)
    verifier = PoLVerifierModule(reader)
    entries = {c.step: c for c in reader.checkpoints}
    boundaries = [48, 56, 64, 72]  # 1,797 samples / 32 → 57 steps per epoch: 56→64 crosses into epoch 1
    chained: dict[int, dict] = {}
    verifier.replay_chain(boundaries, lambda s: reader.load_checkpoint(entries[s]), lambda a, b, got: chained.setdefault(a, got))
    assert sorted(chained) == boundaries[:-1]
    for a, b in zip(boundaries, boundaries[1:]):
        alone = verifier.replay(a, b)
        assert identical(comparable(chained[a]), comparable(alone)), (a, b)
        assert identical(comparable(alone), comparable(reader.load_checkpoint(entries[b])))


def test_chained_replay_restarts_from_the_recorded_state_after_a_bad_checkpoint(honest, tmp_path):
    proof = tmp_path / "proof"
    shutil.copytree(honest, proof)
    ms = models(proof)
    rewrite_model(proof, 64, {k: (ms[56][k] + ms[72][k]) / 2 if ms[56][k].is_floating_point() else ms[64][k] for k in ms[64]})
    report = verify_proof(proof, q=0)
    # Only the two segments that touch the forged checkpoint fail; every later one starts from the recorded state.
    assert sorted(map(tuple, report.checks["replay"].failed)) == [(56, 64), (64, 72)]
    assert len(report.segments) == len(ProofReader(proof).checkpoints) - 1


def test_background_writer_runs_in_order_bounds_its_queue_and_raises_job_errors():
    done: list[int] = []
    gate = threading.Event()
    jobs = BackgroundWriter(max_pending=1)
    jobs.submit(lambda: (gate.wait(), done.append(0)))  # taken by the thread, which then blocks
    time.sleep(0.05)
    jobs.submit(lambda: done.append(1))  # fills the queue
    blocked = threading.Thread(target=jobs.submit, args=(lambda: done.append(2),))
    blocked.start()
    time.sleep(0.1)
    assert blocked.is_alive(), "submit must wait while max_pending jobs wait"
    gate.set()
    blocked.join(5)
    jobs.flush()
    assert done == [0, 1, 2]

    def fail() -> None:
        raise OSError("disk full")

    jobs.submit(fail)
    jobs.submit(lambda: done.append(3))
    with pytest.raises(OSError, match="disk full"):
        jobs.flush()
    assert done == [0, 1, 2], "nothing runs after a failed job"
    with pytest.raises(OSError, match="disk full"):
        jobs.submit(lambda: done.append(4))
    jobs.close()


def test_background_and_synchronous_writing_and_any_commit_interval_give_identical_proofs(tmp_path):
    digests = []
    for i, kwargs in enumerate([{}, {"background": False}, {"max_pending": 1, "commit_every_s": 0.0}]):
        proof, _, _ = train_with_proof(tmp_path / str(i), UnseenModule, UnseenDataModule(num_workers=0), every_n_steps=4,
                                       max_epochs=1, pol_kwargs=kwargs)
        manifest = ProofReader(proof).manifest
        digests.append({rel: e.sha256 for rel, e in manifest.files.items()})
    assert digests[0] == digests[1] == digests[2] and len(digests[0]) > 10


class PeekAtStep(pl.Callback):
    """At one step, reads which checkpoints the manifest on disk lists, saves a Lightning checkpoint, reads again."""

    def __init__(self, proof, step):
        self.proof, self.step, self.seen = proof, step, []

    def listed(self):
        path = self.proof / pf.MANIFEST
        return [c["step"] for c in json.loads(path.read_text())["checkpoints"]] if path.exists() else []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step and not self.seen:
            self.seen.append(self.listed())
            trainer.save_checkpoint(self.proof.parent / "mid.ckpt")  # the callback's state_dict commits
            self.seen.append(self.listed())


@pytest.mark.parametrize("commit_every_s", [30.0, 0.0])
def test_commits_wait_for_the_interval_or_a_lightning_checkpoint(tmp_path, commit_every_s):
    proof = tmp_path / "proof"
    peek = PeekAtStep(proof, 10)
    pl.seed_everything(0, verbose=False)
    trainer = make_trainer([peek, ProofOfLearning(proof, every_n_steps=4, background=False, commit_every_s=commit_every_s)],
                           tmp_path, max_epochs=1)
    trainer.fit(UnseenModule(), datamodule=UnseenDataModule(num_workers=0))
    before, after = peek.seen
    # checkpoints 0, 4 and 8 were written before step 10; only a due commit or a Lightning checkpoint lists them
    assert before == ([] if commit_every_s else [0, 4, 8]) and after == [0, 4, 8]
    assert verify_proof(proof, q=0).valid


def test_commitment_hashed_in_workers_equals_in_process():
    dm = UnseenDataModule()
    dm.setup("fit")
    dataset = dm.train_dataloader().dataset
    here = compute_leaves(dataset, num_workers=0)
    workers = compute_leaves(dataset, num_workers=2, batch_size=100, worker_threshold_s=0.0)
    assert torch.equal(here, workers) and here.shape == (len(dataset), 32)


def test_two_shard_multirun_replays_a_proof_whose_loader_has_workers(honest, tmp_path):
    """Hydra's joblib launcher runs jobs in loky processes, which cannot start DataLoader workers: replay fetches in-process."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    assert ProofReader(honest).manifest.training["num_workers"] == 2
    repo = Path(__file__).resolve().parents[1]
    sweep = tmp_path / "sweep"
    done = subprocess.run([sys.executable, "-m", "lightning_pol.verify", "--multirun", f"proof_dir={honest}", "verifier.q=0",
                           "verifier.seed=0", "verifier.num_shards=2", "verifier.shard=0,1", "hydra/launcher=local",
                           "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"],
                          cwd=repo, env=dict(os.environ, PYTHONPATH=str(repo)), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    merged = json.loads((sweep / "verification.json").read_text())
    assert merged["valid"] and len(merged["segments"]) == len(ProofReader(honest).checkpoints) - 1


def test_safetensors_through_numpy_gives_the_library_bytes():
    """The writer serializes through numpy (3x faster); the bytes must be those of safetensors.torch, dtypes it lacks included."""
    from safetensors.torch import save

    from lightning_pol.format.safetensors_io import safetensors_bytes

    tensors = {
        "w": torch.randn(3, 4), "steps": torch.arange(5), "flag": torch.tensor(True), "u8": torch.zeros(2, dtype=torch.uint8),
        "transposed": torch.randn(4, 3).t(), "half": torch.randn(2).half(), "scalar": torch.tensor(2.0), "empty": torch.zeros(0, 3),
    }
    expected = save({k: v.contiguous() for k, v in tensors.items()}, metadata={"k": "v"})
    assert safetensors_bytes(tensors, {"k": "v"}) == expected
    tensors["bf16"] = torch.randn(2).bfloat16()  # no numpy dtype: the library's own path
    assert safetensors_bytes(tensors) == save({k: v.contiguous() for k, v in tensors.items()})


def test_background_jobs_run_with_a_short_switch_interval_then_put_it_back():
    """So the training thread, re-taking the GIL after each torch op, never waits a whole 5 ms for a job's Python."""
    import sys

    before = sys.getswitchinterval()
    jobs = BackgroundWriter(max_pending=1)
    seen: list[float] = []
    jobs.submit(lambda: seen.append(sys.getswitchinterval()))
    jobs.flush()
    assert seen == [pytest.approx(5e-4)] and sys.getswitchinterval() == before
    jobs.submit(lambda: sys.setswitchinterval(0.002))  # someone else's change during a job is kept
    jobs.flush()
    assert sys.getswitchinterval() == pytest.approx(0.002)
    sys.setswitchinterval(before)
    jobs.close()


def test_a_lightning_checkpoint_after_fit_writes_nothing_to_the_proof(tmp_path):
    proof = tmp_path / "proof"
    pol = ProofOfLearning(proof, every_n_steps=4)
    pl.seed_everything(0, verbose=False)
    trainer = make_trainer([pol], tmp_path, max_epochs=1)
    trainer.fit(UnseenModule(), datamodule=UnseenDataModule(num_workers=0))
    manifest = proof / pf.MANIFEST
    before = (manifest.read_bytes(), manifest.stat().st_mtime_ns)
    trainer.save_checkpoint(tmp_path / "after.ckpt")  # calls the callback's state_dict
    assert pol.identity == pf.sha256_bytes(before[0])
    assert (manifest.read_bytes(), manifest.stat().st_mtime_ns) == before
