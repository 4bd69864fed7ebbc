"""The proof directory's layout: the format's name and version, file names, path rules, the digest.

With the rest of :mod:`lightning_pol.format` (the manifest, checkpoints, the
index log, sample seeds and encoding), this is everything a third party needs
to read a proof. ``docs/proof-format.md`` describes the same things in prose;
change both in the same commit.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from collections.abc import Sequence
from typing import Any, BinaryIO

FORMAT_NAME = "lightning-pol/proof"
#: Raised on every incompatible change; the reader lists the versions it reads.
FORMAT_VERSION = 3
READABLE_VERSIONS = (2, 3)

MANIFEST = "manifest.json"
#: Size cap of the manifest, generous for real proofs (about 250 bytes per checkpoint), small enough that
#: parsing at the cap stays in the low hundreds of MB.
MAX_MANIFEST_BYTES = 16 << 20
CHECKPOINT_DIR = "checkpoints"
INDEX_LOG_DIR = "batches"
INDEX_LOG_FINAL = "batches.safetensors"
LEAVES = "data/leaves.safetensors"
#: Prefix of files being written; they never appear in a manifest and are
#: removed when a proof is reopened.
TMP_PREFIX = ".tmp-"

STATUS_IN_PROGRESS = "in_progress"
STATUS_COMPLETE = "complete"

#: Tensor names inside the index-log safetensors file.
INDICES_KEY = "indices"
OFFSETS_KEY = "offsets"
BATCH_OFFSETS_KEY = "batch_offsets"
#: Tensor name of the per-sample leaf hashes (uint8, shape [N, 32]).
LEAVES_KEY = "leaves"

#: safetensors ``__metadata__`` key that holds a checkpoint's non-tensor state.
CHECKPOINT_STATE_KEY = "lightning_pol.state"
#: Prefix of the module's state_dict tensors inside a checkpoint.
MODEL_PREFIX = "model."

_STEP_WIDTH = 9


#: Suffix of a checkpoint file in compressed form (a tiered proof's full states: format.compression).
COMPRESSED_SUFFIX = ".zlib"


def checkpoint_path(step: int, compressed: bool = False) -> str:
    """Relative path of the checkpoint taken after ``step`` optimizer steps (``compressed``: in compressed form)."""
    return f"{CHECKPOINT_DIR}/step-{step:0{_STEP_WIDTH}d}.safetensors" + (COMPRESSED_SUFFIX if compressed else "")


def index_chunk_path(first_step: int) -> str:
    """Relative path of an in-progress index-log chunk starting at ``first_step``."""
    return f"{INDEX_LOG_DIR}/from-{first_step:0{_STEP_WIDTH}d}.safetensors"


_SAFE_REL_PATH = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")


def is_safe_relative_path(rel: str) -> bool:
    """True for a plain relative path that cannot leave the proof directory."""
    if not isinstance(rel, str) or not _SAFE_REL_PATH.match(rel):
        return False
    parts = rel.split("/")
    return all(p not in (".", "..") and not p.startswith(TMP_PREFIX) for p in parts)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_parts(data: bytes | Sequence[Any]) -> tuple[str, int]:
    """SHA-256 and length of ``data``: bytes, or buffers that make one file together (never joined)."""
    if isinstance(data, bytes):
        return hashlib.sha256(data).hexdigest(), len(data)
    h, n = hashlib.sha256(), 0
    for part in data:
        h.update(part)
        n += memoryview(part).nbytes
    return h.hexdigest(), n


def sha256_stream(stream: BinaryIO, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    while True:
        block = stream.read(chunk)
        if not block:
            return h.hexdigest()
        h.update(block)


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)
