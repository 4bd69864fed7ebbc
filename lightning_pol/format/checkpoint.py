"""Checkpoint files: a training state as one safetensors file, written and read by the two functions here.

The state (model, optimizers, schedulers, grad scaler, RNG streams, progress) is
split into tensors and a typed-JSON tree (:mod:`~lightning_pol.format.state_codec`);
the tree is the file's only metadata key, so identical states are identical bytes.
Tensors stored earlier may be referenced instead (:mod:`~lightning_pol.format.tensor_refs`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch

from lightning_pol.format import layout
from lightning_pol.format.manifest import CheckpointEntry, Manifest
from lightning_pol.format.safetensors_io import safetensors_parts
from lightning_pol.format.state_codec import Refer, decode_state, encode_state, tensor_refs
from lightning_pol.format.tensor_refs import Ref, resolve_refs
from lightning_pol.format.strict_json import ProofFormatError, is_int, load_json

#: The first format version whose checkpoints may hold tensor references.
REFERENCES_SINCE = 3


def checkpoint_parts(state: dict[str, Any], refer: Refer | None = None) -> list[Any]:
    """The checkpoint file of ``state`` as buffers (its header, then views of the state's own tensors): hashed and
    written as they are, so writing a checkpoint holds no second copy of the state. ``refer``: the writer's choice
    of tensors to store as references (format.tensor_refs); without it, the full file, whose digest names the state."""
    tensors, tree = encode_state(state, refer)
    # One metadata key only: safetensors writes its metadata map in hash order.
    return safetensors_parts(tensors, {layout.CHECKPOINT_STATE_KEY: json.dumps(tree, allow_nan=False, separators=(",", ":"))})


def checkpoint_bytes(state: dict[str, Any], refer: Refer | None = None) -> bytes:
    """The checkpoint file of ``state`` (:func:`checkpoint_parts`, joined)."""
    return b"".join(checkpoint_parts(state, refer))


def checkpoint_digest(state: dict[str, Any]) -> str:
    """SHA-256 of the checkpoint file of ``state``: what a digest-only entry of a tiered proof records."""
    return layout.sha256_parts(checkpoint_parts(state))[0]


def parse_checkpoint(tensors: dict[str, torch.Tensor], metadata: dict[str, str], entry: CheckpointEntry, manifest: Manifest,
                     fetch: Callable[[Ref], torch.Tensor] | None = None, file_digest: str | None = None) -> dict[str, Any]:
    """The decoded state of the checkpoint file of ``entry`` (its tensors and metadata, ``file_digest`` the SHA-256
    of the file as stored, uncompressed), checked against the manifest. ``fetch`` gives the tensor a reference names,
    its digest checked (the reader's); a file without references must be the state's full file, and a file with
    them must resolve to the state whose digest the entry records."""
    rel = entry.path or f"checkpoint {entry.step}"
    if set(metadata) != {layout.CHECKPOINT_STATE_KEY}:
        raise ProofFormatError(f"{rel}: checkpoint metadata must hold exactly the key {layout.CHECKPOINT_STATE_KEY!r}")
    tree = load_json(metadata[layout.CHECKPOINT_STATE_KEY], f"{rel}: checkpoint state")
    if not isinstance(tree, dict):
        raise ProofFormatError(f"{rel}: malformed checkpoint state (not a JSON object)")
    tensors = dict(tensors)
    try:
        refs = resolve_refs(tree, tensors, fetch or _no_reference)
        state = decode_state(tensors, tree)
    except ProofFormatError:
        raise
    except (ValueError, RecursionError) as e:
        raise ProofFormatError(f"{rel}: malformed checkpoint state ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None
    unused = set(tensors) - tensor_refs(tree)
    if unused:  # a checkpoint's tensors are the ones its state refers to
        raise ProofFormatError(f"{rel}: tensors the state does not refer to: {sorted(unused)[:3]}")
    if refs and manifest.format_version < REFERENCES_SINCE:
        raise ProofFormatError(f"{rel}: holds tensor references, which format version {manifest.format_version} does not have")
    rng = state.get("rng")
    torch_rng = rng.get("torch") if isinstance(rng, dict) else None
    if not isinstance(torch_rng, torch.Tensor) or torch_rng.dtype != torch.uint8 or torch_rng.dim() != 1:
        raise ProofFormatError(f"{rel}: rng.torch is not a flat uint8 tensor")
    if state.get("format") != layout.FORMAT_NAME or not is_int(state.get("format_version")) or state["format_version"] not in layout.READABLE_VERSIONS:
        raise ProofFormatError(f"{rel}: not a checkpoint of a readable format version")
    _check_progress(state.get("progress"), entry, manifest)
    if not isinstance(state.get("model"), dict):
        raise ProofFormatError(f"{rel}: no model state")
    _check_optimization_state(state, rel)
    callbacks = state.get("callbacks")
    if (callbacks is not None or manifest.callbacks) and not (
        isinstance(callbacks, list) and len(callbacks) == len(manifest.callbacks)
        and all(isinstance(c, dict) and isinstance(c.get("state"), dict) for c in callbacks)
    ):
        raise ProofFormatError(f"{rel}: callbacks does not hold a state for each of the manifest's {len(manifest.callbacks)} callbacks")
    # Last, once the state is known to be well formed: re-encoding it hashes every tensor.
    if (checkpoint_digest(state) if refs else file_digest) != entry.sha256:
        what = ("with its references resolved is not" if refs else
                "does not decompress to" if rel.endswith(layout.COMPRESSED_SUFFIX) else "is not")
        raise ProofFormatError(f"digest mismatch: {rel} {what} the state its checkpoint entry records")
    return state


def _no_reference(ref: Ref) -> torch.Tensor:
    raise ProofFormatError(f"a tensor reference ({ref}) where none can be resolved")


def _check_optimization_state(state: dict[str, Any], rel: str) -> None:
    """The layouts torch's optimizers, schedulers and grad scaler give their states, which the verifier reads."""
    optimizers, schedulers = state.get("optimizers"), state.get("lr_schedulers")
    if not isinstance(optimizers, list) or not all(
        isinstance(o, dict) and isinstance(o.get("state"), dict) and isinstance(o.get("param_groups"), list)
        and all(isinstance(g, dict) for g in o["param_groups"]) for o in optimizers
    ):
        raise ProofFormatError(f"{rel}: optimizers is not a list of optimizer states")
    if not isinstance(schedulers, list) or not all(isinstance(sd, dict) for sd in schedulers):
        raise ProofFormatError(f"{rel}: lr_schedulers is not a list of scheduler states")
    if state.get("grad_scaler") is not None and not isinstance(state["grad_scaler"], dict):
        raise ProofFormatError(f"{rel}: grad_scaler is not a grad scaler state")
    peers = state.get("peer_rng")
    if peers is not None and not (isinstance(peers, list) and all(isinstance(r, dict) for r in peers)):
        raise ProofFormatError(f"{rel}: peer_rng is not a list of RNG states")
    buffers = state.get("peer_buffers")
    if buffers is not None and not (isinstance(buffers, list) and all(
            isinstance(b, dict) and all(isinstance(t, torch.Tensor) for t in b.values()) for b in buffers)):
        raise ProofFormatError(f"{rel}: peer_buffers is not a list of tensor maps")


def _check_progress(progress: Any, entry: CheckpointEntry, manifest: Manifest) -> None:
    rel = entry.path or f"checkpoint {entry.step}"
    if not isinstance(progress, dict) or not is_int(progress.get("global_step")) or progress["global_step"] != entry.step:
        raise ProofFormatError(f"{rel}: its step does not match the manifest")
    if not is_int(progress.get("epoch")) or progress["epoch"] != entry.epoch:
        raise ProofFormatError(f"{rel}: its epoch does not match the manifest")
    batch_idx, batches = progress.get("batch_idx"), manifest.training.get("num_training_batches")
    if batch_idx is not None and (not is_int(batch_idx) or (is_int(batches) and batch_idx >= batches)):
        raise ProofFormatError(f"{rel}: its batch index is not a batch of an epoch")
    if batch_idx is None and entry != manifest.checkpoints[-1]:  # only the state at the end of training has none
        raise ProofFormatError(f"{rel}: only the last checkpoint may have no batch index")
    steps = progress.get("optimizer_steps", entry.step)  # recorded under manual optimization only
    if not is_int(steps) or steps < entry.step or (entry.step == 0 and steps != 0):
        raise ProofFormatError(f"{rel}: its optimizer steps are not a count of at least its steps")
    if entry.step == 0 and (progress["epoch"] != 0 or batch_idx not in (0, None)):
        raise ProofFormatError(f"{rel}: step 0 is not the first batch of epoch 0")
