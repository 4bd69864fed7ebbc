"""``python -m lightning_pol.verify ... tracker=mlflow|wandb``: the verdict and the report, logged to the proof's run.

The run is the one the prover's ``log_proof`` gave the proof to: named by
``tracker.run_id``, or in MLflow found by the tag ``lightning_pol.identity``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_pol.errors import PoLError, one_line
from lightning_pol.prover.trackers import ARTIFACT_PATH, IDENTITY_KEY, VERDICT_KEY


def log_verdict(tracker: Any, valid: bool, identity: str, report_file: Path) -> str:
    """Log a verification (its report file and verdict; ``identity``, the proof's) to the run ``tracker`` (the app's
    config) names; returns where it went. Raises a one-line :class:`PoLError` when the tracker does not take it."""
    kind = tracker.get("kind")
    if kind not in ("mlflow", "wandb"):
        raise PoLError(f"tracker.kind must be mlflow or wandb, got {kind!r}")
    try:
        return (_to_mlflow if kind == "mlflow" else _to_wandb)(tracker, Verdict(bool(valid), identity), report_file)
    except PoLError:
        raise
    except ImportError as e:
        raise PoLError(f"tracker={kind} needs its library ({e})") from None
    except Exception as e:  # noqa: BLE001 - the tracker's client raises its own errors, each about its server or run
        raise PoLError(f"cannot log the verdict to the {kind} run ({one_line(e)})") from None


@dataclass(frozen=True)
class Verdict:
    """What a tracker's run is told: the verdict, and the proof it is about."""

    valid: bool
    proof_identity: str

    @property
    def word(self) -> str:
        return "valid" if self.valid else "rejected"


def _to_mlflow(tracker: Any, report: Verdict, report_file: Path) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracker.get("tracking_uri"))
    run_id = tracker.get("run_id") or _mlflow_run_of(client, report.proof_identity)
    client.log_artifact(run_id, str(report_file), artifact_path=ARTIFACT_PATH)
    client.set_tag(run_id, VERDICT_KEY, report.word)
    client.log_metric(run_id, "lightning_pol.valid", float(report.valid))
    return f"MLflow run {run_id}"


def _mlflow_run_of(client: Any, identity: str) -> str:
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"tags.`{IDENTITY_KEY}` = '{identity}'", max_results=2) if experiments else []
    if len(runs) != 1:
        found = "no run" if not runs else "several runs"
        raise PoLError(f"{found} of the MLflow tracking store {client.tracking_uri} is tagged with this proof's identity "
                       f"{identity[:16]}...; name the run: tracker.run_id=ID")
    return runs[0].info.run_id


def _to_wandb(tracker: Any, report: Verdict, report_file: Path) -> str:
    import wandb

    run = wandb.init(project=tracker.get("project"), entity=tracker.get("entity"), id=tracker.get("run_id"), resume="allow",
                     dir=tracker.get("dir"), mode=tracker.get("mode"))
    try:
        artifact = wandb.Artifact(f"verification-{report.proof_identity[:16]}", type=f"{ARTIFACT_PATH}-verification",
                                  metadata={"verdict": report.word, "identity": report.proof_identity})
        artifact.add_file(str(report_file), name="verification.json")
        run.log_artifact(artifact)
        run.summary[VERDICT_KEY] = report.word
        run.summary[IDENTITY_KEY] = report.proof_identity
    finally:
        run.finish()
    return f"W&B run {run.id}"
