"""A proof of a fixed seed is the same bytes from one version of the code to the next.

``tests/golden/digits_proof.json`` holds the digests of a proof written by the
code before the refactor of issue 17 (commit c8c6d84), regenerated for format
version 3 (tensor references, issue 31: the checkpoints after W_0 reference the
Python and numpy RNG states that training leaves alone). Refactors must not
change what a proof is: its checkpoint files, its index log and its manifest.

Tensor payloads depend on the machine's floating-point kernels, so the full
file digests are compared where the environment is the one that wrote the
golden file (same torch, CPU model and thread count). Everywhere, the layout
is compared: every safetensors header (tensor names, dtypes, shapes, offsets,
and the typed-JSON state), the index log's bytes (indices depend only on the
seeded RNG), and the manifest with its machine- and run-specific values
(run id, time, environment, file digests) blanked.

Regenerate (only for an intended format change, with the format version raised):
``python -m tests.test_format_bytes --write``.
"""

from __future__ import annotations

import hashlib
import json
import platform
import struct
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_pol.format.manifest import manifest_bytes

GOLDEN = Path(__file__).resolve().parent / "golden" / "digits_proof.json"
EXACT_WHERE = ("torch", "machine", "cpu", "torch_threads")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def fingerprint() -> dict[str, Any]:
    return {"torch": torch.__version__, "machine": platform.machine(), "cpu": _cpu(), "torch_threads": torch.get_num_threads()}


def train(root: Path) -> Path:
    """Two epochs of a width-8 digits CNN with augmentation, k = 4: 24 steps, 7 checkpoints, an epoch boundary."""
    from lightning_pol import ProofOfLearning
    from lightning_pol.zoo import DigitsCNN, DigitsDataModule

    proof = root / "proof"
    pl.seed_everything(1234, verbose=False)
    model = DigitsCNN(width=8)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=root,
        callbacks=[ProofOfLearning(proof, every_n_steps=4, seed=1234, fsync=False)],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=DigitsDataModule(batch_size=128, augment=True))
    return proof


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _header(data: bytes) -> bytes:
    """The safetensors header of a file: its length and JSON (names, dtypes, shapes, offsets, metadata)."""
    (n,) = struct.unpack("<Q", data[:8])
    return data[: 8 + n]


def digests(proof: Path) -> dict[str, Any]:
    # The code identity (issue 21) names this machine's source files: like the environment, not compared here.
    manifest = {k: v for k, v in json.loads((proof / "manifest.json").read_bytes()).items() if k != "code"}
    files = {rel: (proof / rel).read_bytes() for rel in sorted(manifest["files"])}
    blank = dict(manifest, run_id="-", created="-", environment={})
    layout = dict(blank, files={rel: {"bytes": e["bytes"]} for rel, e in manifest["files"].items()},
                  checkpoints=[dict(c, sha256="-") for c in manifest["checkpoints"]])
    return {
        "environment": fingerprint(),
        "files": {rel: _sha(data) for rel, data in files.items()},
        "headers": {rel: _sha(_header(data)) for rel, data in files.items()},
        "index_log": _sha(files["batches.safetensors"]),
        "manifest": _sha(json.dumps(blank, sort_keys=True).encode()),
        "manifest_layout": _sha(json.dumps(layout, sort_keys=True).encode()),
        "manifest_bytes_shape": _sha(_shape_of(manifest_bytes(manifest).decode())),
    }


def _shape_of(text: str) -> bytes:
    """The manifest's bytes with every string and number replaced: indentation, key order and separators stay."""
    import re

    return re.sub(r'"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?', "x", text).encode()


def test_a_proof_of_a_fixed_seed_is_the_same_bytes(tmp_path):
    golden = json.loads(GOLDEN.read_text())
    got = digests(train(tmp_path))
    assert got["index_log"] == golden["index_log"]
    assert got["headers"] == golden["headers"]
    assert got["manifest_layout"] == golden["manifest_layout"]
    assert got["manifest_bytes_shape"] == golden["manifest_bytes_shape"]
    if all(got["environment"][k] == golden["environment"][k] for k in EXACT_WHERE):
        assert got["files"] == golden["files"]
        assert got["manifest"] == golden["manifest"]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = digests(train(Path(tmp)))
    if "--write" in sys.argv:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
