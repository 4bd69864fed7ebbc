"""The training state a checkpoint holds, read from a live Trainer; shared by the prover and the replay."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from lightning_pol import proof_format as pf


def capture_training_state(
    trainer: pl.Trainer, pl_module: pl.LightningModule, rng: dict[str, Any], step: int, batch_idx: int | None
) -> dict[str, Any]:
    """Everything needed to replay from this point: see "Checkpoint files" in docs/proof-format.md."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return {
        "format": pf.FORMAT_NAME,
        "format_version": pf.FORMAT_VERSION,
        "model": pl_module.state_dict(),
        "optimizers": [opt.state_dict() for opt in trainer.optimizers],
        "lr_schedulers": [cfg.scheduler.state_dict() for cfg in trainer.lr_scheduler_configs],
        "grad_scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng,
        "progress": {"global_step": step, "epoch": trainer.current_epoch, "batch_idx": batch_idx},
    }
