"""PoLVerifierModule: re-runs segments of a proof through the user's own LightningModule and Lightning."""

from __future__ import annotations

import copy
import functools
import logging
import multiprocessing
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_pol.errors import PoLError
from lightning_pol.format.ddp_record import keeps_own_buffers, parse_ddp_record
from lightning_pol.format.index_log import IndexLog
from lightning_pol.format.manifest import MonitoredValue
from lightning_pol.format.reader import ProofReader
from lightning_pol.runtime.collectives import gather_to_zero
from lightning_pol.runtime.loader_hook import (
    UnsupportedDataError,
    patch_train_dataloader,
)
from lightning_pol.runtime.recreation import recreate
from lightning_pol.runtime.replayed_callbacks import (
    AfterAll,
    callbacks_epoch_end,
    capture_callbacks,
    lightning_states,
    restore_callbacks,
)
from lightning_pol.runtime.rng import TrainingStream, restore_refusal
from lightning_pol.runtime.seeded_data import SeededDataset
from lightning_pol.runtime.snapshots import snapshot_state
from lightning_pol.runtime.training_script import HandedData, HandedFit, TrainingScript
from lightning_pol.runtime.training_state import (
    capture_training_state,
    compiled_submodules,
    load_model_state,
    load_rank_buffers,
    load_under_live_keys,
    proof_step,
    prune_on_load,
    rank_buffers,
)
from lightning_pol.verification.gate import declared_classes

log = logging.getLogger(__name__)


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Replays build many Trainers; their banners would drown the report."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*resuming from a checkpoint that ended before the epoch ended.*")
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*LeafSpec.*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class ReplayError(PoLError):
    """A segment could not be replayed (the proof's setup cannot run here)."""


class ProverCodeError(ReplayError):
    """The code the proof names (its module, datamodule, dataset, optimizers) raised while the verifier ran it."""


@contextmanager
def prover_code(what: str) -> Iterator[None]:
    """Run the proof's own code: what it raises says the proof does not run here as claimed (a failed check),
    not that the verifier is broken. The verifier's own control flow and PoLErrors pass through."""
    try:
        yield
    except (PoLError, _SegmentDone, VerifierFault):
        raise
    except Exception as e:  # noqa: BLE001 - the prover's code may raise anything; it becomes one line about the proof
        raise ProverCodeError(f"{what} raised {type(e).__name__}: {e}".splitlines()[0]) from e


class _SegmentDone(Exception):
    """Raised from a hook to stop Lightning once the segment's end state is captured."""


class VerifierFault(Exception):
    """A bug in the replay's own code (its callbacks run inside the prover's fit): a crash, never a verdict."""


