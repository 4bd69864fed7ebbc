"""safetensors files as a proof writes and reads them: one function each way, and one place that checks a header."""

from __future__ import annotations

import struct
from typing import Any

import torch
from safetensors.numpy import save as safetensors_numpy_save
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


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors file of ``tensors``: through numpy where it can, which gives the same bytes in a third of the time."""
    try:
        arrays = {k: _as_array(t) for k, t in tensors.items()}
    except (TypeError, RuntimeError):  # a dtype numpy lacks (bfloat16, float8...), or a tensor not in CPU memory
        return safetensors_save({k: t.contiguous() for k, t in tensors.items()}, metadata=metadata)
    return safetensors_numpy_save(arrays, metadata=metadata)


def _as_array(t: torch.Tensor) -> Any:
    # Every tensor is written as its own bytes (the writer's tensors are snapshots: none share memory).
    if t.device.type != "cpu" or t.requires_grad:
        raise TypeError("not a plain CPU tensor")
    return (t if t.is_contiguous() else t.contiguous()).numpy()


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
