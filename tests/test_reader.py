"""The reader is the hostile-input boundary: tampered proofs fail with one-line ProofFormatErrors."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import sys

import pytest

from lightning_pol import ProofFormatError, ProofReader
from lightning_pol.format import layout as pf
from lightning_pol.format.manifest import manifest_bytes
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
    assert [c.step for c in reader.checkpoints] == [0, 4, 8, 10]
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
    edit_header(proof, pf.checkpoint_path(4), lambda h: h[next(k for k in h if k != "__metadata__")].update(shape=[2**40]))
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
    assert ProofReader(proof).manifest.data.root is None  # a run stopped in its first epoch, before committing
    edit_manifest(proof, uncommitted(pf.STATUS_COMPLETE))
    with pytest.raises(ProofFormatError, match="manifest field data"):
        ProofReader(proof)


# -- findings of the hostile-proof fuzz campaign (python -m tools.fuzz; docs/security.md) -----

def edit_header(proof, rel, fn):
    """Rewrite the safetensors header of ``rel`` in place (``fn`` edits the parsed header), and re-sign it."""
    data = (proof / rel).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    fn(header)
    raw = json.dumps(header).encode()
    (proof / rel).write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    relist(proof, rel)


def edit_state(proof, step, fn):
    """Rewrite the typed-JSON state of checkpoint ``step`` in place, and re-sign it."""

    def rewrite(header):
        tree = json.loads(header["__metadata__"][pf.CHECKPOINT_STATE_KEY])
        new = fn(tree)
        header["__metadata__"][pf.CHECKPOINT_STATE_KEY] = json.dumps(tree if new is None else new)

    edit_header(proof, pf.checkpoint_path(step), rewrite)


def test_declared_byte_count_is_never_allocated(proof):
    # Found: read(declared + 1) allocated the manifest's number: MemoryError, or OverflowError past 2**63.
    rel = pf.checkpoint_path(4)
    for declared in (2**40, 10**30):
        edit_manifest(proof, lambda m: m["files"][rel].update(bytes=declared))
        reader = ProofReader(proof)
        assert any("more than this reader loads" in p for p in reader.verify_files())
        with pytest.raises(ProofFormatError, match="more than this reader loads"):
            reader.load_checkpoint(reader.checkpoints[1])
    edit_manifest(proof, lambda m: m["files"][rel].update(bytes=1 << 20))
    with pytest.raises(ProofFormatError, match=r"digest mismatch: .*the manifest says 1048576"):
        ProofReader(proof).read_file(rel)


def test_sparse_file_is_hashed_in_constant_memory(proof):
    # Found: a listed file was read whole before its digest failed (256 MB of a sparse file, for free).
    import tracemalloc

    rel = pf.checkpoint_path(4)
    os.truncate(proof / rel, 256 << 20)
    edit_manifest(proof, lambda m: m["files"][rel].update(bytes=256 << 20))
    tracemalloc.start()
    try:
        problems = ProofReader(proof).verify_files()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert problems == [f"digest mismatch: {rel}"]
    assert peak < 32 << 20


def test_hard_link_out_of_the_proof_is_refused(proof, tmp_path):
    # Found: a hard link to a file outside the proof read as part of it (the manifest too).
    for rel in (pf.checkpoint_path(4), pf.MANIFEST):
        outside = tmp_path / f"outside-{rel.replace('/', '_')}"
        shutil.copy(proof / rel, outside)
        (proof / rel).unlink()
        os.link(outside, proof / rel)
    with pytest.raises(ProofFormatError, match="hard link in proof: manifest.json has 2 names"):
        ProofReader(proof)
    (proof / pf.MANIFEST).unlink()
    shutil.copy(tmp_path / "outside-manifest.json", proof / pf.MANIFEST)
    assert ProofReader(proof).verify_files() == [f"hard link in proof: {pf.checkpoint_path(4)} has 2 names"]


def test_unopenable_path_is_a_format_error(proof):
    # Found: a 5000-character name raised OSError (File name too long) out of verify_files.
    edit_manifest(proof, lambda m: m["files"].update({"x" * 5000: {"sha256": "0" * 64, "bytes": 1}}))
    assert any(p.startswith("cannot open xxx") for p in ProofReader(proof).verify_files())


@pytest.mark.parametrize(
    "raw, message",
    [
        (lambda text: text.encode("utf-16"), "not UTF-8"),
        (lambda text: b"\xef\xbb\xbf" + text.encode(), "not valid JSON"),
        (lambda text: ('{"final_step": 4, ' + text[1:]).encode(), "'final_step' twice"),
        (lambda text: text.replace('"files": {', '"files": {"batches.safetensors": {"sha256": "' + "0" * 64 + '", "bytes": 1}, ', 1).encode(),
         "'batches.safetensors' twice"),
        (lambda text: text.replace('"seed": 0', '"seed": NaN').encode(), "not valid JSON"),
        (lambda text: text.replace('"seed": 0', '"seed": 1e999').encode(), "not valid JSON"),
    ],
    ids=["utf16", "bom", "duplicate-top", "duplicate-file", "nan", "overflow"],
)
def test_manifest_is_strict_json(proof, raw, message):
    # Found: a UTF-16 manifest, or one with a duplicate key (Python keeps the last, other parsers the first),
    # verified as the honest proof under another identity.
    text = (proof / pf.MANIFEST).read_text()
    assert '"seed": 0' in text
    (proof / pf.MANIFEST).write_bytes(raw(text))
    with pytest.raises(ProofFormatError, match=message):
        ProofReader(proof)


def test_json_value_bomb_is_refused_before_parsing(proof):
    # Found: 64 MiB of [[],[],...] parsed into 1.6 GB of lists.
    import tracemalloc

    text = (proof / pf.MANIFEST).read_text()
    bomb = "[" + "[]," * 600_000 + "[]]"
    (proof / pf.MANIFEST).write_text(text.replace('"sample_epochs": [', '"sample_epochs": [' + bomb + ",", 1))
    tracemalloc.start()
    try:
        with pytest.raises(ProofFormatError, match="more than 500000 JSON values"):
            ProofReader(proof)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: [], "not a JSON object"),
        (lambda t: t["progress"].update(epoch={"__npscalar__": "<i4", "value": 2**100}), "malformed checkpoint state"),
        (lambda t: t["progress"].update(epoch={"__npscalar__": "V8", "value": 2**40}), "malformed checkpoint state"),
        (lambda t: t["progress"].update(epoch=1), "its epoch does not match"),
        (lambda t: t["progress"].update(batch_idx=10**9), "batch index is not a batch of an epoch"),
        (lambda t: t["progress"].update(batch_idx=None), "only the last checkpoint"),
    ],
    ids=["not-object", "npscalar-overflow", "npscalar-void", "epoch", "batch-idx", "batch-idx-none"],
)
def test_malformed_checkpoint_states_are_format_errors(proof, edit, message):
    # Found: OverflowError and AttributeError escaped load_checkpoint; counters that disagree were accepted.
    edit_state(proof, 4, edit)
    reader = ProofReader(proof)
    with pytest.raises(ProofFormatError, match=message):
        reader.load_checkpoint(reader.checkpoints[1])


def test_checkpoint_zero_is_the_first_batch(proof):
    edit_state(proof, 0, lambda t: t["progress"].update(batch_idx=1))
    reader = ProofReader(proof)
    with pytest.raises(ProofFormatError, match="step 0 is not the first batch of epoch 0"):
        reader.load_checkpoint(reader.checkpoints[0])


def test_torch_dtype_names_never_reach_torch_getattr(monkeypatch):
    # Found: {"__torch_dtype__": "_dynamo"} made torch's module __getattr__ import torch._dynamo.
    import torch

    from lightning_pol.format.state_codec import decode_state

    calls = []
    monkeypatch.setattr(torch, "__getattr__", lambda name: calls.append(name), raising=False)
    for name in ("_dynamo", "onnx", "no_such_dtype"):
        with pytest.raises(ValueError, match="unknown torch dtype"):
            decode_state({}, {"x": {"__torch_dtype__": name}})
    assert decode_state({}, {"x": {"__torch_dtype__": "float32"}})["x"] is torch.float32
    assert calls == []


def test_safetensors_header_with_an_unhashable_dtype(proof):
    # Found: a list as dtype raised TypeError (unhashable) out of the header check.
    edit_header(proof, pf.checkpoint_path(4), lambda h: h[next(k for k in h if k != "__metadata__")].update(dtype=["F32"]))
    reader = ProofReader(proof)
    with pytest.raises(ProofFormatError, match="unsupported dtype"):
        reader.load_checkpoint(reader.checkpoints[1])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: m["training"].update(precision={"__npscalar__": "<i4", "value": 2**100}), "training is not valid typed JSON"),
        (lambda m: m["module"]["hparams"].update(lr={"__ndarray__": "x", "dtype": "O", "shape": [1]}), "module.hparams is not valid typed JSON"),
        (lambda m: m["index_log"][0].update(first_step=0.0), "index log chunks"),
        (lambda m: m.update(format_version=2.0), "unknown format version"),
        (lambda m: m["data"].update(size=10**30), "data is missing or invalid"),
        (lambda m: m["training"].update(steps_per_epoch=None), "training.steps_per_epoch is not"),
        (lambda m: m["training"].update(num_training_batches="57"), "training.num_training_batches"),
        (lambda m: m.update(sample_epochs=[[0, 2**40]]), "does not start at step 0 in epoch 0"),
        (lambda m: m.update(sample_epochs=[[0, 0], [4, 2**63]]), "epoch past 2\\*\\*63"),
        (lambda m: m["checkpoints"][1].update(epoch=1), "checkpoint epochs decrease"),
        (lambda m: m["training"].update(num_training_batches=None), "training.num_training_batches"),
        (lambda m: m["training"].update(limit_train_batches=True), "training.limit_train_batches"),
        (lambda m: m["training"].update(batch_size=32.0), "training.batch_size"),
        (lambda m: m.update(created=m["created"].replace("+", "y+")), "created is not an ISO 8601 time"),
        (lambda m: m.update(run_id="not hex"), "run_id is not a hex string"),
        (lambda m: m["environment"].update(torch_threads=1.5), "environment.torch_threads"),
    ],
    ids=["typed-overflow", "typed-object", "float-first-step", "float-version", "huge-size", "spe-none", "batches-str",
         "epochs-start", "epoch-int64", "epochs-decrease", "batches-none", "limit-bool", "batch-size-float", "created", "run-id",
         "threads-float"],
)
def test_manifest_numbers_and_typed_fields(proof, mutate, message):
    # Found: typed JSON that the replay decodes raised OverflowError there; 0.0 and 2.0 passed as 0 and 2; a
    # data.size past int64 overflowed the index check; steps_per_epoch None skipped the permutation check.
    edit_manifest(proof, mutate)
    with pytest.raises(ProofFormatError, match=message):
        ProofReader(proof)


@pytest.mark.parametrize("final", [10**12, 10**30])
def test_checkpoint_steps_are_compared_without_building_them(proof, final):
    # Found: set(range(0, final_step, k)) for final_step = 10**12 (MemoryError), 10**30 (OverflowError in len).
    from lightning_pol.verification.integrity import check_integrity

    edit_manifest(proof, lambda m: m.update(final_step=final, every_n_steps=1, checkpoints=[m["checkpoints"][0], dict(m["checkpoints"][-1], step=final)]))
    assert any("checkpoints are missing" in p for p in check_integrity(ProofReader(proof)).problems)


def test_settings_that_never_stop_still_end_the_replay(proof):
    # Found: max_steps past the final step (max_epochs -1) made the replay of the last segment run empty epochs
    # forever. The replay now ends where the recorded batches end (an honest run stopped by EarlyStopping
    # has such settings: tests/test_stopping.py).
    from lightning_pol.verification.verifier import verify_proof

    edit_manifest(proof, lambda m: m["training"].update(max_steps=1000, max_epochs=-1))
    report = verify_proof(proof, q=0, random=0, seed=0)
    assert [(s.end_step, s.passed) for s in report.segments] == [(4, True), (8, True), (10, True)]
    # The lie is still caught: the module's schedule is sized from the declared (unbounded) settings.
    assert not report.valid and report.reasons == ["W_0's scheduler 0 state differs from the declared one"]


def test_batches_per_epoch_must_be_the_loaders(proof):
    # Found: limit_train_batches=3 made the replay run forever; a limit above the epoch hid a false steps_per_epoch.
    from lightning_pol.verification.verifier import verify_proof

    edit_manifest(proof, lambda m: m["training"].update(limit_train_batches=3))
    report = verify_proof(proof, q=0, random=0, seed=0)
    assert not report.valid and "the training dataloader gives 3 batches per epoch" in report.reasons[0]


def test_replay_compares_the_step_counters(proof):
    # Found: a checkpoint whose batch index (or epoch) lied verified: the replay compared everything but progress.
    from lightning_pol.verification.verifier import verify_proof

    edit_state(proof, 4, lambda t: t["progress"].update(batch_idx=5))
    report = verify_proof(proof, q=0, random=0, seed=0)
    assert not report.valid and "segment 0->4 does not replay" in report.reasons


@pytest.mark.parametrize("where", ["module", "datamodule", "optimizer", "scheduler"])
def test_declared_class_must_be_of_its_kind(proof, tmp_path, where):
    # Found: module.class = "subprocess:Popen" ran Popen(**hparams) in the initialization check.
    from lightning_pol.errors import PoLError
    from lightning_pol.verification.verifier import verify_proof

    marker = tmp_path / "ran"
    command = {"args": [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]}

    def mutate(m):
        if where in ("module", "datamodule"):
            m[where] = {"class": "subprocess:Popen", "hparams": command}
        else:
            m["training"]["optimizers" if where == "optimizer" else "lr_schedulers"][0]["class"] = "subprocess:Popen"

    edit_manifest(proof, mutate)
    # verifier.code=report lets the hostile class reach the gate; under match the code check rejects the proof first
    with pytest.raises(PoLError, match="'subprocess:Popen' is not a"):
        verify_proof(proof, q=0, random=0, seed=0, code="report")
    assert not marker.exists()
    rejected = verify_proof(proof, q=0, random=0, seed=0)
    assert not rejected.valid and rejected.checks["code"].passed is False and "subprocess:Popen" in rejected.reasons[0]
    assert not marker.exists()


def test_module_inside_the_proof_is_never_imported(proof, tmp_path, monkeypatch):
    # Found: a module file in the proof, named as the module class, ran when the verifier started inside the proof.
    from lightning_pol.errors import PoLError
    from lightning_pol.verification.verifier import verify_proof

    marker = tmp_path / "ran"
    (proof / "fuzz_canary_reader_test.py").write_text(f"open({str(marker)!r}, 'w')\nclass Module:\n    pass\n")
    edit_manifest(proof, lambda m: m.update(module={"class": "fuzz_canary_reader_test:Module", "hparams": {}}))
    monkeypatch.syspath_prepend(str(proof))
    with pytest.raises(PoLError, match="would be imported from inside the proof directory"):
        verify_proof(proof, q=0, random=0, seed=0, code="report")
    assert not marker.exists()


def test_step_boundaries_follow_the_accumulation(proof):
    # Found: step 0 emptied and step 2 given three micro-batches replayed identically (the same flat batches).
    from safetensors.torch import load, save

    rel = pf.INDEX_LOG_FINAL
    tensors = load((proof / rel).read_bytes())
    tensors[pf.OFFSETS_KEY][1] = 0
    (proof / rel).write_bytes(save(tensors))
    relist(proof, rel)
    with pytest.raises(ProofFormatError, match="steps of 0 to 2 micro-batches; accumulate_grad_batches is 1"):
        ProofReader(proof).index_log()


def test_a_module_without_a_loader_is_a_failed_check(proof):
    from lightning_pol.verification.verifier import verify_proof

    edit_manifest(proof, lambda m: m.update(datamodule=None))
    report = verify_proof(proof, q=0, random=0, seed=0, code="report")  # the datamodule left the code identity too
    assert not report.valid and not report.checks["data"].passed


def test_w0_must_be_exactly_a_state_of_the_module(proof):
    # Found: W_0 is never a replay target, and load_state_dict forgives a float64 bias or a missing
    # num_batches_tracked; set_rng_state ignores the high half of each of its 64-bit words.
    import torch

    from lightning_pol.verification.verifier import verify_proof

    reader = ProofReader(proof)
    state = reader.load_checkpoint(reader.checkpoints[0])
    state["model"]["net.1.bias"] = state["model"]["net.1.bias"].double()
    from lightning_pol.format.safetensors_io import safetensors_bytes
    from lightning_pol.format.state_codec import encode_state

    rel = pf.checkpoint_path(0)
    tensors, tree = encode_state(state)
    (proof / rel).write_bytes(safetensors_bytes(tensors, {pf.CHECKPOINT_STATE_KEY: json.dumps(tree)}))
    relist(proof, rel)
    report = verify_proof(proof, q=0, random=0, seed=0)
    assert not report.valid and "W_0's net.1.bias is torch.float64" in report.reasons[0]

    state["model"]["net.1.bias"] = state["model"]["net.1.bias"].float()
    rng = state["rng"]["torch"].clone()
    rng[24 + 8 * 5 + 7] ^= 1  # the high byte of the sixth state word: torch drops it
    saved = torch.get_rng_state()
    torch.set_rng_state(rng)
    assert not torch.equal(torch.get_rng_state(), rng)
    torch.set_rng_state(saved)
    state["rng"]["torch"] = rng
    tensors, tree = encode_state(state)
    (proof / rel).write_bytes(safetensors_bytes(tensors, {pf.CHECKPOINT_STATE_KEY: json.dumps(tree)}))
    relist(proof, rel)
    report = verify_proof(proof, q=0, random=0, seed=0)
    assert not report.valid and report.reasons[0] == "W_0's torch RNG state is not one torch would write"


def test_files_hold_exactly_their_tensors(proof):
    # Found: an extra tensor in the index log, or one no state refers to, was ignored; an ndarray's raw
    # bytes stored as int8 or reshaped decoded the same.
    import torch
    from safetensors.torch import load, save

    rel = pf.INDEX_LOG_FINAL
    tensors = load((proof / rel).read_bytes())
    (proof / rel).write_bytes(save({**tensors, "extra": tensors[pf.INDICES_KEY].clone()}))
    relist(proof, rel)
    with pytest.raises(ProofFormatError, match="tensors other than the three of an index log"):
        ProofReader(proof).index_log()

    rel = pf.checkpoint_path(4)
    data = (proof / rel).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    tensors = load(data)
    (proof / rel).write_bytes(save({**tensors, "stowaway": tensors["rng.torch"].clone()}, metadata=header["__metadata__"]))
    relist(proof, rel)
    reader = ProofReader(proof)
    with pytest.raises(ProofFormatError, match="tensors the state does not refer to: \\['stowaway'\\]"):
        reader.load_checkpoint(reader.checkpoints[1])

    (proof / rel).write_bytes(save({**tensors, "rng.numpy.1": tensors["rng.numpy.1"].view(torch.int8)}, metadata=header["__metadata__"]))
    relist(proof, rel)
    reader = ProofReader(proof)
    with pytest.raises(ProofFormatError, match="flat uint8 tensor, not torch.int8"):
        reader.load_checkpoint(reader.checkpoints[1])


def test_declared_batch_size_must_be_the_loaders(proof):
    # Found: training.batch_size (informational until now) could say anything.
    from lightning_pol.verification.verifier import verify_proof

    edit_manifest(proof, lambda m: m["training"].update(batch_size=m["training"]["batch_size"] + 1 if m["training"]["batch_size"] else 1))
    report = verify_proof(proof, q=0, random=0, seed=0)
    assert not report.valid and "the proof declares" in report.reasons[0]


def test_reasons_quote_the_proof_briefly(proof):
    # Found: a 5,000-character path, or a shape of 100,000 dimensions, made a reason of that length.
    from lightning_pol.verification.verifier import verify_proof

    edit_manifest(proof, lambda m: m["files"].update({"../" + "x" * 5000: {"sha256": "0" * 64, "bytes": 1}}))
    with pytest.raises(ProofFormatError) as info:
        ProofReader(proof)
    assert len(str(info.value)) < 200
    edit_manifest(proof, lambda m: m["files"].pop("../" + "x" * 5000))

    edit_header(proof, pf.checkpoint_path(0), lambda h: h["model.net.0.weight"].update(shape=[1] * 2000 + h["model.net.0.weight"]["shape"]))
    report = verify_proof(proof, q=0, random=0, seed=0)
    assert not report.valid and report.reasons[0].startswith("W_0's net.0.weight") and len(report.reasons[0]) <= 500


# -- manual optimization: Lightning's optimizer steps, recorded at each checkpoint ------------------

@pytest.fixture(scope="module")
def gan(tmp_path_factory):
    """A GAN under manual optimization: two optimizer steps a batch, so each checkpoint records its own count."""
    from lightning_pol.zoo.digits_data import DigitsDataModule
    from tests.callback_project import DigitsGAN

    proof, _, _ = train_with_proof(tmp_path_factory.mktemp("gan"), DigitsGAN, DigitsDataModule(num_workers=0), every_n_steps=4,
                                   limit_train_batches=8)
    return proof


@pytest.mark.parametrize("step, steps", [(4, 3), (0, 1)], ids=["below-its-step", "nonzero-at-step-0"])
def test_optimizer_steps_must_count_at_least_the_steps_and_none_at_0(gan, tmp_path, step, steps):
    proof = tmp_path / "proof"
    shutil.copytree(gan, proof)
    reader = ProofReader(proof)
    # As trained: recorded where Lightning's count is not the proof's step (not at 0), two a batch.
    assert [reader.load_checkpoint(c)["progress"].get("optimizer_steps") for c in reader.checkpoints] == [None, 8, 16]
    edit_state(proof, step, lambda t: t["progress"].update(optimizer_steps=steps))
    reader = ProofReader(proof)
    with pytest.raises(ProofFormatError, match="its optimizer steps are not a count of at least its steps"):
        reader.load_checkpoint(reader.manifest.checkpoint_at(step))


def test_the_pristine_proof_references_what_training_left_alone(proof):
    """The checkpoints after W_0 name Python's and numpy's RNG states (training draws from neither) by reference,
    and each entry's digest is the state's full file, which the reader checks after resolving them."""
    reader = ProofReader(proof)
    for c in reader.checkpoints[1:]:
        tree = json.loads(_header(proof, c.path)["__metadata__"][pf.CHECKPOINT_STATE_KEY])
        assert tree["rng"]["python"]["state"] == {"__same__": "rng.python.state", "step": 0, "sha256": tree["rng"]["python"]["state"]["sha256"]}
        assert reader.manifest.files[c.path].sha256 != c.sha256
        reader.load_checkpoint(c)


REFERENCE_LIES = {  # the reference to rng.python.state in step 4's file, changed; what the reader says
    "later step": (lambda ref: ref.update(step=8), "which is not an earlier checkpoint file of this proof"),
    "its own step": (lambda ref: ref.update(step=4), "which is not an earlier checkpoint file of this proof"),
    "no such step": (lambda ref: ref.update(step=3), "which is not an earlier checkpoint file of this proof"),
    "a name not stored there": (lambda ref: ref.update(__same__="rng.python.statex"), "which that checkpoint file does not store"),
    "another digest": (lambda ref: ref.update(sha256="0" * 64), "with a digest that tensor does not have"),
    "a root in a proof without one": (lambda ref: (ref.clear(), ref.update(__root__="0" * 64)), "refers to a tensor of a pretrained root, and the proof declares no pretrained start"),
    "an extra key": (lambda ref: ref.update(extra=1), "a __same__ reference is"),
    "a step that is a bool": (lambda ref: ref.update(step=False), "a __same__ reference is"),
}


@pytest.mark.parametrize("lie", list(REFERENCE_LIES))
def test_a_reference_that_does_not_resolve_is_refused_in_one_line(proof, lie):
    edit, message = REFERENCE_LIES[lie]

    def lie_in(tree: dict) -> None:
        edit(tree["rng"]["python"]["state"])

    edit_state(proof, 4, lie_in)
    reader = ProofReader(proof)
    with pytest.raises(ProofFormatError, match=re.escape(message)) as e:
        reader.load_checkpoint(reader.checkpoints[1])
    assert "\n" not in str(e.value)


def test_references_in_a_version_2_proof_are_refused(proof):
    """Version 2 lists a file under its state's digest: resealed so, its references are still refused."""
    def as_version_2(m: dict) -> None:
        m["format_version"] = 2
        for c in m["checkpoints"]:
            c["sha256"] = m["files"][c["path"]]["sha256"]

    edit_manifest(proof, as_version_2)
    reader = ProofReader(proof)
    with pytest.raises(ProofFormatError, match="holds tensor references, which format version 2 does not have"):
        reader.load_checkpoint(reader.checkpoints[1])


def _header(proof, rel):
    data = (proof / rel).read_bytes()
    return json.loads(data[8 : 8 + struct.unpack("<Q", data[:8])[0]])


def test_a_file_without_references_must_be_the_state_its_entry_names(proof):
    """Version 3 lets an entry's digest differ from its file's (the file may hold references): a file that holds
    none must still be the full file of the state the entry names."""
    edit_manifest(proof, lambda m: m["checkpoints"][0].update(sha256="0" * 64))
    reader = ProofReader(proof)
    with pytest.raises(ProofFormatError, match=r"^digest mismatch: checkpoints/step-000000000.safetensors is not the state its checkpoint entry records$"):
        reader.load_checkpoint(reader.checkpoints[0])
