"""What a new proof's manifest records about the run: the training settings that shape the trajectory, as the
verifier's replay must set them again, and the rest of the manifest of a proof before its first checkpoint."""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_pol.format.classes import import_path
from lightning_pol.format.code_identity import CodeIdentity
from lightning_pol.format.ddp_record import recorded_arguments
from lightning_pol.format.environment import environment
from lightning_pol.format.manifest import (
    ClassSpec,
    DataCommitment,
    InitDeclaration,
    Manifest,
)
from lightning_pol.format.script_record import names_script_class
from lightning_pol.format.state_codec import encode_state
from lightning_pol.prover.other_callbacks import CallbackPlan
from lightning_pol.runtime.installed_code import (
    installed_code,
    named_classes,
    unidentified,
)
from lightning_pol.runtime.rng import preserved_rng
from lightning_pol.runtime.training_script import TrainingScript, script_record
from lightning_pol.runtime.training_state import compiled_submodules

log = logging.getLogger(__name__)


def training_settings(trainer: pl.Trainer, pl_module: pl.LightningModule, loader: Any, recorder: Any, size: int,
                      plan: CallbackPlan) -> dict[str, Any]:
    """The manifest's ``training`` (typed JSON): Trainer and loader settings, optimizers and schedulers at fit start.

    ``loader`` is the instrumented training DataLoader, ``recorder`` its
    :class:`~lightning_pol.prover.instrumentation.RecordingSampler` (or None); ``plan`` the other callbacks
    (:class:`~.other_callbacks.CallbackPlan`): those the replay does not run are recorded.
    """
    inner = recorder.inner if recorder is not None else None
    batched = recorder is not None and recorder.batched
    batches = trainer.num_training_batches
    accumulate = trainer.accumulate_grad_batches
    settings = {
        "precision": str(trainer.precision),
        "gradient_clip_val": trainer.gradient_clip_val,
        "gradient_clip_algorithm": trainer.gradient_clip_algorithm,
        "accumulate_grad_batches": accumulate,
        "max_epochs": plan.max_epochs,  # as the Trainer was given it: SWA adds its BatchNorm epoch at fit start
        "max_steps": trainer.max_steps,
        "limit_train_batches": trainer.limit_train_batches,
        "num_training_batches": batches,
        "steps_per_epoch": math.ceil(batches / accumulate) if math.isfinite(batches) else None,
        "estimated_stepping_batches": trainer.estimated_stepping_batches,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "benchmark": bool(torch.backends.cudnn.benchmark),
        "batch_size": loader.batch_size if loader.batch_size is not None else getattr(inner, "batch_size", None),
        "drop_last": loader.drop_last if loader.batch_size is not None else getattr(inner, "drop_last", None),
        "dataset_size": size,
        "dataset": _type_path(loader.dataset.dataset),
        "batch_sampler": _type_path(inner) if batched else None,
        "sampler": _type_path(getattr(inner, "sampler", None) if batched else inner),
        "num_workers": loader.num_workers,
        "automatic_optimization": pl_module.automatic_optimization,
        "accelerator": type(trainer.accelerator).__name__,
        "strategy": type(trainer.strategy).__name__,
        "world_size": trainer.world_size,
        "optimizers": [optimizer_config(o) for o in trainer.optimizers],
        "lr_schedulers": [scheduler_config(c) for c in trainer.lr_scheduler_configs],
        "data_source": "datamodule" if trainer.datamodule is not None else "module",
    }
    if trainer.world_size > 1:  # what a W-process replay needs to reduce as training did; absent: one process
        settings["ddp"] = ddp_settings(trainer)
    if plan.unreplayed:  # what the replay does not run; absent: the format's first form
        settings["callbacks"] = plan.unreplayed
    compiled = compiled_submodules(pl_module)
    if compiled:  # the replay compiles them too (the module's own setup does); absent: the format's first form
        settings["compiled"] = compiled
    return encode_state(settings)[1]


