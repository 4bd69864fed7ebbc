"""Lossless conversion of training state to safetensors tensors plus typed JSON.

A checkpoint's state (module ``state_dict``, optimizer and scheduler states,
RNG states, counters) is a tree of dicts, lists, tuples, numbers and tensors.
Pickle would store it in one line and let a proof run code on the verifier's
machine, so instead every tensor goes to safetensors under a dotted path and
the rest of the tree goes to JSON with a few type markers. The encoding is
specified in ``docs/proof-format.md`` ("Typed JSON").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from lightning_pol.errors import PoLError

TENSOR = "__tensor__"
NDARRAY = "__ndarray__"
TUPLE = "__tuple__"
DICT = "__dict__"
FLOAT = "__float__"
NPSCALAR = "__npscalar__"
DTYPE = "__torch_dtype__"
#: References to a tensor stored elsewhere (format.tensor_refs): resolved by the reader before decoding.
SAME, ROOT = "__same__", "__root__"
MARKERS = frozenset({TENSOR, NDARRAY, TUPLE, DICT, FLOAT, NPSCALAR, DTYPE, SAME, ROOT})
#: ``refer(name, tensor)``: a reference object to write instead of storing the tensor, or None to store it.
Refer = Callable[[str, torch.Tensor], "dict[str, Any] | None"]

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
#: numpy scalar kinds ``_encode`` can write (bool, int, uint, float, str: their ``item()`` is JSON).
#: Others are refused when decoding: ``np.void(2**31 - 1)`` alone allocates 2 GiB.
_SCALAR_KINDS = frozenset("biufU")
#: ``torch.dtype`` names, read off the module once: ``getattr(torch, name)`` on a name from a file
#: would run torch's module ``__getattr__``, which imports submodules (``_dynamo``, ``onnx``...).
_TORCH_DTYPES = {name: v for name, v in vars(torch).items() if isinstance(v, torch.dtype)}


class StateEncodingError(PoLError, ValueError):
    """A value in the training state has no pickle-free representation."""


def encode_state(state: Mapping[str, Any], refer: Refer | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``state`` into named CPU tensors and a JSON-ready tree that refers to them.

    A tensor's name is its path in the tree joined with dots, so the module's
    ``state_dict`` stored under ``"model"`` lands at ``model.<state_dict key>``.
    ``refer`` may name a tensor by a reference instead (format.tensor_refs); its
    name is then taken all the same, so every other tensor keeps its name.
    """
    out = _Encoding(refer)
    tree = {str(k): _encode(v, str(k), out) for k, v in state.items()}
    return out.tensors, tree


class _Encoding:
    """The tensors stored so far, the names taken (stored or referenced), and the writer's ``refer``."""

    def __init__(self, refer: Refer | None) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.taken: set[str] = set()
        self.refer = refer

    def name(self, path: str) -> str:
        name, n = path, 0
        while name in self.taken:
            n += 1
            name = f"{path}#{n}"
        self.taken.add(name)
        return name


