"""The class gate: every class a proof names is checked before it is imported for use, or anything of it runs.

The verifier replays a proof through the classes it names (module, datamodule,
optimizers, schedulers) and the targets its recorded configs name (a Hydra
``_target_``, a LightningCLI ``class_path``, nested ones included), calling them
with the proof's values. So an import path in a proof is hostile input:
``subprocess:Popen`` as the module, or as a network inside it, would be
``Popen(args=...)``. Each must be of the kind its role needs
(:func:`lightning_pol.runtime.recreation.gated`), and its top-level module must
come from this machine, not from the proof directory (where it could land on
``sys.path`` when the verifier runs from inside it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_pol.format.classes import NotRecreatableError
from lightning_pol.format.manifest import ClassSpec
from lightning_pol.format.reader import ProofReader
from lightning_pol.format.script_record import names_script_class
from lightning_pol.runtime.recreation import apply_overrides, builder, gated
from lightning_pol.runtime.replayed_callbacks import replayable_callback
from lightning_pol.runtime.training_script import TrainingScript


def declared_class(root: str | os.PathLike[str], path: Any, base: type | None, what: str) -> type:
    """Import the class a proof names, refusing what the verifier must never run (:func:`gated`, top-level form)."""
    if not isinstance(path, str) or ":" not in path:
        raise NotRecreatableError(f"the proof's {what} class {str(path)[:80]!r} is not an import path module:QualName")
    cls = gated(path, root, what, base if base is not None else object)
    if not isinstance(cls, type):
        raise NotRecreatableError(f"the proof's {what} {path!r} is not a class")
    return cls


def declared_classes(reader: ProofReader, overrides: Mapping[str, Mapping[str, Any]] | None = None,
                     script: TrainingScript | None = None) -> dict[str, Any]:
    """Every class the proof names, each through the gate, before any of them is called.

    Returns the module's and the datamodule's (keys ``module``, ``datamodule``); their recorded configs'
    nested targets, and the optimizers' and schedulers' classes, are checked for their kind. A local path
    the re-created datamodule or module would read (``data_dir``) must exist here: where it does not, the
    verifier is told which override names it. A class of the training ``script`` (``__main__:QualName``) is
    the one the script on this machine defines, loaded under a name of its own; under its ``fit`` recipe, the
    module is what the script hands to ``fit``, checked when it runs.
    """
    m = reader.manifest
    overrides = overrides or {}
    declared: list[tuple[str, Any, type | None]] = [("module", m.module.import_path, pl.LightningModule)]
    if m.datamodule is not None:
        declared.append(("datamodule", m.datamodule.import_path, pl.LightningDataModule))
    elif overrides.get("datamodule"):
        raise NotRecreatableError("datamodule_overrides given, but the proof's data comes from its module (no datamodule)")
    training = m.training_values()
    for key, base in (("optimizers", torch.optim.Optimizer), ("lr_schedulers", None)):
        entries = training.get(key)
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, Mapping) and "class" in entry:
                declared.append((key[:-1].replace("lr_", "LR "), entry["class"], base))
    if script is not None and script.record.recipe == "fit" and any(overrides.values()):
        raise NotRecreatableError("module_overrides and datamodule_overrides do not apply to a proof whose module and data "
                                  "its training script hands to fit; the script's recorded arguments build them")
    if script is not None:
        script.check_arguments()  # the arguments the script will be loaded or run with
    classes: dict[str, type] = {}
    for what, path, base in declared:
        if script is not None and names_script_class(path):
            if what == "module" and script.record.recipe == "fit":
                classes["module"] = pl.LightningModule  # its class is checked on the module the script hands to fit
                continue
            path = script.import_path(path)
        elif names_script_class(path):
            raise NotRecreatableError(f"the proof's {what} {path!r} names the training script, and the proof records none")
        cls = declared_class(reader.local_root, path, base, what)
        classes.setdefault(what, cls)
        # Lightning's own rule: a scheduler that is not a torch LRScheduler needs the module's lr_scheduler_step.
        if what == "LR scheduler" and not issubclass(cls, torch.optim.lr_scheduler.LRScheduler) and (
            getattr(classes["module"], "lr_scheduler_step", None) is getattr(pl.LightningModule, "lr_scheduler_step", None)
        ):
            raise NotRecreatableError(f"the proof's LR scheduler {path!r} is not a torch LRScheduler, and the module has no lr_scheduler_step")
    for role, spec in (("module", m.module), ("datamodule", m.datamodule)):
        if spec is not None and spec.instantiator != "script":
            try:
                arguments = apply_overrides(_decoded(spec, role), overrides.get(role), role)
                builder(spec.instantiator, classes[role], arguments, reader.local_root, role)  # gates every nested target; calls nothing
            except (RecursionError, TypeError) as e:  # nested past Python's stack, or keys that do not compare
                raise NotRecreatableError(f"the proof's {role} recipe cannot be read ({type(e).__name__})") from None
            _local_paths_exist(spec, arguments, role)
    found: dict[str, Any] = {k: v for k, v in classes.items() if k in ("module", "datamodule")}
    found["callbacks"] = [_callback_class(reader, i, spec, script) for i, spec in enumerate(m.callbacks)]
    return found


def _callback_class(reader: ProofReader, i: int, spec: ClassSpec, script: TrainingScript | None) -> type:
    """A callback the replay runs (the manifest's ``callbacks``): a Lightning Callback, its recipe's targets gated."""
    what = f"callback {i}"
    path = script.import_path(spec.import_path) if script is not None else spec.import_path
    cls = declared_class(reader.local_root, path, Callback, what)
    if not replayable_callback(cls):
        raise NotRecreatableError(f"the proof's {what} {spec.import_path!r} is not a callback the prover replays (one of "
                                  f"Lightning's that change training, or the project's own); the verifier will not run it")
    if spec.instantiator == "lightning_cli":
        raise NotRecreatableError(f"the proof's {what} names the lightning_cli instantiator, which builds modules only")
    try:
        builder(spec.instantiator, cls, _decoded(spec, what), reader.local_root, what)  # gates every nested target; calls nothing
    except (RecursionError, TypeError) as e:
        raise NotRecreatableError(f"the proof's {what} recipe cannot be read ({type(e).__name__})") from None
    return cls


def _decoded(spec: ClassSpec, role: str) -> dict[str, Any]:
    try:
        return spec.arguments()
    except (ValueError, RecursionError) as e:
        raise NotRecreatableError(f"the proof's {role} hparams are not valid typed JSON ({str(e)[:100]})") from None


def _local_paths_exist(spec: ClassSpec, arguments: dict[str, Any], role: str) -> None:
    for key in spec.local_paths:
        value: Any = arguments
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, str) and not os.path.exists(os.path.expanduser(value)):
            raise NotRecreatableError(
                f"the proof's {role} reads {key}={value!r}, which does not exist here; "
                f"give its location here with {role}_overrides.{key}=PATH"
            )
