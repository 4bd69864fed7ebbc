"""Proofs on object storage and in experiment trackers (issue 33), against a real S3 server (SeaweedFS ``weed mini``).

Training runs as a user runs it: in its own process, the endpoint and keys only in fsspec's environment
configuration (``FSSPEC_S3_*``), Lightning's own checkpoints on the local disk, the proof at an ``s3://`` URL.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_pol.format import layout
from lightning_pol.format.checkpoint import checkpoint_bytes
from lightning_pol.format.reader import ProofReader
from lightning_pol.format.storage import ProofStorageError, open_store
from lightning_pol.format.writer import rewrite_manifest_json
from lightning_pol.verification.verifier import verify_proof

REPO = Path(__file__).resolve().parents[1]


def _env(server, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FSSPEC_", "AWS_"))}
    # MLflow 3 keeps its file store (what the issue names) behind this switch
    return {**env, **server.env(), "PYTHONPATH": str(REPO), "MLFLOW_ALLOW_FILE_STORE": "true", **extra}


def _train(server, root: Path, url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    root.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "tests.object_store_target", str(root), url, *args], cwd=root,
                          env=_env(server), capture_output=True, text=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def _store(server, url: str):
    return open_store(url, server.storage_options())


def _only_unlisted(problems: list[str]) -> bool:
    """What the manifest lists is there and whole; objects written after its last commit are not part of the proof."""
    return all(p.startswith("unlisted file: ") for p in problems)


def _exact(report) -> bool:
    return bool(report.segments) and all(s.bit_exact for s in report.segments)


@pytest.fixture(scope="module")
def s3_proof(s3_server, tmp_path_factory):
    """Acceptance 1's run: 4 epochs, k = 8, augmentation workers, an MLflow logger given the proof (``log_proof``)."""
    root = tmp_path_factory.mktemp("s3-run1")
    url = "s3://proofs/run1/proof"
    done = _train(s3_server, root, url, "--logger", "mlflow", "--log-proof", "true")
    return root, url, json.loads(done.stdout.strip().splitlines()[-1])


def test_proof_on_s3_is_on_the_server_only_and_verifies_bit_exact_from_the_cli(s3_server, s3_proof, monkeypatch):
    """Acceptance 1 (and 5, MLflow): the proof is on the server and nowhere on local disk; the CLI verifies the URL:
    valid, every segment bit-exact; ``tracker=mlflow`` logs the report and the verdict to the run of the proof."""
    root, url, out = s3_proof
    on_server = _store(s3_server, url).files()
    assert layout.MANIFEST in on_server and sum(f.startswith(layout.CHECKPOINT_DIR) for f in on_server) == 30
    local = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    assert not any(p.endswith((layout.MANIFEST, ".safetensors")) and "mlruns" not in p for p in local), local
    assert not (root / "s3:").exists() and all(p.startswith(("ckpt/", "mlruns/")) for p in local), local[:10]

    done = subprocess.run([sys.executable, "-m", "lightning_pol.verify", "proof_dir=s3://proofs/run1/proof", "verifier.q=0", "tracker=mlflow",
                           f"tracker.tracking_uri=file:{root}/mlruns", f"hydra.run.dir={root}/verify"],
                          cwd=root, env=_env(s3_server), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((root / "verify" / "verification.json").read_text())
    assert report["valid"] and report["proof_dir"] == url and report["proof_identity"] == out["identity"]
    assert len(report["segments"]) == 29 and all(s["bit_exact"] for s in report["segments"])

    from mlflow.tracking import MlflowClient  # read back through MLflow's own API

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=f"file:{root}/mlruns")
    run = client.get_run(out["tracker_run"])
    assert run.data.tags["lightning_pol.identity"] == out["identity"]
    assert run.data.tags["lightning_pol.verdict"] == "valid" and run.data.metrics["lightning_pol.valid"] == 1.0
    names = {a.path for a in client.list_artifacts(run.info.run_id, "proof-of-learning")}
    assert names == {"proof-of-learning/manifest.json", "proof-of-learning/proof.json", "proof-of-learning/verification.json"}
    fetched = Path(client.download_artifacts(run.info.run_id, "proof-of-learning", str(root / "fetched")))
    assert layout.sha256_bytes((fetched / "manifest.json").read_bytes()) == out["identity"]
    assert json.loads((fetched / "verification.json").read_text())["valid"] is True


