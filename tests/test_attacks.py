"""The red-team suite, fast: every spoof is complete and self-consistent, aims at W_T, and the default verifier rejects it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_pol import ProofReader
from lightning_pol.attacks import ATTACKS

REPO = Path(__file__).resolve().parents[1]

#: The check each attack must be caught by under the default (exact) verifier.
EXPECTED = {
    "retraining": "replay",
    "structurally_correct": "replay",
    "infinitesimal_update": "replay",
    "blindfold_topq": "replay",
    "adversarial_examples": "data",
    "lucky_init": "initialization",
    "stolen_finetune": "initialization",
    "stolen_as_root": "initialization",  # the root is not one the verifier trusts
    "lucky_init_pretrained": "initialization",  # W_0 claimed from a trusted root it is not
    "stolen_finetune_pretrained": "initialization",
    "data_substitution": "replay",
    "replay_aware": "code",  # the verifier has the victim's code: the attacker's module is not the file the proof records
}
#: Attacks that claim the victim's own final weights W_T (the others claim a model of their own).
CLAIM_W_T = ("retraining", "structurally_correct", "infinitesimal_update", "blindfold_topq", "adversarial_examples", "replay_aware")


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("attacks") / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_pol.attacks", f"hydra.run.dir={out}",
         "model.width=4", "trainer.max_epochs=2", "pol.every_n_steps=8",
         "attacks.detection_trials=3", "attacks.params.adversarial_examples.iterations=2",
         "attacks.params.infinitesimal_update.max_segments=200",
         "attacks.tolerant.delta={l2: 0.5}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    return out, proc


def rows(result: dict, part: str = "attacks") -> dict[str, dict]:
    table = result[part] if part == "attacks" else result[part]["attacks"]
    return {r["name"]: r for r in table}


def test_suite_rejects_every_attack_and_accepts_honest(suite):
    out, proc = suite
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "attacks.json").read_text())
    by_name = rows(result)
    assert list(by_name) == ["honest", *ATTACKS]
    assert by_name["honest"]["verdict"] == "accepted" and by_name["honest"]["failed_checks"] == []
    for name, check in EXPECTED.items():
        row = by_name[name]
        assert row["verdict"] == "rejected", name
        assert row["caught_by"] == check, (name, row["failed_checks"], row["reasons"])
        assert row["cost_ratio"] > 0
    markdown = (out / "attacks.md").read_text()
    assert all(f"| {name} |" in markdown for name in by_name)


def test_spoofs_are_complete_self_consistent_proofs(suite):
    """No spoof is a strawman: digests, format, index log and declared schedule all hold; only the checks named above fail."""
    out, _ = suite
    by_name = rows(json.loads((out / "attacks.json").read_text()))
    victim = ProofReader(out / "honest")
    w_t = victim.load_checkpoint(victim.checkpoints[-1])["model"]
    for name in ATTACKS:
        assert not {"integrity", "hyperparameters", "chain"} & set(by_name[name]["failed_checks"]), name
        spoof = ProofReader(out / "default" / name)
        assert spoof.verify_files() == [], name
        final = spoof.load_checkpoint(spoof.checkpoints[-1])["model"]
        if name in CLAIM_W_T:
            assert all(torch.equal(final[k], w_t[k]) for k in w_t), f"{name} does not end at W_T"
    # Zhang et al.'s rank-ordered W_0' passes the initialization test; only the data and replay catch it.
    assert by_name["adversarial_examples"]["failed_checks"] == ["data", "replay"]


def test_blindfold_fools_topq_and_random_segments_catch_it(suite):
    out, _ = suite
    d = rows(json.loads((out / "attacks.json").read_text()))["blindfold_topq"]["details"]
    assert d["topq"]["fooled"] and d["accepted_by_topq_only"]
    assert d["detection_probability"] == 1.0  # every segment outside the top-Q is fake
    assert d["empirical_detection_rate"] == 1.0 and d["trials"] == 3


def test_replay_aware_passes_its_own_code_and_fails_the_code_check(suite):
    """Issue 21, acceptance 3: the attacker's module under the victim's import path replays exactly; only the code check stops it."""
    out, _ = suite
    result = json.loads((out / "attacks.json").read_text())
    d = rows(result)["replay_aware"]["details"]
    assert d["attacker_code_report"]["verdict"] == "accepted" and d["attacker_code_report"]["bit_exact"] > 0
    assert d["attacker_code_match"]["verdict"] == "accepted"  # match: consistency, not honesty (the trust boundary)
    assert d["attacker_code_pinned"]["verdict"] == "rejected" and d["attacker_code_pinned"]["failed_checks"] == ["code"]
    assert "polvictim/model.py" in d["attacker_code_pinned"]["code_check"]
    assert d["victim_code_report"]["failed_checks"] == ["replay"]  # the honest module lands elsewhere
    assert "polvictim/model.py" in rows(result)["replay_aware"]["reasons"][0]
    assert "Trust boundary (replay_aware)" in (out / "attacks.md").read_text()
    assert rows(result, "tolerant")["replay_aware"]["verdict"] == "rejected"


def test_tolerance_reopens_the_infinitesimal_update(suite):
    """The same spoof design, planned under δ: tolerant mode accepts it, exact mode does not."""
    out, _ = suite
    result = json.loads((out / "attacks.json").read_text())
    tolerant = rows(result, "tolerant")
    inf = tolerant["infinitesimal_update"]
    assert not inf["details"]["capped"] and inf["details"]["spacing_l2"] < 0.5
    assert inf["verdict"] == "accepted", inf["reasons"]
    assert tolerant["honest"]["verdict"] == "accepted"
    for name in ("retraining", "structurally_correct", "adversarial_examples", "lucky_init", "stolen_finetune", "data_substitution",
                 "stolen_as_root", "lucky_init_pretrained", "stolen_finetune_pretrained"):
        assert tolerant[name]["verdict"] == "rejected", name
    from lightning_pol import verify_proof

    exact = verify_proof(out / "tolerant" / "infinitesimal_update", q=1, random=1, seed=0)
    assert not exact.valid and exact.checks["replay"].passed is False


def test_tiered_spoofs_are_rejected_and_topq_alone_catches_the_blindfold(tmp_path):
    """Issue 22: with tiered proofs (K = 8k here) a selected segment is replayed from the last full state, through the
    fakes before it: the blindfold spoof that fools top-Q's selection is caught by top-Q's replay alone (its
    honest segments start within spans it faked)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_pol.attacks", f"hydra.run.dir={tmp_path}", "model.width=4", "trainer.max_epochs=2",
         "pol.every_n_steps=8", "pol.full_every_n_steps=64", "attacks.names=[structurally_correct,blindfold_topq]",
         "attacks.detection_trials=2", "attacks.tolerant.enabled=false"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_name = rows(json.loads((tmp_path / "attacks.json").read_text()))
    assert by_name["honest"]["verdict"] == "accepted"
    assert [by_name[n]["caught_by"] for n in ("structurally_correct", "blindfold_topq")] == ["replay", "replay"]
    d = by_name["blindfold_topq"]["details"]
    assert d["topq"]["fooled"] and not d["accepted_by_topq_only"]  # selected as planned, rejected on replay
    for name in ("honest", "structurally_correct", "blindfold_topq"):
        proof = ProofReader(tmp_path / "default" / name if name != "honest" else tmp_path / "honest")
        assert proof.manifest.full_every_n_steps == 64 and not all(c.full for c in proof.checkpoints)


def test_unknown_attack_is_a_one_line_error(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "lightning_pol.attacks", f"hydra.run.dir={tmp_path}", "attacks.names=[nope]"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown attacks ['nope']")
    assert "Traceback" not in proc.stderr


def test_attack_config_states_real_arguments():
    import inspect

    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="attacks")
    assert list(cfg.attacks.names) == list(ATTACKS) and set(cfg.attacks.params) == set(ATTACKS)
    from omegaconf import OmegaConf

    for name, params in OmegaConf.to_container(cfg.attacks.params).items():
        signature = inspect.signature(ATTACKS[name]).parameters
        assert set(params) <= set(signature) - {"victim", "out"}, name
        for key, value in params.items():
            default = signature[key].default
            assert value == default or (isinstance(value, dict) and default is None), (name, key)
