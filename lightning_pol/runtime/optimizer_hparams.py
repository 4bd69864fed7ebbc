"""The optimizer hyperparameters a proof's checks compare: the prover at fit start, the verifier on W_0."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

HPARAM_KEYS = ("lr", "momentum", "betas", "weight_decay", "dampening", "eps", "nesterov", "alpha", "rho", "lr_decay")


def group_hparams(opt_state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each param group's hyperparameters, from an optimizer's ``state_dict()``."""
    return [{k: g[k] for k in HPARAM_KEYS if k in g} for g in opt_state.get("param_groups", [])]


def close(a: Any, b: Any) -> bool:
    """Equal up to float rounding (a decoded state stores some numbers as tensors, a live one as floats)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-15)
    if isinstance(a, torch.Tensor):
        return close(a.tolist(), b.tolist() if isinstance(b, torch.Tensor) else b)
    return a == b