def test_a_changed_checkpoint_object_resealed_in_the_manifest_is_rejected(s3_server, s3_proof, tmp_path):
    """Acceptance 2: step 16's checkpoint object rewritten on the server (a weight moved), its digests resealed."""
    _, url, _ = s3_proof
    forged_url = "s3://proofs/forged/proof"
    fs = s3_server.filesystem()
    fs.copy("proofs/run1/proof", "proofs/forged/proof", recursive=True)
    reader = ProofReader(forged_url, s3_server.storage_options())
    index = next(i for i, c in enumerate(reader.checkpoints) if c.step == 16)
    entry = reader.checkpoints[index]
    state = reader.load_checkpoint(entry)
    weight = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][weight] = state["model"][weight] + 1e-3
    data = checkpoint_bytes(state)

    def reseal(m):
        m["checkpoints"][index]["sha256"] = layout.sha256_bytes(data)

    rewrite_manifest_json(_store(s3_server, forged_url), reseal, {entry.path: data})
    report = verify_proof(_store(s3_server, forged_url), q=0)
    assert report.checks["integrity"].passed, report.reasons
    assert not report.valid
    failed = [(s.start_step, s.end_step) for s in report.segments if not s.passed]
    assert failed == [(8, 16), (16, 24)], failed
    # An object grown behind the manifest's back is refused by its listed size before a byte of it is read.
    listed = reader.manifest.files[layout.LEAVES].bytes
    fs.pipe_file(f"proofs/forged/proof/{layout.LEAVES}", b"x" * (listed + 4096))
    problems = ProofReader(forged_url, s3_server.storage_options()).verify_files()
    assert problems == [f"{layout.LEAVES} is larger than allowed ({listed + 4096} > {listed} bytes)"], problems


