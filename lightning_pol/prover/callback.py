"""ProofOfLearning: the Lightning callback that writes a Proof-of-Learning while training.

Its hooks:

- ``setup``: refuses what the verifier could not re-create; instruments the
  training DataLoader (it records its batches and seeds each sample).
- ``on_train_start``: opens the proof (a :class:`~lightning_pol.prover.session.ProofSession`);
  from here to ``teardown``, records each value a plateau scheduler consumes (:mod:`.monitored`).
- ``on_train_batch_start``: restores the training RNG stream; before the first
  micro-batch of step t, t a multiple of k, writes the checkpoint of step t.
- ``on_after_backward``: saves the training RNG stream, so draws between
  steps (DataLoaders, validation, other callbacks) never shift it.
- ``on_train_batch_end``: files the batch under its step (the :class:`~lightning_pol.prover.ledger.StepLedger`).
- ``on_train_epoch_end``: after epoch 0, commits to the data it fetched.
- ``on_train_end``: the final checkpoint completes the proof; ``teardown``
  waits for it. ``on_exception`` commits what was written.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_pol.errors import PoLError
from lightning_pol.format import layout
from lightning_pol.format.storage import check_location, is_url, open_store, plain_options
from lightning_pol.prover.distributed import (
    check_ddp_recordable,
    gather_rank_parts,
    global_steps,
    on_rank_zero,
    own_rank_part,
)
from lightning_pol.prover.instrumentation import LoaderInstrumentation
from lightning_pol.prover.ledger import StepLedger
from lightning_pol.prover.monitored import MonitoredValues
from lightning_pol.prover.other_callbacks import CallbackPlan
from lightning_pol.prover.initialization import check_declaration, declare_initialization
from lightning_pol.prover.recreation import recreation_record
from lightning_pol.prover.rehearsal import Rehearsal
from lightning_pol.prover.run_record import new_manifest, training_settings
from lightning_pol.prover.session import ProofSession
from lightning_pol.prover.trackers import check_trackers, log_proof_to_trackers
from lightning_pol.runtime.collectives import broadcast_from_zero, gather_to_zero
from lightning_pol.runtime.leaves import compute_leaves, sample_leaf
from lightning_pol.runtime.loader_hook import UnsupportedDataError
from lightning_pol.runtime.rng import TrainingStream
from lightning_pol.runtime.training_state import (
    capture_training_state,
    proof_step,
    rank_buffers,
)

log = logging.getLogger(__name__)


class ProofOfLearning(Callback):
    r"""Write a Proof-of-Learning of this training run to ``dirpath``.

    Example::

        from lightning import Trainer
        from lightning_pol import ProofOfLearning

        pol = ProofOfLearning("proof/", every_n_steps=8, init_strategy="pytorch_default")
        Trainer(max_epochs=3, callbacks=[pol]).fit(model, datamodule=datamodule)   # model and datamodule unchanged

    The proof holds W_0, the full training state every ``every_n_steps`` optimizer steps and at the end, the dataset
    indices of every step, a Merkle commitment to the training data, and what the verifier needs to re-create the module,
    data and callbacks (docs/proof-format.md). Hooks: this module's docstring. Under DDP, rank 0 gathers and writes.

    Args:
        dirpath: the proof's directory, empty or absent (or this run's proof when resuming with ``ckpt_path``): a local
            path, or an fsspec URL (``s3://bucket/run/proof``) resolved as Lightning resolves a ``ModelCheckpoint``'s.
        storage_options: for a URL, the filesystem's arguments that fsspec's configuration (``FSSPEC_S3_*``) lacks.
        log_proof: give an ``MLFlowLogger``'s or ``WandbLogger``'s run the proof's manifest and identity when fit ends
            (``"all"``: every file of the proof).
        every_n_steps: k, the checkpoint interval in optimizer steps.
        full_every_n_steps: K, a multiple of k: a *tiered* proof stores the full state only at step 0, every K
            steps and at the end, and the other checkpoints as their digests with update norms (about k/K of
            the bytes; a replay then starts from the nearest full state). None: K = k, every checkpoint in full.
        init_strategy: the declared initialization, one of :data:`lightning_pol.INIT_STRATEGIES`, or ``auto``: what
            the module's constructors drew (``transformers`` for the transformers models it holds and ``pytorch_default``
            for the rest; the manifest records what was found). At fit start W_0 is tested as the verifier will
            (with ``check_recreation``), and a W_0 that fails is refused before anything is written.
        init_params: parameters of the strategy (``{"std": 0.02}`` for ``normal``; ``weights``, ``prefix``, ``fresh`` for ``pretrained``).
        seed: the proof seed of the batches' randomness; by default ``torch.initial_seed()`` (``seed_everything`` repeats it).
        overwrite: replace a proof already in ``dirpath``.
        fsync: flush files to stable storage before renaming them into place.
        check_recreation: at fit start, re-create the module and data as the verifier will; refuse a difference (:mod:`.rehearsal`).
        module_config, datamodule_config: in a Hydra app, the keys of the config nodes that built the module and
            datamodule (``model``, ``data``); by default the one node whose ``_target_`` is the class.
        strict_callbacks: refuse, not only warn about and record, another callback that can change
            training and that the replay cannot re-create (:mod:`.other_callbacks`).
        references: store a tensor whose bytes equal its copy stored last (a frozen weight, an optimizer state that
            did not move) or a pretrained root's tensor as a reference to that copy, so a checkpoint costs what
            changed (docs/proof-format.md, "References"). Off: every checkpoint file holds the whole state.
        parent: for ``init_strategy="warm_start"``, the proof whose final weights W_0 must equal bit for bit.
        background: serialize, hash and write checkpoints on a background thread; the training thread
            only copies the state to CPU memory (reused buffers; pinned, non-blocking from a GPU). Off, the
            training thread writes each checkpoint from the live state, with no copy at all.
        max_pending: copies of the state that may wait for the background writer, each one copy of the state
            in memory; a checkpoint due while every copy is still being written waits for one.
        commit_every_s: the least time between two manifest commits (0: every checkpoint); a Lightning checkpoint, the
            end and an exception always commit. A crash loses at most this much of the proof, never its consistency.
    """

    def __init__(
        self,
        dirpath: str | os.PathLike[str],
        every_n_steps: int = 100,
        full_every_n_steps: int | None = None,
        init_strategy: str = "auto",
        init_params: dict[str, Any] | None = None,
        seed: int | None = None,
        overwrite: bool = False,
        fsync: bool = True,
        check_recreation: bool = True,
        parent: str | os.PathLike[str] | None = None,
        background: bool = True,
        max_pending: int = 1,
        commit_every_s: float = 30.0,
        module_config: str | None = None,
        datamodule_config: str | None = None,
        strict_callbacks: bool = False,
        references: bool = True,
        storage_options: dict[str, Any] | None = None,
        log_proof: bool | str = False,
    ) -> None:
        _validate_arguments(every_n_steps, init_strategy, parent, seed, max_pending, commit_every_s, init_params)
        _validate_tiers(every_n_steps, full_every_n_steps)
        _validate_storage(dirpath, parent, storage_options, log_proof)
        self.dirpath = _location(dirpath)
        self.storage_options = plain_options(storage_options or {})
        self.log_proof = log_proof
        self.every_n_steps = every_n_steps
        self.full_every_n_steps = None if full_every_n_steps in (None, every_n_steps) else full_every_n_steps
        self.init_strategy = init_strategy
        self.init_params = dict(init_params or {})
        self.seed = None if seed is None else int(seed)
        self.overwrite = overwrite
        self.fsync = fsync
        self.check_recreation = check_recreation
        self.parent = None if parent is None else _location(parent)
        self.background = background
        self.max_pending = max_pending
        self.commit_every_s = float(commit_every_s)
        self.config_keys = {"module": module_config, "datamodule": datamodule_config}
        self.strict_callbacks = strict_callbacks
        self.references = bool(references)
        self._state_key = self._generate_state_key(dirpath=str(self.dirpath), every_n_steps=self.every_n_steps)
        self._reset_run_state()

    def _reset_run_state(self) -> None:
        self._seed_in_use, self._run_id, self._specs = None, None, {}
        self._plan = CallbackPlan()  # the other callbacks: replayed, or said and recorded
        self._rehearsal: Rehearsal | None = None
        self._stream, self._monitored = TrainingStream(), MonitoredValues()  # and the values plateau schedulers consume
        self._ledger = StepLedger(self.every_n_steps)
        self._loader = LoaderInstrumentation(self._proof_seed)
        self._session: ProofSession | None = None  # on the rank that writes the proof, from on_train_start
        self._resume: dict[str, Any] | None = None  # this rank's part of the Lightning checkpoint resumed from
        self._opened = False  # on_train_start ran: this rank records (every rank does; rank 0 alone writes)
        self._logged, self._world, self._rank, self._own_buffers = -1, 1, 0, False

    @property
    @override
    def state_key(self) -> str:
        return self._state_key  # Lightning reads it at every hook call (as a profiler label): built in __init__

    def _proof_seed(self) -> int:
        if self._seed_in_use is None:
            self._seed_in_use = self.seed if self.seed is not None else torch.initial_seed() % 2**63
        return self._seed_in_use

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._reset_run_state()
        # Checked before configure_optimizers or any data work, so a run the
        # verifier could not re-create stops before it costs anything.
        self._specs = recreation_record(trainer, pl_module, self.parent, self.config_keys)
        self._plan.at_fit_start(trainer, self, self.strict_callbacks, self._finish)
        check_trackers(trainer, self.log_proof)
        if self.check_recreation:
            self._rehearsal = Rehearsal(self._specs, None if is_url(self.dirpath) else self.dirpath)
            self._rehearsal.check_module(pl_module)
        self._world, self._rank = trainer.world_size, trainer.global_rank
        # Ranks that keep their own buffers (no broadcast) each send them to rank 0 at a checkpoint.
        self._own_buffers = self._world > 1 and check_ddp_recordable(trainer, pl_module)
        if self._world > 1:
            # Rank 0 names the proof seed: every rank must fetch a batch under the seed the proof records.
            self._seed_in_use = broadcast_from_zero(self._proof_seed(), self._world)
        self._loader.attach(trainer, hash_first_epoch=True)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._loader.is_training_loader(trainer.train_dataloader):
            raise UnsupportedDataError(
                "the training DataLoader was replaced after train_dataloader() returned it; "
                "ProofOfLearning cannot record its batches"
            )
        try:
            size = len(self._loader.dataset)
        except TypeError:
            raise UnsupportedDataError("the training dataset has no len(); a proof needs a sized map-style dataset") from None
        self._plan.check_resume(self._resume is not None)
        if self._rehearsal is not None:  # before anything is written: a run the verifier would reject stops here
            self._rehearsal.check_training(trainer, self._loader.dataset, resumed=self._resume is not None)
            self._rehearsal = None
        self._opened = True
        # The other ranks of a DDP run record for rank 0, which writes; they stop when it cannot open the proof.
        self._session = on_rank_zero(lambda: _open_session(self, trainer, pl_module, size), trainer.global_rank, self._world)
        if self._session is not None:
            self._session.start(first_commit=self._resume is None)
            tiers = f", full states every {self.full_every_n_steps}" if self.full_every_n_steps else ""
            log.info("proof of learning: writing to %s (k=%d%s, %d samples committed)", self.dirpath, self.every_n_steps, tiers, size)
        self._monitored.attach(trainer, pl_module, self._session and self._session.add_monitored, (self._resume or {}).get("monitored_values"))

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if not self._opened or self._loader.recorder is None:
            return
        self._stream.batch_start()
        step = proof_step(trainer)
        epoch, indices = self._loader.recorder.pop()
        if self._ledger.batch_started(step, epoch, indices):
            self._write_checkpoint(trainer, pl_module, step, batch_idx)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Due at an epoch start: taken before the epoch-start hooks act, which a replay from it runs (docs/proof-format.md).
        if self._opened and self._stream.state is not None and self._ledger.due(step := proof_step(trainer)):
            self._write_checkpoint(trainer, pl_module, step, 0)

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The last point where a step draws randomness that shapes its gradient. Draws after it (an optimizer
        # hook, another callback's on_train_batch_end) are undone when the next batch starts.
        if self._opened:
            self._stream.after_backward()

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        filed = self._ledger.batch_ended()
        if filed is None:
            return
        self._loader.trained(*filed)
        session = self._session
        if session is not None and self._logged != session.checkpoints_taken:
            self._logged = _log_progress(trainer, pl_module, session)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._plan.epoch_end(pl_module)
        if self._opened and self._loader.first_epoch is not None:
            self._commit_data()

    def _write_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int, batch_idx: int | None) -> None:
        """Snapshot the training state here (the checkpoint of ``step``); the session writes it on its thread.
        ``batch_idx`` None: the state training ended in, and the proof is completed with it."""
        final = batch_idx is None
        steps = global_steps(self._ledger.take(self._ledger.trained if final else step), self._world)
        rng = self._stream.state
        streams = gather_to_zero(rng, self._world) if self._world > 1 else None
        buffers = gather_to_zero(rank_buffers(pl_module), self._world) if self._own_buffers else None
        self._ledger.checkpoint_taken(step)
        if self._session is None or steps is None:
            return  # another rank of a DDP run: its indices, RNG stream (and buffers) went to rank 0
        peers, peer_buffers = (None if r is None else r[1:] for r in (streams, buffers))  # the other ranks'; rank 0's are the state
        state = capture_training_state(trainer, pl_module, rng, step, batch_idx, peers, self._plan.capture(trainer, pl_module), peer_buffers)
        self._session.write_checkpoint(steps, state, step, trainer.current_epoch, self._ledger.recorded_epochs(), final)

    def _commit_data(self) -> None:
        """Commit to the data the first epoch fetched; the Merkle tree and the file are built on the writer thread."""
        collector = self._loader.take_first_epoch()
        parts = gather_to_zero(collector.trained_rows() if self._world > 1 else None, self._world)
        if self._session is None:
            return  # another rank of a DDP run: its hashes went to rank 0
        for part in (parts or [])[1:]:
            collector.merge(*part)
        self._session.commit_data(collector.leaves(self._loader.dataset))

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._plan.finishes_last:  # else it runs after every callback's on_train_end
            self._finish(trainer, pl_module)

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Complete the proof with the state training ended in: after every replayed callback's ``on_train_end``."""
        if not self._opened:
            return
        step = proof_step(trainer)
        if self._loader.first_epoch is not None:  # training ended within the first epoch
            self._commit_data()
        if self._stream.state is None:  # no batch ran at all
            self._stream.batch_start()
        if step > self._ledger.last_written:  # the last indices: one index-log file, committed with the final checkpoint
            self._write_checkpoint(trainer, pl_module, step, None)
        else:
            steps = global_steps(self._ledger.take(self._ledger.trained), self._world)
            if self._session is not None and steps is not None:
                self._session.complete(steps, self._ledger.recorded_epochs(), step)
        # The writer finishes the proof while Lightning winds down (DataLoader workers, strategy); teardown waits.

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        session = self._session
        try:
            if session is not None:
                session.wait()  # fit returns with the proof complete, or raises the write error
        finally:
            self._end_fit()
        if session is not None and session.is_complete:
            _completed(self, trainer, session)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._end_fit()  # Lightning calls no teardown when fit raises: the proof is committed as far as it was written

    def _end_fit(self) -> None:
        if self._session is not None:
            self._session.end()
        for instrumented in (self._loader, self._monitored, self._plan):
            instrumented.detach()

    @override
    def state_dict(self) -> dict[str, Any]:
        ranks = gather_rank_parts(self._ledger, self._stream, self._world if self._opened else 1)  # a collective: first
        origin = None
        if self._session is not None:  # a Lightning checkpoint must not promise uncommitted steps or files: a resume reopens the proof
            self._session.commit_now()
            origin = self._session.norms_origin()
        return {"format_version": layout.FORMAT_VERSION, "run_id": self._run_id, "seed": self._seed_in_use, **self._ledger.state_dict(),
                "next_data_epoch": self._loader.next_data_epoch(), "monitored_values": self._monitored.count, **self._stream.state_dict(),
                **({"norms_origin": origin} if origin is not None else {}), **ranks}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("run_id") is None:
            return
        self._resume = state_dict = own_rank_part(state_dict, self._world, self._rank)
        self._loader.resume_at(state_dict.get("next_data_epoch"))
        self._seed_in_use = int(state_dict["seed"])
        self._ledger.load_state_dict(state_dict)
        self._stream = TrainingStream.from_state_dict(state_dict)

    @property
    def identity(self) -> str:
        """SHA-256 of the current manifest: the proof's identity."""
        if self._session is None:
            raise PoLError("no proof has been written yet")
        return self._session.identity()


