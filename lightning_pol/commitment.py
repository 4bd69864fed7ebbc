"""The data commitment: a SHA-256 leaf per training sample and their Merkle root.

A leaf commits to sample ``i`` exactly as the training pipeline produces it
(``dataset[i]``, label included) under the fixed seed
:func:`~lightning_pol.seeding.commitment_seed`, serialized canonically
("lightning-pol/sample-v1", docs/proof-format.md). The tree is RFC 6962's:
leaf hash ``SHA-256(0x00 || canonical(sample))``, node hash
``SHA-256(0x01 || left || right)``, split at the largest power of two below n.
All leaves are stored, so one sample is re-checked with one hash, and
:func:`inclusion_proof` gives a logarithmic proof for a party that holds only
the root.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_pol.errors import PoLError
from lightning_pol.seeding import SeededDataset, preserved_rng

SAMPLE_ENCODING = "lightning-pol/sample-v1"
TREE = "rfc6962-sha256"
DIGEST_SIZE = 32


class UnhashableSampleError(PoLError, TypeError):
    """A sample holds a value with no canonical serialization."""


def _u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def _text(tag: bytes, s: str) -> bytes:
    b = s.encode("utf-8")
    return tag + _u64(len(b)) + b


def canonical_chunks(obj: Any) -> Iterator[bytes]:
    """Yield the canonical, type-tagged serialization of one sample."""
    out: list[Any] = []
    _encode(obj, out)
    return iter([c if isinstance(c, bytes) else c.tobytes() for c in out])  # copies of the fast path's array views


_DTYPE_TAGS: dict[torch.dtype, bytes] = {}


def _tensor_tag(dtype: torch.dtype) -> bytes:
    tag = _DTYPE_TAGS.get(dtype)
    if tag is None:
        tag = _DTYPE_TAGS[dtype] = _text(b"T", str(dtype).removeprefix("torch."))
    return tag


#: ``T`` tag, dims, shape and byte count of a tensor, per (dtype, shape): one lookup instead of four packs.
_TENSOR_HEADS: dict[tuple[torch.dtype, torch.Size], bytes] = {}
_LIST_HEADS = [b"l" + struct.pack("<Q", n) for n in range(16)]


def _encode(obj: Any, out: list[Any]) -> None:
    # Appends to one list instead of nesting generators: this runs for every
    # sample of the first epoch, in the DataLoader workers, where it competes
    # with training for the CPU. The exact types of common samples (a tuple of
    # a plain CPU tensor and an int) take the first branches; they write the
    # bytes the general branches below would (a tensor's as a numpy view, C-contiguous).
    cls = type(obj)
    if cls is tuple or cls is list:
        n = len(obj)
        out.append(_LIST_HEADS[n] if n < 16 else b"l" + _u64(n))
        for v in obj:
            _encode(v, out)
        return
    if cls is int:
        out.append(_text(b"i", str(obj)))
        return
    if cls is torch.Tensor and obj.is_cpu and obj.layout is torch.strided and not obj.is_quantized and obj.is_contiguous():
        head = _TENSOR_HEADS.get((obj.dtype, obj.shape))
        if head is not None:
            out.append(head)
            out.append((obj.detach() if obj.requires_grad else obj).numpy())  # a view: leaf_hash reads it at once
            return
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.is_sparse or t.is_quantized:
            raise UnhashableSampleError(f"cannot hash a {t.layout} tensor")
        if not t.is_contiguous():
            t = t.contiguous()
        head = _tensor_tag(t.dtype) + struct.pack(f"<{t.dim() + 1}Q", t.dim(), *t.shape)
        try:
            data = t.numpy().tobytes()  # the same bytes as the uint8 view below, a third of the cost
            if len(_TENSOR_HEADS) < 64 and not t.is_complex():  # the fast path may take the next one (never conj views)
                _TENSOR_HEADS[(t.dtype, t.shape)] = head + _u64(len(data))
        except (TypeError, RuntimeError):  # dtypes numpy lacks (bfloat16, float8...)
            data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        out.append(head)
        out.append(_u64(len(data)))
        out.append(data)
    elif obj is None:
        out.append(b"n")
    elif isinstance(obj, bool):
        out.append(b"b" + (b"\x01" if obj else b"\x00"))
    elif isinstance(obj, int):
        out.append(_text(b"i", str(obj)))
    elif isinstance(obj, float):
        out.append(b"f" + struct.pack("<d", obj))
    elif isinstance(obj, str):
        out.append(_text(b"s", obj))
    elif isinstance(obj, (bytes, bytearray)):
        out.append(b"y" + _u64(len(obj)) + bytes(obj))
    elif isinstance(obj, (np.ndarray, np.generic)):
        a = np.ascontiguousarray(obj)
        if a.dtype.hasobject:
            raise UnhashableSampleError("cannot hash a numpy object array")
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        out.append(_text(b"A", a.dtype.str) + _u64(a.ndim) + b"".join(_u64(s) for s in a.shape))
        out.append(_u64(a.nbytes))
        out.append(a.tobytes())
    elif isinstance(obj, (list, tuple)):
        out.append(b"l" + _u64(len(obj)))
        for v in obj:
            _encode(v, out)
    elif isinstance(obj, dict):
        keyed = []
        for k, v in obj.items():
            key: list[bytes] = []
            _encode(k, key)
            keyed.append((b"".join(key), v))
        keyed.sort(key=lambda kv: kv[0])
        out.append(b"d" + _u64(len(keyed)))
        for k, v in keyed:
            out.append(k)
            _encode(v, out)
    elif _is_pil_image(obj):
        data = obj.tobytes()
        out.append(_text(b"P", obj.mode) + _u64(obj.size[0]) + _u64(obj.size[1]) + _u64(len(data)) + data)
    else:
        raise UnhashableSampleError(f"cannot hash a sample value of type {type(obj).__module__}.{type(obj).__qualname__}")


def _is_pil_image(obj: Any) -> bool:
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "tobytes") and hasattr(obj, "mode")


def leaf_hash(sample: Any) -> bytes:
    out = [b"\x00"]
    _encode(sample, out)
    h = hashlib.sha256()
    for chunk in out:  # no joined copy of a large sample
        h.update(chunk)
    return h.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962 Merkle tree hash over leaf hashes, bottom-up (an odd node is promoted)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = list(leaves)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def _split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """RFC 6962 audit path of leaf ``index``."""
    if not 0 <= index < len(leaves):
        raise IndexError(index)
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return inclusion_proof(leaves[:k], index) + [merkle_root(leaves[k:])]
    return inclusion_proof(leaves[k:], index - k) + [merkle_root(leaves[:k])]


def verify_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes) -> bool:
    """Check an audit path from :func:`inclusion_proof` against a root (RFC 9162 §2.1.3.2)."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


