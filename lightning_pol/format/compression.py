"""The compressed form of a checkpoint file, in which a tiered proof stores its full states: both ways, and one check.

A float's bytes differ most in their low (mantissa) bytes and least in their high (sign, exponent) ones. With
every tensor's bytes regrouped by position (all first bytes, then all second bytes, ...) a compressor finds the
repeated exponents: zlib at level 1 then saves 11-16% of a model's state (docs/performance.md), at about 60 MB/s
on one core, on the writer thread. The standard library's zlib, not a new dependency: its ratio is within 1-2%
of zstd's, and a full state is written only every K steps.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from lightning_pol.format.safetensors_io import DTYPE_SIZES, parse_safetensors_header
from lightning_pol.format.strict_json import ProofFormatError

#: zlib level: 1 compresses at twice the speed of 6 and within 1% of its ratio on model states.
LEVEL = 1
#: The most a compressed checkpoint may expand: trained states compress to 0.83-0.88 of their bytes, a mostly
#: zero one (a sparse or pruned model) to a fraction; a zlib bomb expands a thousandfold, and a verifier's memory
#: would pay for what a small file claims.
MAX_EXPANSION = 256


def _spans(data: bytes, name: str) -> tuple[int, list[tuple[int, int, int]]]:
    """The body's start and its tensors as ``(begin, end, element size)``, in order, covering the body exactly."""
    header, _ = parse_safetensors_header(data, name)
    start = 8 + struct.unpack("<Q", data[:8])[0]
    spans = sorted((e["data_offsets"][0], e["data_offsets"][1], DTYPE_SIZES[e["dtype"]]) for e in header.values())
    at = 0
    for begin, end, _ in spans:
        if begin != at:
            raise ProofFormatError(f"{name}: its tensors do not cover its body contiguously")
        at = end
    if at != len(data) - start:
        raise ProofFormatError(f"{name}: its tensors do not cover its body contiguously")
    return start, spans


def _regroup(data: bytes, name: str, shuffle: bool) -> bytes:
    start, spans = _spans(data, name)
    parts = [data[:start]]
    for begin, end, size in spans:
        raw = np.frombuffer(data, np.uint8, end - begin, start + begin)
        # Shuffled: the (size, n) byte planes of n elements; plain: the (n, size) elements.
        parts.append((raw.reshape(-1, size).T if shuffle else raw.reshape(size, -1).T).tobytes())
    return b"".join(parts)


def compress_checkpoint(data: bytes) -> bytes:
    """The compressed form of the checkpoint file ``data``: its header as it is, each tensor's bytes regrouped by
    position, all of it through zlib."""
    return zlib.compress(_regroup(data, "checkpoint", shuffle=True), LEVEL)


def decompress_checkpoint(data: bytes, name: str, limit: int) -> bytes:
    """The checkpoint file of the compressed form ``data``; refuses more than ``limit`` bytes of output, or
    :data:`MAX_EXPANSION` times its size (a compressed file can claim any size), and anything that is not such a form."""
    limit = min(limit, MAX_EXPANSION * len(data) + (1 << 20))
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as e:
        raise ProofFormatError(f"{name}: not a compressed checkpoint ({e})") from None
    if len(out) > limit:
        raise ProofFormatError(f"{name}: decompresses to more than this reader loads ({limit} bytes)")
    if not d.eof or d.unused_data:
        raise ProofFormatError(f"{name}: not one complete compressed stream")
    return _regroup(out, name, shuffle=False)
