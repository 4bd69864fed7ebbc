"""DSSE envelopes (https://github.com/secure-systems-lab/dsse, v1): sign a payload, parse and check an envelope.

An envelope is untrusted input: :meth:`Envelope.parse` reads it once, strictly, into a typed object or raises
a :class:`MalformedEnvelope` with one line; :meth:`Envelope.verified_by` then says whether a key signed it.
What is signed is never the payload alone but its :func:`pae`, so a payload cannot be re-read as another type.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Protocol

from lightning_pol.errors import PoLError

#: The payload type of an in-toto statement.
IN_TOTO = "application/vnd.in-toto+json"
#: Largest envelope read: a statement with every segment of a long proof stays well under it.
MAX_ENVELOPE_BYTES = 64 << 20


class MalformedEnvelope(PoLError):
    """Not a DSSE envelope this reader accepts (exit 2: there is nothing to check)."""


class Signer(Protocol):
    key_id: str

    def sign(self, message: bytes) -> bytes: ...


class Verifier(Protocol):
    key_id: str

    def verifies(self, signature: bytes, message: bytes) -> bool: ...


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    @classmethod
    def sign(cls, payload_type: str, payload: bytes, signer: Signer) -> Envelope:
        return cls(payload_type, payload, (Signature(signer.key_id, signer.sign(pae(payload_type, payload))),))

    def to_json(self) -> str:
        return json.dumps({
            "payloadType": self.payload_type,
            "payload": base64.b64encode(self.payload).decode(),
            "signatures": [{"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode()} for s in self.signatures],
        }, indent=1) + "\n"

    @classmethod
    def parse(cls, data: bytes, name: str) -> Envelope:
        if len(data) > MAX_ENVELOPE_BYTES:
            raise MalformedEnvelope(f"{name}: {len(data)} bytes, more than an envelope may have ({MAX_ENVELOPE_BYTES})")
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            raise MalformedEnvelope(f"{name}: not a DSSE envelope (not JSON: {str(e).splitlines()[0][:120]})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("payloadType"), str) or not isinstance(doc.get("payload"), str):
            raise MalformedEnvelope(f"{name}: not a DSSE envelope (needs the strings payloadType and payload)")
        signatures = doc.get("signatures")
        if not isinstance(signatures, list) or not signatures or not all(
                isinstance(s, dict) and isinstance(s.get("sig"), str) and isinstance(s.get("keyid", ""), str) for s in signatures):
            raise MalformedEnvelope(f"{name}: not a DSSE envelope (needs a list of signatures, each with a sig string)")
        if not all(_utf8(v) for v in (doc["payloadType"], *(s.get("keyid", "") for s in signatures))):
            raise MalformedEnvelope(f"{name}: not a DSSE envelope (a string that is not UTF-8)")
        return cls(doc["payloadType"], _b64(doc["payload"], f"{name}: payload"),
                   tuple(Signature(s.get("keyid", ""), _b64(s["sig"], f"{name}: a signature")) for s in signatures))

    def verified_by(self, key: Verifier) -> bool:
        """Whether one of the signatures is ``key``'s over this envelope's PAE (the keyid is a hint, not trusted)."""
        message = pae(self.payload_type, self.payload)
        return any(key.verifies(s.sig, message) for s in self.signatures)

    def statement(self, name: str) -> dict[str, Any]:
        """The payload as an in-toto statement's JSON object (its fields are checked by :mod:`.statement`)."""
        if self.payload_type != IN_TOTO:
            raise MalformedEnvelope(f"{name}: payloadType {self.payload_type[:80]!r}, not an in-toto statement ({IN_TOTO})")
        try:
            doc = json.loads(self.payload)
        except (ValueError, RecursionError):
            raise MalformedEnvelope(f"{name}: the payload is not JSON") from None
        if not isinstance(doc, dict):
            raise MalformedEnvelope(f"{name}: the payload is not a JSON object")
        if not _utf8(json.dumps(doc, ensure_ascii=False)):  # a lone surrogate ("\\ud800") that no terminal or YAML takes
            raise MalformedEnvelope(f"{name}: the payload holds a string that is not UTF-8")
        return doc


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _b64(text: str, what: str) -> bytes:
    """DSSE allows standard or URL-safe base64, padded or not."""
    try:
        text = text.strip()
        return base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedEnvelope(f"{what} is not base64") from None