class _LeafDataset(Dataset):
    """Leaves of samples, each fetched under its commitment seed, a batch at a time. The caller keeps its RNG
    streams (``preserved_rng`` around a loop, or a worker process whose RNG serves nothing else)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.seeded = SeededDataset(dataset, 0)  # fetches as epoch 0 of training does

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def digests(self, indices: list[int]) -> bytes:
        """The leaves of ``indices``, 32 bytes each, concatenated."""
        return b"".join([leaf_hash(sample) for sample in self.seeded.fetch_each(indices)])

    def __getitems__(self, indices: list[int]) -> list[bytes]:
        return [self.digests(list(indices))]  # one block a batch: _blocks joins them

    def __getitem__(self, index: int) -> bytes:
        return self.digests([index])


def _blocks(blocks: list[bytes]) -> torch.Tensor:
    """The DataLoader's collate_fn for :class:`_LeafDataset` batches: their leaves as ``[n, 32]``."""
    return torch.frombuffer(bytearray(b"".join(blocks)), dtype=torch.uint8).view(-1, DIGEST_SIZE)


def _fill(out: torch.Tensor, rows: Sequence[int], leaf: _LeafDataset, chunk: int = 256) -> None:
    """Hash the samples ``rows`` here into those rows of ``out``, ``chunk`` at a time."""
    view = out.numpy()
    for at in range(0, len(rows), chunk):
        part = list(rows[at : at + chunk])
        view[part] = np.frombuffer(leaf.digests(part), dtype=np.uint8).reshape(-1, DIGEST_SIZE)


def sample_leaf(dataset: Dataset, index: int) -> bytes:
    """The leaf of one sample: what a verifier recomputes for each replayed sample."""
    with preserved_rng():
        return _LeafDataset(dataset).digests([index])