def decode_state(tensors: Mapping[str, torch.Tensor], tree: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`encode_state`. Raises ``ValueError`` (or ``RecursionError``) on a malformed tree, nothing else:
    the tree comes from a proof, and numpy's own complaints (TypeError, OverflowError) are about the proof too."""
    if not isinstance(tree, Mapping):
        raise ValueError(f"the state is a {type(tree).__name__}, not a JSON object")
    try:
        return {k: _decode(v, tensors) for k, v in tree.items()}
    except (TypeError, OverflowError) as e:
        raise ValueError(f"{type(e).__name__}: {e}") from None


def tensor_refs(tree: Any) -> set[str]:
    """Names of the tensors a typed-JSON tree refers to (``__tensor__`` and ``__ndarray__``)."""
    refs: set[str] = set()
    stack = [tree]
    while stack:
        obj = stack.pop()
        if isinstance(obj, list):
            stack.extend(obj)
        elif isinstance(obj, dict):
            for marker in (TENSOR, NDARRAY):
                if isinstance(obj.get(marker), str):
                    refs.add(obj[marker])
            stack.extend(obj.values())
    return refs


def _plain_key(k: Any) -> bool:
    return isinstance(k, str) and not k.startswith("__")


def _encode(obj: Any, path: str, out: _Encoding) -> Any:
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return {FLOAT: "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")}
    if isinstance(obj, torch.Tensor):
        if obj.is_sparse or obj.device.type == "meta" or obj.is_complex() or obj.is_quantized:
            raise StateEncodingError(f"cannot store tensor at {path!r} ({obj.dtype}, {obj.layout}, {obj.device})")
        name = out.name(path)
        tensor = obj.detach().cpu()  # not copied: the file is written from the tensor's own memory
        ref = out.refer(name, tensor) if out.refer is not None else None
        if ref is not None:
            return ref
        out.tensors[name] = tensor
        return {TENSOR: name}
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise StateEncodingError(f"cannot store object array at {path!r}")
        name = out.name(path)
        raw = np.ascontiguousarray(obj)
        out.tensors[name] = torch.frombuffer(bytearray(raw.tobytes()), dtype=torch.uint8) if raw.nbytes else torch.empty(0, dtype=torch.uint8)
        return {NDARRAY: name, "dtype": raw.dtype.str, "shape": list(raw.shape)}
    if isinstance(obj, np.generic):
        if isinstance(obj, np.object_):
            raise StateEncodingError(f"cannot store numpy object at {path!r}")
        return {NPSCALAR: obj.dtype.str, "value": _encode(obj.item(), path, out)}
    if isinstance(obj, torch.dtype):
        return {DTYPE: str(obj).removeprefix("torch.")}
    if isinstance(obj, tuple):
        return {TUPLE: [_encode(v, f"{path}.{i}", out) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}.{i}", out) for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        if all(_plain_key(k) for k in obj):
            return {k: _encode(v, f"{path}.{k}", out) for k, v in obj.items()}
        return {DICT: [[_encode(k, f"{path}.key{i}", out), _encode(v, f"{path}.{k}", out)]
                       for i, (k, v) in enumerate(obj.items())]}
    raise StateEncodingError(
        f"cannot store {type(obj).__module__}.{type(obj).__qualname__} at {path!r} without pickle"
    )


def _decode(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if obj is None or isinstance(obj, (bool, str, int, float)):
        return obj
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        raise ValueError(f"unexpected JSON value of type {type(obj).__name__}")
    marker = next((k for k in obj if k in MARKERS), None)
    if marker is None:
        if not all(_plain_key(k) for k in obj):
            raise ValueError("JSON object with a reserved key")
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if marker == TENSOR:
        return _tensor(obj, TENSOR, tensors, {TENSOR})
    if marker in (SAME, ROOT):
        raise ValueError("a tensor reference left unresolved (references are resolved by the proof reader)")
    if marker == NDARRAY:
        raw = _tensor(obj, NDARRAY, tensors, {NDARRAY, "dtype", "shape"})
        if raw.dtype != torch.uint8 or raw.dim() != 1:
            raise ValueError(f"the raw bytes of an ndarray must be a flat uint8 tensor, not {raw.dtype} {list(raw.shape)}")
        dtype = np.dtype(_expect(obj, "dtype", str))
        if dtype.hasobject:
            raise ValueError("object arrays are not allowed")
        shape = _expect(obj, "shape", list)
        if not all(isinstance(s, int) and s >= 0 for s in shape):
            raise ValueError("bad ndarray shape")
        return np.frombuffer(raw.numpy().tobytes(), dtype=dtype).reshape(shape).copy()
    if marker == TUPLE:
        _only(obj, {TUPLE})
        return tuple(_decode(v, tensors) for v in _expect(obj, TUPLE, list))
    if marker == DICT:
        _only(obj, {DICT})
        out: dict[Any, Any] = {}
        for pair in _expect(obj, DICT, list):
            if not isinstance(pair, list) or len(pair) != 2:
                raise ValueError("bad __dict__ entry")
            key = _decode(pair[0], tensors)
            if isinstance(key, (list, dict)):
                raise ValueError("unhashable __dict__ key")
            out[key] = _decode(pair[1], tensors)
        return out
    if marker == FLOAT:
        _only(obj, {FLOAT})
        value = obj[FLOAT]
        if value not in _NONFINITE:
            raise ValueError("bad __float__ value")
        return _NONFINITE[value]
    if marker == NPSCALAR:
        _only(obj, {NPSCALAR, "value"})
        dtype = np.dtype(_expect(obj, NPSCALAR, str))
        if dtype.hasobject or dtype.kind not in _SCALAR_KINDS:
            raise ValueError(f"numpy scalars of dtype {dtype.str!r} are not allowed")
        return dtype.type(_decode(obj["value"], tensors))
    _only(obj, {DTYPE})
    dtype = _TORCH_DTYPES.get(_expect(obj, DTYPE, str))
    if dtype is None:
        raise ValueError("unknown torch dtype")
    return dtype


def _only(obj: dict, allowed: set[str]) -> None:
    if set(obj) != allowed:
        raise ValueError(f"marker object with keys {sorted(obj)}")


def _expect(obj: dict, key: str, kind: type) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind):
        raise ValueError(f"{key} must be a {kind.__name__}")
    return value


def _tensor(obj: dict, key: str, tensors: Mapping[str, torch.Tensor], allowed: set[str]) -> torch.Tensor:
    _only(obj, allowed)
    name = _expect(obj, key, str)
    if name not in tensors:
        raise ValueError(f"reference to missing tensor {name!r}")
    return tensors[name]
