"""Issue 22: tiered proofs (full states every K steps, digests every k), on real training runs and real replays."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_pol import PoLError, ProofOfLearning, ProofReader, verify_proof
from lightning_pol.format import layout as pf
from lightning_pol.format.checkpoint import checkpoint_bytes
from lightning_pol.format.compression import compress_checkpoint, decompress_checkpoint
from lightning_pol.format.manifest import Manifest, manifest_bytes
from lightning_pol.format.strict_json import ProofFormatError
from lightning_pol.verification.merge import merge_reports
from lightning_pol.zoo import DigitsCNN, DigitsDataModule
from tests.conftest import make_trainer
from tests.test_resume import Crash, CrashAt

K, k = 64, 8


def digits_proof(root: Path, full_every: int | None, **trainer) -> Path:
    """The digits CNN of the acceptance (width 32, batch 32, 3 epochs of 45 steps), k = 8."""
    pl.seed_everything(0, verbose=False)
    proof = root / "proof"
    pol = ProofOfLearning(proof, every_n_steps=k, full_every_n_steps=full_every)
    make_trainer([pol], root, max_epochs=3, **trainer).fit(DigitsCNN(width=32), DigitsDataModule(batch_size=32, augment=True, num_workers=2))
    return proof


def proof_bytes(proof: Path) -> int:
    return sum(p.stat().st_size for p in proof.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def proofs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiers")
    return digits_proof(root / "flat", None), digits_proof(root / "tiered", K)


@pytest.fixture
def tiered(proofs, tmp_path):
    copy = tmp_path / "proof"
    shutil.copytree(proofs[1], copy)
    return copy


def edit_manifest(proof: Path, edit) -> None:
    m = json.loads((proof / pf.MANIFEST).read_text())
    edit(m)
    (proof / pf.MANIFEST).write_bytes(manifest_bytes(m))


# -- acceptance 1: bytes, and a full replay -------------------------------------------------------

def test_tiered_proof_holds_the_same_states_in_a_fifth_of_the_bytes(proofs):
    flat, tiered = (ProofReader(p) for p in proofs)
    steps = [c.step for c in flat.checkpoints]
    assert steps == list(range(0, 135, 8)) + [135] and [c.step for c in tiered.checkpoints] == steps
    assert [c.step for c in tiered.checkpoints if c.full] == [0, 64, 128, 135]
    for a, b in zip(flat.checkpoints, tiered.checkpoints):  # one training, two encodings: the same states
        assert a.sha256 == b.sha256, a.step
        if b.full:  # compressed, and decompressing to the flat proof's file
            compressed = (proofs[1] / b.path).read_bytes()
            assert b.path == pf.checkpoint_path(b.step) + ".zlib" and len(compressed) < 0.9 * flat.manifest.files[a.path].bytes
            assert decompress_checkpoint(compressed, b.path, 1 << 30) == (proofs[0] / a.path).read_bytes()
    assert tiered.checkpoints[0].norms is None and all(c.norms for c in tiered.checkpoints[1:])
    assert all(c.norms is None for c in flat.checkpoints) and "full_every_n_steps" not in flat.manifest.to_json()
    # W_0 (no momentum yet) and 3 full states of 18 are 0.201 of the checkpoint bytes; compressed, with the index
    # log and the leaves that both proofs hold, 0.193 (docs/performance.md, "Tiered proofs").
    assert proof_bytes(proofs[1]) <= 0.2 * proof_bytes(proofs[0])


def test_tiered_proof_replays_bit_exact_through_its_digests(proofs):
    report = verify_proof(proofs[1], q=0)
    assert report.valid, report.summary()
    assert len(report.segments) == 17 and all(s.bit_exact and s.passed for s in report.segments)
    assert report.coverage["compute_fraction"] == 1.0


# -- acceptance 2: what a tiered proof can lie about ------------------------------------------------

def reseal_full(proof: Path, step: int, data: bytes, digest: str | None = None) -> None:
    """Put ``data`` (a compressed checkpoint file) in place of the full state of ``step``, listed as a prover would:
    the file's digest, and the entry's (``digest``, default: of what ``data`` decompresses to)."""
    rel = pf.checkpoint_path(step, compressed=True)
    (proof / rel).write_bytes(data)

    def reseal(m):
        m["files"][rel] = {"sha256": pf.sha256_bytes(data), "bytes": len(data)}
        next(c for c in m["checkpoints"] if c["step"] == step)["sha256"] = digest or pf.sha256_bytes(decompress_checkpoint(data, rel, 1 << 30))
    edit_manifest(proof, reseal)


def test_forged_full_state_is_rejected(tiered):
    reader = ProofReader(tiered)
    before, at, after = (reader.load_checkpoint(reader.manifest.checkpoint_at(s)) for s in (0, 64, 128))
    at["model"] = {key: (before["model"][key] + after["model"][key]) / 2 if v.is_floating_point() else v for key, v in at["model"].items()}
    reseal_full(tiered, 64, compress_checkpoint(checkpoint_bytes(at)))
    report = verify_proof(tiered, q=0)
    assert not report.valid
    assert report.checks["replay"].failed[:2] == [[56, 64], [64, 72]], report.summary()


def test_changed_digest_is_rejected(tiered):
    edit_manifest(tiered, lambda m: m["checkpoints"][3].update(sha256="ab" * 32))  # step 24, digest-only
    report = verify_proof(tiered, q=0)
    # Only the claim at step 24 is false: the replay goes on from the state it reached, the true one, and step 32 matches.
    assert not report.valid and report.checks["replay"].failed == [[16, 24]], report.summary()


def test_a_replay_that_diverges_at_a_digest_says_so_at_the_segments_after_it(tiered):
    from safetensors.torch import load_file, save_file

    from tests.conftest import relist

    log = load_file(tiered / pf.INDEX_LOG_FINAL)
    i, j = int(log["offsets"][18]), int(log["offsets"][20])  # a sample of step 18 and one of step 20 swapped
    log["indices"][i], log["indices"][j] = log["indices"][j].clone(), log["indices"][i].clone()
    save_file(log, tiered / pf.INDEX_LOG_FINAL)
    relist(tiered, pf.INDEX_LOG_FINAL)
    report = verify_proof(tiered, q=0)
    assert not report.valid and report.checks["replay"].failed == [[16, 24], [24, 32], [32, 40], [40, 48], [48, 56], [56, 64]]
    after = next(s for s in report.segments if s.start_step == 24)  # 16->24 fails; the rest of its span goes on from there
    assert after.error.startswith("it starts from step 24, which the replay already reached in another state"), report.summary()
    assert next(s for s in report.segments if s.start_step == 64).passed  # a full state: the next span starts from the proof's


def _halve(norms: dict) -> None:
    norms[next(iter(norms))] /= 2


def _off_by_1e4(norms: dict) -> None:  # 1e-4 relative: any tolerance looser than NORM_RTOL (1e-6) by 100x lets it through
    norms[next(iter(norms))] *= 1.0001


def _group_left_out(norms: dict) -> None:
    del norms[next(iter(norms))]


@pytest.mark.parametrize("lie, said", [(_halve, "the recorded update norm of"), (_off_by_1e4, "the recorded update norm of"),
                                       (_group_left_out, "the recorded update norms name other tensor groups than the model has")],
                         ids=["halved", "off-by-1e-4", "group-left-out"])
def test_a_recorded_update_norm_that_lies_is_rejected(tiered, lie, said):
    edit_manifest(tiered, lambda m: lie(m["checkpoints"][5]["norms"]))  # step 40, digest-only
    report = verify_proof(tiered, q=0)
    assert not report.valid
    failed = next(s for s in report.segments if not s.passed)
    assert (failed.start_step, failed.end_step) == (32, 40) and failed.bit_exact and failed.error.startswith(said), failed.error


def test_a_failed_lead_in_fails_the_proof(tiered):
    """A lie at a digest before a selected segment: only the lead-in replayed to reach it can see it, and it counts."""
    honest = verify_proof(tiered, q=1, random=0)
    assert honest.valid, honest.summary()
    lead_in = next(s for s in honest.segments if s.reason == "lead-in")
    edit_manifest(tiered, lambda m: next(c for c in m["checkpoints"] if c["step"] == lead_in.end_step).update(sha256="ab" * 32))
    report = verify_proof(tiered, q=1, random=0)
    assert [(s.start_step, s.end_step, s.reason) for s in report.segments] == [(s.start_step, s.end_step, s.reason) for s in honest.segments]
    # The replay goes on from the state it reached (the true one): the selected segment itself still matches.
    assert not report.valid and report.checks["replay"].failed == [[lead_in.start_step, lead_in.end_step]], report.summary()


def _one_weight_changed(tiered: Path) -> bytes:
    """Step 64's state with one weight changed, compressed as the writer would: a whole, valid file of another state."""
    reader = ProofReader(tiered)
    state = reader.load_checkpoint(reader.manifest.checkpoint_at(64))
    state["model"]["head.2.weight"][0, 0] += 1e-3
    return compress_checkpoint(checkpoint_bytes(state))


