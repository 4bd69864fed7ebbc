"""``python -m lightning_pol.verify ... tracker=mlflow|wandb``: the verdict and the report, logged to the proof's run.

The run is the one the prover's ``log_proof`` gave the proof to: named by
``tracker.run_id``, or in MLflow found by the tag ``lightning_pol.identity``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_pol.errors import PoLError
from lightning_pol.prover.trackers import ARTIFACT_PATH, IDENTITY_KEY, VERDICT_KEY
from lightning_pol.verification.report import Report


def log_verdict(tracker: Any, report: Report, report_file: Path) -> str:
    """Log ``report`` (its file and verdict) to the run ``tracker`` (the app's config) names; returns where it went."""
    kind = tracker.get("kind")
    try:
        if kind == "mlflow":
            return _to_mlflow(tracker, report, report_file)
        if kind == "wandb":
            return _to_wandb(tracker, report, report_file)
    except ImportError as e:
        raise PoLError(f"tracker={kind} needs its library ({e})") from None
    raise PoLError(f"tracker.kind must be mlflow or wandb, got {kind!r}")


def _verdict(report: Report) -> str:
    return "valid" if report.valid else "rejected"


def _to_mlflow(tracker: Any, report: Report, report_file: Path) -> str:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracker.get("tracking_uri"))
    try:
        run_id = tracker.get("run_id") or _mlflow_run_of(client, report.proof_identity)
        client.log_artifact(run_id, str(report_file), artifact_path=ARTIFACT_PATH)
        client.set_tag(run_id, VERDICT_KEY, _verdict(report))
        client.log_metric(run_id, "lightning_pol.valid", float(report.valid))
    except MlflowException as e:
        raise PoLError(f"cannot log the verdict to MLflow ({' '.join(str(e).split())[:300]})") from None
    return f"MLflow run {run_id}"


def _mlflow_run_of(client: Any, identity: str) -> str:
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"tags.`{IDENTITY_KEY}` = '{identity}'", max_results=2) if experiments else []
    if len(runs) != 1:
        found = "no run" if not runs else "several runs"
        raise PoLError(f"{found} of the MLflow tracking store {client.tracking_uri} is tagged with this proof's identity "
                       f"{identity[:16]}...; name the run: tracker.run_id=ID")
    return runs[0].info.run_id


def _to_wandb(tracker: Any, report: Report, report_file: Path) -> str:
    import wandb

    run = wandb.init(project=tracker.get("project"), entity=tracker.get("entity"), id=tracker.get("run_id"), resume="allow",
                     dir=tracker.get("dir"), mode=tracker.get("mode"))
    try:
        artifact = wandb.Artifact(f"verification-{report.proof_identity[:16]}", type=f"{ARTIFACT_PATH}-verification",
                                  metadata={"verdict": _verdict(report), "identity": report.proof_identity})
        artifact.add_file(str(report_file), name="verification.json")
        run.log_artifact(artifact)
        run.summary[VERDICT_KEY] = _verdict(report)
        run.summary[IDENTITY_KEY] = report.proof_identity
    finally:
        run.finish()
    return f"W&B run {run.id}"
