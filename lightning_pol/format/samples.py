"""The data commitment's definitions: the canonical encoding of a sample, its leaf hash, the Merkle tree.

A leaf commits to sample ``i`` exactly as the training pipeline produces it
(``dataset[i]``, label included) under the fixed seed
:func:`~lightning_pol.format.seeds.commitment_seed`, serialized canonically
("lightning-pol/sample-v1", docs/proof-format.md). The tree is RFC 6962's:
leaf hash ``SHA-256(0x00 || canonical(sample))``, node hash
``SHA-256(0x01 || left || right)``, split at the largest power of two below n.
All leaves are stored, so one sample is re-checked with one hash, and
:func:`inclusion_proof` gives a logarithmic proof for a party that holds only
the root. Fetching samples under their seeds and hashing them is
:mod:`lightning_pol.runtime.leaves`.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from lightning_pol.errors import PoLError
from lightning_pol.format import layout
from lightning_pol.format.safetensors_io import safetensors_bytes
from lightning_pol.format.strict_json import ProofFormatError

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


def root_of(leaves: torch.Tensor) -> str:
    """Hex Merkle root of a ``[N, 32]`` leaf tensor."""
    raw = leaves.contiguous().numpy().tobytes()
    return merkle_root([raw[i : i + DIGEST_SIZE] for i in range(0, len(raw), DIGEST_SIZE)]).hex()


def leaves_file_bytes(leaves: torch.Tensor) -> bytes:
    """The leaves file (``data/leaves.safetensors``) of a ``[N, 32]`` uint8 leaf tensor."""
    return safetensors_bytes({layout.LEAVES_KEY: leaves})


def leaves_from_tensors(tensors: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    """The leaf tensor of a leaves file's tensors, checked: one ``[size, 32]`` uint8 tensor."""
    leaves = tensors.get(layout.LEAVES_KEY)
    if leaves is None or len(tensors) != 1 or leaves.dtype != torch.uint8 or leaves.dim() != 2 or leaves.shape[1] != DIGEST_SIZE:
        raise ProofFormatError("malformed leaves file")
    if leaves.shape[0] != size:
        raise ProofFormatError("leaves do not match the declared dataset size")
    return leaves