def ddp_settings(trainer: pl.Trainer) -> dict[str, Any]:
    """How a multi-process run's ranks met: the backend and layout, SyncBatchNorm, and the DDP arguments that
    decide what is reduced and in which buckets (a W-process replay passes them to Lightning's DDP again)."""
    strategy = trainer.strategy
    kwargs = getattr(strategy, "_ddp_kwargs", {}) or {}
    return {
        "backend": getattr(strategy, "_process_group_backend", None),
        "num_nodes": trainer.num_nodes,
        "devices": trainer.num_devices,
        "sync_batchnorm": bool(getattr(strategy, "_layer_sync", None)),
        "kwargs": recorded_arguments(kwargs),
    }


def optimizer_config(opt: torch.optim.Optimizer) -> dict[str, Any]:
    groups = [{k: v for k, v in g.items() if k != "params"} | {"num_params": len(g["params"])} for g in opt.param_groups]
    return {"class": import_path(type(opt)), "param_groups": _jsonable(groups)}


def scheduler_config(cfg: Any) -> dict[str, Any]:
    return {
        "class": import_path(type(cfg.scheduler)),
        "interval": cfg.interval,
        "frequency": cfg.frequency,
        "monitor": cfg.monitor,
    }


def _jsonable(obj: Any) -> Any:
    tensors, tree = encode_state({"v": obj})
    if tensors:  # tensors inside param groups (e.g. tensor lr) are stored as lists
        return json.loads(json.dumps(obj, default=lambda t: t.tolist() if isinstance(t, torch.Tensor) else str(t)))
    return tree["v"]


def _type_path(obj: Any) -> str | None:
    return None if obj is None else f"{type(obj).__module__}:{type(obj).__qualname__}"


def new_manifest(run: dict[str, Any], specs: Mapping[str, Any], training: dict[str, Any], size: int,
                 callbacks: list[ClassSpec] | None = None) -> Manifest:
    """The manifest of a new proof, before its first checkpoint. ``run`` holds the callback's ``seed``,
    ``every_n_steps``, ``full_every_n_steps`` (None: every checkpoint in full), ``init_strategy`` and ``init_params``;
    ``specs`` the recreation record (``module``, ``datamodule``, ``parent``, ``script``)."""
    script: TrainingScript | None = specs.get("script")
    manifest = Manifest(
        run_id=uuid.uuid4().hex,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        seed=run["seed"],
        every_n_steps=run["every_n_steps"],
        init=InitDeclaration(run["init_strategy"], encode_state(run["init_params"])[1]),
        parent=specs.get("parent"),
        module=specs["module"],
        datamodule=specs.get("datamodule"),
        callbacks=list(callbacks or []),
        training=training,
        environment=environment(),
        data=DataCommitment(size),
        full_every_n_steps=run.get("full_every_n_steps"),
        script=script.record if script is not None else None,
    )
    named = [p for p in named_classes(manifest) if names_script_class(p)]
    if script is None and named:  # a callback, optimizer or scheduler class of the script: the verifier loads it from there
        record, root = script_record("classes", f"the class {named[0].partition(':')[2]}")
        script = TrainingScript(record, root)
        with preserved_rng():  # its top level runs: its draws must not shift training's stream
            script.import_path(named[0])  # loaded now, as the verifier will: one that fails to load (or trains) is refused here
        manifest.script = record
    manifest.code = code_identity(manifest, script)
    return manifest


def code_identity(manifest: Manifest, script: TrainingScript | None) -> CodeIdentity:
    """The code identity of the classes the manifest names (the files they were loaded from) and of the training
    script; one warning line at fit start for a class defined in no file, which the verifier's code check cannot cover."""
    identity = installed_code(named_classes(manifest), script)
    missing = unidentified(identity)
    if missing:
        log.warning("ProofOfLearning: no file defines %s (a built-in): the proof cannot record its "
                    "code, and its verifier's code check does not cover it", ", ".join(missing[:3]))
    return identity
