"""The only way a proof is loaded: every file is treated as hostile input.

Nothing here unpickles or imports anything named by the proof. Paths are
checked before they are opened, sizes before anything is allocated (and a
buffer is only ever as large as the file really is), digests before anything
is parsed; each file is then parsed by its type's one parser (the manifest,
checkpoints, the index log, the leaves). Every problem becomes a
:class:`ProofFormatError` with a one-line reason.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from lightning_pol.format import layout
from lightning_pol.format.checkpoint import parse_checkpoint
from lightning_pol.format.code_identity import CodeIdentity
from lightning_pol.format.compression import decompress_checkpoint
from lightning_pol.format.index_log import IndexLog
from lightning_pol.format.manifest import CheckpointEntry, FileEntry, Manifest
from lightning_pol.format.safetensors_io import load_safetensors
from lightning_pol.format.samples import leaves_from_tensors
from lightning_pol.format.state_codec import decode_state
from lightning_pol.format.storage import MAX_FILE_BYTES, ProofStorageError, ProofStore, open_store
from lightning_pol.format.strict_json import ProofFormatError, is_int
from lightning_pol.format.tensor_refs import Ref, tensor_digest

#: Lightning's callbacks that make steps of more micro-batches than the Trainer's factor (by import path).
_ACCUMULATION_SCHEDULER = "lightning.pytorch.callbacks.gradient_accumulation_scheduler:GradientAccumulationScheduler"
_SWA = "lightning.pytorch.callbacks.stochastic_weight_avg:StochasticWeightAveraging"

__all__ = ["ProofFormatError", "ProofReader"]

MAX_MANIFEST_BYTES = layout.MAX_MANIFEST_BYTES


class ProofReader:
    """Read-only view of a proof directory: its typed :attr:`manifest`, and every file checked as it is read.

    Example::

        proof = ProofReader("proof/")
        print(proof.identity, [c.step for c in proof.checkpoints])
        state = proof.load_checkpoint(proof.checkpoints[0])
    """

    def __init__(self, root: str | os.PathLike[str] | ProofStore, storage_options: Mapping[str, Any] | None = None) -> None:
        try:
            self.store = open_store(root, storage_options)
            found = self.store.is_container()
        except ProofStorageError as e:
            raise ProofFormatError(str(e)) from None
        if not found:
            raise ProofFormatError(f"{self.store.location} is not a directory")
        raw = self.store.read(layout.MANIFEST, MAX_MANIFEST_BYTES)
        #: SHA-256 of ``manifest.json``: the proof's identity.
        self.identity = layout.sha256_bytes(raw)
        self.manifest: Manifest = Manifest.parse(raw)
        self._root: dict[str, torch.Tensor] | None = None  # the pretrained root's tensors by digest (use_root)
        self._load_root: Callable[[], Mapping[str, torch.Tensor]] | None = None
        self._stored: dict[str, dict[str, torch.Tensor]] = {}  # checkpoint files that references point into

    @property
    def checkpoints(self) -> list[CheckpointEntry]:
        return self.manifest.checkpoints

    @property
    def code(self) -> CodeIdentity | None:
        """The source files of the classes the proof names, as the prover found them (None: a proof from before code identities)."""
        return self.manifest.code

    @property
    def recorded_steps(self) -> int:
        """Number of optimizer steps whose batches the index log holds."""
        return self.manifest.recorded_steps

    @property
    def root(self) -> str | Path:
        """The proof's location: its local directory, or its URL."""
        return self.store.local_root if self.store.local_root is not None else self.store.location

    @property
    def local_root(self) -> Path | None:
        """The proof's local directory; None on an object store (whose objects no import can reach)."""
        return self.store.local_root

    # -- files -------------------------------------------------------------------
    def _entry(self, rel: str) -> FileEntry:
        entry = self.manifest.files.get(rel)
        if entry is None:
            raise ProofFormatError(f"{rel} is not listed in the manifest")
        if entry.bytes > MAX_FILE_BYTES:
            raise ProofFormatError(f"{rel} is listed with {str(entry.bytes)[:30]} bytes, more than this reader loads ({MAX_FILE_BYTES})")
        return entry

    def read_file(self, rel: str) -> bytes:
        """The bytes of a listed file, after checking its size and digest."""
        entry = self._entry(rel)
        data = self.store.read(rel, entry.bytes, exact=entry.bytes)
        if layout.sha256_bytes(data) != entry.sha256:
            raise ProofFormatError(f"digest mismatch: {rel}")
        return data

    def check_file(self, rel: str) -> None:
        """Size and digest of a listed file, hashed in chunks: memory stays constant whatever its size."""
        entry = self._entry(rel)
        h = hashlib.sha256()
        for block in self.store.chunks(rel, entry.bytes, exact=entry.bytes):
            h.update(block)
        if h.hexdigest() != entry.sha256:
            raise ProofFormatError(f"digest mismatch: {rel}")

    def verify_files(self) -> list[str]:
        """Problems with listed files, and unlisted files in the directory; empty when all is well."""
        problems = []
        for rel in self.manifest.files:
            try:
                self.check_file(rel)
            except ProofFormatError as e:
                problems.append(str(e))
        listed = set(self.manifest.files) | {layout.MANIFEST}
        try:
            found = self.store.files()
        except ProofStorageError as e:
            return [*problems, str(e)]
        problems.extend(f"unlisted file: {rel}" for rel in found if rel not in listed)
        return problems

    def read_tensors(self, rel: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return load_safetensors(self.read_file(rel), rel)

    # -- typed content ---------------------------------------------------------------
    def load_checkpoint(self, entry: CheckpointEntry) -> dict[str, Any]:
        """Decoded training state of one checkpoint entry of :attr:`checkpoints` (a full one: a digest-only entry has no
        state to load), its tensor references resolved (:meth:`use_root` for the pretrained root's) and checked."""
        if entry.path is None:
            raise ProofFormatError(f"the checkpoint of step {entry.step} is digest-only: the proof holds no state to load there")
        data, file_digest = self._checkpoint_file(entry.path)
        tensors, metadata = load_safetensors(data, entry.path)
        del data
        return parse_checkpoint(tensors, metadata, entry, self.manifest, functools.partial(self._referenced, entry), file_digest)

    def use_root(self, load: Callable[[], Mapping[str, torch.Tensor]]) -> None:
        """How to get the tensors of the proof's pretrained root by tensor digest (from the file a verifier trusts,
        raising a :class:`ProofFormatError` that says why it cannot): what a checkpoint's ``__root__`` references
        name (format.tensor_refs). Called when a checkpoint first needs them."""
        self._root, self._load_root = None, load

    def _checkpoint_file(self, rel: str) -> tuple[bytes, str]:
        """A checkpoint file's bytes as stored (decompressed) and their digest."""
        data = self.read_file(rel)
        if not rel.endswith(layout.COMPRESSED_SUFFIX):
            return data, self.manifest.files[rel].sha256
        data = decompress_checkpoint(data, rel, MAX_FILE_BYTES)
        return data, layout.sha256_bytes(data)

    def _referenced(self, entry: CheckpointEntry, ref: Ref) -> torch.Tensor:
        """The tensor ``ref`` names from the checkpoint of ``entry``: stored in an earlier checkpoint file, or the root's."""
        rel = entry.path
        if ref.step is None:
            if self._root is None and self._load_root is not None:
                self._root = dict(self._load_root())
            if self.manifest.init.strategy != "pretrained":
                raise ProofFormatError(f"{rel} refers to a tensor of a pretrained root, and the proof declares no pretrained start")
            if self._root is None:
                root = self.manifest.init.arguments().get("root")
                digest = root.get("sha256") if isinstance(root, dict) else None
                raise ProofFormatError(f"{rel} refers to tensors of its pretrained root (SHA-256 {str(digest)[:64]}), which this reader "
                                       f"was not given (a verifier reads them from a root it trusts: roots=FILE, or `python -m lightning_pol.roots add`)")
            tensor = self._root.get(ref.sha256)
            if tensor is None:
                raise ProofFormatError(f"{rel} refers to a tensor of SHA-256 {ref.sha256} that its pretrained root does not hold")
            return tensor
        target = self.manifest.checkpoint_at(ref.step)
        if target is None or target.path is None or ref.step >= entry.step:
            raise ProofFormatError(f"{rel} refers to {str(ref)[:200]}, which is not an earlier checkpoint file of this proof")
        tensor = self._stored_tensors(target.path).get(str(ref.name))
        if tensor is None:
            raise ProofFormatError(f"{rel} refers to {str(ref)[:200]}, which that checkpoint file does not store")
        if tensor_digest(tensor) != ref.sha256:
            raise ProofFormatError(f"digest mismatch: {rel} refers to {str(ref)[:200]} with a digest that tensor does not have")
        return tensor

    def _stored_tensors(self, rel: str) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint file stores (not its references), the last two files kept: consecutive checkpoints
        refer to the same earlier one."""
        if rel not in self._stored:
            data, _ = self._checkpoint_file(rel)
            self._stored[rel] = load_safetensors(data, rel)[0]
            while len(self._stored) > 2:
                self._stored.pop(next(iter(self._stored)))
        return self._stored[rel]

    def index_log(self) -> IndexLog:
        """The whole index log; step t used ``log.step(t)``."""
        parts = []
        for chunk in self.manifest.index_log:
            tensors, _ = self.read_tensors(chunk.path)
            try:
                part = IndexLog.from_tensors(tensors)
            except ValueError as e:
                raise ProofFormatError(f"{chunk.path}: malformed index log ({e})") from None
            if part.steps != chunk.steps:
                raise ProofFormatError(f"{chunk.path}: holds {part.steps} steps, the manifest says {chunk.steps}")
            parts.append(part)
        log = IndexLog.concat(parts)
        size = self.manifest.data.size
        if len(log.indices) and (log.indices.min() < 0 or log.indices.max() >= size):
            raise ProofFormatError("index log holds indices outside the dataset")
        training = self.manifest.training
        accumulate = training.get("accumulate_grad_batches") or 1
        world = training.get("world_size") or 1
        if training.get("automatic_optimization") is True and log.steps:
            # Lightning steps once per accumulate_grad_batches micro-batches (fewer at an epoch's end), never on none;
            # under DDP every rank steps alike, so a step holds as many micro-batches of each rank, rank after rank.
            # Without this, moving a step boundary (step 0 empty, step 2 of three micro-batches) changes nothing a replay sees.
            per_step = torch.searchsorted(log.batch_offsets, log.offsets).diff()
            low, high = world, world * accumulate * self._callbacks_accumulation()
            if bool((per_step < low).any()) or bool((per_step > high).any()) or bool((per_step % world != 0).any()):
                raise ProofFormatError(f"index log has steps of {int(per_step.min())} to {int(per_step.max())} micro-batches; "
                                       f"accumulate_grad_batches is {accumulate}, world_size {world}")
        return log

    def _callbacks_accumulation(self) -> int:
        """The most micro-batches (times the Trainer's own factor) a step may hold under the replayed callbacks,
        read off their recorded arguments by class path (nothing of a proof is imported here): an accumulation
        schedule's largest factor; SWA's BatchNorm pass, one step over an epoch."""
        most = 1
        for spec in self.manifest.callbacks:
            if spec.import_path == _SWA:
                batches = decode_state({}, self.manifest.training).get("num_training_batches")
                most = max(most, batches) if is_int(batches, 1) else most
            elif spec.import_path == _ACCUMULATION_SCHEDULER:
                try:
                    scheduling = spec.arguments().get("scheduling")
                except (ValueError, RecursionError):
                    continue
                if isinstance(scheduling, dict):
                    most = max([most, *(v for v in scheduling.values() if is_int(v, 1))])
        return most

    def leaves(self) -> torch.Tensor:
        data = self.manifest.data
        if data.leaves is None:
            raise ProofFormatError("manifest has no data commitment")
        tensors, _ = self.read_tensors(data.leaves)
        return leaves_from_tensors(tensors, data.size)