def _verifier_code(hook: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a replay callback hook as the verifier's code: what it raises, but a PoLError, is a verifier fault."""

    @functools.wraps(hook)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return hook(*args, **kwargs)
        except (PoLError, _SegmentDone, VerifierFault):
            raise
        except Exception as e:  # noqa: BLE001 - re-raised as what it is: the verifier's own bug
            raise VerifierFault(f"{hook.__qualname__}: {type(e).__name__}: {e}".splitlines()[0]) from e

    return run


@dataclass
class _Portion:
    """The micro-batches one replay epoch yields: ``(seed epoch, indices)`` each."""

    batches: list[tuple[int, list[int]]]


class ReplaySampler:
    """Batch sampler that yields the recorded micro-batches, one portion per epoch iteration.

    ``length`` is the original loader's length, so Lightning counts batches
    and ends epochs exactly where the prover's run did.
    """

    def __init__(self, portions: list[_Portion], length: int, batched: bool) -> None:
        self.portions = portions
        self.length = length
        self.batched = batched
        self._next = 0

    def __len__(self) -> int:
        return self.length

    @property
    def exhausted(self) -> bool:
        """Every recorded portion was handed out: no later epoch has a batch to replay."""
        return self._next >= len(self.portions)

    def __iter__(self) -> Iterator[Any]:
        if self.exhausted:
            return
        portion = self.portions[self._next]
        self._next += 1
        for epoch, indices in portion.batches:
            keys = [(epoch, i) for i in indices]
            yield keys if self.batched else keys[0]


class EmulatedRanks:
    """The ranks of a recorded step, replayed in one process: W micro-batches of one accumulating step.

    A DDP step's gradient is the mean of the W ranks' gradients (each scaled by
    1/W and summed); Lightning's gradient accumulation over the W micro-batches
    computes the same sum, in rank order. Each micro-batch draws from its
    rank's RNG stream. DDP broadcasts rank 0's buffers at every forward, so
    rank r > 0 starts from the buffers the step started with, and its updates
    (BatchNorm statistics) are discarded: the model's buffers are rank 0's.
    With W = 1 this is the training stream of a single-process run.
    """

    def __init__(self, world_size: int, rng: dict[str, Any] | None, peer_rng: list[dict[str, Any]] | None = None) -> None:
        peers = list(peer_rng or [])
        if rng is not None and len(peers) != world_size - 1:
            raise ReplayError(f"a checkpoint of a {world_size}-process run holds {len(peers) + 1} RNG streams")
        self.world_size = world_size
        self.streams = [TrainingStream(rng)] + [TrainingStream(r) for r in peers]
        self.rank = 0
        self._step_buffers: list[torch.Tensor] = []  # the buffers the step started with
        self._rank0_buffers: list[torch.Tensor] = []  # rank 0's, after its forward

    def batch_start(self, pl_module: pl.LightningModule, batch_idx: int) -> None:
        self.rank = batch_idx % self.world_size
        self.streams[self.rank].batch_start()
        if self.world_size == 1:
            return
        buffers = list(pl_module.buffers())
        if self.rank == 0:
            self._step_buffers = [b.detach().clone() for b in buffers]
            return
        if self.rank == 1:
            self._rank0_buffers = [b.detach().clone() for b in buffers]
        with torch.no_grad():
            for b, saved in zip(buffers, self._step_buffers):
                b.copy_(saved)

    def restore(self, pl_module: pl.LightningModule) -> None:
        """Nothing: the emulated ranks' buffers are rank 0's (DDP broadcast them)."""

    def after_backward(self) -> None:
        self.streams[self.rank].after_backward()

    def batch_end(self, pl_module: pl.LightningModule) -> None:
        if self.rank == 0:
            return
        with torch.no_grad():
            for b, saved in zip(pl_module.buffers(), self._rank0_buffers):
                b.copy_(saved)

    @property
    def rng(self) -> dict[str, Any]:
        return self.streams[0].state  # type: ignore[return-value]

    @property
    def peer_rng(self) -> list[dict[str, Any]] | None:
        return [s.state for s in self.streams[1:]] if self.world_size > 1 else None  # type: ignore[misc]

    def capture(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int, batch_idx: int | None,
                callbacks: list[Callback] | None = None) -> dict[str, Any]:
        """The state as the prover's rank 0 captured it (its batch position counts its own batches), with the
        replayed ``callbacks``' states."""
        position = None if batch_idx is None else batch_idx // self.world_size
        states = capture_callbacks(callbacks, trainer, pl_module) if callbacks else None
        return capture_training_state(trainer, pl_module, self.rng, step, position, self.peer_rng, states)


class ProcessRank:
    """This process's rank of a replay run as the prover's W processes, under Lightning's DDP again.

    DDP itself averages the gradients in the backend's order, broadcasts or keeps the buffers, syncs BatchNorm and
    skips the sync of accumulating micro-batches, exactly as it did in training; the replay adds what DDP does not
    carry: this rank's RNG stream and, where each rank kept its own buffers (``broadcast_buffers=False``), this
    rank's buffers. At a capture rank 0 gathers the others' (a collective: every rank captures at the same step).
    """

    def __init__(self, rank: int, world_size: int, state: dict[str, Any] | None, own_buffers: bool) -> None:
        streams = None if state is None else [state["rng"], *(state.get("peer_rng") or [])]
        if streams is not None and len(streams) != world_size:
            raise ReplayError(f"a checkpoint of a {world_size}-process run holds {len(streams)} RNG streams")
        buffers = None if state is None or not own_buffers else [None, *(state.get("peer_buffers") or [])]
        if buffers is not None and len(buffers) != world_size:
            raise ReplayError(f"a checkpoint of a {world_size}-process run without buffer broadcasts holds "
                              f"{len(buffers) - 1} other ranks' buffers, not {world_size - 1}")
        self.rank, self.world_size, self.own_buffers = rank, world_size, own_buffers
        self.stream = TrainingStream(None if streams is None else streams[rank])
        self._buffers = None if buffers is None else buffers[rank]  # rank 0's are the model's

    def restore(self, pl_module: pl.LightningModule) -> None:
        """Put this rank's own buffers back, once the state is loaded and DDP has broadcast rank 0's."""
        if self._buffers is not None:
            load_rank_buffers(pl_module, self._buffers)
            self._buffers = None

    def batch_start(self, pl_module: pl.LightningModule, batch_idx: int) -> None:
        self.restore(pl_module)
        self.stream.batch_start()

    def after_backward(self) -> None:
        self.stream.after_backward()

    def batch_end(self, pl_module: pl.LightningModule) -> None:
        pass

    def capture(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int, batch_idx: int | None,
                callbacks: list[Callback] | None = None) -> dict[str, Any]:
        """Rank 0: the state as the prover's rank 0 captured it; another rank: ``{}`` (it sent rank 0 its part)."""
        streams = gather_to_zero(self.stream.state, self.world_size)
        buffers = gather_to_zero(rank_buffers(pl_module), self.world_size) if self.own_buffers else None
        if streams is None:
            return {}
        states = capture_callbacks(callbacks, trainer, pl_module) if callbacks else None
        return capture_training_state(trainer, pl_module, streams[0], step, batch_idx, streams[1:], states,
                                      buffers[1:] if buffers is not None else None)


class PlateauFeed:
    """Feeds the plateau schedulers the values the proof recorded, in place of Lightning's plateau stepping.

    Lightning steps a ``ReduceLROnPlateau`` config with a monitored metric, which the replay does not compute
    (it runs no validation) or computes over part of an epoch only; so its own plateau stepping is switched
    off, and each recorded value is handed to the module's ``lr_scheduler_step`` hook, as in training, when
    the replay starts the step it was consumed before (the proof's step equals its ``step``), or at the
    end of training. A checkpoint of step t already holds what was consumed at step t.
    """

    def __init__(self, values: list[MonitoredValue], final_step: int | None) -> None:
        self.values, self.final_step = values, final_step
        self.pending: list[MonitoredValue] = []

    def attach(self, trainer: pl.Trainer, pl_module: pl.LightningModule, start: int, end: int) -> None:
        """Check every recorded value against the schedulers ``configure_optimizers`` built; take those of
        steps (start, end]; switch Lightning's plateau stepping off."""
        configs = trainer.lr_scheduler_configs
        for v in self.values:
            where = f"the proof's recorded {v.monitor!r} at step {v.step}"
            if not 1 <= v.step <= (self.final_step or 0):
                raise ReplayError(f"{where} is outside the proof's steps 1..{self.final_step}")
            if v.scheduler >= len(configs) or not configs[v.scheduler].reduce_on_plateau or not pl_module.automatic_optimization:
                raise ReplayError(f"{where} names LR scheduler {v.scheduler}, which configure_optimizers does not make a plateau scheduler Lightning steps")
            if configs[v.scheduler].monitor != v.monitor:
                raise ReplayError(f"{where} is for LR scheduler {v.scheduler}, which monitors {configs[v.scheduler].monitor!r}")
        self.pending = [v for v in self.values if start < v.step <= end]
        if not any(c.reduce_on_plateau for c in configs):
            return
        loop = trainer.fit_loop.epoch_loop
        lightnings = loop.update_lr_schedulers

        def update_lr_schedulers(interval: str, update_plateau_schedulers: bool) -> None:
            if not update_plateau_schedulers:  # the other schedulers step as in training
                lightnings(interval, update_plateau_schedulers=False)

        loop.update_lr_schedulers = update_lr_schedulers  # type: ignore[method-assign]  # this replay's Trainer only

    def feed(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        """Hand the plateau schedulers the values consumed up to ``step``, in the order training did."""
        while self.pending and self.pending[0].step <= step:
            v = self.pending.pop(0)
            with prover_code(f"the module's lr_scheduler_step, fed the recorded {v.monitor!r} of step {v.step},"):
                pl_module.lr_scheduler_step(trainer.lr_scheduler_configs[v.scheduler].scheduler, v.metric(pl_module.device))


class _ReplayCallback(Callback):
    """Drives one replay; first of the replay Trainer's callbacks, as ProofOfLearning was first of training's,
    then the replayed callbacks (:attr:`callbacks`), then an :class:`AfterAll` that takes the final state."""

    def __init__(self, owner: PoLVerifierModule, state: dict[str, Any] | None, end_step: int, final: bool, sampler: ReplaySampler) -> None:
        self.owner = owner
        self.callbacks = owner.make_callbacks()
        self.ranks = owner.replay_ranks(state)
        self._restore = state  # what the replayed callbacks' Lightning resume misses: put back as the replay resumes
        self.end_step = end_step
        self.final = final
        self.sampler = sampler
        self.captured: dict[str, Any] | None = None
        self._started_step: int | None = None
        self._undo: Any = None
        self.plateau = PlateauFeed(owner.manifest.monitored, owner.manifest.final_step)

    @_verifier_code
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._undo = patch_train_dataloader(trainer, self._instrument)

    @_verifier_code
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._undo is not None:
            self._undo()
            self._undo = None

    @_verifier_code
    def _instrument(self, loader: Any) -> Any:
        from torch.utils.data import DataLoader

        if not isinstance(loader, DataLoader):
            raise UnsupportedDataError("the re-created train_dataloader() is not a torch DataLoader")
        original = loader.batch_sampler if loader.batch_sampler is not None else loader.sampler
        self.sampler.length = self.owner.epoch_batches(len(original))
        self.sampler.batched = loader.batch_sampler is not None
        object.__setattr__(loader, "batch_sampler" if self.sampler.batched else "sampler", self.sampler)
        object.__setattr__(loader, "dataset", SeededDataset(loader.dataset, self.owner.seed))
        if loader.num_workers > 0 and loader.multiprocessing_context is None and (
            multiprocessing.current_process().daemon
            or multiprocessing.get_start_method(allow_none=True) not in (None, "fork", "spawn", "forkserver")
        ):
            # A multirun job of Hydra's joblib launcher runs in a loky process, whose default start method
            # cannot start DataLoader workers (nor can a daemonic process). Every batch is fetched under seeds
            # of its own, so fetching in this process replays the same batches.
            object.__setattr__(loader, "num_workers", 0)
            object.__setattr__(loader, "persistent_workers", False)
        return loader

    @_verifier_code
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.end_step < 0:  # only asked for what configure_optimizers declares
            self.captured = {
                "optimizers": [opt.state_dict() for opt in trainer.optimizers],
                "lr_schedulers": [cfg.scheduler.state_dict() for cfg in trainer.lr_scheduler_configs],
            }
            raise _SegmentDone
        self.plateau.attach(trainer, pl_module, proof_step(trainer), self.end_step)
        self.ranks.restore(pl_module)
        if self._restore is not None and not self._restore["progress"].get("batch_idx"):
            self._restore_callbacks(trainer, pl_module)  # at an epoch start: before its hooks act, as in training

    def _restore_callbacks(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Put back what the replayed callbacks' Lightning resume does not (:mod:`~lightning_pol.runtime.replayed_callbacks`):
        at an epoch start before its hooks, mid-epoch at the first batch (after the callbacks' ``on_train_start``)."""
        state, self._restore = self._restore, None
        if state is not None and self.callbacks:
            mid_epoch = bool(state["progress"].get("batch_idx"))
            with prover_code("a replayed callback, restored from the proof's state,"):
                restore_callbacks(self.callbacks, state.get("callbacks") or [], trainer, pl_module, mid_epoch)

    @_verifier_code
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The prover takes a checkpoint due at an epoch start before the epoch-start hooks act.
        step = proof_step(trainer)
        if step == self.end_step and not self.final and step != self._started_step:
            self.plateau.feed(trainer, pl_module, step)
            self.captured = self.capture(trainer, pl_module, step, 0)
            raise _SegmentDone

    def trainer_callbacks(self) -> list[Callback]:
        return [self, *self.callbacks, AfterAll(self.finish)] if self.callbacks else [self]

    def capture(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int, batch_idx: int | None) -> dict[str, Any]:
        return self.ranks.capture(trainer, pl_module, step, batch_idx, self.callbacks)

    def _step_started(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch_idx: int) -> int | None:
        """At every batch start: feed the plateau schedulers what was consumed before a new step (outside the
        training stream, as in training), restore the stream; returns the step when this batch starts a new one."""
        self._restore_callbacks(trainer, pl_module)
        step = proof_step(trainer)
        if step != self._started_step:
            self.plateau.feed(trainer, pl_module, step)
        self.ranks.batch_start(pl_module, batch_idx)
        if step == self._started_step:  # a later micro-batch of an accumulating step
            return None
        self._started_step = step
        return step

    @_verifier_code
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        step = self._step_started(trainer, pl_module, batch_idx)
        if step is not None and step == self.end_step and not self.final:
            self.captured = self.capture(trainer, pl_module, step, batch_idx)
            raise _SegmentDone

    @_verifier_code
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.ranks.after_backward()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.ranks.batch_end(pl_module)

    @_verifier_code
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with prover_code("a replayed callback"):
            callbacks_epoch_end(self.callbacks, pl_module)
        # The run ended after its last recorded batch, whatever ended it: max_steps, max_epochs, or a
        # callback the replay does not have (EarlyStopping, max_time). With unbounded epochs only
        # this stop ends the replay; otherwise it would start empty epochs forever.
        if self.final and self.sampler.exhausted:
            trainer.should_stop = True

    @_verifier_code
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.plateau.feed(trainer, pl_module, proof_step(trainer))
        if not self.callbacks:
            self.finish(trainer, pl_module)

    @_verifier_code
    def finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The state training ended in, after every callback's ``on_train_end``."""
        if self.final and proof_step(trainer) == self.end_step:
            self.captured = self.capture(trainer, pl_module, proof_step(trainer), None)


class _ChainCallback(_ReplayCallback):
    """Replays consecutive segments in one run: at each inner boundary it hands over the replayed state
    and re-seats the proof's recorded state, so every segment starts from the proof's W_t as a
    separate replay would; where the proof holds only a digest (``recorded`` gives None), the next
    segment starts from the replayed state."""

    def __init__(self, owner: PoLVerifierModule, state: dict[str, Any], boundaries: list[int], final: bool,
                 sampler: ReplaySampler, recorded: Callable[[int], dict[str, Any] | None],
                 on_segment: Callable[[int, int, dict[str, Any]], None]) -> None:
        super().__init__(owner, state, boundaries[-1], final, sampler)
        self.boundaries = boundaries
        self.recorded = recorded
        self.on_segment = on_segment
        self.position = 0  # index in boundaries of the segment being replayed

    @_verifier_code
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = proof_step(trainer)
        if step != self._started_step and step == self.boundaries[self.position + 1]:
            self.plateau.feed(trainer, pl_module, step)
            self._reached(trainer, pl_module, step, 0, epoch_start=True)

    @_verifier_code
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        step = self._step_started(trainer, pl_module, batch_idx)
        if step is not None and step == self.boundaries[self.position + 1]:
            self._reached(trainer, pl_module, step, batch_idx, epoch_start=False)

    def _reached(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int, batch_idx: int, epoch_start: bool) -> None:
        """At a boundary: hand over the replayed state, then re-seat the recorded one (or stop at the last)."""
        last = self.position + 2 == len(self.boundaries)
        if last and self.final:
            return
        state, ready = snapshot_state(self.capture(trainer, pl_module, step, batch_idx))
        if ready is not None:
            ready.synchronize()
        self.on_segment(self.boundaries[self.position], step, state)
        self.position += 1
        if last:
            self.captured = state
            raise _SegmentDone
        recorded = self.recorded(step)
        if recorded is None:  # a digest-only checkpoint: the replayed state, just handed over, goes on
            return
        _reseat(trainer, pl_module, recorded, step)
        self.ranks = self.owner.replay_ranks(recorded)
        if not epoch_start:  # at an epoch start, the batch's own start restores the stream
            self.ranks.batch_start(pl_module, batch_idx)

    @_verifier_code
    def finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.final and proof_step(trainer) == self.end_step and self.position + 2 == len(self.boundaries):
            self.captured = self.capture(trainer, pl_module, proof_step(trainer), None)
            self.on_segment(self.boundaries[self.position], self.end_step, self.captured)
            self.position += 1


def _reseat(trainer: pl.Trainer, pl_module: pl.LightningModule, state: dict[str, Any], step: int) -> None:
    """Load a checkpoint's model, optimizer, scheduler and grad-scaler state into a running fit."""
    if len(state["optimizers"]) != len(trainer.optimizers) or len(state["lr_schedulers"]) != len(trainer.lr_scheduler_configs):
        raise ReplayError("a checkpoint holds other optimizers or schedulers than configure_optimizers builds")
    # The module's, optimizers' and schedulers' own loading code, fed the proof's state: what it refuses is the proof's.
    with prover_code(f"loading checkpoint {step} into the declared module and optimizers"):
        load_model_state(pl_module, state["model"])
        for opt, sd in zip(trainer.optimizers, state["optimizers"]):
            opt.load_state_dict(sd)
        for cfg, sd in zip(trainer.lr_scheduler_configs, state["lr_schedulers"]):
            cfg.scheduler.load_state_dict(sd)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and state.get("grad_scaler") is not None:
            scaler.load_state_dict(state["grad_scaler"])


class PoLVerifierModule:
    """Replays a proof's segments through the LightningModule and DataModule it names.

    Example::

        reader = ProofReader("proof/")
        verifier = PoLVerifierModule(reader)
        replayed = verifier.replay(start=8, end=16)   # the state after re-running steps 8..15
        expected = reader.load_checkpoint(reader.checkpoints[2])

    Each replay builds a Trainer with the proof's training settings (precision,
    gradient clipping, accumulation, epoch and step limits), re-creates the
    module and datamodule as ``Class(**hparams)``, and restores checkpoint
    W_t through Lightning's own resume path, with loop counters set to where
    the prover's run was: so ``configure_optimizers`` (and
    ``trainer.estimated_stepping_batches``), ``current_epoch``,
    ``global_step`` and ``batch_idx`` are what they were. The DataLoader of the
    re-created datamodule is kept (dataset, collate_fn, workers) but its
    batch sampler yields the micro-batches of the index log, and each is
    fetched under the seeds the prover's was (from seed, epoch, indices). The RNG stream of
    the steps starts from W_t's recorded state and is isolated between steps
    exactly as during training. The state at the start of step t+k (or at the
    end of training for the last segment) is captured like the prover
    captured it.
    """

    def __init__(
        self, reader: ProofReader, accelerator: str = "cpu", deterministic: bool | None = None, index_log: IndexLog | None = None,
        overrides: Mapping[str, Mapping[str, Any]] | None = None, process_rank: int | None = None,
        project_root: str | os.PathLike[str] | None = None,
    ) -> None:
        #: The verifier's ``{"module": {...}, "datamodule": {...}}`` hyperparameters naming local resources.
        self.overrides = {k: dict(v) for k, v in (overrides or {}).items() if v}
        #: The training script the proof's classes or data come from, as this machine has it (under ``project_root``,
        #: default the working directory); None when the proof records none.
        self.script = None if reader.manifest.script is None else TrainingScript(reader.manifest.script, project_root, reader.local_root)
        self._handed: HandedFit | PoLError | None = None
        # The class gate first: nothing the proof names, nested targets included, is imported for use, or
        # called, before it passed; then the local paths the re-creation will read must exist here.
        if self.script is not None:  # as Python does for a script: its directory first on sys.path, for its neighbours
            sys.path.insert(0, str(self.script.directory))
        classes = declared_classes(reader, self.overrides, self.script)
        self.reader = reader
        self.deterministic = deterministic
        self.manifest = reader.manifest
        self.seed = self.manifest.seed
        self.accelerator = accelerator
        self.training = self.manifest.training_values()
        self.log: IndexLog = index_log if index_log is not None else reader.index_log()
        self._module_cls = classes["module"]
        self._dm_cls = classes.get("datamodule")
        self._callback_classes: list[type] = classes.get("callbacks", [])
        self.epoch_runs = [(int(a), int(b)) for a, b in self.manifest.sample_epochs]
        self._training_loader: Any = None
        #: The submodules the last replay's module compiled (its setup does, when training's did).
        self.compiled_in_replay: list[str] | None = None
        world = self.training.get("world_size") or 1
        if not isinstance(world, int) or isinstance(world, bool) or world < 1:
            raise ReplayError(f"the proof's world_size {world!r} is not a positive integer")
        #: Processes of the recorded run: a DDP step is replayed by as many processes (:class:`ProcessRank`), or for two
        #: as two micro-batches in one (:class:`EmulatedRanks`).
        self.world_size = world
        #: How the recorded ranks met (run_record.ddp_settings); checked where a W-process replay uses it.
        self.ddp: dict[str, Any] = {}
        if world > 1 and "ddp" in self.training:  # absent: a proof from before the record (replayed by emulation)
            try:
                self.ddp = parse_ddp_record(self.training["ddp"])
            except PoLError as e:
                raise ReplayError(str(e)) from None
        #: This process's rank in a W-process replay (lightning_pol.verification.rank_worker); None: one process.
        self.process_rank = process_rank
        #: Where a W-process replay runs (:class:`~lightning_pol.verification.rank_processes.RankProcesses`), set by
        #: the verifier that chose it; None: this process replays.
        self.processes: Any = None
        self._one_rank_view = process_rank is not None
        #: The process-group backend of a W-process replay (the verifier's choice for its device); None: the proof's.
        self.backend: str | None = None

    def replay_ranks(self, state: dict[str, Any] | None) -> EmulatedRanks | ProcessRank:
        """The ranks' RNG streams from a checkpoint ``state`` (none: the configure_optimizers probe): this process's
        rank of a W-process replay, or every rank emulated in this process."""
        if state is not None:
            for rng in [state["rng"], *(state.get("peer_rng") or [])]:
                refusal = restore_refusal(rng)
                if refusal is not None:
                    raise ReplayError(f"checkpoint {state['progress']['global_step']} holds an RNG state this machine cannot restore ({refusal})")
        if self.process_rank is not None:
            return ProcessRank(self.process_rank, self.world_size, state, keeps_own_buffers(self.ddp.get("kwargs") or {}))
        if state is None:
            return EmulatedRanks(self.world_size, None)
        return EmulatedRanks(self.world_size, state["rng"], state.get("peer_rng"))

    def emulation_is_exact(self) -> bool:
        """Whether one process replaying the ranks as micro-batches (:class:`EmulatedRanks`) sums as DDP did: for two
        ranks that each ran one micro-batch a step (``a/2 + b/2`` in either order), with nothing DDP does besides."""
        return (self.world_size == 2 and (self.training.get("accumulate_grad_batches") or 1) == 1
                and self.training.get("automatic_optimization") is not False and not self.ddp.get("sync_batchnorm")
                and not keeps_own_buffers(self.ddp.get("kwargs") or {}) and not self.manifest.callbacks)

    def epoch_batches(self, loader_length: int) -> int:
        """Micro-batches per epoch of the replay: the re-created loader's; under DDP a rank's, or W times a rank's
        where one process emulates the ranks."""
        if self.world_size == 1:
            return loader_length
        per_rank = self.training.get("num_training_batches")
        if not isinstance(per_rank, int) or isinstance(per_rank, bool) or per_rank < 1:
            raise ReplayError("the DDP proof does not record its batches per epoch (training.num_training_batches)")
        return per_rank if self._one_rank_view else per_rank * self.world_size

    def make_module(self) -> pl.LightningModule:
        spec = self.manifest.module
        if spec.instantiator == "script":  # a fresh copy of what the script handed to fit (its weights are replaced)
            return copy.deepcopy(self.handed_fit().model)
        with prover_code(f"the proof's module {spec.import_path}"):
            return recreate(spec, self._module_cls, self.reader.local_root, self.overrides.get("module"), "module")

    def handed_fit(self) -> HandedFit:
        """What the training script, run to ``trainer.fit`` with its recorded arguments, hands to it: run once (a
        failure too: every check that needs it fails the same way, without running the script again)."""
        if self._handed is None:
            assert self.script is not None
            try:
                with prover_code(f"the proof's training script {self.script.record.path}"):
                    handed = self.script.run_to_fit()
                self._handed = handed.checked(self.manifest.module.import_path, self.script.record.path)
            except PoLError as e:
                self._handed = e
        if isinstance(self._handed, PoLError):
            raise self._handed
        return self._handed

    def make_datamodule(self) -> pl.LightningDataModule | None:
        spec = self.manifest.datamodule
        if self.manifest.module.instantiator == "script":  # the data the script hands to fit
            handed = self.handed_fit()
            if handed.train_loader is not None:
                return HandedData(handed.train_loader)
            return copy.deepcopy(handed.datamodule) if handed.datamodule is not None else None
        if self._dm_cls is None or spec is None:
            return None
        with prover_code(f"the proof's datamodule {spec.import_path}"):
            return recreate(spec, self._dm_cls, self.reader.local_root, self.overrides.get("datamodule"), "datamodule")

    def make_callbacks(self) -> list[Callback]:
        """The callbacks training ran that the replay runs, re-created from their recipes (already gated)."""
        built = []
        for spec, cls in zip(self.manifest.callbacks, self._callback_classes):
            with prover_code(f"the proof's callback {spec.import_path}"):
                built.append(recreate(spec, cls, self.reader.local_root, None, "callback"))
        return built

    def training_loader(self) -> Any:
        """The re-created training DataLoader, as the prover's run built it (before instrumentation).

        Built once: the checks only read it (its settings, its dataset), and a datamodule's ``setup`` may load
        a whole dataset. The replay builds its own."""
        if self._training_loader is None:
            dm = self.make_datamodule()
            with prover_code("the proof's train_dataloader()"):
                if dm is not None:
                    dm.prepare_data()
                    dm.setup("fit")
                    self._training_loader = dm.train_dataloader()
                else:
                    self._training_loader = self.make_module().train_dataloader()
        return self._training_loader

    def step_epoch(self, step: int) -> int:
        """The epoch whose sample seeds step ``step`` used."""
        epoch = None
        for first, e in self.epoch_runs:
            if first <= step:
                epoch = e
        if epoch is None:
            raise ReplayError(f"the proof does not say which epoch step {step} belongs to")
        return epoch

    def _portions(self, start: int, end: int, final: bool) -> list[_Portion]:
        """Micro-batches of steps [start, end), plus the first micro-batch of step ``end`` unless final."""
        portions: list[_Portion] = []
        current_epoch = None
        last = end if final else end + 1
        for t in range(start, min(last, self.log.steps)):
            epoch = self.step_epoch(t)
            batches = self.log.micro_batches(t)
            if self.process_rank is not None:  # rank after rank, as many each (format.reader checks it)
                share = len(batches) // self.world_size
                batches = batches[self.process_rank * share : (self.process_rank + 1) * share]
            if t == end:
                batches = batches[:1]
            if epoch != current_epoch:
                portions.append(_Portion([]))
                current_epoch = epoch
            portions[-1].batches.extend((epoch, b) for b in batches)
        return portions

    def _trainer(self, callback: Callback) -> pl.Trainer:
        """A Trainer with the proof's training settings (``training``): what Lightning refuses of them is the proof's."""
        with prover_code("Lightning, given the proof's training settings,"):
            return pl.Trainer(callbacks=callback.trainer_callbacks(), **self._trainer_kwargs())

    def _trainer_kwargs(self) -> dict[str, Any]:
        t = self.training
        ranks: dict[str, Any] = {"devices": 1}
        if self.process_rank is not None:  # Lightning's DDP again, as training ran it; this process is one of its ranks
            ranks = dict(devices=self.world_size, num_nodes=1, strategy=self._ddp_strategy(),
                         sync_batchnorm=bool(self.ddp.get("sync_batchnorm")), use_distributed_sampler=False)
        return dict(
            accelerator=self.accelerator,
            **ranks,
            precision=t.get("precision", "32-true"),
            gradient_clip_val=t.get("gradient_clip_val"),
            gradient_clip_algorithm=t.get("gradient_clip_algorithm"),
            accumulate_grad_batches=t.get("accumulate_grad_batches", 1) * (1 if self._one_rank_view else self.world_size),
            max_epochs=t.get("max_epochs"),
            max_steps=t.get("max_steps", -1),
            # Under DDP the epoch length is set by the replay sampler (:meth:`epoch_batches`), a rank's limit included.
            limit_train_batches=t.get("limit_train_batches") if self.world_size == 1 else None,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            deterministic=self.deterministic if self.deterministic is not None else (bool(t.get("deterministic")) or None),
        )

    def _ddp_strategy(self) -> Any:
        """Lightning's DDP with the backend and the arguments the proof records (a bounded, typed few: the proof is
        hostile input), its ranks this replay's processes (started by the verifier, never by Lightning)."""
        from lightning.pytorch.plugins.environments import LightningEnvironment
        from lightning.pytorch.strategies import DDPStrategy

        if not self.ddp:
            raise ReplayError("the proof does not record how its ranks met (training.ddp): replay it with verifier.ranks=emulate")
        backend = self.backend or self.ddp["backend"]
        return DDPStrategy(cluster_environment=LightningEnvironment(), process_group_backend=backend, **self.ddp["kwargs"])

    def _loops_state(self, trainer: pl.Trainer, step: int, epoch: int, batch_idx: int, optimizer_steps: int) -> dict[str, Any]:
        """Loop counters as Lightning would have saved them just before ``step``.

        At an epoch start (``batch_idx == 0``) they are those of a checkpoint
        saved in ``on_train_epoch_start``, so the epoch-start hooks run again as
        they did; mid-epoch, those of a checkpoint saved in ``on_train_batch_end``
        of the previous batch. ``batch_progress.total`` counts every micro-batch
        before ``step``, as Lightning's accumulation and scheduler logic expect. ``optimizer_steps`` is Lightning's
        ``global_step``: the proof's step, or under manual optimization the ``optimizer.step()`` calls before it.
        """
        sd = trainer.fit_loop.state_dict()

        def put(progress: dict[str, Any], part: str, **values: int) -> None:
            for k, v in values.items():
                if k in progress[part]:
                    progress[part][k] = v

        before = self.log.batches_before(step) // (self.world_size if self.process_rank is not None else 1)
        ep, bp = sd["epoch_progress"], sd["epoch_loop.batch_progress"]
        started = epoch if batch_idx == 0 else epoch + 1
        done = 0 if batch_idx == 0 else 1
        for part in ("total", "current"):
            put(ep, part, ready=epoch + 1, started=started, processed=epoch, completed=epoch)
        put(bp, "total", ready=before, started=before, processed=before, completed=before - done)
        put(bp, "current", ready=batch_idx, started=batch_idx, processed=batch_idx, completed=batch_idx - done)
        bp["is_last_batch"] = False
        sd["epoch_loop.state_dict"]["_batches_that_stepped"] = step - done
        opt = sd["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]
        for part in ("total", "current"):
            put(opt["step"], part, ready=step, completed=step)
            put(opt["zero_grad"], part, ready=step, started=step, completed=step)
            put(sd["epoch_loop.manual_optimization.optim_step_progress"], part, ready=optimizer_steps, completed=optimizer_steps)
        return sd

    def declared_optimizers(self) -> dict[str, Any]:
        """Optimizer and scheduler states as the module's own ``configure_optimizers`` builds them.

        Run in a Trainer with the proof's settings, so a schedule sized from
        ``trainer.estimated_stepping_batches`` gets the size it had in training.
        """
        callback = _ReplayCallback(self, None, -1, False, ReplaySampler([], 0, True))
        emulating, self._one_rank_view = self._one_rank_view, True  # a rank's epoch and accumulation, as each rank ran
        try:
            with _quiet_lightning():
                trainer = self._trainer(callback)
                try:
                    with prover_code("the proof's configure_optimizers"):
                        trainer.fit(self.make_module(), datamodule=self.make_datamodule())
                except _SegmentDone:
                    pass
        finally:
            self._one_rank_view = emulating
        if callback.captured is None:
            raise ReplayError("the module's configure_optimizers could not be run")
        return callback.captured

    def replay(self, start: int, end: int, start_state: dict[str, Any] | None = None) -> dict[str, Any]:
        """Re-run steps [start, end) from checkpoint ``start``; returns the state at step ``end``.

        ``start_state``: the decoded checkpoint, when the caller has already loaded it.
        """
        final = self._check_range(start, end)
        if self.processes is not None:
            return self.processes.replay(start, end)
        state = start_state if start_state is not None else self._load(start)
        callback = _ReplayCallback(self, state, end, final, ReplaySampler(self._portions(start, end, final), 0, True))
        self._fit(callback, start, state)
        if callback.captured is None:
            raise ReplayError(f"the replay of steps {start}..{end} ended without reaching step {end}")
        return callback.captured

    def replay_chain(
        self, boundaries: list[int], recorded: Callable[[int], dict[str, Any] | None],
        on_segment: Callable[[int, int, dict[str, Any]], None],
    ) -> None:
        """Replay the consecutive segments b0→b1→…→bn in one Lightning run.

        ``on_segment(start, end, state)`` receives each replayed end state as it
        is reached; then the proof's recorded state at that boundary
        (``recorded(step)``) is loaded into the running fit, so each segment
        starts from the proof's W_t exactly as :meth:`replay` would, without
        building a Trainer, a module, a datamodule and DataLoader workers per
        segment. Where ``recorded(step)`` is None (a tiered proof's digest-only
        checkpoint), the replay goes on from the state it reached. Raises what
        the module raises; segments already handed over stand.
        """
        if len(boundaries) < 2 or any(b <= a for a, b in zip(boundaries, boundaries[1:])):
            raise ReplayError(f"a chain needs increasing boundaries, got {boundaries}")
        start, end = boundaries[0], boundaries[-1]
        final = self._check_range(start, end)
        if self.processes is not None:
            self.processes.replay_chain(boundaries, on_segment)
            return
        state = recorded(start)
        sampler = ReplaySampler(self._portions(start, end, final), 0, True)
        callback = _ChainCallback(self, state, list(boundaries), final, sampler, recorded, on_segment)
        self._fit(callback, start, state)
        if callback.position != len(boundaries) - 1:
            reached = boundaries[callback.position]
            raise ReplayError(f"the replay of steps {start}..{end} ended without reaching step {boundaries[callback.position + 1]} (last boundary {reached})")

    def _load(self, step: int) -> dict[str, Any]:
        entry = self.manifest.checkpoint_at(step)
        if entry is None:
            raise ReplayError(f"the proof has no checkpoint at step {step}")
        return self.reader.load_checkpoint(entry)

    def _check_range(self, start: int, end: int) -> bool:
        """Whether ``end`` is the final step; raises when the proof cannot be replayed from ``start`` to ``end``."""
        entry = self.manifest.checkpoint_at(start)
        if entry is None:
            raise ReplayError(f"the proof has no checkpoint at step {start}")
        if not entry.full:
            raise ReplayError(f"the checkpoint of step {start} is digest-only: a replay starts from a full state")
        final = end == self.manifest.final_step
        if end > self.log.steps or (not final and end >= self.log.steps):
            raise ReplayError(f"the index log does not reach step {end}")
        return final

    def _fit(self, callback: _ReplayCallback, start: int, state: dict[str, Any]) -> None:
        """Resume Lightning's own fit from checkpoint state ``state`` at step ``start``, driven by ``callback``."""
        progress = state["progress"]
        batch_idx = progress.get("batch_idx")
        if not isinstance(batch_idx, int) or batch_idx < 0:
            raise ReplayError(f"checkpoint {start} has no batch position to resume from")
        if self.process_rank is None:
            batch_idx *= self.world_size  # rank 0's batches; this process replays every rank's
        epoch = int(progress["epoch"])
        optimizer_steps = progress.get("optimizer_steps", start)
        if not isinstance(optimizer_steps, int) or isinstance(optimizer_steps, bool) or optimizer_steps < start:
            raise ReplayError(f"checkpoint {start} records {optimizer_steps!r} optimizer steps, fewer than its steps")
        with _quiet_lightning():
            trainer = self._trainer(callback)
        module = self.make_module()
        prune_on_load(module)
        if self.training.get("compiled"):  # its setup compiles it before Lightning restores the state
            load_under_live_keys(module)
        datamodule = self.make_datamodule()
        ckpt = {
            "epoch": epoch,
            "global_step": optimizer_steps,
            "pytorch-lightning_version": pl.__version__,
            "state_dict": state["model"],
            "loops": {"fit_loop": self._loops_state(trainer, start, epoch, batch_idx, optimizer_steps)},
            "callbacks": lightning_states(callback.callbacks, state.get("callbacks") or []),
            "optimizer_states": state["optimizers"],
            "lr_schedulers": state["lr_schedulers"],
        }
        if state.get("grad_scaler") is not None:
            ckpt[type(trainer.precision_plugin).__qualname__] = state["grad_scaler"]
        with tempfile.TemporaryDirectory(prefix="pol-replay-") as tmp:
            path = os.path.join(tmp, "start.ckpt")
            torch.save(ckpt, path)  # the verifier's own file, built from checked tensors
            with _quiet_lightning():
                try:
                    with prover_code(f"the proof's module, replaying from step {start},"):
                        trainer.fit(module, datamodule=datamodule, ckpt_path=path, weights_only=False)
                except _SegmentDone:
                    pass
                finally:
                    self.compiled_in_replay = compiled_submodules(module)
