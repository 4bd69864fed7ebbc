"""``python -m lightning_pol.attest``: check, show and publish an attested verdict (docs/attestations.md).

    python -m lightning_pol.attest verify FILE --public-key PUB [--model FILE] [--require-passed]
    python -m lightning_pol.attest show FILE
    python -m lightning_pol.attest card FILE

``verify`` exits 0 when a signature of FILE is the key's and ``--model`` (if given) is one of its subjects, 1 when
the signature, the payload or the model does not match (or, with ``--require-passed``, the verdict is FAILED), and
2 with one ``error:`` line for what is not an envelope of an attested verdict. ``show`` prints the statement as a
table, ``card`` the YAML block of a Hugging Face model card; neither checks the signature.
Nothing here imports torch: checking an attestation takes a second.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lightning_pol.apps import EXIT_REJECTED, EXIT_VALID, exit_code
from lightning_pol.attestation.card import card_yaml
from lightning_pol.attestation.dsse import MAX_ENVELOPE_BYTES, Envelope
from lightning_pol.attestation.keys import PublicKey, read_capped
from lightning_pol.attestation.statement import EXTENSION, AttestedVerdict
from lightning_pol.format import layout


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lightning_pol.attest", description="Check, show and publish an attested verdict.")
    sub = p.add_subparsers(dest="command", required=True)
    check = sub.add_parser("verify", help="check the signature, and the model file against the subjects")
    check.add_argument("file")
    check.add_argument("--public-key", required=True, help="the signer's PEM public key (openssl pkey -in KEY -pubout)")
    check.add_argument("--model", default=None, help="the published model file: its SHA-256 must be a subject")
    check.add_argument("--require-passed", action="store_true", help="exit 1 also when the attested verdict is FAILED")
    for name, text in (("show", "print the statement as a table"), ("card", "print a Hugging Face model card's YAML block")):
        sub.add_parser(name, help=text).add_argument("file")
    return p


def read(path: str) -> tuple[Envelope, bytes]:
    """The envelope of ``path``, parsed (not yet checked against a key), and the file's bytes."""
    data = read_capped(Path(path), MAX_ENVELOPE_BYTES, "attestation", "a DSSE envelope")
    return Envelope.parse(data, path), data


def verdict_of(envelope: Envelope, path: str) -> AttestedVerdict:
    return AttestedVerdict.parse(envelope.statement(path), path)


def verify(args: argparse.Namespace) -> int:
    key = PublicKey(args.public_key)
    envelope, _ = read(args.file)
    if not envelope.verified_by(key):  # a wrong signature is exit 1, whatever it signed
        return _rejected(f"{args.file} is not signed by {args.public_key} ({key.scheme}, keyid {key.key_id[:16]}), "
                         f"or its payload changed after it was signed")
    verdict = verdict_of(envelope, args.file)  # signed, and still not an attested verdict: exit 2
    line = f"verified: {args.file} is signed by {args.public_key} ({key.scheme}, keyid {key.key_id[:16]}); the proof {verdict.identity[:16]}... {verdict.result}"
    if args.model is not None:
        digest = layout.sha256_file(args.model)
        names = [n for n, d in verdict.model_subjects if d == digest]
        if not names:
            return _rejected(f"{args.model} (sha256 {digest[:16]}...) is not the model {args.file} attests "
                             f"({', '.join(f'{_printable(n)} sha256 {d[:16]}...' for n, d in verdict.model_subjects) or 'it names no model'})")
        line += f"; {args.model} is its subject {_printable(names[0])}"
    print(line)
    if args.require_passed and verdict.result != "PASSED":
        return _rejected(f"the attested verdict is {verdict.result}")
    return EXIT_VALID


def _rejected(reason: str) -> int:
    print(f"rejected: {reason}")
    return EXIT_REJECTED


def show(args: argparse.Namespace) -> int:
    envelope, _ = read(args.file)
    v = verdict_of(envelope, args.file)
    ext = v.extension
    rows = [("result", v.result), ("verified levels", ", ".join(v.levels) or "-"), ("proof", v.identity),
            ("location", _dict(ext.get("proof")).get("location")), ("time verified", v.time_verified),
            ("verifier", f"{v.verifier.get('id')} {v.verifier.get('version')}"), ("policy", f"sha256 {v.policy_digest}")]
    rows += [("subject", f"{name}  sha256 {digest}") for name, digest in v.subjects]
    cov = _dict(ext.get("coverage"))
    if cov:
        rows.append(("coverage", f"{cov.get('replayed_steps')}/{cov.get('total_steps')} steps replayed, samples {cov.get('measured')}"))
    rows += [(f"check {name}", f"{_mark(c.get('passed'))} {c.get('summary')}") for name, c in _dict(ext.get("checks")).items()
             if isinstance(c, dict)]
    segments = [s for s in _list(ext.get("segments")) if isinstance(s, dict)]
    if segments:
        exact = sum(1 for s in segments if s.get("bit_exact") is True)
        failed = [f"{s.get('start_step')}->{s.get('end_step')}" for s in segments if s.get("passed") is False]
        rows.append(("segments", f"{len(segments)} replayed, {exact} bit-exact" + (f", failed {failed[:8]}" if failed else "")))
    rows += [("reason", r) for r in _list(ext.get("reasons"))]
    print("\n".join(f"{_printable(k):<22}{_printable(val)}" for k, val in rows))
    print("(the signature is not checked here: python -m lightning_pol.attest verify FILE --public-key PUB)")
    if not ext:
        print(f"(no {EXTENSION} extension)")
    return EXIT_VALID


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list:
    return value if isinstance(value, list) else []


def card(args: argparse.Namespace) -> int:
    envelope, data = read(args.file)
    print(card_yaml(verdict_of(envelope, args.file), layout.sha256_bytes(data), Path(args.file).name))
    return EXIT_VALID


def _mark(passed: object) -> str:
    return "pass" if passed is True else ("FAIL" if passed is False else "skip")


def _printable(value: object) -> str:
    """A statement's strings may come from a hostile proof: no terminal control characters, one line, bounded."""
    text = "".join(c if c.isprintable() else "?" for c in str(value))
    return text if len(text) <= 300 else text[:297] + "..."


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    return {"verify": verify, "show": show, "card": card}[args.command](args)


def main(argv: list[str] | None = None) -> None:
    sys.exit(exit_code(lambda: run(sys.argv[1:] if argv is None else argv)))
