"""Issue 9, DDP: a 2-process CPU run (gloo) writes one proof, and one process replays it exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lightning_pol import ProofOfLearning, ProofReader, verify_proof
from lightning_pol.errors import PoLError
from lightning_pol.verification import replay as replay_module
from tests.unseen_project import UnseenModule

REPO = Path(__file__).resolve().parents[1]
EPOCHS, K = 2, 8
N, BATCH, WORLD = 1797, 32, 2
PER_RANK = -(-N // WORLD)  # 899: DistributedSampler pads 1,797 samples to 1,798
STEPS_PER_EPOCH = -(-PER_RANK // BATCH)  # 29


@pytest.fixture(scope="module")
def ddp_proof(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    run = subprocess.run(
        [sys.executable, "-m", "tests.ddp_target", str(root), str(EPOCHS), str(K)], cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return root / "proof"


def _distributed_shards(epoch: int) -> list[list[int]]:
    """What Lightning's DistributedSampler gives each rank (shuffle, seed 0, padded by repeating the start)."""
    g = torch.Generator()
    g.manual_seed(0 + epoch)
    perm = torch.randperm(N, generator=g).tolist()
    total = PER_RANK * WORLD
    perm += perm[: total - N]
    return [perm[r:total:WORLD] for r in range(WORLD)]


def test_the_proof_records_every_ranks_batch_in_rank_order(ddp_proof):
    reader = ProofReader(ddp_proof)
    m = reader.manifest
    assert m.status == "complete" and m.training["world_size"] == WORLD
    assert m.training["num_training_batches"] == STEPS_PER_EPOCH == 29
    assert m.final_step == EPOCHS * STEPS_PER_EPOCH and m.sample_epochs == [[0, 0], [29, 1]]
    log = reader.index_log()
    for epoch in range(EPOCHS):
        shards = _distributed_shards(epoch)
        for b in range(STEPS_PER_EPOCH):
            t = epoch * STEPS_PER_EPOCH + b
            assert log.micro_batches(t) == [shard[b * BATCH : (b + 1) * BATCH] for shard in shards]
    # Every checkpoint after W_0 holds rank 1's RNG stream too; the ranks' streams differ.
    state = reader.load_checkpoint(reader.checkpoints[1])
    assert len(state["peer_rng"]) == WORLD - 1
    assert not torch.equal(state["rng"]["torch"], state["peer_rng"][0]["torch"])
    assert sorted(p.name for p in ddp_proof.parent.iterdir()) == ["proof"]  # rank 1 wrote nothing


def test_ddp_proof_verifies_with_the_cli(ddp_proof, tmp_path):
    """Issue 9, acceptance 2: ``verifier.q=1``."""
    run = subprocess.run(
        [sys.executable, "-m", "lightning_pol.verify", f"proof_dir={ddp_proof}", "verifier.q=1",
         f"report={tmp_path / 'v.json'}", f"hydra.run.dir={tmp_path}"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
    assert "verdict VALID" in run.stdout


def test_full_replay_of_a_ddp_proof_is_bit_exact_across_the_epoch_boundary(ddp_proof):
    report = verify_proof(ddp_proof, q=0)
    assert report.valid, report.reasons
    segments = report.segments
    assert [s.end_step for s in segments][-1] == EPOCHS * STEPS_PER_EPOCH
    assert all(s.bit_exact for s in segments) and any(s.start_step < STEPS_PER_EPOCH < s.end_step for s in segments)
    assert report.checks["data"].passed  # one padded sample a epoch repeats: allowed for 2 ranks, not more


@pytest.mark.parametrize("wrong", ["one_stream", "no_buffer_broadcast"])
def test_a_replay_without_the_ranks_streams_or_buffers_does_not_match(ddp_proof, monkeypatch, wrong):
    """Each part of the emulation is needed: rank 1 draws its own dropout, and sees the buffers the step
    started with (its eval-mode forward reads them)."""
    if wrong == "one_stream":
        init = replay_module.EmulatedRanks.__init__
        monkeypatch.setattr(replay_module.EmulatedRanks, "__init__",
                            lambda self, w, rng, peers=None: init(self, w, rng, None if rng is None else [rng] * (w - 1)))
    else:
        start = replay_module.EmulatedRanks.batch_start

        def batch_start(self, pl_module, batch_idx):
            self._step_buffers = [b.detach().clone() for b in pl_module.buffers()]  # rank 0's, after its forward
            start(self, pl_module, batch_idx)

        monkeypatch.setattr(replay_module.EmulatedRanks, "batch_start", batch_start)
    report = verify_proof(ddp_proof, q=1, random=0)
    assert not report.valid and not report.checks["replay"].passed


@pytest.mark.parametrize("setting, message", [
    (lambda: dict(strategy="ddp", accumulate_grad_batches=2), "accumulate_grad_batches"),
    (lambda: dict(strategy="ddp", sync_batchnorm=True), "sync_batchnorm"),
    (lambda: dict(strategy=_ddp(broadcast_buffers=False)), "broadcast_buffers"),
])
def test_ddp_settings_a_replay_could_not_match_are_refused(tmp_path, setting, message):
    from lightning_pol.prover.distributed import check_ddp_recordable

    trainer = pl.Trainer(accelerator="cpu", devices=2, logger=False, default_root_dir=tmp_path, **setting())
    with pytest.raises(PoLError, match=message):
        check_ddp_recordable(trainer, UnseenModule())


def _ddp(**kwargs):
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(**kwargs)


def test_a_ddp_proof_cannot_be_resumed(tmp_path):
    pol = ProofOfLearning(tmp_path / "proof")
    pol._world = 2  # what setup() found: a 2-process run
    with pytest.raises(PoLError, match="cannot resume a DDP run"):
        pol.load_state_dict({"run_id": "0" * 32, "seed": 0, "next_data_epoch": 1})
