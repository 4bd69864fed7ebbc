"""ProofOfLearning: the Lightning callback that writes a Proof-of-Learning while training."""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from lightning_pol import proof_format as pf
from lightning_pol.background import BackgroundWriter
from lightning_pol.chain import parent_record, same_weights
from lightning_pol.commitment import SAMPLE_ENCODING, TREE, FirstEpochLeaves, compute_leaves, root_of, sample_leaf
from lightning_pol.distributed import broadcast_from_zero, check_ddp_recordable, gather_to_zero
from lightning_pol.errors import PoLError
from lightning_pol.index_log import IndexLog
from lightning_pol.metadata import (
    check_module_recreates,
    environment,
    optimizer_config,
    recreation_spec,
    scheduler_config,
)
from lightning_pol.recording import (
    RecordingSampler,
    UnsupportedDataError,
    instrument_loader,
    patch_train_dataloader,
    uninstrument_loader,
)
from lightning_pol.seeding import TrainingStream, portable_rng_states
from lightning_pol.state_codec import decode_state, encode_state
from lightning_pol.training_state import capture_training_state, snapshot_state
from lightning_pol.writer import ProofDirectoryError, ProofWriter, safetensors_bytes

log = logging.getLogger(__name__)


class ProofOfLearning(Callback):
    r"""Write a Proof-of-Learning of this training run to ``dirpath``.

    Example::

        from lightning import Trainer
        from lightning_pol import ProofOfLearning

        pol = ProofOfLearning("proof/", every_n_steps=8, init_strategy="pytorch_default")
        trainer = Trainer(max_epochs=3, callbacks=[pol])
        trainer.fit(model, datamodule=datamodule)   # model and datamodule unchanged

    The proof holds W_0, the full training state every ``every_n_steps``
    optimizer steps and at the end, the dataset indices of every step, a
    Merkle commitment to the training data, and what the verifier needs to
    re-create the module and data (their import paths and ``hparams``).
    ``docs/proof-format.md`` specifies the files.

    How the hooks are used:

    - ``setup``: refuses a module or datamodule the verifier could not
      re-create, and wraps ``train_dataloader()`` so that the DataLoader it
      returns records its batches and fetches them under counter seeds (each
      sample under its commitment seed in epoch 0, each batch under one seed
      from (proof seed, epoch, indices) later).
    - ``on_train_start``: opens the proof directory (refusing another run's
      proof), records settings and environment.
    - ``on_train_batch_start``: restores the training RNG stream (see below),
      and before the first micro-batch of step t with t a multiple of k, writes
      the checkpoint of step t: the state that step t starts from.
    - ``on_after_backward``: saves the training RNG stream.
    - ``on_train_batch_end``: files the batch's indices under its optimizer step.
    - ``on_train_epoch_end``: after the first epoch, commits to the data. Epoch 0
      fetches every sample under its commitment seed, and the DataLoader
      workers hash the samples as they fetch them, so the commitment costs no
      pass of its own; samples epoch 0 did not train on are hashed here.
    - ``on_train_end``: writes the final checkpoint and the single index-log
      file, and marks the proof complete; ``teardown`` waits for the writer,
      so ``fit`` returns with the proof complete.
    - ``on_exception``: commits what was written (Lightning calls no
      ``teardown`` when fit raises).

    A checkpoint's file is written when it is taken; the manifest that lists
    it is committed at most every ``commit_every_s`` seconds, whenever
    Lightning saves a checkpoint (``state_dict``), when fit raises, and at the
    end. A commit writes an index-log chunk and the manifest and syncs their
    directories, which on a small model costs more than the checkpoint itself.

    The global RNG is saved after each backward pass and restored at the start
    of the next batch, so draws made between steps (a DataLoader seeding its
    workers or its shuffle at a new epoch, validation, other callbacks) never
    shift the stream that dropout sees; a replay then needs only the RNG state
    in a checkpoint.

    Under ``strategy="ddp"`` every rank records its own micro-batches, RNG
    stream and first-epoch hashes, and rank 0 gathers them at checkpoints and
    at the data commitment and alone writes the proof: each step's global
    batch in rank order, the other ranks' streams in ``peer_rng``. The
    verifier replays it in one process (docs/verification.md, "DDP proofs").

    Args:
        dirpath: directory of the proof; must be empty or absent (or hold this
            run's proof when resuming with ``ckpt_path``).
        every_n_steps: k, the checkpoint interval in optimizer steps.
        init_strategy: the declared initialization, one of
            :data:`lightning_pol.proof_format.INIT_STRATEGIES`.
        init_params: parameters of the strategy (``{"std": 0.02}`` for ``normal``).
        seed: the proof seed of the batches' randomness; by default
            ``torch.initial_seed()``, so ``seed_everything`` makes runs repeatable.
        overwrite: replace a proof already in ``dirpath``.
        fsync: flush files to stable storage before renaming them into place.
        check_recreation: build ``Module(**hparams)`` on the meta device at fit
            start and compare its ``state_dict`` shapes with the live module.
        parent: for ``init_strategy="warm_start"``, the proof whose final
            weights W_0 is; the manifest records its identity and final
            checkpoint digest, and fit refuses to start unless W_0 equals
            those weights bit for bit.
        background: serialize, hash and write checkpoints on a background
            thread. The training thread only copies the state to CPU memory
            (non-blocking from a GPU); at most ``max_pending`` copies wait,
            then training waits for the disk. Write errors are raised in
            training at the next checkpoint or at train end.
        max_pending: checkpoints that may wait for the background writer.
        commit_every_s: the least time between two manifest commits. A
            checkpoint's file is written when it is taken, but the manifest
            that lists it (and the index-log chunk of the steps before it) is
            written only once this much time passed since the last commit, or
            when Lightning saves a checkpoint (so a resume always finds its
            proof), or at train end. A crash loses at most this much of the
            proof, never its consistency; 0 commits at every checkpoint.
    """

    def __init__(
        self,
        dirpath: str | os.PathLike[str],
        every_n_steps: int = 100,
        init_strategy: str = "pytorch_default",
        init_params: dict[str, Any] | None = None,
        seed: int | None = None,
        overwrite: bool = False,
        fsync: bool = True,
        check_recreation: bool = True,
        parent: str | os.PathLike[str] | None = None,
        background: bool = True,
        max_pending: int = 2,
        commit_every_s: float = 30.0,
    ) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps <= 0:
            raise PoLError(f"every_n_steps must be a positive integer, got {every_n_steps!r}")
        if init_strategy not in pf.INIT_STRATEGIES:
            raise PoLError(f"unknown init_strategy {init_strategy!r}; choose one of {list(pf.INIT_STRATEGIES)}")
        if (init_strategy == "warm_start") != (parent is not None):
            raise PoLError(
                "a warm start names the proof of its weights: pass parent=PARENT_PROOF_DIR with init_strategy='warm_start'"
                if parent is None else "parent= means W_0 comes from that proof: set init_strategy='warm_start'"
            )
        if seed is not None and not 0 <= int(seed) < 2**63:
            raise PoLError(f"seed must be in [0, 2**63), got {seed}")
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self._state_key = self._generate_state_key(dirpath=str(self.dirpath), every_n_steps=self.every_n_steps)
        self.init_strategy = init_strategy
        self.init_params = dict(init_params or {})
        self.seed = None if seed is None else int(seed)
        self.overwrite = overwrite
        self.fsync = fsync
        self.check_recreation = check_recreation
        self.parent = None if parent is None else Path(parent)
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise PoLError(f"max_pending must be a positive integer, got {max_pending!r}")
        self.background = background
        self.max_pending = max_pending
        if isinstance(commit_every_s, bool) or not isinstance(commit_every_s, (int, float)) or not commit_every_s >= 0:
            raise PoLError(f"commit_every_s must be a number of seconds >= 0, got {commit_every_s!r}")
        self.commit_every_s = float(commit_every_s)
        self._jobs: BackgroundWriter | None = None
        self._reset_run_state()

    def _reset_run_state(self) -> None:
        self._seed_in_use: int | None = None
        self._run_id: str | None = None
        self._writer: ProofWriter | None = None
        self._recorder: RecordingSampler | None = None
        self._loader: Any = None
        self._unpatch: Any = None
        self._specs: dict[str, Any] = {}
        self._stream = TrainingStream()
        self._inflight: tuple[int, int, list[int]] | None = None  # (step, epoch, indices)
        self._flushed = 0  # steps [0, _flushed) were handed to the writer
        # Writer-side (run as jobs, in order): steps handed over but not yet in an index-log file, and when the
        # manifest was last committed. They wait for the next commit, which files them as one chunk.
        self._unfiled: list[list[list[int]]] = []
        self._filed = 0  # steps [0, _filed) are in index-log files
        self._committed_at = -math.inf
        self._write_failed = False
        self._fitting = False  # this rank writes the proof and fit has not ended: commits are still to come
        self._pending: list[list[list[int]]] = []  # micro-batches of steps _flushed, _flushed+1, ...
        self._sample_epochs: list[list[int]] = []  # [first_step, epoch] runs
        self._new_run = False  # the next batch starts a run even within the same epoch (a resume)
        self._last_written = -1
        self._next_due = 0
        self._resume: dict[str, Any] | None = None
        self._resume_epoch: int | None = None
        self._iter_epoch: int | None = None
        self._trainer: pl.Trainer | None = None
        self._checkpoints = 0
        self._logged = -1
        self._first_epoch: FirstEpochLeaves | None = None
        self._opened = False  # on_train_start ran: this rank records (every rank does; rank 0 alone writes)
        self._world = 1

    @property
    def state_key(self) -> str:
        return self._state_key  # Lightning reads it at every hook call (as a profiler label): built in __init__

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._reset_run_state()
        self._trainer = trainer
        # Checked before configure_optimizers or any data work, so a run the
        # verifier could not re-create stops before it costs anything.
        self._specs["module"] = recreation_spec(pl_module, "LightningModule")
        if self.check_recreation:
            check_module_recreates(pl_module, self._specs["module"])
        dm = trainer.datamodule
        self._specs["datamodule"] = recreation_spec(dm, "LightningDataModule") if dm is not None else None
        if self.parent is not None:
            record, final = parent_record(self.parent)
            differ = same_weights(pl_module.state_dict(), final)
            if differ:
                raise PoLError(
                    f"W_0 is not the parent proof's final state ({len(differ)} tensors differ, e.g. {differ[0]!r}); "
                    "load it with model.load_state_dict() before fit"
                )
            self._specs["parent"] = record
        self._world = trainer.world_size
        if self._world > 1:
            check_ddp_recordable(trainer, pl_module)
            # Rank 0 names the proof seed: every rank must fetch a batch under the seed the proof records.
            seed = self.seed if self.seed is not None else torch.initial_seed() % 2**63
            self._seed_in_use = broadcast_from_zero(seed, self._world)
        self._unpatch = patch_train_dataloader(trainer, lambda loader: self._instrument(trainer, loader))

    def _instrument(self, trainer: pl.Trainer, loader: Any) -> Any:
        if self._loader is not None:
            uninstrument_loader(self._loader)
        if self._seed_in_use is None:
            self._seed_in_use = self.seed if self.seed is not None else torch.initial_seed() % 2**63
        if self._resume is None and self._first_epoch is None and not self._opened:  # a fresh run's first loader
            self._first_epoch = _first_epoch_leaves(loader)
            if self._first_epoch is None and self._world > 1:
                raise PoLError("ProofOfLearning under DDP needs shared memory for the first epoch's sample hashes")
        self._recorder = instrument_loader(loader, self._seed_in_use, lambda: self._data_epoch(trainer), self._first_epoch)
        self._loader = loader
        return loader

    def _data_epoch(self, trainer: pl.Trainer) -> int:
        """The epoch of the sample seeds of an iteration that starts now.

        It is the epoch Lightning gives samplers (``set_epoch``). The first
        iteration after a resume is created before Lightning restores its loop
        counters, so it takes the epoch saved in this callback's state instead.
        """
        if self._resume_epoch is not None:
            epoch, self._resume_epoch = self._resume_epoch, None
        else:
            epoch = trainer.fit_loop.epoch_progress.current.processed
        self._iter_epoch = epoch
        return epoch

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._recorder is None or trainer.train_dataloader is not self._loader:
            raise UnsupportedDataError(
                "the training DataLoader was replaced after train_dataloader() returned it; "
                "ProofOfLearning cannot record its batches"
            )
        dataset = self._loader.dataset.dataset
        try:
            size = len(dataset)
        except TypeError:
            raise UnsupportedDataError("the training dataset has no len(); a proof needs a sized map-style dataset") from None
        self._opened = True
        failure = None
        if trainer.global_rank == 0:  # the other ranks of a DDP run record for rank 0, which writes
            try:
                self._open(trainer, pl_module, dataset, size)
            except PoLError as e:
                failure = e
        # Under DDP every rank stops when rank 0 cannot open the proof, instead of waiting for it at the first step.
        reason = broadcast_from_zero(None if failure is None else str(failure), self._world)
        if failure is not None:
            raise failure
        if reason is not None:
            raise PoLError(reason)
        writer = self._writer
        if writer is None:
            return
        self._fitting = True
        self._checkpoints = len(writer.manifest["checkpoints"])
        if self.background:
            self._stop_jobs()
            self._jobs = BackgroundWriter(self.max_pending)
        if self._resume is None:  # a new proof's first manifest (a resumed one was committed when reopened)
            self._run(lambda: self._commit(writer, force=True))
        log.info("proof of learning: writing to %s (k=%d, %d samples committed)", self.dirpath, self.every_n_steps, size)

    def _open(self, trainer: pl.Trainer, pl_module: pl.LightningModule, dataset: Any, size: int) -> None:
        if self._resume is not None:  # a resumed run checks the data against the commitment: one pass
            self._open_resumed(trainer, compute_leaves(dataset, num_workers=self._loader.num_workers))
        elif self._first_epoch is not None:
            if size:
                sample_leaf(dataset, 0)  # a sample that cannot be hashed stops the run here, not in a worker
            self._open_new(trainer, pl_module, None, size)
        else:  # no shared memory for the workers' hashes: commit in a pass of its own
            self._open_new(trainer, pl_module, compute_leaves(dataset, num_workers=self._loader.num_workers), size)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if not self._opened or self._recorder is None:
            return
        self._stream.batch_start()
        step = trainer.global_step
        epoch, indices = self._recorder.pop()
        self._inflight = (step, epoch, indices)
        if step >= self._next_due and step > self._last_written:
            self._write_checkpoint(trainer, pl_module, step, self._stream.state, batch_idx)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._inflight is None:
            return
        step, epoch, indices = self._inflight
        self._inflight = None
        slot = step - self._flushed
        if slot < len(self._pending) - 1 or slot < 0:
            raise RuntimeError(f"batch of step {step} arrived after step {self._flushed + len(self._pending) - 1}")
        while len(self._pending) <= slot:
            self._pending.append([])
        self._pending[slot].append(indices)
        if epoch == 0 and self._first_epoch is not None:
            self._first_epoch.trained(indices)
        if not self._sample_epochs or self._sample_epochs[-1][1] != epoch or (self._new_run and self._sample_epochs[-1][0] < step):
            self._sample_epochs.append([step, epoch])
        self._new_run = False
        if self._writer is not None and self._logged != self._checkpoints and (trainer.logger is not None or trainer.progress_bar_callback is not None):
            # Logged when it changes, and only where it is shown: Lightning's logging costs more than the rest of this hook.
            self._logged = self._checkpoints
            pl_module.log_dict(
                {"pol/checkpoints": float(self._checkpoints), "pol/MB": self._writer.total_bytes / 1e6},
                on_step=True, on_epoch=False, prog_bar=True, logger=trainer.logger is not None, batch_size=1,
            )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._opened and self._first_epoch is not None:
            self._commit_data()

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The training stream is saved right after the backward pass, the last
        # point where a step draws randomness that shapes its gradient. Draws
        # after it (an optimizer hook, another callback's on_train_batch_end)
        # are undone when the next batch starts.
        if self._opened:
            self._stream.after_backward()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._opened:
            return
        step = trainer.global_step
        if self._first_epoch is not None:  # training ended within the first epoch
            self._commit_data()
        if self._stream.state is None:  # no batch ran at all
            self._stream.batch_start()
        # The last indices become the one index-log file of a complete proof, committed with the final checkpoint.
        if step > self._last_written:
            self._write_checkpoint(trainer, pl_module, step, self._stream.state, None)
        else:
            finish = self._index_job(self._flushed + len(self._pending), final_step=step)
            writer = self._writer
            if finish is not None and writer is not None:
                self._run(lambda: (finish(), self._commit(writer, force=True)))
        # The writer finishes the proof while Lightning winds down (DataLoader workers, strategy); teardown waits.

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        try:
            if self._jobs is not None:
                self._jobs.flush()  # fit returns with the proof complete, or raises the write error
        finally:
            self._end_fit()
        writer = self._writer
        if writer is not None and writer.manifest["status"] == pf.STATUS_COMPLETE:
            log.info("proof of learning: %s (%d checkpoints, %.2f MB)",
                     self.dirpath, len(writer.manifest["checkpoints"]), writer.total_bytes / 1e6)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Lightning calls no teardown when fit raises: the proof is committed as far as it was written.
        self._end_fit()

    def _end_fit(self) -> None:
        if self._fitting:  # once: Lightning may call on_exception after a teardown that raised
            self._fitting = False
            self._commit_on_exit()
        self._stop_jobs()
        if self._unpatch is not None:
            self._unpatch()
            self._unpatch = None
        if self._loader is not None:
            uninstrument_loader(self._loader)
        self._loader = self._recorder = None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        # A Lightning checkpoint must not promise steps or files that are not committed: a resume reopens the proof.
        self._commit_now()
        stream = self._stream.state
        stream_tensors, stream_tree = encode_state({"rng": portable_rng_states(stream)}) if stream is not None else ({}, None)
        return {
            "format_version": pf.FORMAT_VERSION,
            "run_id": self._run_id,
            "seed": self._seed_in_use,
            "flushed": self._flushed,
            "pending": [[list(b) for b in p] for p in self._pending],
            "sample_epochs": [list(r) for r in self._sample_epochs],
            "last_written": self._last_written,
            "next_due": self._next_due,
            "next_data_epoch": self._next_data_epoch(),
            "stream_tensors": stream_tensors,
            "stream_tree": json.dumps(stream_tree),
        }

    def _next_data_epoch(self) -> int | None:
        if self._iter_epoch is None or self._trainer is None:
            return None
        finished = self._trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        return self._iter_epoch + 1 if finished else self._iter_epoch

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("run_id") is None:
            return
        if self._world > 1:  # each rank's RNG stream and unfiled indices are not in rank 0's Lightning checkpoint
            raise PoLError("ProofOfLearning cannot resume a DDP run in this version: start the proof again")
        self._resume = dict(state_dict)
        self._resume_epoch = state_dict.get("next_data_epoch")
        self._seed_in_use = int(state_dict["seed"])

    # ---------------------------------------------------------------- writing
    @property
    def identity(self) -> str:
        """SHA-256 of the current manifest: the proof's identity."""
        if self._writer is None:
            raise PoLError("no proof has been written yet")
        self._commit_now()
        return pf.sha256_file(self.dirpath / pf.MANIFEST)

    def _open_new(self, trainer: pl.Trainer, pl_module: pl.LightningModule, leaves: torch.Tensor | None, size: int) -> None:
        self._run_id = uuid.uuid4().hex
        manifest: dict[str, Any] = {
            "format": pf.FORMAT_NAME,
            "format_version": pf.FORMAT_VERSION,
            "status": pf.STATUS_IN_PROGRESS,
            "run_id": self._run_id,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seed": self._seed_in_use,
            "every_n_steps": self.every_n_steps,
            "init": {"strategy": self.init_strategy, "params": encode_state(self.init_params)[1]},
            "parent": self._specs.get("parent"),
            "module": self._specs["module"],
            "datamodule": self._specs["datamodule"],
            "training": self._training_settings(trainer, pl_module, size),
            "environment": environment(),
            "data": {
                "size": size,
                "leaves": None,  # set with the root when the data is committed (after the first epoch)
                "root": None,
                "tree": TREE,
                "sample_encoding": SAMPLE_ENCODING,
            },
            "index_log": [],
            "sample_epochs": [],
            "checkpoints": [],
            "final_step": None,
            "files": {},
        }
        self._writer = ProofWriter.create(self.dirpath, manifest, self.overwrite, self.fsync)
        if leaves is not None:
            _put_leaves(self._writer, leaves)

    def _commit_data(self) -> None:
        """Commit to the data the first epoch fetched; the Merkle tree and the file are built on the writer."""
        collector, self._first_epoch = self._first_epoch, None
        assert collector is not None and self._loader is not None
        self._loader.dataset.first_epoch = None  # in-process fetches stop hashing; workers see epochs > 0 from now on
        parts = gather_to_zero(collector.trained_rows() if self._world > 1 else None, self._world)
        writer = self._writer
        if writer is None:
            return  # another rank of a DDP run: its hashes went to rank 0
        for part in (parts or [])[1:]:
            collector.merge(*part)
        leaves = collector.leaves(self._loader.dataset.dataset)

        def job() -> None:
            _put_leaves(writer, leaves)
            self._commit(writer)

        self._run(job)

    def _open_resumed(self, trainer: pl.Trainer, leaves: torch.Tensor) -> None:
        state = self._resume
        assert state is not None
        self._run_id = state["run_id"]
        writer = ProofWriter.reopen(self.dirpath, self._run_id, self.fsync)
        m = writer.manifest
        if m["data"]["root"] is None:  # the run stopped within its first epoch, before committing
            _put_leaves(writer, leaves)
        elif m["data"]["root"] != root_of(leaves):
            raise ProofDirectoryError("cannot resume: the training data differs from the data this proof committed to")
        self._flushed = int(state["flushed"])
        self._pending = [[list(b) for b in p] for p in state["pending"]]
        self._sample_epochs = [list(r) for r in state["sample_epochs"]]
        # Lightning resumes mid-epoch with a fresh iteration of the sampler (a new shuffle), so what this run
        # trains on in the epoch is a second draw: recorded as a run of its own, checked on its own.
        self._new_run = True
        self._last_written = int(state["last_written"])
        self._next_due = int(state["next_due"])
        tree = json.loads(state["stream_tree"])
        self._stream = TrainingStream(decode_state(state["stream_tensors"], tree)["rng"] if tree is not None else None)
        for c in [c for c in m["checkpoints"] if c["step"] > self._last_written]:
            writer.drop(c["path"])
            m["checkpoints"].remove(c)
        recorded = sum(c["steps"] for c in m["index_log"])
        if recorded < self._flushed:
            raise ProofDirectoryError(
                f"cannot resume: the proof records {recorded} steps but the Lightning checkpoint expects {self._flushed}"
            )
        if recorded > self._flushed:  # steps recorded after the checkpoint we resume from never happened
            log = self._read_index_log(writer).truncate(self._flushed)
            for chunk in m["index_log"]:
                writer.drop(chunk["path"])
            m["index_log"] = []
            self._write_index_chunk(writer, 0, log)
        self._filed = self._flushed
        m["status"] = pf.STATUS_IN_PROGRESS
        m["final_step"] = None
        self._writer = writer
        self._commit(writer, force=True)

    @staticmethod
    def _read_index_log(writer: ProofWriter) -> IndexLog:
        # Our own files, written by this run: trusted, unlike a proof handed to a verifier.
        return IndexLog.concat([IndexLog.from_tensors(load_file(writer.root / c["path"])) for c in writer.manifest["index_log"]])

    @staticmethod
    def _write_index_chunk(writer: ProofWriter, first_step: int, log: IndexLog, rel: str | None = None) -> None:
        rel = rel or pf.index_chunk_path(first_step)
        writer.put(rel, safetensors_bytes(log.to_tensors()))
        writer.manifest["index_log"].append({"path": rel, "first_step": first_step, "steps": log.steps})

    def _commit(self, writer: ProofWriter, force: bool = False) -> None:
        """(A job) Commit the manifest if ``commit_every_s`` passed since the last commit, or if ``force``.

        The steps handed to the writer since the last commit are filed first, as
        one index-log chunk: the manifest never lists a checkpoint whose steps
        are not in its index log.
        """
        if not force and time.monotonic() - self._committed_at < self.commit_every_s:
            return
        if self._unfiled:
            steps, self._unfiled = self._unfiled, []
            self._write_index_chunk(writer, self._filed, IndexLog.from_steps(steps))
            self._filed += len(steps)
        writer.commit()
        self._committed_at = time.monotonic()

    def _commit_unless_complete(self, writer: ProofWriter) -> None:
        """(A job) Commit now, unless the final commit, which marked the proof complete, was made."""
        if writer.manifest["status"] == pf.STATUS_IN_PROGRESS:
            self._commit(writer, force=True)

    def _commit_now(self) -> None:
        """Commit what was handed to the writer, and wait for it (a Lightning checkpoint, ``identity``)."""
        writer = self._writer
        if writer is None or not self._fitting:
            return  # after fit, everything was committed (or a failed write stopped the writing)
        self._run(lambda: self._commit_unless_complete(writer))
        if self._jobs is not None:
            self._jobs.flush()

    def _commit_on_exit(self) -> None:
        """At the end of fit, commit what was written if the proof is not complete (fit raised)."""
        writer = self._writer
        if writer is None or self._write_failed or (self._jobs is not None and self._jobs.error is not None):
            return
        try:
            self._run(lambda: self._commit_unless_complete(writer))
        except Exception as e:  # noqa: BLE001 - fit is already ending with its own exception
            log.warning("proof of learning: the last commit failed: %s", e)

    def _stop_jobs(self) -> None:
        if self._jobs is not None:
            self._jobs.close()  # runs what is queued: every queued job leaves a consistent proof
            self._jobs = None

    def _run(self, job: Any) -> None:
        """Run a file job on the background writer (in order), or here when ``background`` is off."""
        if job is None:
            return
        if self._jobs is not None:
            self._jobs.submit(job)
            return
        try:
            job()
        except BaseException:
            self._write_failed = True  # as on the background writer, nothing is written after a failed write
            raise

    def _index_job(self, upto: int, final_step: int | None = None) -> Any:
        """Take the indices of steps [_flushed, upto) out of memory; returns the job that hands them to the writer.

        They wait there for the next commit (:meth:`_commit`). With ``final_step`` (training ended there), the
        job instead merges every chunk, the waiting steps and these into the one index-log file of a complete
        proof and marks the manifest complete; the caller's commit lands it.
        """
        n = upto - self._flushed
        steps = self._pending[:max(n, 0)] + [[] for _ in range(n - len(self._pending))]
        if self._world > 1:  # every rank's micro-batches of each step, in rank order: the global batch
            ranks = gather_to_zero(steps, self._world)
            steps = [[b for rank in ranks for b in rank[s]] for s in range(len(steps))] if ranks is not None else []
        if n <= 0 and final_step is None:
            return None
        self._pending = self._pending[max(n, 0):]
        self._flushed = max(upto, self._flushed)
        writer = self._writer
        if writer is None:
            return None
        if final_step is None:
            return lambda: self._unfiled.extend(steps)
        sample_epochs = self._recorded_epochs()

        def finish() -> None:
            chunks = writer.manifest["index_log"]
            last, self._unfiled = self._unfiled + steps, []
            if last or not (len(chunks) == 1 and chunks[0]["path"] == pf.INDEX_LOG_FINAL):
                log = IndexLog.concat([self._read_index_log(writer), IndexLog.from_steps(last)])
                for chunk in chunks:
                    writer.drop(chunk["path"])
                writer.manifest["index_log"] = []
                self._write_index_chunk(writer, 0, log, rel=pf.INDEX_LOG_FINAL)
                self._filed = log.steps
            writer.manifest["sample_epochs"] = sample_epochs
            writer.manifest["status"] = pf.STATUS_COMPLETE
            writer.manifest["final_step"] = final_step

        return finish

    def _write_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int, rng: dict[str, Any], batch_idx: int | None
    ) -> None:
        """Snapshot the training state here; encode and write it on the writer, which commits it when due."""
        final = batch_idx is None  # the checkpoint of the step training ended at
        index_job = self._index_job(self._flushed + len(self._pending) if final else step, step if final else None)
        streams = gather_to_zero(rng, self._world) if self._world > 1 else None
        self._last_written = step
        self._next_due = (step // self.every_n_steps + 1) * self.every_n_steps
        writer = self._writer
        if writer is None:
            return  # another rank of a DDP run: its indices and RNG stream went to rank 0
        peers = streams[1:] if streams is not None else None  # the other ranks' streams; ``rng`` is rank 0's
        state, ready = snapshot_state(capture_training_state(trainer, pl_module, rng, step, batch_idx, peers))
        epoch = trainer.current_epoch
        sample_epochs = self._recorded_epochs()

        def job() -> None:
            if index_job is not None:
                index_job()
            if ready is not None:
                ready.synchronize()  # the non-blocking copies from the GPU have landed
            tensors, tree = encode_state(state)
            # One metadata key only: safetensors writes its metadata map in hash
            # order, and checkpoints of identical runs must be identical bytes.
            data = safetensors_bytes(tensors, {pf.CHECKPOINT_STATE_KEY: json.dumps(tree, allow_nan=False, separators=(",", ":"))})
            rel = pf.checkpoint_path(step)
            entry = writer.put(rel, data)
            writer.manifest["checkpoints"].append({"step": step, "epoch": epoch, "path": rel, "sha256": entry["sha256"]})
            writer.manifest["sample_epochs"] = sample_epochs
            self._commit(writer, force=final)

        self._run(job)
        self._checkpoints += 1

    def _recorded_epochs(self) -> list[list[int]]:
        return [list(r) for r in self._sample_epochs if r[0] < self._flushed]

    def _training_settings(self, trainer: pl.Trainer, pl_module: pl.LightningModule, size: int) -> dict[str, Any]:
        loader = self._loader
        inner = self._recorder.inner if self._recorder is not None else None
        batches = trainer.num_training_batches
        accumulate = trainer.accumulate_grad_batches
        settings = {
            "precision": str(trainer.precision),
            "gradient_clip_val": trainer.gradient_clip_val,
            "gradient_clip_algorithm": trainer.gradient_clip_algorithm,
            "accumulate_grad_batches": accumulate,
            "max_epochs": trainer.max_epochs,
            "max_steps": trainer.max_steps,
            "limit_train_batches": trainer.limit_train_batches,
            "num_training_batches": batches,
            "steps_per_epoch": math.ceil(batches / accumulate) if math.isfinite(batches) else None,
            "estimated_stepping_batches": trainer.estimated_stepping_batches,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "benchmark": bool(torch.backends.cudnn.benchmark),
            "batch_size": loader.batch_size if loader.batch_size is not None else getattr(inner, "batch_size", None),
            "drop_last": loader.drop_last if loader.batch_size is not None else getattr(inner, "drop_last", None),
            "dataset_size": size,
            "dataset": _type_path(loader.dataset.dataset),
            "batch_sampler": _type_path(inner) if self._recorder is not None and self._recorder.batched else None,
            "sampler": _type_path(getattr(inner, "sampler", None) if self._recorder is not None and self._recorder.batched else inner),
            "num_workers": loader.num_workers,
            "automatic_optimization": pl_module.automatic_optimization,
            "accelerator": type(trainer.accelerator).__name__,
            "strategy": type(trainer.strategy).__name__,
            "world_size": trainer.world_size,
            "optimizers": [optimizer_config(o) for o in trainer.optimizers],
            "lr_schedulers": [scheduler_config(c) for c in trainer.lr_scheduler_configs],
            "data_source": "datamodule" if trainer.datamodule is not None else "module",
        }
        return encode_state(settings)[1]


def _put_leaves(writer: ProofWriter, leaves: torch.Tensor) -> None:
    writer.put(pf.LEAVES, safetensors_bytes({pf.LEAVES_KEY: leaves}))
    writer.manifest["data"]["leaves"] = pf.LEAVES
    writer.manifest["data"]["root"] = root_of(leaves)


def _first_epoch_leaves(loader: Any) -> FirstEpochLeaves | None:
    """A table for the hashes of the first epoch's samples, or None where shared memory is not to be had."""
    try:
        size = len(loader.dataset)
    except TypeError:
        return None  # on_train_start refuses the unsized dataset
    try:
        return FirstEpochLeaves(size)
    except (RuntimeError, OSError) as e:
        log.warning("proof of learning: no shared memory for the data commitment (%s); hashing the data in a pass of its own", e)
        return None


def _type_path(obj: Any) -> str | None:
    return None if obj is None else f"{type(obj).__module__}:{type(obj).__qualname__}"

