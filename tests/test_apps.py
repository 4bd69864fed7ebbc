"""The Hydra apps: every config composes, train and verify run end to end, and a 2-shard multirun merges."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from lightning_pol import ProofReader, verify_proof
from lightning_pol.attestation.dsse import Envelope
from lightning_pol.attestation.statement import AttestedVerdict

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_train(*overrides: str, hydra_cfg: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=hydra_cfg)


@pytest.mark.parametrize("group", ["model", "data", "init", "trainer", "experiment"])
def test_every_option_of_every_group_composes(group):
    for name in options(group):
        cfg = compose_train(f"{group}={name}")
        assert cfg[group if group != "experiment" else "model"] is not None


def test_experiments_are_the_papers_settings():
    c10 = compose_train("experiment=paper_cifar10")
    assert c10.model.net == "resnet20" and c10.data.name == "cifar10" and c10.data.batch_size == 128
    assert (c10.model.momentum, c10.model.weight_decay, list(c10.model.milestones)) == (0.9, 1e-4, [100, 150])
    assert c10.trainer.max_epochs == 200
    c100 = compose_train("experiment=paper_cifar100")
    assert c100.model.net == "resnet50_cifar" and c100.data.name == "cifar100" and c100.model.num_classes == 100
    assert (c100.model.weight_decay, list(c100.model.milestones), c100.model.gamma) == (5e-4, [60, 120, 160], 0.2)


@pytest.mark.parametrize("launcher, target", [("local", "JoblibLauncher"), ("slurm", "SlurmLauncher")])
def test_launchers_compose(launcher, target):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="verify", overrides=["proof_dir=x", f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)


def run_app(app: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", f"lightning_pol.{app}", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("train") / "run"
    done = run_app("train", "trainer.max_epochs=2", "pol.every_n_steps=10", f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"proof: {run_dir / 'proof'}" in done.stdout
    return run_dir / "proof"


def test_train_app_proof_verifies_with_full_replay(trained):
    reader = ProofReader(trained)
    assert reader.manifest.module.import_path == "lightning_pol.zoo.digits_cnn:DigitsCNN"
    assert [c.step for c in reader.checkpoints] == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]
    report = verify_proof(trained, q=0)
    assert report.valid and all(s.bit_exact for s in report.segments)


def test_two_shard_joblib_multirun_merges_into_the_full_replay(trained, tmp_path):
    sweep = tmp_path / "sweep"
    done = run_app("verify", "--multirun", f"proof_dir={trained}", "verifier.q=0", "verifier.num_shards=2",
                   "verifier.shard=0,1", "hydra/launcher=local", f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr[-3000:]
    merged = json.loads((sweep / "verification.json").read_text())
    shards = [json.loads((sweep / str(i) / "verification.json").read_text()) for i in (0, 1)]
    assert merged["valid"] is True and all(not s["valid"] is False for s in shards)
    single = verify_proof(trained, q=0)
    assert [(s["start_step"], s["end_step"]) for s in merged["segments"]] == [(s.start_step, s.end_step) for s in single.segments]
    assert {s["selection"]["seed"] for s in shards} == {merged["selection"]["seed"]}
    assert len(shards[0]["segments"]) + len(shards[1]["segments"]) == len(merged["segments"])
    assert set(merged) == set(single.to_dict())
    assert "| verification.json |" in (sweep / "summary.md").read_text()


def test_sweep_over_q_gives_a_report_per_job_and_a_summary(trained, tmp_path):
    sweep = tmp_path / "sweep"
    key = tmp_path / "key.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True)
    done = run_app("verify", "--multirun", f"proof_dir={trained}", "verifier.q=1,2", "verifier.random=0", f"hydra.sweep.dir={sweep}",
                   f"attest.out={tmp_path / 'verdict.json'}", f"attest.key={key}")
    assert done.returncode == 2, done.stderr[-3000:]  # two verdicts, one attest.out: neither job attests, the merge says why
    assert not (tmp_path / "verdict.json").exists()
    assert "attest.out names one file, and this sweep merged 2 verifications" in (sweep / "summary.md").read_text()
    assert (sweep / "0" / "verification.json").exists() and (sweep / "1" / "verification.json").exists()
    summary = (sweep / "summary.md").read_text()
    assert summary.count("VALID") == 2 and "| 1 | 0 |" in summary and "| 2 | 0 |" in summary


def test_resnet20_on_fake_cifar10_with_kaiming_normal(tmp_path):
    run_dir = tmp_path / "run"
    done = run_app("train", "model=resnet20", "data=fake_cifar10", "init=kaiming_normal", "trainer.max_steps=12",
                   "pol.every_n_steps=4", "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    reader = ProofReader(run_dir / "proof")
    assert reader.manifest.init.strategy == "kaiming_normal"
    report = verify_proof(run_dir / "proof", q=1, random=1)
    assert report.checks["initialization"].passed is True
    assert report.valid, report.summary()


def test_ddp_train_app_through_hydra_verifies_right_after(tmp_path):
    """trainer=ddp_cpu: Lightning relaunches the Hydra app for rank 1; rank 0 writes a tiered proof, verifies it in full
    (through its digest-only checkpoint) and reports."""
    run_dir = tmp_path / "run"
    done = run_app("train", "trainer=ddp_cpu", "trainer.max_epochs=1", "pol.every_n_steps=8", "pol.full_every_n_steps=16",
                   "verify=true", "verifier.q=0", "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("verdict VALID") == 1
    reader = ProofReader(run_dir / "proof")
    assert reader.manifest.training["world_size"] == 2 and reader.manifest.final_step == 23  # 1,437 samples: 719 a rank
    # A tiered DDP proof: rank 0 writes the full states of 0, 16 and the end, and the digest of step 8.
    assert [(c.step, c.full) for c in reader.checkpoints] == [(0, True), (8, False), (16, True), (23, True)]
    assert json.loads((run_dir / "verification.json").read_text())["valid"] is True


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "a_file").write_text("not a directory")
    calls = {  # independent processes, run two at a time: each spends most of its seconds importing
        "missing": ("verify", f"proof_dir={tmp_path / 'missing'}", f"hydra.run.dir={tmp_path / 'v'}"),
        "no_data": ("train", "data=cifar10", "data.root=" + str(tmp_path / "nodata"), "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 't'}"),
        "commit": ("train", "pol.commit_every_s=-1", f"hydra.run.dir={tmp_path / 'c'}"),  # refused by the callback itself
        "not_dir": ("train", f"pol.dirpath={tmp_path / 'a_file' / 'proof'}", "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'd'}"),
        "delta": ("verify", f"proof_dir={tmp_path}", "verifier.delta.l2=abc", f"hydra.run.dir={tmp_path / 'e'}"),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(calls, pool.map(lambda args: run_app(*args), calls.values())))
    assert all(d.returncode == 2 and "Traceback" not in d.stderr for d in done.values()), {k: d.stderr[-500:] for k, d in done.items()}
    last = {k: d.stderr.strip().splitlines()[-1] for k, d in done.items()}
    assert last["missing"].startswith("error: no proof directory")
    assert "download" in last["no_data"]
    assert done["commit"].stderr.strip().splitlines() == ["error: commit_every_s must be a number of seconds >= 0, got -1"]
    assert last["not_dir"].startswith("error: [Errno") and "a_file" in done["not_dir"].stderr  # a path the system refuses: one line
    assert done["delta"].stderr.strip().splitlines() == ["error: delta must be numbers >= 0 per metric, not {'l2': 'abc'}"]


def _tampered_final(trained: Path, dest: Path) -> Path:
    """A copy of ``trained`` whose final checkpoint has one weight changed (re-signed): only the last segment fails."""
    import shutil

    from tests.conftest import write_checkpoint

    shutil.copytree(trained, dest)
    reader = ProofReader(dest)
    entry = reader.checkpoints[-1]
    state = reader.load_checkpoint(entry)
    key = next(k for k, v in state["model"].items() if v.is_floating_point() and v.numel() > 1)
    weights = state["model"][key].clone()
    weights.reshape(-1)[0] += 1e-3
    state["model"] = {**state["model"], key: weights}
    write_checkpoint(dest, entry.path, state)
    return dest


def test_two_shard_multirun_over_a_rejected_proof_merges_to_rejected(trained, tmp_path):
    """One shard replays the broken last segment, the other only honest ones: the merged verdict is the rejection."""
    proof = _tampered_final(trained, tmp_path / "proof")
    sweep = tmp_path / "sweep"
    key = tmp_path / "key.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True)
    done = run_app("verify", "--multirun", f"proof_dir={proof}", "verifier.q=0", "verifier.num_shards=2",
                   "verifier.shard=0,1", f"hydra.sweep.dir={sweep}", f"attest.out={tmp_path / 'verdict.json'}", f"attest.key={key}")
    assert done.returncode == 1, done.stderr[-3000:]
    attested = AttestedVerdict.parse(Envelope.parse((tmp_path / "verdict.json").read_bytes(), "v").statement("v"), "v")
    assert attested.result == "FAILED" and len(attested.extension["segments"]) == 9  # the merged verdict, not a shard's
    shards = [json.loads((sweep / str(i) / "verification.json").read_text()) for i in (0, 1)]
    assert sorted(s["valid"] for s in shards) == [False, True]  # the failure is in one shard only
    merged = json.loads((sweep / "verification.json").read_text())
    assert merged["valid"] is False and merged["checks"]["replay"]["passed"] is False
    assert merged["checks"]["replay"]["failed"] == [[80, 90]]
    assert "| verification.json |" in (sweep / "summary.md").read_text() and "INVALID" in (sweep / "summary.md").read_text()


def test_a_sweep_with_a_shard_missing_is_unusable(trained, tmp_path):
    sweep = tmp_path / "sweep"
    key = tmp_path / "key.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True)
    done = run_app("verify", "--multirun", f"proof_dir={trained}", "verifier.q=0", "verifier.num_shards=2",
                   "verifier.shard=0", f"hydra.sweep.dir={sweep}", f"attest.out={tmp_path / 'verdict.json'}", f"attest.key={key}")
    assert done.returncode == 2, done.stderr[-3000:]
    assert not (sweep / "verification.json").exists()
    assert not (tmp_path / "verdict.json").exists()  # a shard's partial verdict is never attested
    assert "shards [0] of 2 finished; cannot merge" in (sweep / "summary.md").read_text()
