"""DDP: a multi-process CPU run (gloo) writes one proof, replayed bit for bit (issues 9 and 32).

Two plain ranks are replayed in one process (each rank a micro-batch); any other run, by as many processes under
Lightning's DDP again. Each scenario trains in a subprocess (``tests.ddp_target``) as a user's script does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lightning_pol import ProofOfLearning, ProofReader, verify_proof
from lightning_pol.errors import PoLError
from lightning_pol.verification import replay as replay_module
from tests.conftest import forge_checkpoint, relist
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
        [sys.executable, "-m", "tests.ddp_target", str(root), "--epochs", str(EPOCHS), "--k", str(K)], cwd=REPO,
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


def test_a_ddp_communication_hook_is_refused(tmp_path):
    """A hook changes the reduced gradient in a way the proof does not record; everything else DDP does is replayed."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    from lightning_pol.prover.distributed import check_ddp_recordable

    trainer = pl.Trainer(accelerator="cpu", devices=2, logger=False, default_root_dir=tmp_path,
                         strategy=_ddp(ddp_comm_hook=default_hooks.fp16_compress_hook))
    with pytest.raises(PoLError, match="communication hook"):
        check_ddp_recordable(trainer, UnseenModule())


def _ddp(**kwargs):
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(**kwargs)


@pytest.mark.parametrize("saved, world", [(None, 2), (2, 1), (2, 3)])
def test_a_resume_by_another_number_of_ranks_is_refused(tmp_path, saved, world):
    pol = ProofOfLearning(tmp_path / "proof")
    pol._world = world  # what setup() found
    ranks = None if saved is None else [{"pending": []}] * saved
    with pytest.raises(PoLError, match=f"written by {saved or 1} process.*this run has {world}"):
        pol.load_state_dict({"run_id": "0" * 32, "seed": 0, "next_data_epoch": 1, **({"ranks": ranks} if ranks else {})})


# -- Issue 32: any number of ranks, replayed by as many processes ----------------------------------------------------

def train_ddp(root: Path, *args: str, env: dict[str, str] | None = None) -> Path:
    """``tests.ddp_target ROOT ARGS`` (its ``--help``); returns the proof directory."""
    run = subprocess.run([sys.executable, "-m", "tests.ddp_target", str(root), *args], cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return root / "proof"


def replayed_exactly(proof: Path, ranks: str = "processes") -> None:
    """Verified with the default settings (``verifier.ranks=auto``): valid, every segment bit-exact, the ranks
    replayed as ``ranks`` says."""
    report = verify_proof(proof, q=0)
    assert report.valid, report.reasons
    assert report.segments and all(s.bit_exact for s in report.segments)
    world = ProofReader(proof).manifest.training["world_size"]
    assert any(f"replayed by {world} processes" in n for n in report.notes) == (ranks == "processes"), report.notes


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory) -> Path:
    """Acceptance 1: 4 ranks, 2 epochs of the digits CNN with BatchNorm and dropout, k = 4 (15 steps an epoch)."""
    return train_ddp(tmp_path_factory.mktemp("ddp4"), "--devices", "4", "--k", "4")


