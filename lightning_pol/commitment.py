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
from lightning_pol.seeding import commitment_seed, preserved_rng, seed_everything_local

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
    if obj is None:
        yield b"n"
    elif isinstance(obj, bool):
        yield b"b" + (b"\x01" if obj else b"\x00")
    elif isinstance(obj, int):
        yield _text(b"i", str(obj))
    elif isinstance(obj, float):
        yield b"f" + struct.pack("<d", obj)
    elif isinstance(obj, str):
        yield _text(b"s", obj)
    elif isinstance(obj, (bytes, bytearray)):
        yield b"y" + _u64(len(obj)) + bytes(obj)
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        if t.is_sparse or t.is_quantized:
            raise UnhashableSampleError(f"cannot hash a {t.layout} tensor")
        yield _text(b"T", str(t.dtype).removeprefix("torch.")) + _u64(t.dim()) + b"".join(_u64(s) for s in t.shape)
        data = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else np.empty(0, np.uint8)
        yield _u64(data.nbytes)
        yield data.tobytes()
    elif isinstance(obj, (np.ndarray, np.generic)):
        a = np.ascontiguousarray(obj)
        if a.dtype.hasobject:
            raise UnhashableSampleError("cannot hash a numpy object array")
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        yield _text(b"A", a.dtype.str) + _u64(a.ndim) + b"".join(_u64(s) for s in a.shape)
        yield _u64(a.nbytes)
        yield a.tobytes()
    elif isinstance(obj, (list, tuple)):
        yield b"l" + _u64(len(obj))
        for v in obj:
            yield from canonical_chunks(v)
    elif isinstance(obj, dict):
        items = sorted(((b"".join(canonical_chunks(k)), v) for k, v in obj.items()), key=lambda kv: kv[0])
        yield b"d" + _u64(len(items))
        for k, v in items:
            yield k
            yield from canonical_chunks(v)
    elif _is_pil_image(obj):
        data = obj.tobytes()
        yield _text(b"P", obj.mode) + _u64(obj.size[0]) + _u64(obj.size[1]) + _u64(len(data)) + data
    else:
        raise UnhashableSampleError(f"cannot hash a sample value of type {type(obj).__module__}.{type(obj).__qualname__}")


def _is_pil_image(obj: Any) -> bool:
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "tobytes") and hasattr(obj, "mode")


def leaf_hash(sample: Any) -> bytes:
    h = hashlib.sha256(b"\x00")
    for chunk in canonical_chunks(sample):
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
    """Leaf of sample i, fetched under its commitment seed. The caller keeps its RNG streams
    (``preserved_rng`` around a loop, or a worker process whose RNG serves nothing else)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> torch.Tensor:
        seed_everything_local(commitment_seed(index))
        sample = self.dataset[index]
        return torch.frombuffer(bytearray(leaf_hash(sample)), dtype=torch.uint8)


def sample_leaf(dataset: Dataset, index: int) -> bytes:
    """The leaf of one sample: what a verifier recomputes for each replayed sample."""
    with preserved_rng():
        return bytes(_LeafDataset(dataset)[index].tolist())


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
        for i in range(probe):
            out[i] = leaf[i]
        pace = (time.perf_counter() - t) / probe
        if progress is not None:
            progress(probe)
        if probe == n:
            return out
        if num_workers == 0 or pace * (n - probe) < worker_threshold_s:
            for i in range(probe, n):
                out[i] = leaf[i]
                if progress is not None and (i + 1) % batch_size == 0:
                    progress(i + 1)
            if progress is not None:
                progress(n)
            return out
    rest = Subset(leaf, range(probe, n))
    loader = DataLoader(rest, batch_size=batch_size, shuffle=False, num_workers=num_workers)
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
