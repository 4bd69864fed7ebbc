"""safetensors files as a proof writes and reads them: one function each way, and one place that checks a header."""

from __future__ import annotations

import functools
import json
import struct
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from lightning_pol.format.strict_json import ProofFormatError, is_int, load_json

#: Size cap of a safetensors header: a checkpoint's header takes about 200 bytes per tensor.
MAX_HEADER_BYTES = 16 << 20

#: Bytes per element of each safetensors dtype this reader reads.
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}


#: The safetensors name of each torch dtype a proof's tensors may have.
_DTYPE_NAMES = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.int32: "I32", torch.int64: "I64",
    torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64",
    torch.float8_e5m2: "F8_E5M2", torch.float8_e4m3fn: "F8_E4M3",
    **{getattr(torch, f"uint{n}"): f"U{n}" for n in (16, 32, 64) if hasattr(torch, f"uint{n}")},
}


def safetensors_parts(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> list[Any]:
    """The safetensors file of ``tensors`` as a list of buffers: its header, then each tensor's own memory.

    Nothing of the size of the tensors is copied (a contiguous CPU tensor's bytes are a view of it), so a
    checkpoint of a large model is hashed and written without a second copy of the state in memory
    (docs/performance.md, "Memory"). The bytes are those of ``safetensors.torch.save`` (tested): the
    library orders tensors by dtype, then by name, and we ask it for that order on one-element stand-ins.
    """
    views = {k: byte_view(t) for k, t in tensors.items()}
    order = _library_order({k: t.dtype for k, t in tensors.items()})
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    at = 0
    for key in order:
        t, n = tensors[key], views[key].nbytes
        header[key] = {"dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [at, at + n]}
        at += n
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the library pads the header with spaces to a multiple of 8 bytes
    return [struct.pack("<Q", len(text)) + text, *(views[k] for k in order)]


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors file of ``tensors`` (:func:`safetensors_parts`, joined)."""
    return b"".join(safetensors_parts(tensors, metadata))


def byte_view(t: torch.Tensor) -> memoryview:
    """The bytes of ``t`` in C order: a view of its own memory when it is a contiguous CPU tensor."""
    if t.dtype not in _DTYPE_NAMES:
        raise TypeError(f"a proof cannot store a tensor of dtype {t.dtype}")
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    flat = (t if t.is_contiguous() else t.contiguous()).reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


@functools.lru_cache(maxsize=256)
def _order_of(key: tuple[tuple[str, torch.dtype], ...]) -> tuple[str, ...]:
    stand_ins = {name: torch.zeros(1, dtype=dtype) for name, dtype in key}
    data = safetensors_save(stand_ins)
    (n,) = struct.unpack("<Q", data[:8])
    return tuple(k for k in json.loads(data[8 : 8 + n]) if k != "__metadata__")


def _library_order(dtypes: dict[str, torch.dtype]) -> tuple[str, ...]:
    return _order_of(tuple(sorted(dtypes.items(), key=lambda kv: kv[0])))


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
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
            raise ProofFormatError(f"{name}: tensor {key!r} has unsupported dtype {str(dtype)[:40]!r}")
        if not isinstance(shape, list) or not all(is_int(s) for s in shape):
            raise ProofFormatError(f"{name}: tensor {key!r} has a bad shape")
        if not (isinstance(offs, list) and len(offs) == 2 and all(is_int(o) for o in offs)):
            raise ProofFormatError(f"{name}: tensor {key!r} has bad offsets")
        begin, end = offs
        numel = 1
        for s in shape:
            numel *= s
        if not 0 <= begin <= end <= body or end - begin != numel * DTYPE_SIZES[dtype]:
            raise ProofFormatError(f"{name}: tensor {key!r} does not fit its declared size")
        spans.append((begin, end))
    spans.sort()
    for (b0, e0), (b1, _) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ProofFormatError(f"{name}: overlapping tensors")
    return header, metadata


def load_safetensors(data: bytes, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a safetensors buffer, its header checked first."""
    _, metadata = parse_safetensors_header(data, name)
    try:
        tensors = safetensors_load(data)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types, each about the file
        raise ProofFormatError(f"{name}: unreadable safetensors ({e})") from None
    return tensors, metadata
