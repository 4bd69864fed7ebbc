"""Signing keys as people have them: PEM files from ``openssl genpkey`` (Ed25519, ECDSA P-256 or P-384).

Everything is offline, through ``cryptography``. No key material reaches a message: an error names the file
and what is wrong with it, never its contents. An encrypted private key takes its password from the
environment variable :data:`PASSWORD_ENV` (never from a command line, where ``ps`` shows it).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from lightning_pol.errors import PoLError

#: The environment variable an encrypted private key's password is read from.
PASSWORD_ENV = "LIGHTNING_POL_KEY_PASSWORD"
#: Largest key file read: a PEM key is well under 10 kB.
MAX_KEY_BYTES = 64 << 10
#: The curves an ECDSA key may use, and the hash each signs with (as DSSE's ecdsa-sha2-nistp* schemes do).
_CURVES = {"secp256r1": "SHA256", "secp384r1": "SHA384"}
INSTALL_HINT = "pip install 'lightning-pol[attest]'"


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        raise PoLError(f"signing and checking attestations needs the cryptography package: {INSTALL_HINT}") from None
    return serialization


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    return read_capped(Path(path), MAX_KEY_BYTES, what, "a PEM key")


def read_capped(p: Path, cap: int, what: str, kind: str) -> bytes:
    """The bytes of the regular file ``p``, refused past ``cap`` bytes (a FIFO or ``/dev/zero`` is never read)."""
    try:
        if not stat.S_ISREG(p.stat().st_mode):
            raise PoLError(f"{what} {p} is not a regular file")
        with open(p, "rb") as f:
            data = f.read(cap + 1)
    except FileNotFoundError:
        raise PoLError(f"no {what} at {p}") from None
    except OSError as e:
        raise PoLError(f"cannot read the {what} {p} ({e.strerror})") from None
    if len(data) > cap:
        raise PoLError(f"{what} {p} is more than {cap} bytes: not {kind}")
    return data


def _scheme(key: Any, path: Path, what: str) -> str:
    """``ed25519`` or ``ecdsa-sha2-nistp256``/``-nistp384``, or a one-line refusal of any other key type."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "ed25519"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) and key.curve.name in _CURVES:
        return f"ecdsa-sha2-nistp{key.curve.key_size}"
    kind = getattr(getattr(key, "curve", None), "name", None) or type(key).__name__.lstrip("_").replace("PrivateKey", "").replace("PublicKey", "")
    raise PoLError(f"{what} {path} is an {kind} key, not Ed25519 or ECDSA P-256/P-384: make one with "
                   f"openssl genpkey -algorithm ed25519 (or -algorithm EC -pkeyopt ec_paramgen_curve:P-256)")


def key_id(public_key: Any) -> str:
    """SHA-256 of the public key's DER SubjectPublicKeyInfo, hex: the envelope's ``keyid``
    (``openssl pkey -pubin -in key.pub -outform DER | sha256sum`` gives the same)."""
    serialization = _crypto()
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


class SigningKey:
    """A private key read from a PEM file, able to sign; its public half gives :attr:`key_id`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        serialization = _crypto()
        self.path = Path(path)
        data = _read(self.path, "private key")
        password = os.environ.get(PASSWORD_ENV)
        try:
            key = serialization.load_pem_private_key(data, password.encode() if password else None)
        except TypeError:  # encrypted without a password, or a password for a key that has none
            raise PoLError(f"private key {self.path} is encrypted: set {PASSWORD_ENV} to its password" if not password
                           else f"private key {self.path} is not encrypted: unset {PASSWORD_ENV}") from None
        except Exception as e:  # noqa: BLE001 - cryptography's errors about the file; never echo its bytes
            wrong = "wrong password, or " if password else ""
            raise PoLError(f"private key {self.path} cannot be read ({wrong}not a PEM private key: {type(e).__name__})") from None
        del data
        self.scheme = _scheme(key, self.path, "private key")
        self._key = key
        self.key_id = key_id(key.public_key())

    def sign(self, message: bytes) -> bytes:
        if self.scheme == "ed25519":
            return self._key.sign(message)
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        return self._key.sign(message, ec.ECDSA(getattr(hashes, _CURVES[self._key.curve.name])()))  # DER, as DSSE signers write

    def __repr__(self) -> str:  # never the key
        return f"SigningKey({str(self.path)!r}, {self.scheme}, keyid {self.key_id[:16]})"


class PublicKey:
    """A public key read from a PEM file (``openssl pkey -in key.pem -pubout``), able to check a signature."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        serialization = _crypto()
        self.path = Path(path)
        data = _read(self.path, "public key")
        try:
            key = serialization.load_pem_public_key(data)
        except Exception as e:  # noqa: BLE001 - the file is not a PEM public key
            hint = " (that is a private key: give its public half, openssl pkey -in KEY -pubout)" if b"PRIVATE KEY" in data else ""
            raise PoLError(f"public key {self.path} cannot be read (not a PEM public key: {type(e).__name__}){hint}") from None
        self.scheme = _scheme(key, self.path, "public key")
        self._key = key
        self.key_id = key_id(key)

    def verifies(self, signature: bytes, message: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        try:
            if self.scheme == "ed25519":
                self._key.verify(signature, message)
            else:
                self._key.verify(signature, message, ec.ECDSA(getattr(hashes, _CURVES[self._key.curve.name])()))
        except (InvalidSignature, ValueError):  # ValueError: a signature that is not DER at all
            return False
        return True
