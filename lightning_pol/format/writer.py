"""Crash-safe writing of a proof directory.

Every file is written to a temporary name in its final directory, flushed,
and renamed into place; the manifest is written the same way and always last.
A crash therefore leaves a directory whose manifest describes a complete,
consistent proof up to its last recorded checkpoint; files that the manifest
does not list (temporaries, files written after the last manifest) are removed
when the proof is reopened.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_pol.errors import PoLError
from lightning_pol.format import layout as pf
from lightning_pol.format.manifest import FileEntry, Manifest, manifest_bytes


class ProofDirectoryError(PoLError, ValueError):
    """The proof directory cannot be used as asked (another run's proof, foreign files)."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | Sequence[Any], fsync: bool = True, make_parent: bool = True, sync_dir: bool = True) -> None:
    """Write ``data`` (bytes, or a sequence of buffers written one after another) to ``path`` so that readers see
    the old file or the new one, never a torn one.

    With ``sync_dir=False`` the rename is not yet durable: the caller syncs the directory later.
    """
    if make_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{pf.TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            for part in (data,) if isinstance(data, bytes) else data:
                f.write(part)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync and sync_dir:
        _fsync_dir(path.parent)


class ProofWriter:
    """Owns one proof directory and its in-memory :class:`~lightning_pol.format.manifest.Manifest`.

    ``put`` writes a file and lists it; ``drop`` unlists one; ``commit`` writes
    the manifest and only then deletes dropped files, so a crash at any point
    leaves every listed file in place. A put file's data is synced when it is
    written, its directory once, at the commit that lists it: a checkpoint
    that waits for a later commit costs one fsync, not two. The other
    changes to the manifest go through its own operations.
    """

    def __init__(self, root: str | os.PathLike[str], manifest: Manifest, fsync: bool = True) -> None:
        self.root = Path(root)
        self.manifest = manifest
        self.fsync = fsync
        self._dropped: list[str] = []
        self._made: set[Path] = set()  # directories this writer created or found: no mkdir per file
        self._unsynced: set[Path] = set()  # directories of files put since the last commit
        self._bytes = sum(e.bytes for e in self.manifest.files.values())

    # -- opening ---------------------------------------------------------------
    @staticmethod
    def read_manifest(root: Path) -> dict[str, Any] | None:
        """The raw JSON of ``root``'s manifest, read leniently: what is there to replace or to edit (attacks)."""
        path = root / pf.MANIFEST
        if not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError) as e:
            raise ProofDirectoryError(f"{path} is not a readable manifest ({e})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != pf.FORMAT_NAME:
            raise ProofDirectoryError(f"{path} is not a lightning-pol manifest")
        return manifest

    @classmethod
    def create(cls, root: str | os.PathLike[str], manifest: Manifest, overwrite: bool, fsync: bool = True) -> ProofWriter:
        """Start a new proof in ``root``; refuse a directory that holds anything unless ``overwrite``."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise ProofDirectoryError(f"proof path {root} exists and is not a directory")
        if root.is_dir() and any(root.iterdir()):
            old = cls.read_manifest(root)
            if not overwrite:
                what = f"the proof of run {old.get('run_id')}" if old else "files that are not a proof"
                raise ProofDirectoryError(
                    f"{root} already holds {what}; choose another dirpath or pass overwrite=True"
                )
            cls._remove_proof(root, old)
        root.mkdir(parents=True, exist_ok=True)
        return cls(root, manifest, fsync)

    @classmethod
    def reopen(cls, root: str | os.PathLike[str], run_id: str, fsync: bool = True) -> ProofWriter:
        """Continue this run's proof after a resume; removes files the manifest does not list."""
        root = Path(root)
        raw = cls.read_manifest(root)
        if raw is None:
            raise ProofDirectoryError(f"cannot resume: {root} holds no proof manifest")
        if raw.get("run_id") != run_id:
            raise ProofDirectoryError(
                f"cannot resume: {root} holds the proof of run {raw.get('run_id')}, not of run {run_id}"
            )
        writer = cls(root, Manifest.from_json(raw), fsync)
        writer.remove_unlisted()
        return writer

    @staticmethod
    def _remove_proof(root: Path, manifest: dict[str, Any] | None) -> None:
        if manifest is None:
            raise ProofDirectoryError(
                f"{root} holds files that are not a lightning-pol proof; overwrite=True only replaces a proof"
            )
        for sub in (pf.CHECKPOINT_DIR, pf.INDEX_LOG_DIR, os.path.dirname(pf.LEAVES)):
            shutil.rmtree(root / sub, ignore_errors=True)
        for rel in manifest.get("files", {}) if isinstance(manifest.get("files"), dict) else ():
            if pf.is_safe_relative_path(rel):
                (root / rel).unlink(missing_ok=True)
        for name in (pf.MANIFEST, pf.INDEX_LOG_FINAL):
            (root / name).unlink(missing_ok=True)
        for p in root.iterdir():
            if p.name.startswith(pf.TMP_PREFIX):
                p.unlink(missing_ok=True)
        left = sorted(p.name for p in root.iterdir())
        if left:
            raise ProofDirectoryError(f"{root} holds files that are not part of the old proof: {left[:5]}")

    def remove_unlisted(self) -> None:
        listed = set(self.manifest.files) | {pf.MANIFEST}
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in filenames:
                rel = os.path.relpath(os.path.join(dirpath, name), self.root).replace(os.sep, "/")
                if rel not in listed:
                    os.unlink(os.path.join(dirpath, name))

    # -- writing ---------------------------------------------------------------
    def put(self, rel: str, data: bytes | Sequence[Any]) -> FileEntry:
        """Write ``rel`` atomically and list it in the manifest (committed later). ``data``: bytes, or the file as a
        sequence of buffers (:func:`~lightning_pol.format.safetensors_io.safetensors_parts`), never joined."""
        if not pf.is_safe_relative_path(rel):
            raise ValueError(f"unsafe proof path {rel!r}")
        path = self.root / rel
        atomic_write(path, data, self.fsync, make_parent=path.parent not in self._made, sync_dir=False)
        self._made.add(path.parent)
        self._unsynced.add(path.parent)
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
        if self.fsync:
            for directory in sorted(self._unsynced):  # the renames of the files it lists are durable first
                _fsync_dir(directory)
        self._unsynced.clear()
        data = self.manifest.to_bytes()
        atomic_write(self.root / pf.MANIFEST, data, self.fsync, make_parent=False)
        for rel in self._dropped:
            (self.root / rel).unlink(missing_ok=True)
        self._dropped.clear()
        return pf.sha256_bytes(data)

    @property
    def total_bytes(self) -> int:
        """Bytes of the listed files (kept as a running total: the progress bar reads it every batch)."""
        return self._bytes


def rewrite_manifest_json(root: str | os.PathLike[str], edit: Callable[[dict[str, Any]], None],
                          files: Mapping[str, bytes] | None = None) -> str:
    """The raw-JSON way in, for the red-team suite and the fuzz campaign: write and list ``files``, let ``edit``
    change the manifest's JSON as it will (nothing checks it: judging it is the reader's job), and write it the
    way the writer writes a manifest. Returns the proof's new identity."""
    root = Path(root)
    raw = ProofWriter.read_manifest(root)
    if raw is None:
        raise ProofDirectoryError(f"no proof manifest in {root}")
    for rel, data in (files or {}).items():
        atomic_write(root / rel, data, fsync=False)
        raw["files"][rel] = FileEntry(pf.sha256_bytes(data), len(data)).to_json()
    edit(raw)
    data = manifest_bytes(raw)
    atomic_write(root / pf.MANIFEST, data, fsync=False, make_parent=False)
    return pf.sha256_bytes(data)
