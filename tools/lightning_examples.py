"""``python -m tools.lightning_examples LIGHTNING_CHECKOUT WORKDIR``: Lightning's own single-script examples, unmodified,
trained with a proof and verified, as a new user would run them (issue 35's acceptance 1).

Copies ``examples/pytorch/basics/backbone_image_classifier.py`` from a checkout of Lightning-AI/pytorch-lightning
to ``WORKDIR/examples/pytorch/basics/``, writes MNIST files (random images, the real sizes: 60,000 training and
10,000 test images of 28x28) in the raw IDX format where torchvision's ``MNIST`` looks (``WORKDIR/examples/Datasets/
MNIST/raw``: the example's ``DATASETS_PATH``, and ``./data/MNIST/raw``, where ``lightning.pytorch.demos.MNIST`` checks
first), then runs, in the script's directory::

    python backbone_image_classifier.py --trainer.max_epochs=2 --trainer.callbacks+=lightning_pol.ProofOfLearning \\
        --trainer.callbacks.dirpath=proof --trainer.callbacks.every_n_steps=5
    python -m lightning_pol.verify proof_dir=proof verifier.q=0

and prints each command's wall time and the verdict. Nothing is downloaded. Extra arguments after ``--`` go to the
training command (``-- --trainer.limit_train_batches=20`` for a short run).
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

EXAMPLE = "examples/pytorch/basics/backbone_image_classifier.py"


def write_mnist(root: Path, train: int = 60_000, test: int = 10_000, seed: int = 0) -> Path:
    """Random MNIST-shaped IDX files under ``root/MNIST/raw`` (torchvision's layout, uncompressed): the example's
    ``random_split(dataset, [55000, 5000])`` needs the real training size."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())
    return raw


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.lightning_examples", description=__doc__.splitlines()[0])
    p.add_argument("lightning", type=Path, help="a checkout of Lightning-AI/pytorch-lightning")
    p.add_argument("workdir", type=Path)
    p.add_argument("train_args", nargs="*", help="more arguments for the training command (after --)")
    args = p.parse_args(argv)
    script = args.workdir / EXAMPLE
    script.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.lightning / EXAMPLE, script)
    raw = write_mnist(script.parent.parent.parent / "Datasets")  # the example's DATASETS_PATH: <script dir>/../../Datasets
    # Lightning's MNIST() first asks torchvision for MNIST in ./data (the working directory), download=True
    shutil.copytree(raw, script.parent / "data" / "MNIST" / "raw", dirs_exist_ok=True)
    train = [sys.executable, script.name, "--trainer.max_epochs=2", "--trainer.callbacks+=lightning_pol.ProofOfLearning",
             "--trainer.callbacks.dirpath=proof", "--trainer.callbacks.every_n_steps=5", *args.train_args]
    verify = [sys.executable, "-m", "lightning_pol.verify", "proof_dir=proof", "verifier.q=0", "report=verification.json"]
    for name, command in (("train", train), ("verify", verify)):
        start = time.perf_counter()
        done = subprocess.run(command, cwd=script.parent, capture_output=True, text=True)
        print(f"{name}: exit {done.returncode} in {time.perf_counter() - start:.1f} s")
        if done.returncode != 0 and (name == "train" or done.returncode != 1):
            print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
            return done.returncode
    report = json.loads((script.parent / "verification.json").read_text())
    exact = sum(s["bit_exact"] for s in report["segments"])
    print(f"valid: {report['valid']}; {exact} of {len(report['segments'])} segments bit-exact")
    return 0 if report["valid"] and exact == len(report["segments"]) else 1


if __name__ == "__main__":
    sys.exit(main())
