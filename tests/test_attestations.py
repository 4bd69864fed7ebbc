"""Attested verdicts (issue 34), as a user makes and checks them: docs/attestations.md's commands, run here.

The envelope is checked the way someone without lightning-pol would: DSSE's PAE and the signature with
``cryptography`` alone (:func:`independent_dsse_check`, written here from the DSSE spec, none of the project's code).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lightning_pol.attestation.verdict import AttestSettings, attest_verdict
from lightning_pol.errors import PoLError
from tests.conftest import forge_checkpoint

REPO = Path(__file__).resolve().parents[1]
VSA = "https://slsa.dev/verification_summary/v1"
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="the keys are made with openssl, as users make them")


def cli(where: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m lightning_pol.<args[0]> <args[1:]>`` in ``where``, as a user runs it (this checkout's package first on
    the path: the one under test, also in the mutants' scratch copy)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", f"lightning_pol.{args[0]}", *args[1:]], cwd=where, capture_output=True, text=True,
                          timeout=timeout, env=env)


def run(where: Path, *command: str) -> subprocess.CompletedProcess:
    done = subprocess.run(list(command), cwd=where, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def independent_dsse_check(envelope_file: Path, public_pem: Path) -> dict:
    """The statement of a DSSE envelope whose signature ``public_pem`` made; raises InvalidSignature otherwise."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    envelope = json.loads(envelope_file.read_text())
    payload, kind = base64.b64decode(envelope["payload"]), envelope["payloadType"]
    pae = b"DSSEv1 " + str(len(kind.encode())).encode() + b" " + kind.encode() + b" " + str(len(payload)).encode() + b" " + payload
    key = serialization.load_pem_public_key(public_pem.read_bytes())
    (signature,) = envelope["signatures"]
    sig = base64.b64decode(signature["sig"])
    if isinstance(key, ed25519.Ed25519PublicKey):
        key.verify(sig, pae)
    else:
        key.verify(sig, pae, ec.ECDSA(hashes.SHA256()))
    assert kind == "application/vnd.in-toto+json"
    return json.loads(payload)


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    """docs/attestations.md's first block: train, make a key, export, verify with an attestation."""
    where = tmp_path_factory.mktemp("attest")
    trained = cli(where, "train", "trainer.max_epochs=1", "pol.every_n_steps=10", "hydra.run.dir=run")
    assert trained.returncode == 0, trained.stderr[-2000:]
    run(where, "openssl", "genpkey", "-algorithm", "ed25519", "-out", "ed25519.pem")
    run(where, "openssl", "pkey", "-in", "ed25519.pem", "-pubout", "-out", "ed25519.pub")
    from lightning_pol.apps.export import run as export  # the command's own function: its CLI runs in the ECDSA test

    assert export([str(where / "run/proof"), "--out", str(where / "published/model.safetensors")]) == 0
    verified = cli(where, "verify", "proof_dir=run/proof", "verifier.q=0", "attest.out=verdict.intoto.json", "attest.key=ed25519.pem",
                   "attest.model=published/model.safetensors", "report=verification.json")
    assert verified.returncode == 0, verified.stdout[-2000:] + verified.stderr[-2000:]
    assert "attestation: verdict.intoto.json (PASSED" in verified.stdout
    return where


