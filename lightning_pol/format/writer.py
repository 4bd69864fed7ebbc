"""Crash-safe writing of a proof, on a local disk or an object store (format.storage).

Every file is written whole under its final name before the manifest that
lists it: locally to a temporary name, flushed and renamed into place; on an
object store as one object (a PUT, or a multipart upload that appears when it
completes). The manifest is written the same way and always last: it is the
commit. A crash therefore leaves a proof whose manifest describes a complete,
consistent proof up to its last recorded checkpoint; files that the manifest
does not list (temporaries, objects written after the last manifest) are not
part of it, and are removed when the proof is reopened or overwritten.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_pol.errors import PoLError
from lightning_pol.format import layout as pf
from lightning_pol.format.manifest import FileEntry, Manifest, manifest_bytes
from lightning_pol.format.storage import ProofStore, open_store
from lightning_pol.format.strict_json import ProofFormatError

Location = str | os.PathLike[str] | ProofStore


class ProofDirectoryError(PoLError, ValueError):
    """The proof directory cannot be used as asked (another run's proof, foreign files)."""


class ProofWriter:
    """Owns one proof directory and its in-memory :class:`~lightning_pol.format.manifest.Manifest`.

    ``put`` writes a file and lists it; ``drop`` unlists one; ``commit`` writes
    the manifest and only then deletes dropped files, so a crash at any point
    leaves every listed file in place. A put file's data is synced when it is
    written, its directory once, at the commit that lists it: a checkpoint
    that waits for a later commit costs one fsync, not two. The other
    changes to the manifest go through its own operations.
    """

    def __init__(self, store: ProofStore, manifest: Manifest, fsync: bool = True) -> None:
        self.store = store
        self.manifest = manifest
        self.fsync = fsync
        self._dropped: list[str] = []
        self._unsynced: list[str] = []  # files put since the last commit, whose names a local commit makes durable
        self._bytes = sum(e.bytes for e in self.manifest.files.values())

    @property
    def root(self) -> Path | None:
        """The proof's local directory (None on an object store)."""
        return self.store.local_root

    # -- opening ---------------------------------------------------------------
    @staticmethod
    def read_manifest(root: Location) -> dict[str, Any] | None:
        """The raw JSON of ``root``'s manifest, read leniently: what is there to replace or to edit (attacks)."""
        store = open_store(root)
        try:
            data = store.read(pf.MANIFEST, pf.MAX_MANIFEST_BYTES)
        except ProofFormatError as e:
            if str(e).startswith("missing file"):
                return None
            raise ProofDirectoryError(f"{store.url(pf.MANIFEST)} cannot be read ({e})") from None
        try:
            manifest = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise ProofDirectoryError(f"{store.url(pf.MANIFEST)} is not a readable manifest ({e})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != pf.FORMAT_NAME:
            raise ProofDirectoryError(f"{store.url(pf.MANIFEST)} is not a lightning-pol manifest")
        return manifest

    @classmethod
    def create(cls, root: Location, manifest: Manifest, overwrite: bool, fsync: bool = True) -> ProofWriter:
        """Start a new proof in ``root``; refuse one that holds anything unless ``overwrite``."""
        store = open_store(root)
        local = store.local_root
        if local is not None and local.exists() and not local.is_dir():
            raise ProofDirectoryError(f"proof path {local} exists and is not a directory")
        found = store.files()
        if found:
            old = cls.read_manifest(store)
            if not overwrite:
                what = f"the proof of run {old.get('run_id')}" if old else "files that are not a proof"
                raise ProofDirectoryError(
                    f"{store.location} already holds {what}; choose another dirpath or pass overwrite=True"
                )
            cls._remove_proof(store, old, found)
        if local is not None:
            local.mkdir(parents=True, exist_ok=True)
        return cls(store, manifest, fsync)

    @classmethod
    def reopen(cls, root: Location, run_id: str, fsync: bool = True) -> ProofWriter:
        """Continue this run's proof after a resume; removes files the manifest does not list."""
        store = open_store(root)
        raw = cls.read_manifest(store)
        if raw is None:
            raise ProofDirectoryError(f"cannot resume: {store.location} holds no proof manifest")
        if raw.get("run_id") != run_id:
            raise ProofDirectoryError(
                f"cannot resume: {store.location} holds the proof of run {raw.get('run_id')}, not of run {run_id}"
            )
        writer = cls(store, Manifest.from_json(raw), fsync)
        writer.remove_unlisted()
        return writer

    @staticmethod
    def _remove_proof(store: ProofStore, manifest: dict[str, Any] | None, found: list[str]) -> None:
        """Delete an old proof's files, after checking that nothing else is there (nothing else is ever deleted)."""
        if manifest is None:
            raise ProofDirectoryError(
                f"{store.location} holds files that are not a lightning-pol proof; overwrite=True only replaces a proof"
            )
        listed = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
        ours = (pf.CHECKPOINT_DIR, pf.INDEX_LOG_DIR, os.path.dirname(pf.LEAVES))

        def part_of_proof(rel: str) -> bool:  # a temporary only where the writer puts files: the root and its own folders
            top, _, rest = rel.partition("/")
            return (rel in listed or rel in (pf.MANIFEST, pf.INDEX_LOG_FINAL) or top in ours
                    or (not rest and top.startswith(pf.TMP_PREFIX)))

        foreign = sorted(rel for rel in found if not part_of_proof(rel))
        if foreign:
            raise ProofDirectoryError(f"{store.location} holds files that are not part of the old proof: {foreign[:5]}")
        for rel in sorted(found, key=lambda r: r == pf.MANIFEST):  # the manifest last: interrupted, overwrite=True again finishes it
            store.delete(rel)

    def remove_unlisted(self) -> None:
        listed = set(self.manifest.files) | {pf.MANIFEST}
        for rel in self.store.files():
            if rel not in listed:
                self.store.delete(rel)

    # -- writing ---------------------------------------------------------------
    def put(self, rel: str, data: bytes | Sequence[Any]) -> FileEntry:
        """Write ``rel`` atomically and list it in the manifest (committed later). ``data``: bytes, or the file as a
        sequence of buffers (:func:`~lightning_pol.format.safetensors_io.safetensors_parts`), never joined."""
        if not pf.is_safe_relative_path(rel):
            raise ValueError(f"unsafe proof path {rel!r}")
        self.store.write(rel, data, self.fsync)
        self._unsynced.append(rel)
        entry = FileEntry(*pf.sha256_parts(data))
        old = self.manifest.list_file(rel, entry)
        self._bytes += entry.bytes - (old.bytes if old else 0)
        if rel in self._dropped:
            self._dropped.remove(rel)
        return entry

    def drop(self, rel: str) -> None:
        """Unlist ``rel``; the file is deleted after the next commit."""
        entry = self.manifest.unlist_file(rel)
        if entry is not None:
            self._bytes -= entry.bytes
            self._dropped.append(rel)

    def commit(self) -> str:
        """Write the manifest, then delete dropped files. Returns the proof's identity."""
        if self.fsync:  # (locally) the renames of the files it lists are durable first
            self.store.sync(self._unsynced)
        self._unsynced.clear()
        data = self.manifest.to_bytes()
        self.store.write(pf.MANIFEST, data, self.fsync)
        if self.fsync:
            self.store.sync([pf.MANIFEST])
        for rel in self._dropped:
            self.store.delete(rel)
        self._dropped.clear()
        return pf.sha256_bytes(data)

    @property
    def total_bytes(self) -> int:
        """Bytes of the listed files (kept as a running total: the progress bar reads it every batch)."""
        return self._bytes


def rewrite_manifest_json(root: Location, edit: Callable[[dict[str, Any]], None],
                          files: Mapping[str, bytes] | None = None) -> str:
    """The raw-JSON way in, for the red-team suite and the fuzz campaign: write and list ``files``, let ``edit``
    change the manifest's JSON as it will (nothing checks it: judging it is the reader's job), and write it the
    way the writer writes a manifest. Returns the proof's new identity."""
    store = open_store(root)
    raw = ProofWriter.read_manifest(store)
    if raw is None:
        raise ProofDirectoryError(f"no proof manifest in {store.location}")
    for rel, data in (files or {}).items():
        store.write(rel, data, fsync=False)
        raw["files"][rel] = FileEntry(pf.sha256_bytes(data), len(data)).to_json()
    edit(raw)
    data = manifest_bytes(raw)
    store.write(pf.MANIFEST, data, fsync=False)
    return pf.sha256_bytes(data)
