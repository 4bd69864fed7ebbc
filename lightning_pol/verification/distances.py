"""How far apart two states are: l1, l2, l-infinity and cosine distances over all floating-point state, and bit identity."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from lightning_pol.errors import PoLError
from lightning_pol.runtime.training_state import effective_weights

METRICS = ("l1", "l2", "linf", "cos")


class StateMismatchError(PoLError, ValueError):
    """Two states that should be of one model are not (other keys or shapes): one of them is not the proof's model."""


def flat_float_state(state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Every floating-point tensor of a state_dict (parameters and buffers), flattened in key order, as float64."""
    parts = [v.detach().reshape(-1).to("cpu", torch.float64) for k, v in sorted(state.items()) if isinstance(v, torch.Tensor) and v.is_floating_point()]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def distances(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``{l1, l2, linf, cos}`` between two state_dicts with the same keys and shapes.

    Cosine distance is ``1 - <a,b> / (|a| |b|)`` of the flattened states (0 when
    both are zero). A pruned tensor counts as the network computes it (``orig * mask``), so a state
    before pruning and one after compare.
    """
    a, b = effective_weights(dict(a)), effective_weights(dict(b))
    if set(a) != set(b):
        raise StateMismatchError("the states have different keys")
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            raise StateMismatchError(f"{k} is a tensor in one state only")
        if isinstance(x, torch.Tensor) and (x.dtype != y.dtype or tuple(x.shape) != tuple(y.shape)):
            raise StateMismatchError(f"{k} is {x.dtype} {list(x.shape)} and {y.dtype} {list(y.shape)}")
    x, y = flat_float_state(a), flat_float_state(b)
    d = x - y
    nx, ny = float(x.norm()), float(y.norm())
    # 1 - <a,b>/(|a||b|) computed as |a/|a| - b/|b||^2 / 2: the same value, without the cancellation
    # that leaves ~1e-15 for identical states and swamps the tiny distances of near-exact replays.
    cos = 0.0 if nx == 0 and ny == 0 else (1.0 if nx == 0 or ny == 0 else float((x / nx - y / ny).pow(2).sum()) / 2)
    out = {
        "l1": float(d.abs().sum()),
        "l2": float(d.norm()),
        "linf": float(d.abs().max()) if len(d) else 0.0,
        "cos": max(cos, 0.0) if math.isfinite(cos) else math.inf,
    }
    return {k: (v if math.isfinite(v) else math.inf) for k, v in out.items()}


def identical(a: Any, b: Any) -> bool:
    """Bit-for-bit equality of two decoded states (tensors by dtype, shape and bytes)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
            and a.shape == b.shape and torch.equal(a.detach().cpu(), b.detach().cpu())
        )
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return list(a.keys()) == list(b.keys()) and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b