#: Compressed files in place of step 64's full state, each listed with its own digest and the entry's state digest
#: left; and what the reader says of each (None: a tiling or parsing error after decompression).
HOSTILE_COMPRESSED = {
    "bomb": (lambda tiered, good: zlib.compress(b"\0" * (512 << 20), 9), "decompresses to more than"),  # 512 MB from 0.5 MB: refused after 128 MB
    "truncated": (lambda tiered, good: good[: len(good) // 2], None),
    "adler_cut": (lambda tiered, good: good[:-4], "not one complete compressed stream"),  # every block whole, the checksum gone
    "byte_appended": (lambda tiered, good: good + b"\0", "not one complete compressed stream"),
    "other_state": (lambda tiered, good: (tiered / pf.checkpoint_path(128, compressed=True)).read_bytes(), None),  # step 128's
    "one_weight_changed": (lambda tiered, good: _one_weight_changed(tiered), "does not decompress to the state its checkpoint entry records"),
    "not_safetensors": (lambda tiered, good: zlib.compress(b"\xff" * 4096), None),
}


@pytest.mark.parametrize("payload", list(HOSTILE_COMPRESSED))
def test_hostile_compressed_full_state_is_rejected_in_one_line(tiered, payload):
    rel = pf.checkpoint_path(64, compressed=True)
    make, says = HOSTILE_COMPRESSED[payload]
    digest = ProofReader(tiered).manifest.checkpoint_at(64).sha256
    reseal_full(tiered, 64, make(tiered, (tiered / rel).read_bytes()), digest=digest)
    with pytest.raises(ProofFormatError) as e:
        ProofReader(tiered).load_checkpoint(ProofReader(tiered).manifest.checkpoint_at(64))
    assert "\n" not in str(e.value) and rel in str(e.value)
    assert says is None or says in str(e.value), str(e.value)
    assert ("decompresses to more than" in str(e.value)) == (payload == "bomb")
    report = verify_proof(tiered, q=0)
    assert not report.valid and report.checks["integrity"].passed is False, report.summary()


def _digest_only(m: dict, step: int) -> None:
    c = next(c for c in m["checkpoints"] if c["step"] == step)
    del m["files"][c["path"]]
    c["path"] = None


@pytest.mark.parametrize("edit, gone, said", [
    (lambda m: _digest_only(m, 64), 64, "step 64 is digest-only"),  # a full state due at K = 64
    (lambda m: _digest_only(m, 135), 135, "step 135 is digest-only"),  # the final state, always full
    (lambda m: m.update(full_every_n_steps=128), None, "every K=128 steps and the final step 135 in full and the others as "
                                                       "digests, and step 64 is full"),  # a full state where a digest is due
], ids=["due-at-K", "final", "full-where-a-digest-is-due"])
def test_tiers_other_than_the_declared_ones_are_rejected(tiered, edit, gone, said):
    edit_manifest(tiered, edit)
    if gone is not None:
        (tiered / pf.checkpoint_path(gone, compressed=True)).unlink()
    report = verify_proof(tiered, q=0)
    assert not report.valid and report.checks["integrity"].passed is False and said in report.checks["integrity"].summary, report.summary()


@pytest.mark.parametrize("edit, reason", [
    (lambda m: m.update(full_every_n_steps=12), "full_every_n_steps"),
    (lambda m: m["checkpoints"][0].update(norms={"net": 1.0}), "update norms"),
    (lambda m: m["checkpoints"][2].update(norms={"net": -1.0}), "update norms"),
    (lambda m: m["checkpoints"][2].update(sha256="not hex"), "digest"),
    (lambda m: m["checkpoints"][2].update(extra=1), "keys"),
    (lambda m: m.pop("full_every_n_steps"), "checkpoint"),
    (lambda m: m["checkpoints"][8].update(sha256="xyz"), "digest of its state"),
    (lambda m: m["checkpoints"][2].pop("norms"), "step 16 has no valid update norms"),  # a digest after W_0
    (lambda m: m["checkpoints"][8].pop("norms"), "step 64 has no valid update norms"),  # a full state after W_0
])
def test_malformed_tiers_are_format_errors(proofs, edit, reason):
    m = json.loads((proofs[1] / pf.MANIFEST).read_text())
    edit(m)
    with pytest.raises(ProofFormatError, match=reason):
        Manifest.from_json(m)


# -- acceptance 3: what q=1 costs ----------------------------------------------------------------

def test_q1_replays_at_most_k_over_k_times_its_selection_and_says_so(proofs):
    report = verify_proof(proofs[1], q=1, random=1, seed=5)
    assert report.valid, report.summary()
    selected = [s for s in report.segments if s.reason in ("topq", "random")]
    replayed = sum(s.end_step - s.start_step for s in report.segments)
    assert len(selected) == report.selection["selected"] == 6
    assert replayed <= K // k * sum(s.end_step - s.start_step for s in selected)
    assert any(s.reason == "lead-in" for s in report.segments)
    for s in report.segments:  # every replayed segment starts at a full state or where the one before it ended
        entry = ProofReader(proofs[1]).manifest.checkpoint_at(s.start_step)
        assert entry.full or any(p.end_step == s.start_step for p in report.segments)
    assert report.coverage["replayed_steps"] == replayed
    assert report.coverage["compute_fraction"] == pytest.approx(replayed / 135)


def test_shards_replay_their_own_lead_ins_and_merge_to_the_single_run(proofs):
    single = verify_proof(proofs[1], q=1, random=1, seed=5)
    shards = [verify_proof(proofs[1], q=1, random=1, seed=5, num_shards=2, shard=i).to_dict() for i in (0, 1)]
    merged = merge_reports(shards)
    assert merged["valid"] and [(s["start_step"], s["end_step"]) for s in merged["segments"]] == [(s.start_step, s.end_step) for s in single.segments]
    assert merged["coverage"]["replayed_steps"] == single.coverage["replayed_steps"]


def test_tolerant_replay_judges_only_spans_between_full_states(proofs):
    report = verify_proof(proofs[1], q=1, random=0, mode="tolerant", delta={"l2": 1e-3})
    assert report.valid, report.summary()
    spans = [(s.start_step, s.end_step) for s in report.segments]
    assert spans and set(spans) <= {(0, 64), (64, 128), (128, 135)} and all(s.reason == "span" for s in report.segments)
    unchecked = report.selection["unchecked"]
    assert unchecked and all(u["span"][0] <= u["segment"][0] < u["segment"][1] <= u["span"][1] for u in unchecked)
    assert any("judges only spans between full states (every 64 steps)" in n for n in report.notes)


def test_warm_start_from_a_tiered_parent_verifies_the_chain_through_a_registry(proofs, tmp_path):
    parent = ProofReader(proofs[1])
    pl.seed_everything(1, verbose=False)
    model = DigitsCNN(width=32)
    model.load_state_dict(parent.load_checkpoint(parent.checkpoints[-1])["model"])  # the compressed final state
    child = tmp_path / "child"
    pol = ProofOfLearning(child, every_n_steps=k, full_every_n_steps=32, init_strategy="warm_start", parent=proofs[1])
    make_trainer([pol], tmp_path, max_epochs=1).fit(model, DigitsDataModule(batch_size=32, num_workers=0))
    assert ProofReader(child).manifest.parent["final_checkpoint_sha256"] == parent.checkpoints[-1].sha256
    registry = tmp_path / "registry.sqlite"
    report = verify_proof(child, q=1, random=0, registry=registry)
    assert report.valid and report.checks["chain"].proofs == [ProofReader(child).identity, parent.identity], report.summary()
    again = verify_proof(child, q=1, random=0, registry=registry)  # the parent is now the registry's
    assert again.valid and again.checks["chain"].parent_from_registry is True


def test_auto_mode_on_another_thread_count_says_in_one_line_what_it_judges(proofs):
    before = torch.get_num_threads()
    torch.set_num_threads(1 if before != 1 else 2)  # not the proof's count: the environment differs
    try:
        report = verify_proof(proofs[1], q=1, random=0, mode="auto", delta={"l2": 1e-2}, match_threads=False)
        exact = verify_proof(proofs[1], q=1, random=0, mode="auto", match_threads=False)  # no delta: exact, and it says why not
    finally:
        torch.set_num_threads(before)
    assert report.mode["effective"] == "tolerant" and all(s.reason == "span" for s in report.segments), report.summary()
    note = next(n for n in report.notes if n.startswith("tolerant replay (the environment differs"))
    assert "\n" not in note and "every 64 steps" in note
    assert exact.mode["effective"] == "exact" and any("give verifier.delta" in n for n in exact.notes)


# -- the callback --------------------------------------------------------------------------------

def test_full_every_n_steps_must_be_a_multiple_of_every_n_steps(tmp_path):
    with pytest.raises(PoLError, match="multiple of every_n_steps=8"):
        ProofOfLearning(tmp_path, every_n_steps=8, full_every_n_steps=20)
    assert ProofOfLearning(tmp_path, every_n_steps=8, full_every_n_steps=8).full_every_n_steps is None  # K = k: a flat proof


def test_resumed_tiered_proof_continues_its_update_norms_and_verifies(tmp_path):
    def run(crash_at=None, ckpt_path=None):
        callbacks = [ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_epochs=1, save_top_k=-1),
                     ProofOfLearning(tmp_path / "proof", every_n_steps=8, full_every_n_steps=32)]
        if crash_at is not None:
            callbacks.insert(0, CrashAt(crash_at))
        make_trainer(callbacks, tmp_path, max_epochs=3, enable_checkpointing=True).fit(
            DigitsCNN(width=8), DigitsDataModule(batch_size=32, num_workers=0), ckpt_path=ckpt_path)

    pl.seed_everything(0, verbose=False)
    with pytest.raises(Crash):
        run(crash_at=50)  # last.ckpt at the end of epoch 0 (step 45): the proof's last checkpoint then, 40, is digest-only
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["callbacks"]
    origin = next(v for key, v in saved.items() if key.startswith("ProofOfLearning"))["norms_origin"]
    assert origin[0] == 40 and ProofReader(tmp_path / "proof").manifest.checkpoint_at(40).path is None
    run(ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    reader = ProofReader(tmp_path / "proof")
    assert reader.manifest.complete and [c.step for c in reader.checkpoints if c.full] == [0, 32, 64, 96, 128, 135]
    report = verify_proof(tmp_path / "proof", q=0)
    assert report.valid and all(s.bit_exact for s in report.segments), report.summary()
