"""Train the default example (DigitsCNN on the embedded digits) with a Proof-of-Learning, then verify it.

    python examples/train_digits.py --out runs/digits --epochs 3 --every-n-steps 16

Prints where the proof is, its size and identity, the verification summary and
the verdict. Exit status: 0 valid, 1 rejected, 2 unusable input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning.pytorch as pl

from lightning_pol import PoLError, ProofOfLearning, ProofReader, verify_proof
from lightning_pol.zoo import DigitsCNN, DigitsDataModule


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/digits"), help="run directory; the proof goes to OUT/proof")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--every-n-steps", type=int, default=16, help="k, the checkpoint interval")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace a proof already in OUT/proof")
    p.add_argument("--q", type=int, default=1, help="top-Q segments per epoch to replay (0: all)")
    p.add_argument("--random", type=int, default=1, help="random segments per epoch to replay")
    args = p.parse_args(argv)

    pl.seed_everything(args.seed, workers=True, verbose=False)
    proof_dir = args.out / "proof"
    try:
        pol = ProofOfLearning(proof_dir, every_n_steps=args.every_n_steps, overwrite=args.overwrite)
        trainer = pl.Trainer(
            max_epochs=args.epochs,
            accelerator="cpu",
            callbacks=[pol],
            default_root_dir=args.out,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
        )
        trainer.fit(DigitsCNN(), datamodule=DigitsDataModule(batch_size=32, augment=True))
        proof = ProofReader(proof_dir)
    except PoLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = sum(e.bytes for e in proof.manifest.files.values()) + (proof_dir / "manifest.json").stat().st_size
    print(f"proof: {proof_dir.resolve()}")
    print(f"size: {size / 1e6:.2f} MB in {len(proof.manifest.files) + 1} files")
    print(f"checkpoints: {len(proof.checkpoints)} (steps {proof.checkpoints[0].step}..{proof.manifest.final_step})")
    print(f"identity: {proof.identity}")
    try:
        report = verify_proof(proof_dir, q=args.q, random=args.random)
    except PoLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    (args.out / "verification.json").write_text(report.to_json())
    print(report.summary())
    print(f"verdict: {'VALID' if report.valid else 'INVALID'} (report: {args.out / 'verification.json'})")
    return 0 if report.valid else 1


if __name__ == "__main__":
    sys.exit(main())
