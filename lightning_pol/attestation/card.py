"""The YAML block of a Hugging Face model card (README.md's front matter) that carries an attested verdict.

Built with ``huggingface_hub.ModelCardData`` when it is installed (so the Hub reads it as it writes it),
else with PyYAML the same way.
"""

from __future__ import annotations

from typing import Any

from lightning_pol.attestation.statement import AttestedVerdict

CARD_KEY = "proof_of_learning"


def card_fields(verdict: AttestedVerdict, attestation_sha256: str, attestation_name: str) -> dict[str, Any]:
    return {CARD_KEY: {
        "verdict": verdict.result,
        "verified_levels": list(verdict.levels),
        "proof_identity": verdict.identity,
        "time_verified": verdict.time_verified,
        "verifier": verdict.verifier.get("id"),
        "models": [{"name": n, "sha256": d} for n, d in verdict.model_subjects],
        "attestation": {"file": attestation_name, "sha256": attestation_sha256},
    }}


def card_yaml(verdict: AttestedVerdict, attestation_sha256: str, attestation_name: str) -> str:
    """The model card's front matter, between its ``---`` lines."""
    fields = card_fields(verdict, attestation_sha256, attestation_name)
    try:
        from huggingface_hub import ModelCardData
    except ImportError:
        import yaml

        text = yaml.safe_dump(fields, sort_keys=False)
    else:
        text = ModelCardData(**fields).to_yaml()
    return f"---\n{text.rstrip()}\n---"
