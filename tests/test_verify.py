"""Issue 3's acceptance: the honest proof of the unseen project verifies bit-exactly; tampered copies are rejected."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_pol import ProofReader
from lightning_pol.format import layout as pf
from lightning_pol.format.manifest import manifest_bytes
from lightning_pol.format.safetensors_io import safetensors_bytes
from lightning_pol.verification.distances import distances
from lightning_pol.verification.verifier import verify_proof
from tests.conftest import pickle_bomb, relist, train_with_proof, write_checkpoint
from tests.unseen_project import UnseenDataModule, UnseenModule

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("honest")
    proof, _, _ = train_with_proof(root, UnseenModule, UnseenDataModule(), every_n_steps=8, max_epochs=3, gradient_clip_val=1.0)
    return proof


@pytest.fixture
def proof(pristine, tmp_path):
    copy = tmp_path / "proof"
    shutil.copytree(pristine, copy)
    return copy


def rewrite_model(proof: Path, step: int, model: dict[str, torch.Tensor]) -> None:
    reader = ProofReader(proof)
    entry = next(c for c in reader.checkpoints if c.step == step)
    state = reader.load_checkpoint(entry)
    state["model"] = model
    write_checkpoint(proof, entry.path, state)


def models(proof: Path) -> dict[int, dict[str, torch.Tensor]]:
    reader = ProofReader(proof)
    return {c.step: reader.load_checkpoint(c)["model"] for c in reader.checkpoints}


def cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "lightning_pol.verify", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


# -- the honest proof ----------------------------------------------------------------------

def test_full_replay_is_valid_and_every_segment_bit_exact(pristine):
    report = verify_proof(pristine, q=0)
    assert report.valid, report.summary()
    assert len(report.segments) == 22 and {s.reason for s in report.segments} == {"all"}
    assert all(s.bit_exact and s.distances["l2"] == 0.0 for s in report.segments)
    assert report.mode["effective"] == "exact" and report.environment["matches"]
    assert report.coverage["expected"] == 1.0 and report.coverage["measured"] == 1.0
    assert report.checks["hyperparameters"].schedule_simulated


def test_q1_replays_the_largest_update_of_each_epoch(pristine):
    report = verify_proof(pristine, q=1, random=0)
    assert report.valid, report.summary()
    ms = models(pristine)
    steps = sorted(ms)
    by_epoch = {0: [], 1: [], 2: []}
    for a, b in zip(steps, steps[1:]):
        by_epoch[min(a // 57, 2)].append((distances(ms[a], ms[b])["l2"], a))
    expected = sorted(max(v)[1] for v in by_epoch.values())
    assert [s.start_step for s in report.segments] == expected
    assert all(s.reason == "topq" for s in report.segments)
    assert 0 < report.coverage["compute_fraction"] < 0.2


def test_default_settings_add_random_segments_from_a_recorded_seed(pristine):
    report = verify_proof(pristine, q=1, random=1)
    assert report.valid
    assert sorted(s.reason for s in report.segments) == ["random"] * 3 + ["topq"] * 3
    again = verify_proof(pristine, q=1, random=1, seed=report.selection["seed"])
    assert [s.start_step for s in again.segments] == [s.start_step for s in report.segments]
    assert 0 < report.selection["detection_probability_one_fake_per_epoch"][0] <= 1


def test_cli_exit_codes_and_report_schema(pristine, tmp_path):
    out = tmp_path / "verification.json"
    done = cli(f"proof_dir={pristine}", "verifier.q=1", "verifier.random=1", f"report={out}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "verdict VALID" in done.stdout
    r = json.loads(out.read_text())
    assert r["valid"] is True
    assert {"integrity", "initialization", "data", "replay"} <= set(r["checks"])
    for s in r["segments"]:
        assert {"start_step", "end_step", "epoch", "reason", "distances", "passed"} <= set(s)
        assert set(s["distances"]) == {"l1", "l2", "linf", "cos"}
    assert set(r["coverage"]) >= {"expected", "measured", "compute_fraction"}
    assert "verifier" in r["environment"]


# -- tampered copies -------------------------------------------------------------------------

def test_flipped_byte_is_rejected_by_the_cli(proof):
    path = proof / pf.checkpoint_path(64)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    done = cli(f"proof_dir={proof}")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "digest mismatch: checkpoints/step-000000064" in done.stdout


def test_checkpoint_replaced_by_the_mean_of_its_neighbours(proof):
    ms = models(proof)
    rewrite_model(proof, 64, {k: (ms[56][k] + ms[72][k]) / 2 if ms[56][k].is_floating_point() else ms[64][k] for k in ms[64]})
    report = verify_proof(proof, q=0)
    assert not report.valid
    assert {tuple(x) for x in report.checks["replay"].failed} >= {(56, 64), (64, 72)}


def test_linear_interpolation_from_w0_to_wt(proof):
    ms = models(proof)
    steps = sorted(ms)
    final = steps[-1]
    for s in steps[1:-1]:
        a = s / final
        rewrite_model(proof, s, {k: (1 - a) * ms[0][k] + a * ms[final][k] if ms[0][k].is_floating_point() else ms[s][k] for k in ms[s]})
    report = verify_proof(proof)  # the default verifier: q=1, one random segment per epoch
    assert not report.valid and report.checks["replay"].passed is False


def test_two_batches_of_a_segment_swapped(proof):
    reader = ProofReader(proof)
    log = reader.index_log()
    idx = log.indices.clone()
    a, b = int(log.offsets[9]), int(log.offsets[10])
    c = int(log.offsets[11])
    assert b - a == c - b == 32
    idx[a:b], idx[b:c] = log.indices[b:c].clone(), log.indices[a:b].clone()
    tensors = dict(log.to_tensors(), indices=idx)
    (proof / pf.INDEX_LOG_FINAL).write_bytes(safetensors_bytes(tensors))
    relist(proof, pf.INDEX_LOG_FINAL)
    report = verify_proof(proof, q=0)
    assert not report.valid
    assert [8, 16] in report.checks["replay"].failed


def test_w0_replaced_by_trained_weights_fails_initialization(proof):
    ms = models(proof)
    rewrite_model(proof, 0, ms[max(ms)])
    report = verify_proof(proof, q=1, random=0)
    assert not report.valid
    assert report.checks["initialization"].passed is False


def test_pickle_checkpoint_is_rejected_and_never_run(proof, tmp_path):
    marker = tmp_path / "pwned"
    rel = pf.checkpoint_path(64)
    (proof / rel).write_bytes(pickle_bomb(marker))
    relist(proof, rel)
    done = cli(f"proof_dir={proof}")
    assert done.returncode in (1, 2) and "Traceback" not in done.stderr
    assert not marker.exists()
    report = verify_proof(proof)
    assert not report.valid and report.checks["integrity"].passed is False
    assert not marker.exists()


def test_manifest_path_outside_the_proof(proof):
    m = json.loads((proof / pf.MANIFEST).read_text())
    m["files"]["../../etc/passwd"] = {"sha256": "0" * 64, "bytes": 10}
    (proof / pf.MANIFEST).write_bytes(manifest_bytes(m))
    done = cli(f"proof_dir={proof}")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: unsafe path in manifest") and "Traceback" not in done.stderr


def test_last_checkpoint_deleted(proof):
    (proof / pf.checkpoint_path(171)).unlink()
    report = verify_proof(proof)
    assert not report.valid and report.checks["integrity"].passed is False
    assert any("missing file: checkpoints/step-000000171" in p for p in report.checks["integrity"].problems)


def test_training_sample_changed_after_training(pristine, monkeypatch):
    import tests.unseen_project as project

    original = project.NoisyDigits.__init__

    def tampered(self, augment, every_rng=False):
        original(self, augment, every_rng)
        self.x[123, 0, 3, 3] += 0.25

    monkeypatch.setattr(project.NoisyDigits, "__init__", tampered)
    report = verify_proof(pristine, q=0)
    assert not report.valid
    assert report.checks["data"].passed is False
    assert report.checks["data"].mismatched_samples == [123]
    assert "123" in report.checks["data"].summary


def test_learning_rate_that_differs_from_the_declared_schedule(proof):
    reader = ProofReader(proof)
    entry = next(c for c in reader.checkpoints if c.step == 64)
    state = reader.load_checkpoint(entry)
    state["optimizers"][0]["param_groups"][0]["lr"] *= 1e-6  # a "tiny learning rate" that was never declared
    write_checkpoint(proof, entry.path, state)
    report = verify_proof(proof, q=1, random=0)
    assert not report.valid
    check = report.checks["hyperparameters"]
    assert check.passed is False and "checkpoint 64" in check.problems[0]


def test_full_data_flag_recomputes_every_leaf(pristine, monkeypatch):
    import tests.unseen_project as project

    original = project.NoisyDigits.__init__

    def tampered(self, augment, every_rng=False):
        original(self, augment, every_rng)
        self.y[1500] = (self.y[1500] + 1) % 10

    report = verify_proof(pristine, q=1, random=0, full_data=True)
    assert report.valid and report.checks["data"].full_dataset
    monkeypatch.setattr(project.NoisyDigits, "__init__", tampered)
    report = verify_proof(pristine, q=1, random=0, full_data=True)
    assert report.checks["data"].mismatched_samples == [1500]
    assert "Merkle root differs" in " ".join(report.checks["data"].problems)


def test_another_thread_count_is_reported_and_tolerant_mode_accepts_within_delta(pristine):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = verify_proof(pristine, q=1, random=0, match_threads=False, mode="auto", delta={"l2": 0.05, "linf": 0.05})
    finally:
        torch.set_num_threads(threads)
    if threads == 1:
        pytest.skip("the proof was made with one thread; nothing differs")
    assert report.environment["matches"] is False
    assert "torch_threads" in report.environment["differences"]
    assert report.mode["effective"] == "tolerant"
    assert report.valid, report.summary()
    # another thread count sums in another order: real hardware noise, so not bit-exact
    assert not all(s.bit_exact for s in report.segments)
    assert all(0 <= s.distances["l2"] <= 0.05 for s in report.segments)
    with pytest.raises(Exception, match="tolerant mode needs"):
        verify_proof(pristine, mode="tolerant")


# -- segment selection -----------------------------------------------------------------------

def test_random_segments_are_unpredictable_and_their_detection_probability_is_stated(pristine):
    a = verify_proof(pristine, q=1, random=1)
    b = verify_proof(pristine, q=1, random=1)
    assert a.valid and b.valid
    assert a.selection["seed"] != b.selection["seed"]  # drawn from the OS, not fixed
    # 22 segments: epoch 0 has 8 (top-Q takes one, 7 left for one random pick), epochs 1 and 2 have 7 each
    assert a.selection["detection_probability_one_fake_per_epoch"] == pytest.approx({0: 1 / 7, 1: 1 / 6, 2: 1 / 6})
    picks = {tuple(s.start_step for s in selected_segments(pristine, q=1, random=1, seed=seed)) for seed in range(10)}
    assert len(picks) > 1  # the seed decides which segments are replayed


def selected_segments(proof: Path, q: int, random: int, seed: int) -> list:
    """The segments the verifier selects with these settings (from the proof's real update magnitudes), without replaying them."""
    from lightning_pol.verification.replay import PoLVerifierModule
    from lightning_pol.verification.selection import select_segments

    reader = ProofReader(proof)
    models = {c.step: reader.load_checkpoint(c)["model"] for c in reader.checkpoints}
    segments, _ = select_segments(sorted(models), PoLVerifierModule(reader).step_epoch,
                                  lambda a, b: distances(models[a], models[b])["l2"], q, random, seed)
    return segments


def test_detection_probability_of_random_segments():
    from lightning_pol.verification.selection import detection_probability

    assert detection_probability(10, 3, 2) == pytest.approx(1 - 56 / 120)  # 1 - C(8,3)/C(10,3)
    assert detection_probability(7, 1, 1) == pytest.approx(1 / 7)
    assert detection_probability(5, 5, 1) == 1.0 and detection_probability(5, 4, 2) == 1.0
    assert detection_probability(5, 0, 1) == 0.0 and detection_probability(5, 2, 0) == 0.0


# -- checks that no replayed segment would catch -------------------------------------------------

def _unreplayed_step(proof: Path, report) -> int:
    replayed = {t for s in report.segments for t in range(s.start_step, s.end_step)}
    return next(t for t in range(1, 50) if t not in replayed)


def test_a_duplicated_index_in_a_step_that_is_never_replayed_is_rejected(proof):
    honest = verify_proof(proof, q=1, random=0)
    assert honest.valid and honest.checks["data"].permutation["passed"]
    t = _unreplayed_step(proof, honest)
    log = ProofReader(proof).index_log()
    idx = log.indices.clone()
    idx[int(log.offsets[t])] = idx[int(log.offsets[t]) + 1]  # the sample twice in step t, another sample never in epoch 0
    (proof / pf.INDEX_LOG_FINAL).write_bytes(safetensors_bytes(dict(log.to_tensors(), indices=idx)))
    relist(proof, pf.INDEX_LOG_FINAL)
    report = verify_proof(proof, q=1, random=0)
    assert [(s.start_step, s.end_step) for s in report.segments] == [(s.start_step, s.end_step) for s in honest.segments]
    assert report.checks["replay"].passed is True  # the replayed segments are untouched
    assert not report.valid and report.checks["data"].passed is False
    assert report.checks["data"].permutation["epochs_not_permutations"] == [0]


def test_leaves_that_do_not_hash_to_the_committed_root_are_rejected_by_the_default_verifier(proof):
    honest = verify_proof(proof, q=1, random=0)
    log = ProofReader(proof).index_log()
    replayed = {int(i) for s in honest.segments for t in range(s.start_step, s.end_step) for i in log.step(t).tolist()}
    sample = next(i for i in range(1797) if i not in replayed)  # its leaf is never recomputed from the data
    leaves = ProofReader(proof).leaves().clone()
    leaves[sample, 0] ^= 1
    (proof / pf.LEAVES).write_bytes(safetensors_bytes({pf.LEAVES_KEY: leaves}))
    relist(proof, pf.LEAVES)
    report = verify_proof(proof, q=1, random=0)
    assert not report.valid and report.checks["data"].passed is False
    assert report.checks["data"].mismatched_samples == []
    assert "the leaves do not hash to the committed Merkle root" in report.checks["data"].problems


@pytest.mark.parametrize("what", ["optimizer", "rng"])
def test_a_final_checkpoint_with_only_its_optimizer_or_rng_state_changed_fails_its_segment(proof, what):
    reader = ProofReader(proof)
    entry = reader.checkpoints[-1]
    state = reader.load_checkpoint(entry)
    if what == "optimizer":
        moments = state["optimizers"][0]["state"][0]["exp_avg"].clone()
        moments.reshape(-1)[0] += 1e-3
        state["optimizers"][0]["state"][0]["exp_avg"] = moments
    else:
        rng = state["rng"]["torch"].clone()
        rng[100] ^= 1
        state["rng"]["torch"] = rng
    write_checkpoint(proof, entry.path, state)
    segments = len(reader.checkpoints) - 1
    report = verify_proof(proof, q=0, num_shards=segments, shard=segments - 1)  # this shard replays the last segment only
    assert [(s.start_step, s.end_step) for s in report.segments] == [(168, 171)]
    assert not report.valid and report.checks["replay"].failed == [[168, 171]]
    assert report.segments[0].distances["l2"] == 0.0  # the weights replay exactly: only the other state differs


# -- exit codes: a verdict comes from the checks, "bad input" from PoLErrors, anything else is a crash -------------

def test_the_verifier_module_built_directly_runs_the_class_gate(proof, tmp_path):
    """PoLVerifierModule(reader), as its docstring shows it, refuses a hostile class before creating anything."""
    from lightning_pol import PoLError, PoLVerifierModule

    marker = tmp_path / "canary"
    m = json.loads((proof / pf.MANIFEST).read_text())
    m["module"] = {"class": "subprocess:Popen", "hparams": {"args": [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]}}
    (proof / pf.MANIFEST).write_bytes(manifest_bytes(m))
    with pytest.raises(PoLError) as refused:
        PoLVerifierModule(ProofReader(proof))
    assert str(refused.value) == "the proof's module 'subprocess:Popen' is not a lightning.pytorch.core.module.LightningModule"
    assert "\n" not in str(refused.value) and not marker.exists()


def _boom(*args, **kwargs):
    raise RuntimeError("an injected verifier bug")


@pytest.mark.parametrize("where", [
    "lightning_pol.verification.data_check.permutation_check",
    "lightning_pol.verification.verifier.select_segments",
    "lightning_pol.verification.hyperparameters._simulate_schedule",
    "lightning_pol.verification.segments.Judge.__call__",  # runs inside the replay's Lightning fit
    "lightning_pol.verification.replay.EmulatedRanks.batch_start",  # the replay callback's own code
])
def test_a_bug_in_a_check_is_a_crash_not_a_verdict_nor_bad_input(pristine, tmp_path, monkeypatch, capsys, where):
    import importlib

    from lightning_pol.apps.verify import ERROR, verify_with
    from lightning_pol.verification.settings import VerifierSettings

    module, _, name = where.rpartition(".")
    owner = importlib.import_module(module) if not module.endswith(("Judge", "EmulatedRanks")) else getattr(
        importlib.import_module(module.rpartition(".")[0]), module.rpartition(".")[2])
    monkeypatch.setattr(owner, name, _boom)
    code = verify_with(VerifierSettings(q=1, random=0), pristine, tmp_path / "verification.json")
    err = capsys.readouterr().err
    assert code == 3, err[-2000:]
    assert "Traceback" in err and "RuntimeError: an injected verifier bug" in err
    assert err.strip().splitlines()[-1].startswith("error: crash: ")
    assert not (tmp_path / "verification.json").exists()
    assert json.loads((tmp_path / ERROR).read_text())["exit_code"] == 3


def _edit_manifest(proof: Path, edit) -> None:
    m = json.loads((proof / pf.MANIFEST).read_text())
    edit(m)
    (proof / pf.MANIFEST).write_bytes(manifest_bytes(m))


def _int_weight(proof: Path) -> None:
    """A checkpoint whose weight is int64 (same shape), re-signed: found by the fuzz campaign (dtype_shape)."""
    reader = ProofReader(proof)
    entry = reader.checkpoints[-1]
    state = reader.load_checkpoint(entry)
    key = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"] = {**state["model"], key: state["model"][key].round().to(torch.int64)}
    write_checkpoint(proof, entry.path, state)


def _lucky_init_that_lowers_alpha(proof: Path) -> None:
    """Trained weights as W_0, and init params that would set the KS test's own alpha to nothing."""
    ms = models(proof)
    rewrite_model(proof, 0, ms[max(ms)])
    _edit_manifest(proof, lambda m: m["init"].update(params={"alpha": 1e-300, "bonferroni": False}))


@pytest.mark.parametrize("tamper, reason", [
    (lambda p: _edit_manifest(p, lambda m: m["training"].update(precision="bogus")), "Lightning, given the proof's training settings, raised"),
    (lambda p: _edit_manifest(p, lambda m: m.update(sample_epochs=[[0, 0], [999999, 1]])), "sample_epochs starts a run at step 999999"),
    (_lucky_init_that_lowers_alpha, "takes no parameter(s) ['alpha', 'bonferroni']"),
    (_int_weight, "segment 168->171 does not replay: net.0.weight is torch.float32 [16, 1, 3, 3] and torch.int64 [16, 1, 3, 3]"),
], ids=["precision", "sample-epochs-past-the-end", "init-params-set-alpha", "int-weight"])
def test_hostile_values_that_reached_the_verifiers_own_code_are_verdicts(proof, tmp_path, capsys, tamper, reason):
    """Found by review and by the fuzz campaign once a verifier bug became exit 3: each ended in a traceback."""
    from lightning_pol.apps.verify import verify_with
    from lightning_pol.verification.settings import VerifierSettings

    tamper(proof)
    code = verify_with(VerifierSettings(q=0), proof, tmp_path / "verification.json")
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in err, err[-2000:]
    assert reason in out


@pytest.mark.parametrize("setting, message", [
    ({"delta": {"l2": "abc"}}, "delta must be numbers >= 0"), ({"seed": "abc"}, "seed must be an integer"),
    ({"accelerator": "bogus"}, "accelerator must be one of"), ({"q": 1.5}, "bad verifier settings"),
    ({"mode": "lenient"}, "mode must be auto, exact or tolerant"), ({"delta": {"l7": 1.0}}, "unknown metrics ['l7']"),
])
def test_bad_settings_are_refused_when_built(setting, message):
    from lightning_pol import PoLError, VerifierSettings

    with pytest.raises(PoLError, match=re.escape(message)):
        VerifierSettings(**setting)