def _completed(pol: ProofOfLearning, trainer: pl.Trainer, session: ProofSession) -> None:
    """Said, and given to the trackers (``log_proof``), once fit returns with the proof complete."""
    log.info("proof of learning: %s (%d checkpoints, %.2f MB)", pol.dirpath, session.checkpoints, session.total_bytes / 1e6)
    if pol.log_proof:
        log_proof_to_trackers(trainer.loggers, session.store, session.identity(), pol._run_id, pol.log_proof == "all")


def _open_session(pol: ProofOfLearning, trainer: pl.Trainer, pl_module: pl.LightningModule, size: int) -> ProofSession:
    """The callback's proof, opened on the rank that writes it: reopened after a resume (checking the data against
    the commitment, one pass), or created with a new manifest."""
    session = ProofSession(open_store(pol.dirpath, pol.storage_options), pol.fsync, pol.background, pol.max_pending, pol.commit_every_s, pol.references)
    loader = pol._loader
    dataset, workers = loader.dataset, loader.loader.num_workers
    if pol._resume is not None:
        session.reopen(pol._resume["run_id"], compute_leaves(dataset, num_workers=workers),
                       pol._ledger.last_written, pol._ledger.flushed, pol._resume.get("monitored_values"), pol._resume.get("norms_origin"))
        pol._run_id = pol._resume["run_id"]
        return session
    leaves = None
    if loader.first_epoch is None:  # no shared memory for the workers' hashes: commit in a pass of its own
        leaves = compute_leaves(dataset, num_workers=workers)
    elif size:
        sample_leaf(dataset, 0)  # a sample that cannot be hashed stops the run here, not in a worker
    run = {"seed": pol._proof_seed(), "every_n_steps": pol.every_n_steps, "full_every_n_steps": pol.full_every_n_steps,
           **_declared_init(pol, pl_module)}
    training = training_settings(trainer, pl_module, loader.loader, loader.recorder, size, pol._plan)
    specs = pol._specs
    manifest = new_manifest(run, specs, training, size, pol._plan.specs)
    session.create(manifest, pol.overwrite, leaves)
    pol._run_id = manifest.run_id
    return session


