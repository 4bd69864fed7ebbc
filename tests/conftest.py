from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from lightning_pol import ProofOfLearning

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")


def make_trainer(callbacks: list[Any], root: Path, **kwargs: Any) -> pl.Trainer:
    defaults: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
    )
    defaults.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **defaults)


def train_with_proof(
    root: Path, module: pl.LightningModule, datamodule: pl.LightningDataModule | None, every_n_steps: int = 8,
    seed: int = 0, pol_kwargs: dict[str, Any] | None = None, **trainer_kwargs: Any,
) -> tuple[Path, pl.LightningModule, dict[str, torch.Tensor]]:
    """Train with the callback; returns the proof dir, the trained module and its initial state_dict.

    ``module`` may be a class or factory, called after seeding so that two runs
    with one seed also start from the same weights.
    """
    pl.seed_everything(seed, verbose=False)
    if not isinstance(module, torch.nn.Module):
        module = module()
    proof = root / "proof"
    initial = copy.deepcopy(module.state_dict())
    trainer = make_trainer([ProofOfLearning(proof, every_n_steps=every_n_steps, **(pol_kwargs or {}))], root, **trainer_kwargs)
    trainer.fit(module, datamodule=datamodule)
    return proof, module, initial


@pytest.fixture
def seeded():
    pl.seed_everything(0, verbose=False)
    yield


def relist(proof: Path, rel: str) -> None:
    """Update the manifest's digest of ``rel``, as a prover who controls every file would: a checkpoint entry gets
    the digest of the state its file resolves to (docs/proof-format.md, "References")."""
    import json

    from lightning_pol.format import layout as pf
    from lightning_pol.format.manifest import manifest_bytes

    data = (proof / rel).read_bytes()
    state_digest = _state_digest(proof, rel, data)
    m = json.loads((proof / pf.MANIFEST).read_text())
    m["files"][rel] = {"sha256": pf.sha256_bytes(data), "bytes": len(data)}
    for c in m["checkpoints"]:
        if c["path"] == rel:
            c["sha256"] = state_digest
    (proof / pf.MANIFEST).write_bytes(manifest_bytes(m))


def _state_digest(proof: Path, rel: str, data: bytes) -> str:
    """The digest of the full file of the state checkpoint file ``rel`` holds, its references resolved against the
    proof as it is; the file's own digest when it holds none (or cannot be decoded: a test's malformed state)."""
    import functools
    import json

    from lightning_pol.format import layout as pf
    from lightning_pol.format.checkpoint import checkpoint_digest
    from lightning_pol.format.reader import ProofReader
    from lightning_pol.format.safetensors_io import load_safetensors
    from lightning_pol.format.state_codec import decode_state
    from lightning_pol.format.tensor_refs import resolve_refs

    try:
        reader = ProofReader(proof)
        entry = next(c for c in reader.checkpoints if c.path == rel)
        tensors, metadata = load_safetensors(data, rel)
        tree = json.loads(metadata[pf.CHECKPOINT_STATE_KEY])
        if resolve_refs(tree, tensors, functools.partial(reader._referenced, entry)):
            return checkpoint_digest(decode_state(tensors, tree))
    except Exception:  # noqa: BLE001 - a state a test broke on purpose: its file's digest, as before
        pass
    return pf.sha256_bytes(data)


def write_checkpoint(proof: Path, rel: str, state: dict[str, Any]) -> None:
    """Write ``state`` as checkpoint ``rel`` exactly as the callback encodes one, and re-sign it in the manifest."""
    from lightning_pol.format.checkpoint import checkpoint_bytes

    (proof / rel).write_bytes(checkpoint_bytes(state))
    relist(proof, rel)


def forge_checkpoint(proof: Path, index: int, edit: Callable[[dict[str, Any]], Any], roots: Path | str | None = None) -> Any:
    """Rewrite the state of the proof's checkpoint ``index`` with ``edit`` (a prover controls every file): read
    (through the pretrained root ``roots`` where its tensors are referenced), edited in place, written whole and
    re-signed. Returns its checkpoint entry."""
    reader = read_proof(proof, roots)
    entry = reader.checkpoints[index]
    state = reader.load_checkpoint(entry)
    edit(state)
    write_checkpoint(proof, entry.path, state)
    return entry


def read_proof(proof: Path, roots: Path | str | None = None) -> Any:
    """A reader of ``proof`` that resolves references to the pretrained root in the weights file ``roots``."""
    from lightning_pol.format.reader import ProofReader
    from lightning_pol.verification.pretrained_check import use_trusted_root

    reader = ProofReader(proof)
    if roots is not None:
        use_trusted_root(reader, None, roots)
    return reader


class _Boom:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def pickle_bomb(marker: Path) -> bytes:
    """A pickle that creates ``marker`` when loaded: a proof file must never be unpickled."""
    import pickle

    return pickle.dumps(_Boom(marker))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS ``weed mini``) for the session, on 127.0.0.1; stopped after."""
    from tests.object_store import SeaweedS3

    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()
