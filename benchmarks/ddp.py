"""What a DDP proof costs to verify: a W-process replay on a machine with fewer cores than W.

Each row trains the digits CNN (BatchNorm, dropout, augmentation) under Lightning's DDP on CPU (gloo) with W
processes and a proof (k = 8), as a user's script does (``python -m benchmarks.ddp ROOT W EPOCHS`` is that script),
then verifies it in full (``q=0``): by W processes under DDP again (``verifier.ranks=processes``, what ``auto``
chooses beyond two plain ranks), and for W = 2 also by one process emulating both ranks (what ``auto`` chooses
there). Times are wall-clock seconds, process starts and imports included: what the user waits for.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
K = 8


def train(root: Path, world: int, epochs: int) -> float:
    """Seconds to train with a proof under ``world`` processes (this module's ``__main__``, in a fresh process)."""
    t = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "benchmarks.ddp", str(root), str(world), str(epochs)], cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"DDP training with {world} processes failed: {run.stderr[-2000:]}")
    return time.perf_counter() - t


def verify(proof: Path, ranks: str) -> tuple[float, Any]:
    from lightning_pol import verify_proof

    t = time.perf_counter()
    report = verify_proof(proof, q=0, ranks=ranks)
    return time.perf_counter() - t, report


def ddp_replay(tmp: Path, quick: bool) -> dict[str, Any]:
    """Rows for W = 2 and 4 (W = 2 only, one epoch, when ``quick``)."""
    epochs = 1 if quick else 2
    rows: dict[str, Any] = {}
    for world in [2] if quick else [2, 4]:
        proof = tmp / f"ddp-{world}" / "proof"
        training = train(proof.parent, world, epochs)
        seconds, report = verify(proof, "processes")
        row = {"world_size": world, "epochs": epochs, "train_seconds": training, "processes_seconds": seconds,
               "processes_over_training": seconds / training, "segments": len(report.segments),
               "valid": report.valid, "bit_exact": all(s.bit_exact for s in report.segments)}
        if world == 2:
            emulated, em_report = verify(proof, "emulate")
            row.update(emulate_seconds=emulated, emulate_over_training=emulated / training,
                       emulate_bit_exact=em_report.valid and all(s.bit_exact for s in em_report.segments))
        rows[str(world)] = row
    return {"cores": os.cpu_count(), "k": K, "rows": rows}


def markdown(r: dict[str, Any]) -> list[str]:
    lines = [f"**DDP replay** (digits CNN, gloo, {r['cores']} cores, k = {r['k']}, full replay `q=0`; wall seconds, process "
             f"starts included)", "",
             "| ranks | epochs | training s | W processes s | / training | one process (emulated) s | / training | segments | "
             "valid, bit-exact |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for w, row in r["rows"].items():
        emulated = (f"{row['emulate_seconds']:.1f} | {row['emulate_over_training']:.2f}x" if "emulate_seconds" in row
                    else "- | -")
        lines.append(f"| {w} | {row['epochs']} | {row['train_seconds']:.1f} | {row['processes_seconds']:.1f} | "
                     f"{row['processes_over_training']:.2f}x | {emulated} | {row['segments']} | {row['valid']}, {row['bit_exact']} |")
    return lines + [""]


if __name__ == "__main__":
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy

    from lightning_pol import ProofOfLearning
    from lightning_pol.zoo.digits_cnn import DigitsCNN
    from lightning_pol.zoo.digits_data import DigitsDataModule

    root, world, epochs = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(accelerator="cpu", devices=world, strategy=DDPStrategy(), max_epochs=epochs, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=root,
                         callbacks=[ProofOfLearning(root / "proof", every_n_steps=K)])
    trainer.fit(DigitsCNN(width=16), datamodule=DigitsDataModule(augment=True))
