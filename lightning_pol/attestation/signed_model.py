"""The exported model's directory signed with OpenSSF ``model-signing`` in key mode, offline.

Its signature (a Sigstore bundle holding a DSSE envelope) says who published these bytes: every file of the
directory, by SHA-256. ``model_signing verify key DIR --signature SIG --public_key PUB`` checks it without
lightning-pol. The verdict's attestation says something else, what was verified about how they were trained;
its model subject is the same file's SHA-256 (docs/attestations.md, "Model signing").
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from lightning_pol.attestation.keys import INSTALL_HINT, PASSWORD_ENV, SigningKey
from lightning_pol.errors import PoLError, one_line

#: The signature's file name in the model directory, as ``model_signing sign`` names it by default.
SIGNATURE = "model.sig"


class ModelSigner:
    """An ECDSA key and model-signing, both checked when built: a wrong key is one line before anything is written."""

    def __init__(self, key_path: str | os.PathLike[str]) -> None:
        self.key = SigningKey(key_path)  # its one-line errors: a missing file, an encrypted key without its password
        if self.key.scheme == "ed25519":
            raise PoLError(f"model-signing's key mode signs with ECDSA keys only, and {self.key.path} is Ed25519: "
                           f"make one with openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256")
        try:
            from model_signing import signing
        except ImportError as e:  # not installed, or installed without a module it needs (pyOpenSSL, for 1.1)
            raise PoLError(f"signing the model needs OpenSSF model-signing ({one_line(e)}): {INSTALL_HINT}") from None
        password = os.environ.get(PASSWORD_ENV)
        logging.getLogger("model_signing").setLevel(logging.WARNING)
        try:
            self._config: Any = signing.Config().use_elliptic_key_signer(private_key=self.key.path,
                                                                         password=password.encode() if password else None)
        except Exception as e:  # noqa: BLE001 - model-signing's errors are about the key
            raise PoLError(f"model-signing cannot use the key {self.key.path} ({type(e).__name__})") from None

    def check_directory(self, directory: Path) -> None:
        """Everything in ``directory`` is signed and published with the model: never the private key."""
        inside = self.key.path.resolve().is_relative_to(directory.resolve())
        if inside:
            raise PoLError(f"the private key {self.key.path} is inside {directory}, whose every file the model signature lists "
                           f"and publishes: export to a directory of its own (--out published/model.safetensors)")

    def sign(self, directory: Path, signature: Path | None = None) -> Path:
        """Sign every file of ``directory`` (the signature file itself and git's files aside)."""
        self.check_directory(directory)
        signature = signature or directory / SIGNATURE
        try:
            self._config.sign(directory, signature)
        except Exception as e:  # noqa: BLE001 - model-signing's errors are about the directory or the key, never a verdict
            raise PoLError(f"model-signing could not sign {directory} ({type(e).__name__}: {one_line(e)})") from None
        return signature
