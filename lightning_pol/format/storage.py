"""Where a proof's files live: a local directory, or any fsspec URL (``s3://``, ``gs://``, ``az://``, ...).

One small interface, two stores, so that the writer and the reader keep one
definition of the proof and of its commit order whatever holds the bytes:

- :class:`LocalStore`: today's guarantees. A file is written to a temporary
  name, fsynced and renamed into place; it is read through ``O_NOFOLLOW``
  and checked on the open descriptor (no symlink, no hard link, no FIFO).
- :class:`ObjectStore`: an fsspec filesystem, resolved as Lightning resolves
  a ``ModelCheckpoint(dirpath=...)`` (``fsspec.core.url_to_fs``, which
  ``lightning.fabric.utilities.cloud_io.get_filesystem`` calls),
  so fsspec's own configuration (``FSSPEC_S3_ENDPOINT_URL``,
  ``FSSPEC_S3_KEY``, ...) applies, and ``storage_options`` adds what it
  cannot say. Object stores have no rename: an object is written once,
  whole, under its final name (a PUT, or a multipart upload that appears
  when it completes), and the manifest, written last, is the commit, as the
  rename of the manifest is on a local disk.

Reads check sizes before anything is allocated: from ``fstat`` of the open
file locally, and remotely from the object's listed size and again while the
bytes stream in (an object replaced between the two cannot make a read
larger than its cap).
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_pol.errors import PoLError, one_line
from lightning_pol.format import layout
from lightning_pol.format.strict_json import ProofFormatError

_CHUNK = 1 << 20


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a modest machine
        return 16 << 30


#: The largest file a reader hashes or loads: half of this machine's memory. A listed file (or a weights file)
#: above it is refused before it is read (a sparse file can claim a terabyte for free).
MAX_FILE_BYTES = _physical_memory() // 2
#: Size of a multipart upload's parts: a checkpoint above it is uploaded in parts (S3 takes 5 MiB to 5 GiB).
UPLOAD_PART_BYTES = 64 << 20


class ProofStorageError(PoLError, OSError):
    """The storage cannot be written or reached (a server down, no permission, a filesystem not installed)."""


def is_url(location: str | os.PathLike[str]) -> bool:
    """True for a location with a protocol other than a local file's (``s3://b/p``; ``file://`` is local)."""
    text = os.fspath(location)
    protocol, sep, _ = text.partition("://")
    return bool(sep) and (protocol not in ("", "file", "local") and "/" not in protocol or "::" in text)


def check_location(location: str | os.PathLike[str]) -> None:
    """Refuse, in one line, a URL whose filesystem is not installed or that fsspec does not know: such a
    location would otherwise be a local directory named ``s3:``, and the proof would land where nobody asked."""
    if not is_url(location):
        return
    if "::" in os.fspath(location):  # fsspec's chained URLs (zip://a::s3://b): one filesystem, one root
        raise ProofStorageError(f"{location}: a chained URL (::) cannot hold a proof; name the filesystem that holds it")
    protocol = os.fspath(location).partition("://")[0]
    import fsspec

    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as e:
        raise ProofStorageError(f"{location}: the {protocol}:// filesystem is not installed ({one_line(e)})") from None
    except ValueError:
        raise ProofStorageError(f"{location}: fsspec knows no {protocol}:// filesystem") from None


def read_object(url: str, limit: int) -> bytes:
    """One file at a URL (a published weights file), refused before a byte is read when its size passes ``limit``."""
    parent, _, name = url.rstrip("/").rpartition("/")
    if "://" not in parent:
        raise ProofStorageError(f"{url}: not a URL of a file")
    return ObjectStore(parent).read(name, limit)


def open_store(location: str | os.PathLike[str] | ProofStore, storage_options: Mapping[str, Any] | None = None) -> ProofStore:
    """The store of ``location``: a :class:`ProofStore` as given, an fsspec URL, or a local directory."""
    if isinstance(location, ProofStore):
        return location
    if is_url(location):
        return ObjectStore(os.fspath(location), storage_options)
    text = os.fspath(location)
    return LocalStore(Path(text.partition("://")[2] if text.startswith(("file://", "local://")) else text))


