"""The proof given to the run's experiment tracker when fit ends: MLflow's and Weights & Biases' loggers.

What a tracker's run gets: the manifest (a few kilobytes, the proof's identity
is its SHA-256) and ``proof.json`` (the identity, where the proof is, its run
id), or with ``log_proof="all"`` every file of the proof. A verifier later
finds the run by the identity (``lightning_pol.identity``, a tag in MLflow, the
summary in W&B) and logs its verdict beside it (``python -m lightning_pol.verify
tracker=mlflow``). The trackers are imported only when a logger of theirs is
on the Trainer.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lightning_pol.errors import one_line
from lightning_pol.format import layout
from lightning_pol.format.storage import ProofStore

log = logging.getLogger(__name__)

#: Where a tracker's run holds the proof: an MLflow artifact folder; a W&B artifact's type.
ARTIFACT_PATH = "proof-of-learning"
#: The tag (MLflow) or summary key (W&B) that names the proof's identity, and the verifier's verdict.
IDENTITY_KEY = "lightning_pol.identity"
VERDICT_KEY = "lightning_pol.verdict"


def tracker_kind(logger: Any) -> str | None:
    """``mlflow`` or ``wandb`` for Lightning's loggers of those trackers (by class, nothing imported); else None."""
    for cls in type(logger).__mro__:
        if cls.__module__.startswith(("lightning.pytorch.loggers", "pytorch_lightning.loggers")):
            return {"MLFlowLogger": "mlflow", "WandbLogger": "wandb"}.get(cls.__name__)
    return None


def check_trackers(trainer: Any, log_proof: bool | str) -> None:
    """Said at fit start: ``log_proof`` with no logger that can take the proof."""
    if log_proof and trainer.is_global_zero and not any(tracker_kind(logger) for logger in trainer.loggers):
        log.warning("proof of learning: log_proof is set but the Trainer has no MLFlowLogger or WandbLogger; "
                    "the proof is written to its dirpath only")


def stage_proof(store: ProofStore, identity: str, run_id: str | None, folder: Path, whole: bool) -> Path:
    """The files a tracker's run gets, copied into ``folder``: the manifest and ``proof.json`` (every file with ``whole``)."""
    listed = [layout.MANIFEST]
    if whole:
        manifest = json.loads(store.read(layout.MANIFEST, layout.MAX_MANIFEST_BYTES))
        listed += sorted(manifest["files"])
    for rel in listed:
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as f:
            for block in store.chunks(rel, 1 << 62):
                f.write(block)
    info = {"identity": identity, "location": store.location, "run_id": run_id, "whole": whole}
    (folder / "proof.json").write_text(json.dumps(info, indent=1))
    return folder


def log_proof_to_trackers(loggers: Iterable[Any], store: ProofStore, identity: str, run_id: str | None, whole: bool) -> None:
    """Give each MLflow or W&B logger's run the proof (its manifest and identity, or every file). The proof is complete
    and committed by then: a tracker that cannot take it (a server down, no permission) is said in a warning, and
    neither fails the fit nor keeps the loggers from finishing their runs."""
    for logger in loggers:
        kind = tracker_kind(logger)
        if kind is None:
            continue
        try:
            _log_to(kind, logger, store, identity, run_id, whole)
        except Exception as e:  # noqa: BLE001 - the tracker's client raises its own errors, each about its server
            log.warning("proof of learning: the %s run did not take the proof (%s); the proof is complete at %s",
                        kind, one_line(e), store.location)


def _log_to(kind: str, logger: Any, store: ProofStore, identity: str, run_id: str | None, whole: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="pol-tracker-") as tmp:
        folder = stage_proof(store, identity, run_id, Path(tmp), whole)
        if kind == "mlflow":
            client, run = logger.experiment, logger.run_id
            client.log_artifacts(run, str(folder), artifact_path=ARTIFACT_PATH)
            client.set_tag(run, IDENTITY_KEY, identity)
        else:
            import wandb

            run = logger.experiment
            artifact = wandb.Artifact(f"proof-{identity[:16]}", type=ARTIFACT_PATH,
                                      metadata={"identity": identity, "location": store.location, "run_id": run_id})
            artifact.add_dir(str(folder))
            run.log_artifact(artifact)
            run.summary[IDENTITY_KEY] = identity
    log.info("proof of learning: %s logged to the %s run", "the proof" if whole else "the manifest", kind)
