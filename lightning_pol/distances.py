"""Distances between model states: l1, l2, l-infinity and cosine, over all floating-point state."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

METRICS = ("l1", "l2", "linf", "cos")


def flat_float_state(state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Every floating-point tensor of a state_dict (parameters and buffers), flattened in key order, as float64."""
    parts = [v.detach().reshape(-1).to("cpu", torch.float64) for k, v in sorted(state.items()) if isinstance(v, torch.Tensor) and v.is_floating_point()]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def distances(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``{l1, l2, linf, cos}`` between two state_dicts with the same keys and shapes.

    Cosine distance is ``1 - <a,b> / (|a| |b|)`` of the flattened states (0 when
    both are zero).
    """
    if set(a) != set(b):
        raise ValueError("the states have different keys")
    for k in a:
        if isinstance(a[k], torch.Tensor) and tuple(a[k].shape) != tuple(b[k].shape):
            raise ValueError(f"{k} has shape {tuple(a[k].shape)} and {tuple(b[k].shape)}")
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