def test_a_run_killed_after_lightnings_second_checkpoint_resumes_into_one_valid_proof(s3_server, tmp_path):
    """Acceptance 3: SIGKILL after Lightning's checkpoints of steps 20 and 40 (local last.ckpt), resumed from it."""
    url = "s3://proofs/run3/proof"
    killed = _train(s3_server, tmp_path, url, "--kill-at-step", "45", "--epochs", "1", check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    partial = ProofReader(url, s3_server.storage_options())
    assert partial.manifest.status == layout.STATUS_IN_PROGRESS and _only_unlisted(partial.verify_files())
    s3_server.filesystem().pipe_file("proofs/run3/proof/checkpoints/stray copy.bin", b"x")  # a key no proof would name
    _train(s3_server, tmp_path, url, "--resume", "--epochs", "1")
    reader = ProofReader(url, s3_server.storage_options())
    assert reader.manifest.run_id == partial.manifest.run_id and reader.manifest.final_step == 57
    assert not (tmp_path / "s3:").exists()
    report = verify_proof(_store(s3_server, url), q=0)
    assert report.valid and _exact(report), report.reasons
    assert report.checks["integrity"].unlisted == []


def test_the_server_stopped_during_training_stops_fit_in_one_line_and_the_run_resumes_valid(s3_server, tmp_path):
    """Acceptance 4: the server goes away mid-run; fit stops with one line naming the URL; what was committed reads
    clean; the server comes back and the run resumed from Lightning's last checkpoint completes a valid proof."""
    url = "s3://proofs/run4/proof"
    fs = s3_server.filesystem()
    proc = subprocess.Popen([sys.executable, "-m", "tests.object_store_target", str(tmp_path), url, "--slow", "--epochs", "1"], cwd=tmp_path,
                            env=_env(s3_server), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "ckpt" / "last.ckpt").exists() or not fs.exists("proofs/run4/proof/checkpoints/step-000000040.safetensors"):
            assert proc.poll() is None and time.monotonic() < deadline, "training ended before the server could be stopped"
            time.sleep(0.2)
            fs.invalidate_cache()
        s3_server.stop()
        t0 = time.monotonic()
        out, err = proc.communicate(timeout=300)
        stopped_after = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        s3_server.start()
    assert proc.returncode == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: cannot write s3://proofs/run4/proof/") and "\n" not in last, err[-2000:]
    print(f"fit stopped {stopped_after:.1f} s after the server did: {last}")
    committed = ProofReader(url, s3_server.storage_options())
    assert committed.manifest.status == layout.STATUS_IN_PROGRESS and _only_unlisted(committed.verify_files())
    _train(s3_server, tmp_path, url, "--resume", "--epochs", "1")
    report = verify_proof(_store(s3_server, url), q=0)
    assert report.valid and _exact(report), report.reasons
    assert ProofReader(url, s3_server.storage_options()).manifest.final_step == 57


def test_an_interrupted_upload_leaves_no_object_and_a_train_app_url_is_not_a_local_directory(s3_server, tmp_path):
    """A write that fails part-way is discarded, never completed under its final name; ``python -m lightning_pol.train
    pol.dirpath=s3://...`` writes the proof to the server (a relative dirpath is the run directory's, a URL is not)."""
    store = _store(s3_server, "s3://proofs/interrupted")

    def parts():
        yield b"x" * 1000
        raise OSError("the disk under the state went away")

    with pytest.raises(ProofStorageError, match=r"^cannot write s3://proofs/interrupted/checkpoints/step-000000008.safetensors \("):
        store.write("checkpoints/step-000000008.safetensors", parts())
    assert store.files() == []
    done = subprocess.run([sys.executable, "-m", "lightning_pol.train", "pol.dirpath=s3://proofs/app/proof", "pol.every_n_steps=8",
                           "trainer.max_steps=16", "verify=true", f"hydra.run.dir={tmp_path}/run"],
                          cwd=tmp_path, env=_env(s3_server), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "proof: s3://proofs/app/proof" in done.stdout and "VALID" in done.stdout
    assert layout.MANIFEST in _store(s3_server, "s3://proofs/app/proof").files()
    assert not [p for p in tmp_path.rglob("*") if p.name in ("s3:", layout.MANIFEST)]


def test_a_parent_path_the_proof_names_is_followed_only_on_the_childs_own_filesystem():
    """A hostile child proof cannot make the verifier fetch from a server of its choosing, nor chain filesystems."""
    from types import SimpleNamespace

    from lightning_pol.verification.chain import _may_follow

    local = SimpleNamespace(local_root=Path("/proofs/child"), store=SimpleNamespace(location="/proofs/child"))
    remote = SimpleNamespace(local_root=None, store=SimpleNamespace(location="s3://proofs/child"))
    assert _may_follow("/proofs/parent", local) and _may_follow("s3://proofs/parent", remote)
    assert not _may_follow("http://169.254.169.254/latest", local) and not _may_follow("s3://proofs/parent", local)
    assert not _may_follow("gs://elsewhere/parent", remote) and not _may_follow("zip://a::s3://proofs/p", remote)
    with pytest.raises(ProofStorageError, match="chained URL"):
        open_store("zip://a::s3://proofs/p")


def test_a_trusted_root_is_read_from_a_url(s3_server, tmp_path, monkeypatch, capsys):
    """``roots add s3://...``: the registry records the URL, and the verifier reads the root's tensors from it."""
    import fsspec
    from safetensors.torch import save

    from lightning_pol.apps.roots import run
    from lightning_pol.format.pretrained import WeightsFileError, read_weights
    from lightning_pol.verification.registry import Registry

    monkeypatch.setitem(fsspec.config.conf, "s3", s3_server.storage_options())  # what FSSPEC_S3_* say in a fresh process
    data = save({"backbone.weight": torch.arange(6.0).reshape(2, 3), "backbone.bias": torch.zeros(2)})
    s3_server.filesystem().pipe_file("proofs/models/base.safetensors", data)
    url = "s3://proofs/models/base.safetensors"
    assert run(["add", url, "--name", "base", "--registry", str(tmp_path / "registry.db")]) == 0
    (root,) = Registry(tmp_path / "registry.db").roots()
    assert root["path"] == url and root["sha256"] == layout.sha256_bytes(data)
    digest, tensors = read_weights(root["path"])  # what the verifier's pretrained check calls with a root's path
    assert digest == root["sha256"] and torch.equal(tensors["backbone.weight"], torch.arange(6.0).reshape(2, 3))
    with pytest.raises(WeightsFileError, match=r"^cannot read weights file s3://proofs/models/gone.safetensors: missing file"):
        read_weights("s3://proofs/models/gone.safetensors")


def test_a_url_without_its_filesystem_or_server_is_refused_in_one_line(tmp_path, s3_server):
    """Nothing is written where the user did not ask: an unknown protocol is refused when the callback is built, a
    server that cannot be reached when the proof is opened (naming the URL); the verifier says no proof is there."""
    from lightning_pol import ProofOfLearning

    with pytest.raises(ProofStorageError, match="nosuchfs://"):
        ProofOfLearning("nosuchfs://bucket/proof")
    down = open_store("s3://proofs/x", {"endpoint_url": "http://127.0.0.1:9", "key": "k", "secret": "s",
                                        "config_kwargs": {"retries": {"max_attempts": 1}}})
    with pytest.raises(ProofStorageError, match=r"^cannot list s3://proofs/x \("):
        down.files()
    from lightning_pol.apps.verify import verify_and_report
    from lightning_pol.errors import PoLError
    from lightning_pol.verification.settings import VerifierSettings

    with pytest.raises(PoLError, match="^no proof directory at s3://proofs/nothing-here$"):
        verify_and_report(VerifierSettings(), "s3://proofs/nothing-here", tmp_path / "v" / "verification.json", s3_server.storage_options())
    assert not any(tmp_path.glob("s3*"))


def _wandb_records(run_dir: Path):
    """The records of an offline W&B run, read with W&B's own protobuf (its file is LevelDB's log format)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, buf = next(run_dir.glob("run-*.wandb")).read_bytes(), 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if n == 0 and kind == 0:
            pos += left - 7
            continue
        buf, pos = buf + data[pos:pos + n], pos + n
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def test_wandb_offline_gets_the_whole_proof_and_the_verdict(tmp_path, monkeypatch):
    """Acceptance 5 (W&B): ``log_proof="all"`` with a WandbLogger in offline mode gives its run every file of the
    proof; ``tracker=wandb`` resumes that run with the verdict; both read back from W&B's own run files."""
    from omegaconf import OmegaConf

    from lightning_pol.apps.verify import verify_and_report
    from lightning_pol.verification.settings import VerifierSettings

    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    root = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "tests.object_store_target", str(root), str(root / "proof"), "--epochs", "1",
                           "--logger", "wandb", "--log-proof", "all"], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    tracker = OmegaConf.create({"kind": "wandb", "project": "pol", "run_id": out["tracker_run"], "entity": None,
                                "dir": str(root), "mode": "offline"})
    assert verify_and_report(VerifierSettings(q=1), root / "proof", tmp_path / "verification.json", None, tracker) == 0

    runs = sorted((root / "wandb").glob(f"offline-run-*-{out['tracker_run']}"))
    assert len(runs) == 2  # the training run, and the verifier's resumption of it
    artifacts = [r.artifact for r in _wandb_records(runs[0]) if r.WhichOneof("record_type") == "artifact"]
    (proof_artifact,) = [a for a in artifacts if a.type == "proof-of-learning"]
    logged = {c.path for c in proof_artifact.manifest.contents}
    listed = set(ProofReader(root / "proof").manifest.files)
    assert logged == listed | {layout.MANIFEST, "proof.json"}
    assert json.loads(proof_artifact.metadata)["identity"] == out["identity"]
    summary = {u.key: json.loads(u.value_json) for r in _wandb_records(runs[1]) if r.WhichOneof("record_type") == "summary"
               for u in r.summary.update if u.key}
    assert summary["lightning_pol.verdict"] == "valid" and summary["lightning_pol.identity"] == out["identity"]
    (verdict_artifact,) = [r.artifact for r in _wandb_records(runs[1]) if r.WhichOneof("record_type") == "artifact"]
    assert json.loads(verdict_artifact.metadata) == {"verdict": "valid", "identity": out["identity"]}