def _log_progress(trainer: pl.Trainer, pl_module: pl.LightningModule, session: ProofSession) -> int:
    """Show the checkpoints and megabytes written, where they are shown (Lightning's logging costs more than the
    rest of a batch's hooks: only when they change). Returns the checkpoints shown."""
    if trainer.logger is not None or trainer.progress_bar_callback is not None:
        pl_module.log_dict({"pol/checkpoints": float(session.checkpoints_taken), "pol/MB": session.total_bytes / 1e6},
                           on_step=True, on_epoch=False, prog_bar=True, logger=trainer.logger is not None, batch_size=1)
        return session.checkpoints_taken
    return -1


def _validate_arguments(every_n_steps: Any, init_strategy: str, parent: Any, seed: Any, max_pending: Any, commit_every_s: Any,
                        init_params: dict[str, Any] | None = None) -> None:
    _validate_positive_int("every_n_steps", every_n_steps)
    _validate_init(init_strategy, parent, init_params)
    if seed is not None and not 0 <= int(seed) < 2**63:
        raise PoLError(f"seed must be in [0, 2**63), got {seed}")
    _validate_positive_int("max_pending", max_pending)
    if isinstance(commit_every_s, bool) or not isinstance(commit_every_s, (int, float)) or not commit_every_s >= 0:
        raise PoLError(f"commit_every_s must be a number of seconds >= 0, got {commit_every_s!r}")