def test_a_verified_proof_is_attested_passed_and_checks_out_without_lightning_pol(published):
    statement = independent_dsse_check(published / "verdict.intoto.json", published / "ed25519.pub")
    assert statement["_type"] == "https://in-toto.io/Statement/v1" and statement["predicateType"] == VSA
    p = statement["predicate"]
    identity = sha256(published / "run/proof/manifest.json")
    assert p["verificationResult"] == "PASSED" and p["resourceUri"].endswith(identity)
    assert {"name": "model.safetensors", "digest": {"sha256": sha256(published / "published/model.safetensors")}} in statement["subject"]
    assert {"name": "manifest.json", "digest": {"sha256": identity}} in statement["subject"]
    assert p["inputAttestations"][0]["digest"] == {"sha256": identity}
    assert p["verifier"]["id"].startswith("https://") and "lightning-pol" in p["verifier"]["version"]
    assert {"POL_REPLAY_EXACT", "POL_CHAIN_ROOTED", "POL_CODE_MATCHED", "POL_COVERAGE_FULL"} <= set(p["verifiedLevels"])
    assert not any(level.startswith("SLSA_") for level in p["verifiedLevels"])
    (extension,) = [v for k, v in p.items() if k.startswith("https://")]
    assert extension["coverage"]["replayed_steps"] == extension["coverage"]["total_steps"] > 0
    assert extension["segments"] and all(s["bit_exact"] for s in extension["segments"])
    policy_digest = __import__("hashlib").sha256(json.dumps(extension["policy"], sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert p["policy"]["digest"] == {"sha256": policy_digest}  # the policy a reader can recompute
    envelope = (published / "verdict.intoto.json").read_text()
    assert "PRIVATE" not in envelope and (published / "ed25519.pem").read_text().splitlines()[1] not in envelope


def test_the_docs_own_check_needs_nothing_of_lightning_pol(published):
    """docs/attestations.md's check with cryptography alone, run in a Python that cannot import lightning_pol."""
    (block,) = re.findall(r"```python\n(.*?)```", (REPO / "docs/attestations.md").read_text(), re.DOTALL)
    guard = "import sys; sys.modules['lightning_pol'] = None\n"  # any import of it fails
    done = subprocess.run([sys.executable, "-c", guard + block], cwd=published, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("PASSED ") and sha256(published / "published/model.safetensors") in done.stdout


def test_attest_verify_exits_0_1_and_2(published, tmp_path):
    ok = cli(published, "attest", "verify", "verdict.intoto.json", "--public-key", "ed25519.pub", "--model", "published/model.safetensors")
    assert ok.returncode == 0 and "PASSED" in ok.stdout, ok.stdout + ok.stderr
    model = bytearray((published / "published/model.safetensors").read_bytes())
    model[-1] ^= 1
    (tmp_path / "model.safetensors").write_bytes(model)
    run(tmp_path, "openssl", "genpkey", "-algorithm", "ed25519", "-out", "other.pem")
    run(tmp_path, "openssl", "pkey", "-in", "other.pem", "-pubout", "-out", "other.pub")
    envelope = json.loads((published / "verdict.intoto.json").read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["timeVerified"] = "2099-01-01T00:00:00Z"  # later, not re-signed
    (tmp_path / "later.json").write_text(json.dumps({**envelope, "payload": base64.b64encode(json.dumps(statement).encode()).decode()}))
    data = (published / "verdict.intoto.json").read_bytes()
    (tmp_path / "truncated.json").write_bytes(data[: len(data) // 2])
    attested = str(published / "verdict.intoto.json")
    for args in ([attested, "--public-key", "ed25519.pub", "--model", str(tmp_path / "model.safetensors")],
                 [attested, "--public-key", str(tmp_path / "other.pub")],
                 [str(tmp_path / "later.json"), "--public-key", "ed25519.pub"]):
        done = cli(published, "attest", "verify", *args)
        assert done.returncode == 1 and done.stdout.startswith("rejected: "), (args, done.stdout, done.stderr)
    (tmp_path / "surrogate.json").write_text('{"payloadType": "\\ud800", "payload": "", "signatures": [{"sig": ""}]}')
    for bad in ("truncated.json", "surrogate.json"):
        done = cli(published, "attest", "verify", str(tmp_path / bad), "--public-key", "ed25519.pub")
        assert done.returncode == 2 and done.stdout == "", (bad, done.stdout)
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, (bad, done.stderr)


def test_show_takes_a_hostile_statement_without_a_traceback(published, tmp_path):
    envelope = json.loads((published / "verdict.intoto.json").read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    (extension,) = [k for k in statement["predicate"] if k.startswith("https://")]
    statement["predicate"][extension] = {"proof": "x", "coverage": [1], "checks": [1], "segments": 5, "reasons": ["\x1b[2J"]}
    (tmp_path / "odd.json").write_text(json.dumps({**envelope, "payload": base64.b64encode(json.dumps(statement).encode()).decode()}))
    shown = cli(published, "attest", "show", str(tmp_path / "odd.json"))
    assert shown.returncode == 0 and "\x1b" not in shown.stdout, shown.stderr
    assert cli(published, "attest", "card", str(tmp_path / "odd.json")).returncode == 0


def test_levels_follow_the_segments_and_a_changed_proof_is_not_attested(published, tmp_path):
    from lightning_pol.attestation.statement import canonical, policy_of, verified_levels

    report = json.loads((published / "verification.json").read_text())
    assert "POL_REPLAY_EXACT" in verified_levels(report)
    report["segments"][1]["bit_exact"] = False  # a merged report whose other shard passed within delta
    assert "POL_REPLAY_TOLERANT" in verified_levels(report) and "POL_REPLAY_EXACT" not in verified_levels(report)
    assert canonical(policy_of({**report["settings"], "delta": {"l2": float("inf")}}, None))  # strict JSON
    report["proof_identity"] = "0" * 64  # the directory now holds another proof than the one verified
    attest = AttestSettings.from_config({"out": str(tmp_path / "v.json"), "key": str(published / "ed25519.pem")})
    with pytest.raises(PoLError, match="changed after it was verified"):
        attest_verdict({**report, "proof_dir": str(published / "run/proof")}, attest)
    assert not (tmp_path / "v.json").exists()


def test_attest_show_and_card(published):
    shown = cli(published, "attest", "show", "verdict.intoto.json")
    assert shown.returncode == 0 and "PASSED" in shown.stdout and "model.safetensors" in shown.stdout, shown.stderr
    card = cli(published, "attest", "card", "verdict.intoto.json")
    assert card.returncode == 0, card.stderr
    import yaml

    fields = yaml.safe_load(card.stdout.strip().strip("-"))["proof_of_learning"]
    assert fields["verdict"] == "PASSED" and fields["proof_identity"] == sha256(published / "run/proof/manifest.json")
    assert fields["attestation"]["sha256"] == sha256(published / "verdict.intoto.json")
    assert fields["models"] == [{"name": "model.safetensors", "sha256": sha256(published / "published/model.safetensors")}]


def test_export_is_byte_identical_and_loads_into_the_model(published, tmp_path):
    from lightning_pol.apps.export import run as export
    from lightning_pol.format.reader import ProofReader

    assert export([str(published / "run/proof"), "--out", str(tmp_path / "again.safetensors")]) == 0
    assert (tmp_path / "again.safetensors").read_bytes() == (published / "published/model.safetensors").read_bytes()
    reader = ProofReader(published / "run/proof")
    final = reader.load_checkpoint(reader.checkpoints[-1])["model"]
    exported = load_file(tmp_path / "again.safetensors")
    assert exported.keys() == final.keys() and all(torch.equal(exported[k], final[k]) for k in final)
    assert export([str(published / "run/proof"), "--out", str(tmp_path / "inner.safetensors"), "--key-prefix", "features."]) == 0
    inner = load_file(tmp_path / "inner.safetensors")
    assert inner and inner.keys() == {k[len("features."):] for k in final if k.startswith("features.")}


def test_a_forged_checkpoint_is_attested_failed(published, tmp_path):
    from lightning_pol.apps.verify import verify_and_report
    from lightning_pol.verification.settings import VerifierSettings

    proof = tmp_path / "proof"
    shutil.copytree(published / "run/proof", proof)
    forge_checkpoint(proof, 2, lambda s: s["model"][next(iter(s["model"]))].add_(1e-3))  # resealed in the manifest
    attest = AttestSettings.from_config({"out": str(tmp_path / "failed.json"), "key": str(published / "ed25519.pem")})
    code = verify_and_report(VerifierSettings(q=0), proof, tmp_path / "report.json", attest=attest)
    assert code == 1
    p = independent_dsse_check(tmp_path / "failed.json", published / "ed25519.pub")["predicate"]
    assert p["verificationResult"] == "FAILED" and p["verifiedLevels"] == []
    (extension,) = [v for k, v in p.items() if k.startswith("https://")]
    assert extension["checks"]["replay"]["passed"] is False


def test_an_ecdsa_key_signs_and_model_signing_accepts_the_exported_model(published, tmp_path):
    run(tmp_path, "openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ecdsa.pem")
    run(tmp_path, "openssl", "pkey", "-in", "ecdsa.pem", "-pubout", "-out", "ecdsa.pub")
    report = json.loads((published / "verification.json").read_text())
    report["proof_dir"] = str(published / "run/proof")
    attest = AttestSettings.from_config({"out": str(tmp_path / "ecdsa.intoto.json"), "key": str(tmp_path / "ecdsa.pem")})
    assert "PASSED" in attest_verdict(report, attest)
    statement = independent_dsse_check(tmp_path / "ecdsa.intoto.json", tmp_path / "ecdsa.pub")
    assert statement["predicate"]["verificationResult"] == "PASSED"
    checked = cli(tmp_path, "attest", "verify", "ecdsa.intoto.json", "--public-key", "ecdsa.pub")
    assert checked.returncode == 0, checked.stdout + checked.stderr

    shutil.copy(tmp_path / "ecdsa.pem", published / "ecdsa.pem")
    shutil.copy(tmp_path / "ecdsa.pub", published / "ecdsa.pub")
    signed = cli(published, "export", "run/proof", "--out", "published/model.safetensors", "--sign-key", "ecdsa.pem")
    assert signed.returncode == 0, signed.stderr
    model_signing = [sys.executable, "-m", "model_signing"]  # the model_signing command
    accepted = subprocess.run([*model_signing, "verify", "key", "published", "--signature", "published/model.sig", "--public_key", "ecdsa.pub"],
                              cwd=published, capture_output=True, text=True, timeout=120)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    (published / "published/model.safetensors").write_bytes(b"x" + (published / "published/model.safetensors").read_bytes()[1:])
    refused = subprocess.run([*model_signing, "verify", "key", "published", "--signature", "published/model.sig", "--public_key", "ecdsa.pub"],
                             cwd=published, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    from lightning_pol.apps.export import run as export

    assert export([str(published / "run/proof"), "--out", str(published / "published/model.safetensors")]) == 0  # restored
    with pytest.raises(PoLError, match="is inside .* whose every file the model signature lists"):
        export([str(published / "run/proof"), "--out", str(tmp_path / "model.safetensors"), "--sign-key", str(tmp_path / "ecdsa.pem")])
    assert not (tmp_path / "model.safetensors").exists()
    run(tmp_path, "openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-aes-256-cbc", "-pass", "pass:s3",
        "-out", "locked.pem")
    os.environ["LIGHTNING_POL_KEY_PASSWORD"] = "s3"
    try:
        assert export([str(published / "run/proof"), "--out", str(tmp_path / "out/model.safetensors"), "--sign-key", str(tmp_path / "locked.pem")]) == 0
    finally:
        del os.environ["LIGHTNING_POL_KEY_PASSWORD"]
    assert (tmp_path / "out/model.sig").exists()


@pytest.mark.parametrize("attest, fragment", [
    ({"out": "v.json"}, "attest.out needs attest.key=PEM"),
    ({"out": "v.json", "key": "missing.pem"}, "no private key at missing.pem"),
    ({"out": "v.json", "key": "ed25519.pub"}, "cannot be read (not a PEM private key"),
    ({"out": "v.json", "key": "rsa.pem"}, "is an RSA key, not Ed25519 or ECDSA P-256/P-384"),
    ({"out": "v.json", "key": "encrypted.pem"}, "is encrypted: set LIGHTNING_POL_KEY_PASSWORD to its password"),
    ({"out": "v.json", "key": "ed25519.pem", "model": "run/proof/manifest.json"}, "is not this proof's final model"),
    ({"key": "ed25519.pem"}, "need attest.out=FILE"),
    ({"out": "v.json", "key": "ed25519.pem", "key_prefix": "modle."}, "no tensor of the final model starts with 'modle.'"),
    ({"out": "v.json", "key": "/dev/zero"}, "private key /dev/zero is not a regular file"),
    ({"out": "ed25519.pub/v.json", "key": "ed25519.pem"}, "is not a writable directory"),
])
def test_a_wrong_attest_setting_is_one_line_before_any_replay(published, attest, fragment, monkeypatch):
    from lightning_pol.format.reader import ProofReader

    monkeypatch.chdir(published)
    monkeypatch.delenv("LIGHTNING_POL_KEY_PASSWORD", raising=False)
    if not (published / "rsa.pem").exists():
        run(published, "openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "rsa.pem")
        run(published, "openssl", "genpkey", "-algorithm", "ed25519", "-aes-256-cbc", "-pass", "pass:secret", "-out", "encrypted.pem")
    with pytest.raises(PoLError) as refused:
        settings = AttestSettings.from_config(attest)
        settings.check_model(ProofReader("run/proof"))
    assert fragment in str(refused.value) and "\n" not in str(refused.value)
    assert "BEGIN" not in str(refused.value)


def test_an_encrypted_key_signs_with_its_password_from_the_environment(published, monkeypatch, tmp_path):
    run(tmp_path, "openssl", "genpkey", "-algorithm", "ed25519", "-aes-256-cbc", "-pass", "pass:secret", "-out", "k.pem")
    monkeypatch.setenv("LIGHTNING_POL_KEY_PASSWORD", "secret")
    assert AttestSettings.from_config({"out": str(tmp_path / "v.json"), "key": str(tmp_path / "k.pem")}).key.scheme == "ed25519"
    monkeypatch.setenv("LIGHTNING_POL_KEY_PASSWORD", "wrong")
    with pytest.raises(PoLError, match="wrong password"):
        AttestSettings.from_config({"out": str(tmp_path / "v.json"), "key": str(tmp_path / "k.pem")})