def plain_options(value: Any) -> Any:
    """Options as plain dicts and lists (a Hydra config's nodes are not what a filesystem's client expects)."""
    if isinstance(value, Mapping):
        return {str(k): plain_options(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_options(v) for v in value]
    return value


class ProofStore:
    """A proof's root and its files, by relative path (``checkpoints/step-000000008.safetensors``)."""

    #: The root as the user named it, for messages and reports (a local path or a URL).
    location: str
    #: The root on this machine's filesystem, or None for an object store.
    local_root: Path | None = None
    options: dict[str, Any] = {}

    def url(self, rel: str = "") -> str:
        return f"{self.location.rstrip('/')}/{rel}" if rel else self.location

    def is_container(self) -> bool:
        """The root exists and can hold files (a directory; a prefix with objects under it)."""
        raise NotImplementedError

    def files(self) -> list[str]:
        """Every file under the root, by relative path (symlinks too, locally: a proof never holds one)."""
        raise NotImplementedError

    def read(self, rel: str, limit: int, exact: int | None = None) -> bytes:
        """The bytes of ``rel``, refused before a byte is read when larger than ``limit`` (or not ``exact``)."""
        return b"".join(self.chunks(rel, limit, exact))

    def chunks(self, rel: str, limit: int, exact: int | None = None) -> Iterator[bytes]:
        """The bytes of ``rel`` in blocks, checked as :meth:`read` checks them: memory stays one block."""
        raise NotImplementedError

    def write(self, rel: str, data: bytes | Sequence[Any], fsync: bool = True) -> None:
        """Write ``rel`` so that a reader sees the old file or the whole new one, never part of one."""
        raise NotImplementedError

    def sync(self, rels: Sequence[str]) -> None:
        """Make the names of files written with ``fsync`` durable (a local directory's fsync; nothing on a store)."""

    def delete(self, rel: str) -> None:
        raise NotImplementedError

    def _size_checked(self, rel: str, size: int, limit: int, exact: int | None) -> None:
        if size > limit:
            raise ProofFormatError(f"{rel} is larger than allowed ({size} > {limit} bytes)")
        if exact is not None and size != exact:
            raise ProofFormatError(f"digest mismatch: {rel} ({size} bytes, the manifest says {exact})")


class LocalStore(ProofStore):
    """A local directory, with the guarantees a local disk gives: atomic renames, fsync, ``O_NOFOLLOW``."""

    def __init__(self, root: Path) -> None:
        self.local_root = root
        self.location = str(root)
        self.options = {}
        self._made: set[Path] = set()  # directories written into already: no mkdir per file

    def is_container(self) -> bool:
        return self.local_root.is_dir()

    def exists(self) -> bool:
        return self.local_root.exists()

    def files(self) -> list[str]:
        root, found = self.local_root, []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                found.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
        return found

    def _regular(self, rel: str) -> Path:
        """Resolve ``rel`` inside the root without following any symlink (checked again on the open file)."""
        if not layout.is_safe_relative_path(rel):
            raise ProofFormatError(f"unsafe path in manifest: {rel[:100]!r}")
        path = self.local_root
        for part in rel.split("/"):
            path = path / part
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                raise ProofFormatError(f"missing file: {rel}") from None
            except OSError as e:  # a name too long, a component that is not a directory...
                raise ProofFormatError(f"cannot open {rel[:200]} ({e.strerror})") from None
            if stat.S_ISLNK(st.st_mode):
                raise ProofFormatError(f"symlink in proof: {rel}")
        if not stat.S_ISREG(st.st_mode):
            raise ProofFormatError(f"not a regular file: {rel}")
        return path

    def _open(self, rel: str, limit: int, exact: int | None) -> tuple[int, int]:
        """An open descriptor of the regular file ``rel`` and its size, checked on the open file (``fstat``),
        so a file swapped after the path was checked is caught too; O_NONBLOCK keeps a FIFO from blocking
        the open. A file with more than one name (a hard link) is refused: its other names may lie outside."""
        path = self._regular(rel)
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags)
        except OSError as e:
            raise ProofFormatError(f"cannot open {rel} ({e.strerror})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ProofFormatError(f"not a regular file: {rel}")
            if st.st_nlink != 1:
                raise ProofFormatError(f"hard link in proof: {rel} has {st.st_nlink} names")
            self._size_checked(rel, st.st_size, limit, exact)
        except BaseException:
            os.close(fd)
            raise
        return fd, st.st_size

    def read(self, rel: str, limit: int, exact: int | None = None) -> bytes:
        fd, size = self._open(rel, limit, exact)
        with open(fd, "rb", closefd=True) as fh:
            data = fh.read(size + 1)  # the buffer is sized from the file itself, never from a declared number
        if len(data) != size:
            raise ProofFormatError(f"{rel} changed size while being read")
        return data

    def chunks(self, rel: str, limit: int, exact: int | None = None) -> Iterator[bytes]:
        fd, size = self._open(rel, limit, exact)
        with open(fd, "rb", closefd=True) as fh:
            left = size + 1
            while left > 0:
                block = fh.read(min(_CHUNK, left))
                if not block:
                    break
                left -= len(block)
                if left > 0:
                    yield block
        if left != 1:
            raise ProofFormatError(f"{rel} changed size while being read")

    def write(self, rel: str, data: bytes | Sequence[Any], fsync: bool = True) -> None:
        path = self.local_root / rel
        atomic_write(path, data, fsync, make_parent=path.parent not in self._made, sync_dir=False)
        self._made.add(path.parent)

    def sync(self, rels: Sequence[str]) -> None:
        for directory in sorted({(self.local_root / rel).parent for rel in rels}):
            _fsync_dir(directory)

    def delete(self, rel: str) -> None:
        (self.local_root / rel).unlink(missing_ok=True)


class ObjectStore(ProofStore):
    """An fsspec filesystem at ``location`` (``s3://bucket/run/proof``).

    Every call that reaches the store turns the filesystem's error into one line that names the URL: a
    :class:`ProofStorageError` when writing or listing, a :class:`ProofFormatError` when a proof's object
    cannot be read (what a verifier reports about the proof).
    """

    def __init__(self, location: str, storage_options: Mapping[str, Any] | None = None) -> None:
        from fsspec.core import url_to_fs  # what lightning.fabric's get_filesystem calls: the same filesystem, the same config

        check_location(location)
        self.location = location.rstrip("/")
        self.options = plain_options(storage_options or {})
        try:
            # Its own instance: fsspec shares one per set of options, listings cached, and a proof read after another
            # process changed it (a resumed run, a forger) must be read as it is now.
            self.fs = url_to_fs(self.location, skip_instance_cache=True, **self.options)[0]
        except Exception as e:  # noqa: BLE001 - a filesystem's constructor raises what it likes about its options
            raise ProofStorageError(f"{location}: cannot open the filesystem ({one_line(e)})") from None
        self._root = self.fs._strip_protocol(self.location).rstrip("/")

    def _path(self, rel: str) -> str:
        if not layout.is_safe_relative_path(rel) and rel != layout.MANIFEST:
            raise ProofFormatError(f"unsafe path in manifest: {rel[:100]!r}")
        return f"{self._root}/{rel}"

    def _failed(self, what: str, rel: str, e: BaseException) -> ProofStorageError:
        return ProofStorageError(f"cannot {what} {self.url(rel)} ({one_line(e)})")

    def is_container(self) -> bool:
        try:
            self.fs.invalidate_cache(self._root)
            return bool(self.fs.isdir(self._root))
        except Exception as e:  # noqa: BLE001
            raise self._failed("reach", "", e) from None

    def files(self) -> list[str]:
        try:
            self.fs.invalidate_cache(self._root)
            found = self.fs.find(self._root, withdirs=False)
        except FileNotFoundError:
            return []
        except Exception as e:  # noqa: BLE001
            raise self._failed("list", "", e) from None
        prefix = self._root + "/"
        return sorted(p[len(prefix):] for p in found if p.startswith(prefix))

    def _size(self, rel: str) -> int:
        path = self._path(rel)
        try:
            self.fs.invalidate_cache(path)  # the object's size now, not a listing's
            info = self.fs.info(path)
        except FileNotFoundError:
            raise ProofFormatError(f"missing file: {rel}") from None
        except Exception as e:  # noqa: BLE001
            raise ProofFormatError(f"cannot read {self.url(rel)} ({one_line(e)})") from None
        if info.get("type") != "file" or not isinstance(info.get("size"), int):
            raise ProofFormatError(f"not a regular file: {rel}")
        return info["size"]

    def chunks(self, rel: str, limit: int, exact: int | None = None) -> Iterator[bytes]:
        size = self._size(rel)
        self._size_checked(rel, size, limit, exact)
        got = 0
        try:
            with self.fs.open(self._path(rel), "rb", block_size=_CHUNK, cache_type="none") as fh:
                while True:
                    block = fh.read(min(_CHUNK, size + 1 - got))
                    if not block:
                        break
                    got += len(block)
                    if got > size:
                        break
                    yield block
        except ProofFormatError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ProofFormatError(f"cannot read {self.url(rel)} ({one_line(e)})") from None
        if got != size:
            raise ProofFormatError(f"{rel} changed size while being read")

    def write(self, rel: str, data: bytes | Sequence[Any], fsync: bool = True) -> None:
        path = self._path(rel)
        try:  # one object, whole: a PUT, or parts of UPLOAD_PART_BYTES that appear together when the upload completes
            fh = self.fs.open(path, "wb", block_size=UPLOAD_PART_BYTES)
        except Exception as e:  # noqa: BLE001
            raise self._failed("write", rel, e) from None
        try:
            for part in (data,) if isinstance(data, bytes) else data:
                fh.write(part)
        except BaseException as e:
            fh.discard()  # never a part-written object under the final name (s3fs aborts the multipart upload)
            fh.closed = True
            if isinstance(e, Exception):
                raise self._failed("write", rel, e) from None
            raise
        try:
            fh.close()
        except Exception as e:  # noqa: BLE001
            raise self._failed("write", rel, e) from None

    def delete(self, rel: str) -> None:
        try:  # a key found under the root (a stray name included), or one this writer put: no path rule to pass
            self.fs.rm_file(f"{self._root}/{rel}")
        except FileNotFoundError:
            pass
        except Exception as e:  # noqa: BLE001
            raise self._failed("delete", rel, e) from None


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
    """Write ``data`` (bytes, or a sequence of buffers written one after another) to the local ``path`` so that
    readers see the old file or the new one, never a torn one.

    With ``sync_dir=False`` the rename is not yet durable: the caller syncs the directory later.
    """
    if make_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{layout.TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
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