def _location(path: str | os.PathLike[str]) -> str | Path:
    """A URL as given (``Path`` would make ``s3://b/p`` the local directory ``s3:/b/p``); a local path as a Path."""
    return os.fspath(path) if is_url(path) else Path(path)


def _validate_storage(dirpath: Any, parent: Any, storage_options: Any, log_proof: Any) -> None:
    if not isinstance(dirpath, (str, os.PathLike)) or not os.fspath(dirpath):
        raise PoLError(f"dirpath must be a directory or a URL, got {dirpath!r}")
    for location in (dirpath, parent):
        if location is not None:
            check_location(location)
    if storage_options is not None and not isinstance(storage_options, Mapping):
        raise PoLError(f"storage_options must be a mapping of the filesystem's arguments, got {storage_options!r}")
    if log_proof not in (True, False, "all"):
        raise PoLError(f"log_proof must be True, False or 'all', got {log_proof!r}")


def _validate_tiers(every_n_steps: int, full_every_n_steps: Any) -> None:
    if full_every_n_steps is None:
        return
    _validate_positive_int("full_every_n_steps", full_every_n_steps)
    if full_every_n_steps % every_n_steps:
        raise PoLError(f"full_every_n_steps must be a multiple of every_n_steps={every_n_steps} (a full state every few "
                       f"checkpoints), got {full_every_n_steps}")


def _validate_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PoLError(f"{name} must be a positive integer, got {value!r}")


def _declared_init(pol: ProofOfLearning, pl_module: pl.LightningModule) -> dict[str, Any]:
    """The manifest's ``init``: ``auto`` resolved, a pretrained start's tensors named (:mod:`.initialization`), and W_0
    tested as the verifier will unless the rehearsal is off."""
    strategy, params = declare_initialization(pl_module, pol.init_strategy, pol.init_params, pol.check_recreation)
    return {"init_strategy": strategy, "init_params": params}


def _validate_init(init_strategy: str, parent: Any, init_params: dict[str, Any] | None = None) -> None:
    check_declaration(init_strategy, init_params or {})
    if (init_strategy == "warm_start") != (parent is not None):
        raise PoLError(
            "a warm start names the proof of its weights: pass parent=PARENT_PROOF_DIR with init_strategy='warm_start'"
            if parent is None else "parent= means W_0 comes from that proof: set init_strategy='warm_start'"
        )
