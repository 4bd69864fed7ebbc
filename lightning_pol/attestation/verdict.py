"""Attesting a verdict: the verify app's ``attest.*`` settings, and the one function that signs what a report says.

A rejected proof is attested ``FAILED``, never left unattested; only input the verifier could not use
(no report at all) leaves no attestation. The settings are checked, and the key read, before any replay:
a wrong key path is one line at once, not after an hour of verification.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lightning_pol.attestation.dsse import IN_TOTO, Envelope
from lightning_pol.attestation.keys import SigningKey
from lightning_pol.attestation.model_export import NoFinalModel, export_model
from lightning_pol.attestation.statement import MANIFEST_SUBJECT, canonical, policy_of, subject, vsa_statement
from lightning_pol.errors import PoLError, one_line
from lightning_pol.format import layout
from lightning_pol.format.reader import ProofReader
from lightning_pol.format.strict_json import ProofFormatError
from lightning_pol.format.storage import atomic_write
from lightning_pol.verification.pretrained_check import use_trusted_root
from lightning_pol.verification.registry import Registry

class ChangedProof(PoLError):
    """The proof read to export the model is not the one the report verified."""


#: The subject name of the model when ``attest.model`` does not name the published file.
DEFAULT_MODEL_NAME = "model.safetensors"


@dataclass(frozen=True)
class AttestSettings:
    """``attest.out`` (the envelope's path), ``attest.key`` (a PEM private key), and the published model:
    ``attest.model`` (the file ``python -m lightning_pol.export`` wrote, which must be this proof's export; its
    name becomes the subject's) and ``attest.key_prefix`` (the ``--key-prefix`` it was exported with)."""

    out: Path
    key: SigningKey
    model: Path | None = None
    key_prefix: str | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> AttestSettings | None:
        """From the verify app's ``attest`` node (a DictConfig or a dict); None when ``attest.out`` is not set."""
        from omegaconf import DictConfig, OmegaConf

        cfg = (OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg) or {}
        unknown = sorted(set(cfg) - {"out", "key", "model", "key_prefix"})
        if unknown:
            raise PoLError(f"unknown attest settings {unknown}; use attest.out, attest.key, attest.model, attest.key_prefix")
        if not cfg.get("out"):
            if cfg.get("key") or cfg.get("model"):
                raise PoLError("attest.key and attest.model need attest.out=FILE, where the attestation is written")
            return None
        if not cfg.get("key"):
            raise PoLError("attest.out needs attest.key=PEM, the private key that signs (openssl genpkey -algorithm ed25519 -out key.pem)")
        out, model = Path(str(cfg["out"])), cfg.get("model")
        if out.is_dir():
            raise PoLError(f"attest.out={out} is a directory: name the attestation's file (verdict.intoto.json)")
        existing = next(p for p in out.absolute().parents if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            raise PoLError(f"attest.out={out} cannot be written ({existing} is not a writable directory)")
        if model is not None and not Path(str(model)).is_file():
            raise PoLError(f"attest.model={model} is not a file: export it first (python -m lightning_pol.export PROOF --out {model})")
        return cls(out, SigningKey(str(cfg["key"])), None if model is None else Path(str(model)), cfg.get("key_prefix") or None)

    def check_model(self, reader: ProofReader) -> None:
        """Before the replay: the proof's model exports under ``attest.key_prefix``, and ``attest.model`` is that export
        (a proof whose final state cannot be read, or that has none, is left to the verifier, which rejects it)."""
        try:
            exported = export_model(reader, self.key_prefix).sha256
        except (ProofFormatError, NoFinalModel):
            return
        if self.model is not None:
            self.require_export(exported)

    def require_export(self, exported: str) -> None:
        """``attest.model`` must be the file whose SHA-256 is ``exported``, the proof's export."""
        assert self.model is not None
        if layout.sha256_file(self.model) != exported:
            prefix = f" --key-prefix {self.key_prefix}" if self.key_prefix else ""
            raise PoLError(f"attest.model={self.model} is not this proof's final model (python -m lightning_pol.export PROOF "
                           f"--out {self.model}{prefix} writes it; a --key-prefix needs attest.key_prefix too)")


def attest_verdict(report: dict[str, Any], attest: AttestSettings, storage_options: Mapping[str, Any] | None = None) -> str:
    """Sign ``report``'s verdict (``Report.to_dict()`` or a merged one) into ``attest.out``; returns a line saying so."""
    settings = report.get("settings", {})
    model = _model_subject(report, attest, storage_options)
    subjects = ([model] if model else []) + [subject(MANIFEST_SUBJECT, report["proof_identity"])]
    pin = settings.get("trusted_code")
    policy = policy_of(settings, layout.sha256_file(pin) if pin and settings.get("code") == "pinned" else None)
    time_verified = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    statement = vsa_statement(report, subjects, policy, time_verified)
    envelope = Envelope.sign(IN_TOTO, canonical(statement), attest.key)
    try:
        atomic_write(attest.out, envelope.to_json().encode())
    except OSError as e:
        raise PoLError(f"cannot write the attestation to {attest.out} ({e.strerror})") from None
    result = statement["predicate"]["verificationResult"]
    what = f"{model['name']} sha256:{model['digest']['sha256'][:16]}... and the manifest" if model else "the manifest only"
    return f"attestation: {attest.out} ({result}, {what}, signed by {attest.key.scheme} key {attest.key.key_id[:16]})"


def _model_subject(report: dict[str, Any], attest: AttestSettings, storage_options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The published model's subject: the proof's export (checked against ``attest.model``), or, for a proof whose
    final state cannot be read, the ``attest.model`` file as given: what the failed claim was about."""
    settings = report.get("settings", {})
    name = attest.model.name if attest.model is not None else DEFAULT_MODEL_NAME
    try:
        reader = ProofReader(report["proof_dir"], storage_options)
        if reader.identity != report["proof_identity"]:
            raise ChangedProof(f"the proof at {report['proof_dir']} changed after it was verified (its manifest's SHA-256 is "
                               f"{reader.identity[:16]}..., not {str(report['proof_identity'])[:16]}...): nothing is attested")
        registry = settings.get("registry")
        use_trusted_root(reader, Registry(registry) if registry else None, settings.get("roots"))
        exported = export_model(reader, attest.key_prefix).sha256
    except ChangedProof:
        raise
    except PoLError as e:
        if report.get("valid"):
            raise PoLError(f"the proof verified, and its final model cannot be exported: {one_line(e)}") from None
        return subject(name, layout.sha256_file(attest.model)) if attest.model is not None else None
    if attest.model is not None:
        if report.get("valid"):
            attest.require_export(exported)
        else:
            return subject(name, layout.sha256_file(attest.model))
    return subject(name, exported)
