"""The reader is the hostile-input boundary: tampered proofs fail with one-line ProofFormatErrors."""

from __future__ import annotations

import json
import os
import shutil
import struct

import pytest

from lightning_pol import ProofFormatError, ProofReader
from lightning_pol import proof_format as pf
from lightning_pol.writer import manifest_bytes
from tests.conftest import pickle_bomb, relist, train_with_proof
from tests.unseen_project import UnseenDataModule, UnseenModule


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    proof, _, _ = train_with_proof(root, UnseenModule, UnseenDataModule(num_workers=0), every_n_steps=4, max_steps=10, max_epochs=-1)
    return proof


@pytest.fixture
def proof(pristine, tmp_path):
    copy = tmp_path / "proof"
    shutil.copytree(pristine, copy)
    return copy


def edit_manifest(proof, fn):
    m = json.loads((proof / pf.MANIFEST).read_text())
    fn(m)
    (proof / pf.MANIFEST).write_bytes(manifest_bytes(m))


def test_pristine_proof_reads(proof):
    reader = ProofReader(proof)
    assert reader.verify_files() == []
    assert [c["step"] for c in reader.checkpoints] == [0, 4, 8, 10]
    for c in reader.checkpoints:
        reader.load_checkpoint(c)


def test_flipped_byte_is_a_digest_mismatch(proof):
    path = proof / pf.checkpoint_path(4)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    reader = ProofReader(proof)
    with pytest.raises(ProofFormatError, match="digest mismatch: checkpoints/step-000000004"):
        reader.load_checkpoint(reader.checkpoints[1])


def test_pickle_in_place_of_a_checkpoint_is_never_loaded(proof, tmp_path):
    marker = tmp_path / "pwned"
    rel = pf.checkpoint_path(4)
    (proof / rel).write_bytes(pickle_bomb(marker))
    relist(proof, rel)
    reader = ProofReader(proof)
    with pytest.raises(ProofFormatError):
        reader.load_checkpoint(reader.checkpoints[1])
    assert not marker.exists()


@pytest.mark.parametrize("bad", ["../outside.safetensors", "/etc/passwd", "checkpoints/../../x", "a\\b"])
def test_paths_leaving_the_proof_are_refused(proof, bad):
    edit_manifest(proof, lambda m: m["files"].update({bad: {"sha256": "0" * 64, "bytes": 1}}))
    with pytest.raises(ProofFormatError, match="unsafe path"):
        ProofReader(proof)


def test_symlink_out_of_the_proof_is_refused(proof, tmp_path):
    rel = pf.checkpoint_path(4)
    outside = tmp_path / "outside.safetensors"
    shutil.copy(proof / rel, outside)
    (proof / rel).unlink()
    os.symlink(outside, proof / rel)
    reader = ProofReader(proof)
    with pytest.raises(ProofFormatError, match="symlink"):
        reader.load_checkpoint(reader.checkpoints[1])


def test_unknown_version_and_non_json_manifest(proof):
    edit_manifest(proof, lambda m: m.update(format_version=99))
    with pytest.raises(ProofFormatError, match="unknown format version 99"):
        ProofReader(proof)
    (proof / pf.MANIFEST).write_bytes(b"\xff\xfe not json")
    with pytest.raises(ProofFormatError, match="not valid JSON"):
        ProofReader(proof)


def test_declared_tensor_size_is_checked_before_loading(proof):
    rel = pf.checkpoint_path(4)
    data = (proof / rel).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    key = next(k for k in header if k != "__metadata__")
    header[key]["shape"] = [2**40]
    raw = json.dumps(header).encode()
    (proof / rel).write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    relist(proof, rel)
    reader = ProofReader(proof)
    with pytest.raises(ProofFormatError, match="does not fit its declared size"):
        reader.load_checkpoint(reader.checkpoints[1])


def test_missing_checkpoint_and_unlisted_file_are_reported(proof):
    (proof / pf.checkpoint_path(10)).unlink()
    (proof / "extra.bin").write_bytes(b"x")
    problems = ProofReader(proof).verify_files()
    assert any("missing file: checkpoints/step-000000010" in p for p in problems)
    assert "unlisted file: extra.bin" in problems


def test_index_log_out_of_range_is_refused(proof):
    edit_manifest(proof, lambda m: m["data"].update(size=5))
    with pytest.raises(ProofFormatError, match="outside the dataset"):
        ProofReader(proof).index_log()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: m.update(data=None), "data is missing or invalid"),
        (lambda m: m.update(every_n_steps=True), "every_n_steps"),
        (lambda m: m["checkpoints"][1].update(path=["a"]), "bad checkpoint entry"),
        (lambda m: m["index_log"][0].update(path={"x": 1}), "index log chunks"),
        (lambda m: m.update(sample_epochs=[[0, 0], ["57", 1]]), "sample_epochs"),
        (lambda m: m.update(module={"class": 3, "hparams": {}}), "module is missing or invalid"),
        (lambda m: m.update(training=[]), "training is missing or invalid"),
        (lambda m: m["training"].update(steps_per_epoch="57"), "training.steps_per_epoch"),
    ],
    ids=["data-null", "k-bool", "path-list", "chunk-path-dict", "epochs-str", "module-class-int", "training-list", "spe-str"],
)
def test_malformed_manifest_fields_are_format_errors(proof, mutate, message):
    edit_manifest(proof, mutate)
    with pytest.raises(ProofFormatError, match=message):
        ProofReader(proof)


def test_data_commitment_may_be_null_only_while_in_progress(proof):
    def uncommitted(status):
        def fn(m):
            m["data"].update(leaves=None, root=None)
            m["status"] = status
        return fn

    edit_manifest(proof, uncommitted(pf.STATUS_IN_PROGRESS))
    assert ProofReader(proof).manifest["data"]["root"] is None  # a run stopped in its first epoch, before committing
    edit_manifest(proof, uncommitted(pf.STATUS_COMPLETE))
    with pytest.raises(ProofFormatError, match="manifest field data"):
        ProofReader(proof)