class FirstEpochLeaves:
    """The leaves, hashed as the first training epoch fetches the samples.

    Epoch 0 fetches sample i under its commitment seed
    (:func:`~lightning_pol.seeding.commitment_seed`), so the sample it trains on
    is the committed one: hashing it there, in the DataLoader worker that
    fetched it, makes the commitment cost one hash a sample, off the training
    thread, instead of a pass over the data before training starts.

    The table lives in shared memory, so worker processes (forked or spawned)
    write into it. Only samples of batches that reached ``training_step`` are
    taken from it (:meth:`trained`): the worker wrote their rows before it sent
    the batch. Every other sample (never fetched in epoch 0, prefetched and
    dropped, or unhashable in the worker) is hashed here by :meth:`leaves`.
    """

    def __init__(self, size: int) -> None:
        # Column 32 says the row was written; it is set after the digest.
        self.table = torch.zeros((size, DIGEST_SIZE + 1), dtype=torch.uint8).share_memory_()
        self._bytes: memoryview | None = None
        self._trained: np.ndarray | None = np.zeros(size, dtype=bool)

    def __getstate__(self) -> dict[str, Any]:
        return {"table": self.table}  # a worker writes rows; what was trained is the main process's business

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.table, self._bytes, self._trained = state["table"], None, None

    def record(self, index: int, sample: Any) -> None:
        """Hash ``sample``, fetched in epoch 0 (in a worker or here), into row ``index``."""
        try:
            digest = leaf_hash(sample)
        except UnhashableSampleError:
            return  # left to leaves(), which raises it on the training thread
        if self._bytes is None:
            self._bytes = memoryview(self.table.numpy()).cast("B")  # the rows as one byte buffer: a slice write is cheapest
        at = index * (DIGEST_SIZE + 1)
        self._bytes[at : at + DIGEST_SIZE] = digest
        self._bytes[at + DIGEST_SIZE] = 1

    def trained(self, indices: Sequence[int]) -> None:
        """Samples of a batch that reached ``training_step`` in epoch 0."""
        assert self._trained is not None, "trained() is called in the process that owns the table"
        self._trained[indices] = True

    def trained_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, [m, 32] digests)`` of the rows of trained samples: what a DDP rank sends rank 0."""
        assert self._trained is not None, "trained_rows() is called in the process that owns the table"
        table = self.table.numpy()
        rows = np.flatnonzero(self._trained & (table[:, DIGEST_SIZE] == 1))
        return rows, table[rows, :DIGEST_SIZE].copy()

    def merge(self, indices: np.ndarray, digests: np.ndarray) -> None:
        """Take another rank's :meth:`trained_rows` as if this process had trained and hashed them."""
        assert self._trained is not None, "merge() is called in the process that owns the table"
        table = self.table.numpy()
        table[indices, :DIGEST_SIZE] = digests
        table[indices, DIGEST_SIZE] = 1
        self._trained[indices] = True

    def leaves(self, dataset: Dataset) -> torch.Tensor:
        """All leaves, ``[N, 32]``: rows of trained samples, and every other sample hashed here."""
        assert self._trained is not None, "leaves() is called in the process that owns the table"
        table = self.table.numpy()
        out = torch.from_numpy(table[:, :DIGEST_SIZE].copy())
        missing = np.flatnonzero(~(self._trained & (table[:, DIGEST_SIZE] == 1)))
        if missing.size:
            with preserved_rng():
                _fill(out, missing.tolist(), _LeafDataset(dataset))
        return out


def compute_leaves(
    dataset: Dataset,
    num_workers: int = 0,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    worker_threshold_s: float = 1.0,
) -> torch.Tensor:
    """Leaf hashes of every sample, as a ``uint8`` tensor of shape ``[len(dataset), 32]``.

    The first samples are hashed here; when the rest would take more than
    ``worker_threshold_s`` at that pace, it is hashed in ``num_workers``
    DataLoader workers, so a dataset with costly transforms is committed in
    parallel while a small one does not pay for starting worker processes.
    """
    n = len(dataset)  # type: ignore[arg-type]
    out = torch.empty((n, DIGEST_SIZE), dtype=torch.uint8)
    if n == 0:
        return out
    leaf = _LeafDataset(dataset)
    probe = min(n, batch_size)
    with preserved_rng():
        t = time.perf_counter()
        _fill(out, range(probe), leaf)
        pace = (time.perf_counter() - t) / probe
        if progress is not None:
            progress(probe)
        if probe == n:
            return out
        if num_workers == 0 or pace * (n - probe) < worker_threshold_s:
            for at in range(probe, n, batch_size):
                _fill(out, range(at, min(n, at + batch_size)), leaf)
                if progress is not None:
                    progress(min(n, at + batch_size))
            return out
    rest = Subset(leaf, range(probe, n))
    loader = DataLoader(rest, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_blocks)
    pos = probe
    for block in loader:
        out[pos : pos + len(block)] = block
        pos += len(block)
        if progress is not None:
            progress(pos)
    return out


def root_of(leaves: torch.Tensor) -> str:
    """Hex Merkle root of a ``[N, 32]`` leaf tensor."""
    raw = leaves.contiguous().numpy().tobytes()
    return merkle_root([raw[i : i + DIGEST_SIZE] for i in range(0, len(raw), DIGEST_SIZE)]).hex()
