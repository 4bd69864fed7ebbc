"""The attested verdict: an in-toto Statement v1 whose predicate is SLSA's verification summary (VSA v1).

:func:`vsa_statement` builds it from a verification report (``Report.to_dict()``, or a multirun's merged one);
:class:`AttestedVerdict` parses one back, checking every field it reads. The field meanings are in
docs/attestations.md; this module is their one definition.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from lightning_pol.attestation.dsse import MalformedEnvelope

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
VSA_TYPE = "https://slsa.dev/verification_summary/v1"
#: ``verifier.id``: the verifier, named by where its code is published.
VERIFIER_ID = "https://pypi.org/project/lightning-pol/"
#: The predicate's extension field (URI-named, as SLSA's extension fields are): coverage, checks, segments.
EXTENSION = "https://pypi.org/project/lightning-pol/#attestation-v1"
#: ``resourceUri`` is this prefix and the proof's identity (the SHA-256 of its ``manifest.json``).
RESOURCE_PREFIX = "urn:lightning-pol:proof:sha256:"
#: ``policy.uri``: the verifier settings that decide a verdict, canonical JSON in the extension's ``policy``.
POLICY_URI = "urn:lightning-pol:verifier-policy:v1"
#: The subject name of the proof's manifest.
MANIFEST_SUBJECT = "manifest.json"
RESULTS = ("PASSED", "FAILED")

#: The settings of a report that decide its verdict (the seed, shards and local paths do not).
POLICY_SETTINGS = ("q", "random", "mode", "delta", "d_ref", "full_data", "code", "accelerator", "match_threads", "ranks",
                   "module_overrides", "datamodule_overrides")

#: What a PASSED verdict says was checked (docs/attestations.md, "Verified levels"). None starts with ``SLSA_``.
LEVELS = {
    "POL_INTEGRITY": "every file of the proof is the one its manifest lists",
    "POL_INIT_CHECKED": "W_0 passed its initialization check (KS tests, a trusted root, or the parent's final state)",
    "POL_DATA_COMMITTED": "the replayed samples are the committed data, every epoch a permutation",
    "POL_DATA_FULL": "the whole dataset was hashed again against the commitment",
    "POL_REPLAY_EXACT": "every replayed segment landed on its checkpoint bit for bit",
    "POL_REPLAY_TOLERANT": "every replayed segment landed within the policy's delta",
    "POL_COVERAGE_FULL": "every segment of the proof was replayed",
    "POL_CHAIN_ROOTED": "the chain of trust, back to a fresh draw or a trusted root, verified",
    "POL_CODE_MATCHED": "the code that replayed is the code the proof records",
    "POL_CODE_PINNED": "that code is also on the verifier's reviewed list (code=pinned)",
}


def canonical(value: Any) -> bytes:
    """The JSON a digest is taken of: sorted keys, no whitespace, ASCII."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def policy_of(settings: dict[str, Any], trusted_code_sha256: str | None) -> dict[str, Any]:
    """The verdict-deciding part of a report's settings, with the trusted-code pin's digest for code=pinned."""
    out = {k: settings.get(k) for k in POLICY_SETTINGS}
    out["trusted_code_sha256"] = trusted_code_sha256
    out["registry"] = settings.get("registry") is not None  # the chain of trust consulted a registry
    return _finite(out)


def verified_levels(report: dict[str, Any]) -> list[str]:
    """The levels a report earns: none unless it is valid; then one per check that passed."""
    if not report.get("valid"):
        return []
    checks = report.get("checks", {})
    passed = {name for name, c in checks.items() if c.get("passed") is True}
    settings, coverage = report.get("settings", {}), report.get("coverage", {})
    levels = []
    if "integrity" in passed:
        levels.append("POL_INTEGRITY")
    if "initialization" in passed:
        levels.append("POL_INIT_CHECKED")
    if "data" in passed:
        levels += ["POL_DATA_COMMITTED"] + (["POL_DATA_FULL"] if settings.get("full_data") else [])
    if "replay" in passed:  # exact only if every segment was (a merged report's shards may have run in either mode)
        segments = report.get("segments") or []
        exact = checks["replay"].get("mode") == "exact" and bool(segments) and all(s.get("bit_exact") is True for s in segments)
        levels.append("POL_REPLAY_EXACT" if exact else "POL_REPLAY_TOLERANT")
        total = coverage.get("total_steps")
        if total and coverage.get("replayed_steps") == total:
            levels.append("POL_COVERAGE_FULL")
    if {"chain", "initialization"} <= passed:
        levels.append("POL_CHAIN_ROOTED")
    if "code" in passed and settings.get("code") in ("match", "pinned"):
        levels.append("POL_CODE_MATCHED")
        if settings.get("code") == "pinned":
            levels.append("POL_CODE_PINNED")
    return levels


def version() -> str:
    try:
        return metadata.version("lightning-pol")
    except metadata.PackageNotFoundError:  # a checkout run without an install
        return "unknown"


