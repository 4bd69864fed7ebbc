"""A proof's code identity: the source files that defined the classes it names, as one typed object and one digest.

The verifier replays a proof through the prover's own classes, imported from whatever is installed where it
runs. The manifest's ``code`` says which files those were (docs/proof-format.md, "Code identity"):

- ``classes``: per import path the proof names, the file that defines it (relative to its import root:
  ``src/models/mnist_module.py``), that file's SHA-256, and the distribution it was installed from
  (None for a source tree);
- ``imports``: the files of the project's own source tree that those files import, directly or not, and the
  ``__init__.py`` of each package on the way (file -> SHA-256);
- ``digest``: the SHA-256 of :func:`canonical_bytes`, one value for a registry and a chain of trust.

Written by the prover and recomputed by the verifier from the same import paths
(:mod:`lightning_pol.runtime.installed_code`); this module only types, checks and compares them.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from lightning_pol.format.strict_json import ProofFormatError

_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class ClassSource:
    """Where one named class comes from. ``file`` None: no file defines it (a built-in, or an import path that
    finds nothing); ``distribution`` None: a source tree (a project, an editable install)."""

    file: str | None
    sha256: str | None
    distribution: str | None = None
    version: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "distribution": self.distribution, "version": self.version}

    def origin(self) -> str:
        """``torch 2.14.1`` or ``source tree``: how a difference is explained."""
        return f"{self.distribution} {self.version}" if self.distribution else "source tree"


@dataclass(frozen=True)
class CodeIdentity:
    """``classes`` by import path, ``imports`` by file; :attr:`digest` over both (:func:`canonical_bytes`)."""

    classes: dict[str, ClassSource] = field(default_factory=dict)
    imports: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return hashlib.sha256(canonical_bytes(self.to_json())).hexdigest()

    def files(self) -> dict[str, str | None]:
        """Every file this identity names, with its SHA-256: the class files and their imports."""
        out: dict[str, str | None] = {s.file: s.sha256 for s in self.classes.values() if s.file is not None}
        out.update(self.imports)
        return out

    def differences(self, installed: CodeIdentity) -> list[str]:
        """What differs between this (the recorded code) and ``installed``, one short line per file or class."""
        out: list[str] = []
        for path in sorted(set(self.classes) | set(installed.classes)):
            mine, theirs = self.classes.get(path), installed.classes.get(path)
            if mine is None or theirs is None:
                out.append(f"{path}: {'not recorded' if mine is None else 'not located here'}")
            elif mine.file != theirs.file:
                out.append(f"{path}: defined in {mine.file or 'no file'} in training, {theirs.file or 'no file'} here")
            elif mine.sha256 != theirs.sha256:
                versions = f" ({mine.origin()} in training, {theirs.origin()} here)" if mine.origin() != theirs.origin() else ""
                out.append(f"{mine.file}{versions}")
        for rel in sorted(set(self.imports) | set(installed.imports)):
            mine_sha, theirs_sha = self.imports.get(rel), installed.imports.get(rel)
            if mine_sha != theirs_sha:
                out.append(rel if mine_sha and theirs_sha else f"{rel} ({'not imported here' if theirs_sha is None else 'not imported in training'})")
        return list(dict.fromkeys(out))

    def to_json(self) -> dict[str, Any]:
        return {
            "classes": {path: self.classes[path].to_json() for path in sorted(self.classes)},
            "imports": {rel: self.imports[rel] for rel in sorted(self.imports)},
        }

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's ``code``: :meth:`to_json` and its ``digest``."""
        return {"digest": self.digest, **self.to_json()}

    @classmethod
    def from_manifest(cls, code: Any) -> CodeIdentity:
        """Check a manifest's ``code`` field by field; its ``digest`` must be the digest of the rest."""
        if not isinstance(code, dict) or set(code) != {"digest", "classes", "imports"}:
            raise ProofFormatError("manifest field code must hold exactly digest, classes and imports")
        classes, imports = code["classes"], code["imports"]
        if not isinstance(classes, dict) or not isinstance(imports, dict) or len(classes) + len(imports) > _MAX_ENTRIES:
            raise ProofFormatError("manifest field code.classes or code.imports is invalid")
        typed: dict[str, ClassSource] = {}
        for path, entry in classes.items():
            if not _text(path) or not isinstance(entry, dict) or set(entry) != {"file", "sha256", "distribution", "version"}:
                raise ProofFormatError(f"manifest field code.classes has an invalid entry {str(path)[:80]!r}")
            if not all(entry[k] is None or _text(entry[k]) for k in ("file", "distribution", "version")) or not _digest_or_none(entry["sha256"]):
                raise ProofFormatError(f"manifest field code.classes[{path[:80]!r}] has an invalid file, sha256 or distribution")
            if (entry["file"] is None) != (entry["sha256"] is None) or (entry["distribution"] is None) != (entry["version"] is None):
                raise ProofFormatError(f"manifest field code.classes[{path[:80]!r}] has a file without a sha256, or a distribution without a version")
            typed[path] = ClassSource(entry["file"], entry["sha256"], entry["distribution"], entry["version"])
        if not all(_text(rel) and isinstance(sha, str) and _HEX64.fullmatch(sha) for rel, sha in imports.items()):
            raise ProofFormatError("manifest field code.imports must map files to SHA-256 digests")
        identity = cls(typed, dict(imports))
        if code["digest"] != identity.digest:
            raise ProofFormatError("manifest field code.digest is not the digest of code.classes and code.imports")
        return identity


def canonical_bytes(obj: dict[str, Any]) -> bytes:
    """``{"classes": ..., "imports": ...}`` as compact JSON, keys sorted, ASCII: the bytes :attr:`CodeIdentity.digest` hashes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def _text(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 1000


def _digest_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and _HEX64.fullmatch(value) is not None)
