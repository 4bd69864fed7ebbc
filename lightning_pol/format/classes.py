"""How a manifest names a class (``package.module:QualName``), and the error when one cannot be re-created."""

from __future__ import annotations

import importlib
from typing import Any

from lightning_pol.errors import PoLError


class NotRecreatableError(PoLError, ValueError):
    """The verifier could not re-create the module or the data from the proof."""


def import_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def resolve_import_path(path: str) -> type:
    """Import ``module:QualName``. Only for paths the prover wrote itself, or that the verifier's class gate
    (:mod:`lightning_pol.verification.gate`) let through: importing is running code."""
    module_name, _, qualname = path.partition(":")
    if not module_name or not qualname:
        raise ValueError(f"bad import path {path!r}")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise ValueError(f"{path!r} is not a class")
    return obj