def vsa_statement(report: dict[str, Any], subjects: list[dict[str, Any]], policy: dict[str, Any], time_verified: str) -> dict[str, Any]:
    """The statement attesting ``report``'s verdict about ``subjects`` (the model file first, then the manifest)."""
    identity = report["proof_identity"]
    verifier_env = (report.get("environment") or {}).get("verifier") or {}
    extension = {
        "proof": {"identity": identity, "location": report.get("proof_dir")},
        "policy": policy,
        "selection": report.get("selection", {}),
        "mode": report.get("mode", {}),
        "coverage": report.get("coverage", {}),
        "checks": {name: {"passed": c.get("passed"), "summary": c.get("summary")} for name, c in report.get("checks", {}).items()},
        "segments": [{k: s.get(k) for k in ("start_step", "end_step", "epoch", "reason", "bit_exact", "passed", "distances", "error")}
                     for s in report.get("segments", [])],
        "reasons": report.get("reasons", []),
        "notes": report.get("notes", []),
    }
    predicate = {
        "verifier": {"id": VERIFIER_ID, "version": {"lightning-pol": version(),
                                                    **{k: verifier_env[k] for k in ("torch", "lightning") if k in verifier_env}}},
        "timeVerified": time_verified,
        "resourceUri": RESOURCE_PREFIX + identity,
        "policy": {"uri": POLICY_URI, "digest": {"sha256": hashlib.sha256(canonical(policy)).hexdigest()},
                   **({"annotations": {"trustedCode": {"sha256": policy["trusted_code_sha256"]}}} if policy.get("trusted_code_sha256") else {})},
        "inputAttestations": [{"uri": str(report.get("proof_dir")), "name": MANIFEST_SUBJECT, "digest": {"sha256": identity}}],
        "verificationResult": "PASSED" if report.get("valid") else "FAILED",
        "verifiedLevels": verified_levels(report),
        EXTENSION: extension,
    }
    return {"_type": STATEMENT_TYPE, "subject": subjects, "predicateType": VSA_TYPE, "predicate": _finite(predicate)}


def _finite(value: Any) -> Any:
    """JSON without NaN or Infinity (a diverged replay's distances), which strict parsers refuse: those as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def subject(name: str, sha256: str) -> dict[str, Any]:
    return {"name": name, "digest": {"sha256": sha256}}


@dataclass(frozen=True)
class AttestedVerdict:
    """A statement as :func:`vsa_statement` writes it, every field read here checked."""

    subjects: tuple[tuple[str, str], ...]  # (name, sha256)
    result: str
    levels: tuple[str, ...]
    identity: str
    time_verified: str
    verifier: dict[str, Any]
    policy_digest: str
    extension: dict[str, Any]

    @classmethod
    def parse(cls, doc: dict[str, Any], name: str) -> AttestedVerdict:
        def bad(why: str) -> MalformedEnvelope:
            return MalformedEnvelope(f"{name}: {why}")

        if doc.get("_type") != STATEMENT_TYPE:
            raise bad(f"the payload is not an in-toto Statement v1 (_type {str(doc.get('_type'))[:80]!r})")
        if doc.get("predicateType") != VSA_TYPE:
            raise bad(f"the statement's predicateType is {str(doc.get('predicateType'))[:80]!r}, not {VSA_TYPE}")
        subjects = doc.get("subject")
        if not isinstance(subjects, list) or not subjects or not all(
                isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("digest"), dict)
                and _is_sha256(s["digest"].get("sha256")) for s in subjects):
            raise bad("the statement's subjects are not a list of names with SHA-256 digests")
        p = doc.get("predicate")
        if not isinstance(p, dict):
            raise bad("the statement has no predicate object")
        uri, result, levels = p.get("resourceUri"), p.get("verificationResult"), p.get("verifiedLevels")
        if not (isinstance(uri, str) and uri.startswith(RESOURCE_PREFIX) and _is_sha256(uri[len(RESOURCE_PREFIX):])):
            raise bad(f"resourceUri is not {RESOURCE_PREFIX}<sha256>")
        if result not in RESULTS:
            raise bad(f"verificationResult is {str(result)[:40]!r}, not PASSED or FAILED")
        if not isinstance(levels, list) or not all(isinstance(v, str) for v in levels) or (result == "FAILED" and levels):
            raise bad("verifiedLevels is not a list of level names (empty for FAILED)")
        policy, verifier, extension = p.get("policy"), p.get("verifier"), p.get(EXTENSION)
        digest = policy.get("digest", {}).get("sha256") if isinstance(policy, dict) and isinstance(policy.get("digest"), dict) else None
        if not _is_sha256(digest) or not isinstance(verifier, dict) or not isinstance(p.get("timeVerified"), str):
            raise bad("the predicate lacks a verifier, a timeVerified or a policy digest")
        return cls(tuple((s["name"], s["digest"]["sha256"]) for s in subjects), result, tuple(levels), uri[len(RESOURCE_PREFIX):],
                   p["timeVerified"], verifier, digest, extension if isinstance(extension, dict) else {})

    @property
    def model_subjects(self) -> list[tuple[str, str]]:
        """The subjects other than the proof's manifest: the published model file."""
        return [(n, d) for n, d in self.subjects if d != self.identity]


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
