"""The only way a proof is loaded: every file is treated as hostile input.

Nothing here unpickles or imports anything named by the proof. Paths are
checked before they are opened, sizes before anything is allocated (and a
buffer is only ever as large as the file really is), digests before anything
is parsed. Every problem becomes a :class:`ProofFormatError` with a one-line
reason.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import struct
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as safetensors_load

from lightning_pol import proof_format as pf
from lightning_pol.errors import PoLError
from lightning_pol.index_log import IndexLog
from lightning_pol.state_codec import decode_state, tensor_refs

#: Size caps of the JSON a proof holds, generous for real proofs (a manifest takes about 250 bytes per
#: checkpoint, a checkpoint's header about 200 bytes per tensor) and small enough that parsing at
#: the cap stays in the low hundreds of MB.
MAX_MANIFEST_BYTES = 16 << 20
MAX_HEADER_BYTES = 16 << 20
_HASH_CHUNK = 1 << 20


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a modest machine
        return 16 << 30


#: Most values (an upper bound: commas, brackets and braces) a JSON document may hold. Parsing
#: 64 MiB of ``[[],[],...`` builds 1.6 GB of lists; half a million values stay near 100 MB
#: whatever their shape. A manifest needs about ten per checkpoint.
MAX_JSON_VALUES = 500_000

#: The largest file this reader hashes or loads: half of this machine's memory. A listed file
#: above it is refused before it is read (a sparse file can claim a terabyte for free).
MAX_FILE_BYTES = _physical_memory() // 2

_DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}


class ProofFormatError(PoLError, ValueError):
    """The proof is malformed, tampered with, or not a proof at all."""


def _int(value: Any, minimum: int = 0) -> bool:
    """A JSON integer (not a bool) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


_ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)", re.ASCII)


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))  # type: ignore[func-returns-value]
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def load_json(doc: bytes | str, what: str) -> Any:
    """Strict JSON, as the writer writes it: UTF-8, no duplicate keys, no NaN or Infinity, bounded size.

    Strict because the proof's identity is the hash of its bytes: a document that two parsers
    could read differently (a duplicate key: Python keeps the last, others the first; UTF-16,
    which Python detects and others refuse) must not verify.
    """
    try:
        text = doc.decode("utf-8") if isinstance(doc, bytes) else doc
        text.encode("utf-8")  # a lone surrogate from a \ud800 escape upstream is not UTF-8 either
    except UnicodeError:
        raise ProofFormatError(f"{what} is not valid JSON (not UTF-8)") from None
    if text.count(",") + text.count("[") + text.count("{") > MAX_JSON_VALUES:
        raise ProofFormatError(f"{what} holds more than {MAX_JSON_VALUES} JSON values")
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant, parse_float=_finite)
    except _DuplicateKey as e:
        raise ProofFormatError(f"{what} has the key {str(e)[:80]!r} twice") from None
    except (ValueError, RecursionError) as e:
        raise ProofFormatError(f"{what} is not valid JSON ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None


def _open_regular(root: Path, rel: str) -> Path:
    """Resolve ``rel`` inside ``root`` without following any symlink (checked again on the open file)."""
    if not pf.is_safe_relative_path(rel):
        raise ProofFormatError(f"unsafe path in manifest: {rel[:100]!r}")
    path = root
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


def parse_safetensors_header(data: bytes, name: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Validate a safetensors buffer's header against its size; return (tensor entries, metadata)."""
    if len(data) < 8:
        raise ProofFormatError(f"{name}: too short for safetensors")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise ProofFormatError(f"{name}: safetensors header size {n} exceeds the file")
    header = load_json(data[8 : 8 + n], f"{name}: safetensors header")
    if not isinstance(header, dict):
        raise ProofFormatError(f"{name}: safetensors header is not an object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ProofFormatError(f"{name}: bad safetensors metadata")
    body = len(data) - 8 - n
    spans = []
    for key, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise ProofFormatError(f"{name}: bad entry for tensor {key!r}")
        dtype, shape, offs = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _DTYPE_SIZES:
            raise ProofFormatError(f"{name}: tensor {key!r} has unsupported dtype {str(dtype)[:40]!r}")
        if not isinstance(shape, list) or not all(_int(s) for s in shape):
            raise ProofFormatError(f"{name}: tensor {key!r} has a bad shape")
        if not (isinstance(offs, list) and len(offs) == 2 and all(_int(o) for o in offs)):
            raise ProofFormatError(f"{name}: tensor {key!r} has bad offsets")
        begin, end = offs
        numel = 1
        for s in shape:
            numel *= s
        if not 0 <= begin <= end <= body or end - begin != numel * _DTYPE_SIZES[dtype]:
            raise ProofFormatError(f"{name}: tensor {key!r} does not fit its declared size")
        spans.append((begin, end))
    spans.sort()
    for (b0, e0), (b1, _) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ProofFormatError(f"{name}: overlapping tensors")
    return header, metadata


class ProofReader:
    """Read-only view of a proof directory.

    Example::

        proof = ProofReader("proof/")
        print(proof.identity, [c["step"] for c in proof.checkpoints])
        state = proof.load_checkpoint(proof.checkpoints[0])
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ProofFormatError(f"{self.root} is not a directory")
        raw = self._read_raw(pf.MANIFEST, MAX_MANIFEST_BYTES)
        self.identity = pf.sha256_bytes(raw)
        manifest = load_json(raw, "manifest.json")
        self.manifest = self._validate_manifest(manifest)

    # -- manifest ----------------------------------------------------------------
    @staticmethod
    def _validate_manifest(m: Any) -> dict[str, Any]:
        if not isinstance(m, dict) or m.get("format") != pf.FORMAT_NAME:
            raise ProofFormatError("manifest.json is not a lightning-pol proof manifest")
        if not _int(m.get("format_version")) or m["format_version"] not in pf.READABLE_VERSIONS:
            raise ProofFormatError(
                f"unknown format version {m.get('format_version')!r}; this reader reads {list(pf.READABLE_VERSIONS)}"
            )
        files = m.get("files")
        if not isinstance(files, dict):
            raise ProofFormatError("manifest has no file list")
        for rel, entry in files.items():
            if not pf.is_safe_relative_path(rel) or rel == pf.MANIFEST:
                raise ProofFormatError(f"unsafe path in manifest: {rel[:100]!r}")
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("sha256"), str)
                or len(entry["sha256"]) != 64
                or not _int(entry.get("bytes"))
            ):
                raise ProofFormatError(f"bad file entry for {rel}")
        ckpts = m.get("checkpoints")
        if not isinstance(ckpts, list):
            raise ProofFormatError("manifest has no checkpoint list")
        last, last_epoch = -1, 0
        for c in ckpts:
            if not isinstance(c, dict) or not _int(c.get("step")) or not _int(c.get("epoch")) or not isinstance(c.get("path"), str):
                raise ProofFormatError("bad checkpoint entry")
            if c["step"] <= last:
                raise ProofFormatError("checkpoint steps are not strictly increasing")
            if c["epoch"] < last_epoch:
                raise ProofFormatError("checkpoint epochs decrease")
            last, last_epoch = c["step"], c["epoch"]
            if c.get("path") not in files or files[c["path"]]["sha256"] != c.get("sha256"):
                raise ProofFormatError(f"checkpoint at step {c['step']} is not listed with a matching digest")
        for key in ("every_n_steps", "seed"):
            if not _int(m.get(key), 1 if key == "every_n_steps" else 0):
                raise ProofFormatError(f"manifest field {key} is missing or invalid")
        chunks = m.get("index_log")
        if not isinstance(chunks, list):
            raise ProofFormatError("manifest has no index log")
        expected = 0
        for c in chunks:
            if not isinstance(c, dict) or not isinstance(c.get("path"), str) or c["path"] not in files or not _int(c.get("first_step")) or c["first_step"] != expected:
                raise ProofFormatError("index log chunks are missing, unlisted or out of order")
            if not _int(c.get("steps")):
                raise ProofFormatError("bad index log chunk")
            expected += c["steps"]
        ProofReader._validate_fields(m)
        return m

    @staticmethod
    def _validate_fields(m: dict[str, Any]) -> None:
        """Types of the fields the verifier and the replay read, so none reaches them malformed."""
        data = m.get("data")
        if not isinstance(data, dict) or not _int(data.get("size")) or data["size"] >= 2**63:  # indices are int64
            raise ProofFormatError("manifest field data is missing or invalid")
        committed = isinstance(data.get("leaves"), str) and isinstance(data.get("root"), str)
        # A run commits to its data after its first epoch; until then both are null.
        if not committed and not (data.get("leaves") is None and data.get("root") is None and m.get("status") == pf.STATUS_IN_PROGRESS):
            raise ProofFormatError("manifest field data is missing or invalid")
        for key in ("training", "environment", "init"):
            if not isinstance(m.get(key), dict):
                raise ProofFormatError(f"manifest field {key} is missing or invalid")
        threads = m["environment"].get("torch_threads")
        if threads is not None and not _int(threads, 1):  # the verifier runs with this many threads
            raise ProofFormatError("manifest field environment.torch_threads is invalid")
        for key, required in (("module", True), ("datamodule", False)):
            spec = m.get(key)
            if spec is None and not required:
                continue
            if not isinstance(spec, dict) or not isinstance(spec.get("class"), str) or not isinstance(spec.get("hparams"), dict):
                raise ProofFormatError(f"manifest field {key} is missing or invalid")
        if m.get("final_step") is not None and not _int(m["final_step"]):
            raise ProofFormatError("manifest field final_step is invalid")
        if m.get("parent") is not None and not isinstance(m["parent"], dict):
            raise ProofFormatError("manifest field parent is invalid")
        runs = m.get("sample_epochs")
        if not isinstance(runs, list) or not all(isinstance(r, list) and len(r) == 2 and _int(r[0]) and _int(r[1]) for r in runs):
            raise ProofFormatError("manifest field sample_epochs is missing or invalid")
        if any(b[0] <= a[0] or b[1] < a[1] for a, b in zip(runs, runs[1:])):
            raise ProofFormatError("manifest field sample_epochs is not in step order")
        if any(r[1] >= 2**63 for r in runs):  # seeds hash an epoch as a signed 64-bit integer
            raise ProofFormatError("manifest field sample_epochs has an epoch past 2**63")
        if runs and runs[0] != [0, 0]:  # every run starts with the first batch of epoch 0
            raise ProofFormatError("manifest field sample_epochs does not start at step 0 in epoch 0")
        training = m["training"]
        for key in ("steps_per_epoch", "accumulate_grad_batches", "world_size"):
            if training.get(key) is not None and not _int(training[key], 1):
                raise ProofFormatError(f"manifest field training.{key} is invalid")
        # The typed JSON the replay decodes (and whose values reach the declared classes): malformed
        # here is a format error, not a ValueError deep inside the replay.
        typed = {"training": training, "module.hparams": m["module"]["hparams"], "init.params": m["init"].get("params") or {}}
        if m.get("datamodule") is not None:
            typed["datamodule.hparams"] = m["datamodule"]["hparams"]
        decoded = {}
        for key, value in typed.items():
            try:
                decoded[key] = decode_state({}, value)
            except (ValueError, RecursionError) as e:
                raise ProofFormatError(f"manifest field {key} is not valid typed JSON ({str(e)[:200] or type(e).__name__})") from None
        batches, per_epoch = decoded["training"].get("num_training_batches"), training.get("steps_per_epoch")
        if not _int(batches) and batches != math.inf:
            raise ProofFormatError("manifest field training.num_training_batches is invalid")
        limit = decoded["training"].get("limit_train_batches")
        if limit is not None and not _int(limit) and not (isinstance(limit, float) and 0.0 <= limit <= 1.0):
            raise ProofFormatError("manifest field training.limit_train_batches is invalid")  # True would read as 1
        if training.get("batch_size") is not None and not _int(training["batch_size"], 1):
            raise ProofFormatError("manifest field training.batch_size is invalid")
        if training.get("drop_last") not in (None, True, False):
            raise ProofFormatError("manifest field training.drop_last is invalid")
        created = m.get("created")
        try:  # the pattern too: fromisoformat alone reads "02:31:13y+00:00" as a time
            if not isinstance(created, str) or not _ISO_TIME.fullmatch(created):
                raise ValueError(created)
            datetime.fromisoformat(created)
        except ValueError:
            raise ProofFormatError("manifest field created is not an ISO 8601 time") from None
        if not isinstance(m.get("run_id"), str) or not re.fullmatch(r"[0-9a-f]{1,64}", m["run_id"]):
            raise ProofFormatError("manifest field run_id is not a hex string")
        if _int(batches) and per_epoch != -(-batches // (training.get("accumulate_grad_batches") or 1)):
            raise ProofFormatError("manifest field training.steps_per_epoch is not num_training_batches / accumulate_grad_batches")

    @property
    def checkpoints(self) -> list[dict[str, Any]]:
        return self.manifest["checkpoints"]

    @property
    def recorded_steps(self) -> int:
        """Number of optimizer steps whose batches the index log holds."""
        return sum(c["steps"] for c in self.manifest["index_log"])

    # -- files -------------------------------------------------------------------
    def _open(self, rel: str, limit: int, exact: int | None = None) -> tuple[int, int]:
        """An open descriptor of the regular file ``rel`` and its size, checked before a byte is read.

        The checks are made on the open file (``fstat``), so a file swapped after the path was checked
        is caught too; O_NONBLOCK keeps a FIFO from blocking the open. A file with more than one
        name (a hard link) is refused: its other names may lie outside the proof.
        """
        path = _open_regular(self.root, rel)
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
            if st.st_size > limit:
                raise ProofFormatError(f"{rel} is larger than allowed ({st.st_size} > {limit} bytes)")
            if exact is not None and st.st_size != exact:
                raise ProofFormatError(f"digest mismatch: {rel} ({st.st_size} bytes, the manifest says {exact})")
        except BaseException:
            os.close(fd)
            raise
        return fd, st.st_size

    def _read_raw(self, rel: str, limit: int, exact: int | None = None) -> bytes:
        """The bytes of ``rel``: the buffer is sized from the file itself, never from a declared number."""
        fd, size = self._open(rel, limit, exact)
        with open(fd, "rb", closefd=True) as fh:
            data = fh.read(size + 1)
        if len(data) != size:
            raise ProofFormatError(f"{rel} changed size while being read")
        return data

    def _entry(self, rel: str) -> dict[str, Any]:
        entry = self.manifest["files"].get(rel)
        if entry is None:
            raise ProofFormatError(f"{rel} is not listed in the manifest")
        if entry["bytes"] > MAX_FILE_BYTES:
            raise ProofFormatError(f"{rel} is listed with {str(entry['bytes'])[:30]} bytes, more than this reader loads ({MAX_FILE_BYTES})")
        return entry

    def read_file(self, rel: str) -> bytes:
        """The bytes of a listed file, after checking its size and digest."""
        entry = self._entry(rel)
        data = self._read_raw(rel, entry["bytes"], exact=entry["bytes"])
        if pf.sha256_bytes(data) != entry["sha256"]:
            raise ProofFormatError(f"digest mismatch: {rel}")
        return data

    def check_file(self, rel: str) -> None:
        """Size and digest of a listed file, hashed in chunks: memory stays constant whatever its size."""
        entry = self._entry(rel)
        fd, size = self._open(rel, entry["bytes"], exact=entry["bytes"])
        h = hashlib.sha256()
        with open(fd, "rb", closefd=True) as fh:
            left = size + 1
            while left > 0:
                block = fh.read(min(_HASH_CHUNK, left))
                if not block:
                    break
                h.update(block)
                left -= len(block)
        if left != 1:
            raise ProofFormatError(f"{rel} changed size while being read")
        if h.hexdigest() != entry["sha256"]:
            raise ProofFormatError(f"digest mismatch: {rel}")

    def verify_files(self) -> list[str]:
        """Problems with listed files, and unlisted files in the directory; empty when all is well."""
        problems = []
        for rel in self.manifest["files"]:
            try:
                self.check_file(rel)
            except ProofFormatError as e:
                problems.append(str(e))
        listed = set(self.manifest["files"]) | {pf.MANIFEST}
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                rel = os.path.relpath(os.path.join(dirpath, name), self.root).replace(os.sep, "/")
                if rel not in listed:
                    problems.append(f"unlisted file: {rel}")
        return problems

    def read_tensors(self, rel: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        data = self.read_file(rel)
        _, metadata = parse_safetensors_header(data, rel)
        try:
            tensors = safetensors_load(data)
        except Exception as e:  # safetensors raises its own error types
            raise ProofFormatError(f"{rel}: unreadable safetensors ({e})") from None
        return tensors, metadata

    # -- typed content ---------------------------------------------------------------
    def load_checkpoint(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Decoded training state of one checkpoint entry of :attr:`checkpoints`."""
        rel = entry["path"]
        tensors, metadata = self.read_tensors(rel)
        if set(metadata) != {pf.CHECKPOINT_STATE_KEY}:
            raise ProofFormatError(f"{rel}: checkpoint metadata must hold exactly the key {pf.CHECKPOINT_STATE_KEY!r}")
        tree = load_json(metadata[pf.CHECKPOINT_STATE_KEY], f"{rel}: checkpoint state")
        if not isinstance(tree, dict):
            raise ProofFormatError(f"{rel}: malformed checkpoint state (not a JSON object)")
        try:
            state = decode_state(tensors, tree)
        except (ValueError, RecursionError) as e:
            raise ProofFormatError(f"{rel}: malformed checkpoint state ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None
        unused = set(tensors) - tensor_refs(tree)
        if unused:  # a checkpoint's tensors are the ones its state refers to
            raise ProofFormatError(f"{rel}: tensors the state does not refer to: {sorted(unused)[:3]}")
        rng = state.get("rng")
        torch_rng = rng.get("torch") if isinstance(rng, dict) else None
        if not isinstance(torch_rng, torch.Tensor) or torch_rng.dtype != torch.uint8 or torch_rng.dim() != 1:
            raise ProofFormatError(f"{rel}: rng.torch is not a flat uint8 tensor")
        if state.get("format") != pf.FORMAT_NAME or not _int(state.get("format_version")) or state["format_version"] not in pf.READABLE_VERSIONS:
            raise ProofFormatError(f"{rel}: not a checkpoint of a readable format version")
        progress = state.get("progress")
        if not isinstance(progress, dict) or not _int(progress.get("global_step")) or progress["global_step"] != entry["step"]:
            raise ProofFormatError(f"{rel}: its step does not match the manifest")
        if not _int(progress.get("epoch")) or progress["epoch"] != entry["epoch"]:
            raise ProofFormatError(f"{rel}: its epoch does not match the manifest")
        batch_idx, batches = progress.get("batch_idx"), self.manifest["training"].get("num_training_batches")
        if batch_idx is not None and (not _int(batch_idx) or (_int(batches) and batch_idx >= batches)):
            raise ProofFormatError(f"{rel}: its batch index is not a batch of an epoch")
        if batch_idx is None and entry is not self.checkpoints[-1]:  # only the state at the end of training has none
            raise ProofFormatError(f"{rel}: only the last checkpoint may have no batch index")
        if entry["step"] == 0 and (progress["epoch"] != 0 or batch_idx not in (0, None)):
            raise ProofFormatError(f"{rel}: step 0 is not the first batch of epoch 0")
        if not isinstance(state.get("model"), dict):
            raise ProofFormatError(f"{rel}: no model state")
        return state

    def index_log(self) -> IndexLog:
        """The whole index log; step t used ``log.step(t)``."""
        parts = []
        for chunk in self.manifest["index_log"]:
            tensors, _ = self.read_tensors(chunk["path"])
            try:
                part = IndexLog.from_tensors(tensors)
            except ValueError as e:
                raise ProofFormatError(f"{chunk['path']}: malformed index log ({e})") from None
            if part.steps != chunk["steps"]:
                raise ProofFormatError(f"{chunk['path']}: holds {part.steps} steps, the manifest says {chunk['steps']}")
            parts.append(part)
        log = IndexLog.concat(parts)
        size = self.manifest["data"]["size"]
        if len(log.indices) and (log.indices.min() < 0 or log.indices.max() >= size):
            raise ProofFormatError("index log holds indices outside the dataset")
        training = self.manifest["training"]
        accumulate = training.get("accumulate_grad_batches") or 1
        world = training.get("world_size") or 1
        if training.get("automatic_optimization") is True and log.steps:
            # Lightning steps once per accumulate_grad_batches micro-batches (fewer at an epoch's end), never on none;
            # a DDP step holds exactly one micro-batch a rank.
            # Without this, moving a step boundary (step 0 empty, step 2 of three micro-batches) changes nothing a replay sees.
            per_step = torch.searchsorted(log.batch_offsets, log.offsets).diff()
            low, high = (world, world) if world > 1 else (1, accumulate)
            if bool((per_step < low).any()) or bool((per_step > high).any()):
                raise ProofFormatError(f"index log has steps of {int(per_step.min())} to {int(per_step.max())} micro-batches; "
                                       f"accumulate_grad_batches is {accumulate}, world_size {world}")
        return log

    def leaves(self) -> torch.Tensor:
        data = self.manifest.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("leaves"), str):
            raise ProofFormatError("manifest has no data commitment")
        tensors, _ = self.read_tensors(data["leaves"])
        leaves = tensors.get(pf.LEAVES_KEY)
        if leaves is None or len(tensors) != 1 or leaves.dtype != torch.uint8 or leaves.dim() != 2 or leaves.shape[1] != 32:
            raise ProofFormatError("malformed leaves file")
        if leaves.shape[0] != data.get("size"):
            raise ProofFormatError("leaves do not match the declared dataset size")
        return leaves