def test_four_ranks_verify_bit_exact_with_the_default_settings(four_ranks, tmp_path):
    """Acceptance 1: ``python -m lightning_pol.verify ... verifier.q=0``, nothing else."""
    assert ProofReader(four_ranks).manifest.training["ddp"] == {
        "backend": "gloo", "num_nodes": 1, "devices": 4, "sync_batchnorm": False, "kwargs": {"find_unused_parameters": False}}
    run = subprocess.run(
        [sys.executable, "-m", "lightning_pol.verify", f"proof_dir={four_ranks}", "verifier.q=0",
         f"report={tmp_path / 'v.json'}", f"hydra.run.dir={tmp_path}"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
    assert "verdict VALID" in run.stdout and "replayed by 4 processes under Lightning's DDP (gloo)" in run.stdout
    report = json.loads((tmp_path / "v.json").read_text())
    assert len(report["segments"]) == 8 and all(s["bit_exact"] for s in report["segments"])


def test_four_ranks_emulated_in_one_process_do_not_replay_bit_exact(four_ranks):
    """Why the processes: one process sums four ranks' gradients in another order than gloo's all-reduce."""
    report = verify_proof(four_ranks, q=1, random=0, ranks="emulate")
    assert not report.valid and not any(s.bit_exact for s in report.segments)
    assert any("not the order DDP summed in" in n for n in report.notes)


def test_three_ranks_verify_bit_exact(tmp_path):
    """Acceptance 1: 3 ranks (a 1/3 mean, no power of two), workers fetching the augmented samples."""
    replayed_exactly(train_ddp(tmp_path, "--devices", "3", "--k", "4"))


def test_a_forged_middle_checkpoint_of_four_ranks_is_rejected(four_ranks, tmp_path):
    """Acceptance 6: W_8 replaced by the mean of its neighbours W_4 and W_12, resealed."""
    proof = tmp_path / "proof"
    shutil.copytree(four_ranks, proof)
    reader = ProofReader(proof)
    before, after = (reader.load_checkpoint(reader.manifest.checkpoint_at(s))["model"] for s in (4, 12))

    def mean(state):
        for k, v in state["model"].items():
            if v.is_floating_point():
                v.copy_((before[k] + after[k]) / 2)

    forge_checkpoint(proof, 2, mean)
    report = verify_proof(proof, q=0)
    assert not report.valid
    assert [(s.start_step, s.end_step) for s in report.segments if not s.passed] == [(4, 8), (8, 12)]


def test_four_ranks_whose_log_holds_another_ranks_batch_are_rejected(four_ranks, tmp_path):
    """Acceptance 6: at step 5, rank 3's micro-batch replaced by rank 2's (the log resealed)."""
    from safetensors.torch import load, save

    from lightning_pol.format import layout as pf

    proof = tmp_path / "proof"
    shutil.copytree(four_ranks, proof)
    tensors = load((proof / pf.INDEX_LOG_FINAL).read_bytes())
    indices, offsets, batches = (tensors[k] for k in (pf.INDICES_KEY, pf.OFFSETS_KEY, pf.BATCH_OFFSETS_KEY))
    first = int(torch.searchsorted(batches, offsets[5]))
    b = batches[first : first + 5].tolist()  # the four ranks' micro-batches of step 5
    assert b[4] - b[3] == b[3] - b[2] == BATCH
    indices[b[3] : b[4]] = indices[b[2] : b[3]].clone()
    (proof / pf.INDEX_LOG_FINAL).write_bytes(save(tensors))
    relist(proof, pf.INDEX_LOG_FINAL)
    report = verify_proof(proof, q=0)
    assert not report.valid
    assert [(s.start_step, s.end_step) for s in report.segments if not s.passed] == [(4, 8)]


def test_two_ranks_accumulating_without_buffer_broadcasts_verify_bit_exact(tmp_path):
    """Acceptance 2 (SyncBatchNorm aside: torch's DDP refuses it on CPU), with ranks that keep their own BatchNorm
    statistics: every checkpoint holds rank 1's, and the replay needs them."""
    proof = train_ddp(tmp_path, "--devices", "2", "--k", "4", "--accumulate", "2", "--no-broadcast-buffers")
    reader = ProofReader(proof)
    assert reader.manifest.training["ddp"]["kwargs"]["broadcast_buffers"] is False
    log = reader.index_log()
    assert [len(log.micro_batches(t)) for t in (0, 13, 14)] == [4, 4, 2]  # 29 batches a rank: 14 steps of 2, one of 1
    state = reader.load_checkpoint(reader.manifest.checkpoint_at(8))
    (peer,) = state["peer_buffers"]
    assert not torch.equal(peer["net.1.running_mean"], state["model"]["net.1.running_mean"])
    replayed_exactly(proof)


def test_a_two_rank_run_killed_and_resumed_from_last_ckpt_is_one_proof(tmp_path):
    """Acceptance 3: killed after Lightning's third checkpoint (step 30), resumed with ckpt_path=last.ckpt."""
    args = ["--devices", "2", "--k", "4", "--ckpt-every", "10"]
    killed = subprocess.run([sys.executable, "-m", "tests.ddp_target", str(tmp_path), *args, "--kill-after", "33"], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=900)
    assert killed.returncode != 0 and (tmp_path / "ckpt" / "epoch=1-step=30.ckpt").exists()
    run_id = ProofReader(tmp_path / "proof").manifest.run_id
    proof = train_ddp(tmp_path, *args, "--resume")
    m = ProofReader(proof).manifest
    assert m.status == "complete" and m.run_id == run_id and m.final_step == EPOCHS * STEPS_PER_EPOCH
    replayed_exactly(proof, ranks="emulate")


def test_two_nodes_of_two_processes_verify_bit_exact(tmp_path):
    """Acceptance 4: ``num_nodes=2, devices=2`` started as two launches on one machine, as a cluster starts them."""
    from lightning_pol.verification.rank_processes import free_port

    env = dict(os.environ, PYTHONPATH=str(REPO), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    cmd = [sys.executable, "-m", "tests.ddp_target", str(tmp_path), "--devices", "2", "--nodes", "2", "--k", "4"]
    node1 = subprocess.Popen(cmd, cwd=REPO, env=dict(env, NODE_RANK="1"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    node0 = subprocess.run(cmd, cwd=REPO, env=dict(env, NODE_RANK="0"), capture_output=True, text=True, timeout=900)
    assert node0.returncode == 0 and node1.wait(timeout=300) == 0, node0.stderr[-3000:]
    training = ProofReader(tmp_path / "proof").manifest.training
    assert training["world_size"] == 4 and training["ddp"]["num_nodes"] == 2
    replayed_exactly(tmp_path / "proof")


@pytest.mark.parametrize("what", ["gan", "swa"])
def test_a_gan_and_swa_under_two_ranks_verify_bit_exact(tmp_path, what):
    """Acceptance 5: manual optimization with two optimizers, and a callback that changes training."""
    args = ["--module", "gan", "--limit", "20"] if what == "gan" else ["--swa", "--epochs", "3", "--limit", "10"]
    proof = train_ddp(tmp_path, "--devices", "2", "--k", "4", *args)
    m = ProofReader(proof).manifest
    assert (m.training["automatic_optimization"] is False) if what == "gan" else [c.import_path for c in m.callbacks] == [
        "lightning.pytorch.callbacks.stochastic_weight_avg:StochasticWeightAveraging"]
    replayed_exactly(proof)


def test_a_ddp_step_must_hold_as_many_micro_batches_of_each_rank(four_ranks, tmp_path):
    """Step 5's four micro-batches split into five (the log resealed), under a claimed accumulation of 2 (so a
    step may hold up to eight): not a step every rank ran alike."""
    from safetensors.torch import load, save

    from lightning_pol.format import layout as pf
    from lightning_pol.format.strict_json import ProofFormatError
    from lightning_pol.format.writer import rewrite_manifest_json

    proof = tmp_path / "proof"
    shutil.copytree(four_ranks, proof)
    tensors = load((proof / pf.INDEX_LOG_FINAL).read_bytes())
    batches, offsets = tensors[pf.BATCH_OFFSETS_KEY], tensors[pf.OFFSETS_KEY]
    first = int(torch.searchsorted(batches, offsets[5]))
    tensors[pf.BATCH_OFFSETS_KEY] = torch.cat([batches[: first + 1], batches[first : first + 1] + 8, batches[first + 1 :]])
    (proof / pf.INDEX_LOG_FINAL).write_bytes(save(tensors))
    relist(proof, pf.INDEX_LOG_FINAL)
    rewrite_manifest_json(proof, lambda m: m["training"].update(
        accumulate_grad_batches=2, steps_per_epoch=-(-m["training"]["num_training_batches"] // 2)))
    with pytest.raises(ProofFormatError, match="steps of 4 to 5 micro-batches; accumulate_grad_batches is 2, world_size 4"):
        ProofReader(proof).index_log()


@pytest.mark.parametrize("edit, message", [
    (lambda t: t["ddp"].update(backend="mpi"), "DDP backend 'mpi' is not one of gloo, nccl"),
    (lambda t: t["ddp"]["kwargs"].update(process_group="x"), "DDP arguments .* are not among broadcast_buffers"),
    (lambda t: t["ddp"]["kwargs"].update(bucket_cap_mb=1e300), "DDP arguments .* plain values"),
])
def test_what_a_proof_says_about_its_ranks_is_checked_before_any_process_starts(four_ranks, tmp_path, edit, message):
    """The proof names the backend, the DDP arguments and the world size: hostile input, refused in one line."""
    from lightning_pol.format.writer import rewrite_manifest_json

    proof = tmp_path / "proof"
    shutil.copytree(four_ranks, proof)
    rewrite_manifest_json(proof, lambda m: edit(m["training"]))
    with pytest.raises(PoLError, match=message):
        verify_proof(proof, q=0, code="report")


def test_a_replay_starts_at_most_64_processes():
    from lightning_pol.verification.rank_processes import RankProcesses

    with pytest.raises(PoLError, match="claims 1000 ranks, and a replay starts at most 64 processes"):
        RankProcesses(1000, {})


def test_a_proof_whose_ranks_reduced_with_nccl_is_said_to_need_tolerant_mode_on_a_cpu(four_ranks, tmp_path):
    """Another backend sums in another order: exact mode says so in one line with what to do; a δ makes ``auto``
    tolerant. (The proof's ranks really used gloo, so the replay itself still matches.)"""
    from lightning_pol.format.writer import rewrite_manifest_json

    proof = tmp_path / "proof"
    shutil.copytree(four_ranks, proof)
    rewrite_manifest_json(proof, lambda m: m["training"]["ddp"].update(backend="nccl"))
    report = verify_proof(proof, q=1, random=0, code="report")
    assert report.environment["differences"]["ddp_backend"] == {"proof": "nccl", "verifier": "gloo"}
    (line,) = [r for r in report.reasons if "summed their gradients with nccl" in r]
    assert "verify with verifier.mode=tolerant and a delta calibrated by python -m lightning_pol.reproduce at world size 4" in line
    tolerant = verify_proof(proof, q=1, random=0, code="report", delta={"l2": 1e-3})
    assert tolerant.mode["effective"] == "tolerant" and tolerant.valid, tolerant.reasons
