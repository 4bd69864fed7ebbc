"""The class gate: every class a proof names is checked before it is imported for use, or anything of it runs.

The verifier replays a proof through the classes it names (module, datamodule,
optimizers, schedulers), calling them with the proof's hparams. So an import
path in a proof is hostile input: ``subprocess:Popen`` as the module would be
``Popen(args=...)``. A named class must be of the kind its role needs, and its
top-level module must come from this machine, not from the proof directory
(where it could land on ``sys.path`` when the verifier runs from inside it).
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_pol.format.classes import NotRecreatableError, resolve_import_path
from lightning_pol.format.reader import ProofReader

_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$", re.ASCII)


def declared_class(root: str | os.PathLike[str], path: Any, base: type | None, what: str) -> type:
    """Import the class a proof names, refusing what the verifier must never run.

    The top-level module is located with ``find_spec``, which finds it without
    running it: one inside the proof directory is refused before it is imported.
    """
    if not isinstance(path, str) or not _IMPORT_PATH.match(path):
        raise NotRecreatableError(f"the proof's {what} class {str(path)[:80]!r} is not an import path module:QualName")
    top = path.partition(":")[0].split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError) as e:
        raise NotRecreatableError(f"cannot import the proof's {what} {path!r} ({type(e).__name__}: {e})") from None
    if spec is None:
        raise NotRecreatableError(f"cannot import the proof's {what} {path!r} (ModuleNotFoundError: No module named {top!r})")
    proof = Path(root).resolve()
    for location in [spec.origin, *(spec.submodule_search_locations or [])]:
        if location and location not in ("built-in", "frozen") and Path(location).resolve().is_relative_to(proof):
            raise NotRecreatableError(f"the proof's {what} {path!r} would be imported from inside the proof directory")
    try:
        cls = resolve_import_path(path)
    except Exception as e:  # noqa: BLE001 - an installed module that fails to import, or a missing attribute: the proof's
        raise NotRecreatableError(f"cannot import the proof's {what} {path!r} ({type(e).__name__}: {e})".splitlines()[0]) from None
    if base is not None and not (isinstance(cls, type) and issubclass(cls, base)):
        raise NotRecreatableError(f"the proof's {what} {path!r} is not a {base.__module__}.{base.__qualname__}")
    return cls


def declared_classes(reader: ProofReader) -> dict[str, type]:
    """Every class the proof names, each through :func:`declared_class`, before any of them is called.

    Returns the module's and the datamodule's (keys ``module``, ``datamodule``); the optimizers' and
    schedulers' are checked for their kind.
    """
    m = reader.manifest
    declared: list[tuple[str, Any, type | None]] = [("module", m.module.import_path, pl.LightningModule)]
    if m.datamodule is not None:
        declared.append(("datamodule", m.datamodule.import_path, pl.LightningDataModule))
    training = m.training_values()
    for key, base in (("optimizers", torch.optim.Optimizer), ("lr_schedulers", None)):
        entries = training.get(key)
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, Mapping) and "class" in entry:
                declared.append((key[:-1].replace("lr_", "LR "), entry["class"], base))
    classes: dict[str, type] = {}
    for what, path, base in declared:
        cls = declared_class(reader.root, path, base, what)
        classes.setdefault(what, cls)
        # Lightning's own rule: a scheduler that is not a torch LRScheduler needs the module's lr_scheduler_step.
        if what == "LR scheduler" and not issubclass(cls, torch.optim.lr_scheduler.LRScheduler) and (
            getattr(classes["module"], "lr_scheduler_step", None) is getattr(pl.LightningModule, "lr_scheduler_step", None)
        ):
            raise NotRecreatableError(f"the proof's LR scheduler {path!r} is not a torch LRScheduler, and the module has no lr_scheduler_step")
    return {k: v for k, v in classes.items() if k in ("module", "datamodule")}
