"""The proof directory while a run writes it: opening or reopening it, checkpoint files, commits, index-log chunks."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from safetensors.torch import load

from lightning_pol.format import layout
from lightning_pol.format.checkpoint import checkpoint_parts
from lightning_pol.format.compression import compress_checkpoint
from lightning_pol.format.index_log import IndexLog
from lightning_pol.format.manifest import Manifest, MonitoredValue
from lightning_pol.format.samples import leaves_file_bytes, root_of
from lightning_pol.format.storage import ProofStore
from lightning_pol.format.writer import ProofDirectoryError, ProofWriter
from lightning_pol.prover.background import BackgroundWriter
from lightning_pol.prover.stored_tensors import StoredTensors
from lightning_pol.runtime.snapshots import SnapshotPool
from lightning_pol.runtime.installed_code import installed_code, named_classes
from lightning_pol.runtime.update_norms import update_norms

log = logging.getLogger(__name__)

Steps = list[list[list[int]]]  # steps[t] = the micro-batches (index lists) of one optimizer step


class ProofSession:
    """One fit's writing of a proof, on the rank that writes it.

    Two threads, and the line between them:

    - the **training thread** calls the public methods. Each snapshot it hands
      over is its own copy; each method queues a job and returns (or, with
      ``background=False``, runs it at once). It alone touches ``_jobs``,
      ``_fitting``, ``_write_failed`` and ``checkpoints_taken``.
    - the **writer thread** (:class:`~lightning_pol.prover.background.BackgroundWriter`)
      runs the jobs, one at a time, in order. Only jobs touch the
      :class:`~lightning_pol.format.writer.ProofWriter` and its manifest once
      :meth:`start` has run, and the writer-side state: the steps handed over
      and not yet in an index-log file (``_unfiled``, ``_filed``), the time
      of the last commit, where each tensor was last stored (``_stored``: a
      tensor unchanged since is written as a reference), and in a tiered proof
      the last checkpoint's model (``_last``: the update norms of the next
      checkpoint start from it).
      (The training thread reads ``total_bytes`` for the progress bar; the
      running total is one int.) A checkpoint's copy of the state
      (:class:`~lightning_pol.runtime.snapshots.SnapshotPool`) is taken on the
      training thread and given back by the job that wrote it.

    A checkpoint's file is written when it is taken; a commit (the index-log
    chunk of the steps handed over since the last one, the directories'
    fsyncs, the manifest) waits for ``commit_every_s`` seconds, a Lightning
    checkpoint, the end, or fit raising. One thread in submission order keeps
    the commit order, and with it crash consistency.
    """

    def __init__(self, store: ProofStore, fsync: bool, background: bool, max_pending: int, commit_every_s: float,
                 references: bool = True) -> None:
        self.store = store
        self.references = references
        self.fsync = fsync
        self.background = background
        self.max_pending = max_pending
        self.commit_every_s = commit_every_s
        self.checkpoints_taken = 0
        self._writer: ProofWriter | None = None
        self._jobs: BackgroundWriter | None = None
        self._snapshots: SnapshotPool | None = None  # the copies of the state handed to the writer (from start)
        self._fitting = False
        self._write_failed = False
        self._unfiled: Steps = []
        self._filed = 0
        self._committed_at = -math.inf
        self._last: tuple[int, dict[str, torch.Tensor]] | None = None  # tiered proofs: (step, model) of the last checkpoint
        self._stored: StoredTensors | None = None  # with references: where each tensor was last stored (from start)

    # ---------------------------------------------------------------- opening (training thread, no writer thread yet)
    def create(self, manifest: Manifest, overwrite: bool, leaves: torch.Tensor | None) -> None:
        """Start a new proof (refusing another run's, unless ``overwrite``); ``leaves`` when the data is committed already."""
        self._writer = ProofWriter.create(self.store, manifest, overwrite, self.fsync)
        if leaves is not None:
            self._put_leaves(leaves)

    def reopen(self, run_id: str, leaves: torch.Tensor, last_written: int, flushed: int, monitored: int | None = None,
               norms_origin: tuple[int, dict[str, torch.Tensor]] | None = None) -> None:
        """Continue run ``run_id``'s proof after a resume from a Lightning checkpoint saved when the proof had written
        the checkpoint of step ``last_written``, been handed steps ``[0, flushed)`` and ``monitored`` values plateau
        schedulers consumed (None: a checkpoint that does not say); a tiered proof's ``norms_origin``, what
        :meth:`norms_origin` gave then. What the proof holds beyond that never happened in the resumed run, and is
        dropped; nothing is committed when the resume is refused."""
        writer = ProofWriter.reopen(self.store, run_id, self.fsync)
        self._writer = writer
        m = writer.manifest
        if not m.data.committed:  # the run stopped within its first epoch, before committing
            self._put_leaves(leaves)
        elif m.data.root != root_of(leaves):
            raise ProofDirectoryError("cannot resume: the training data differs from the data this proof committed to")
        changed = m.code.differences(installed_code(named_classes(m))) if m.code is not None else []
        if changed:  # the resumed steps would run other code than the proof's code identity says
            raise ProofDirectoryError(f"cannot resume: the code differs from the code this proof recorded ({', '.join(changed[:3])}); "
                                      f"restore it, or start a new proof")
        for c in m.drop_checkpoints_after(last_written):
            if c.path is not None:
                writer.drop(c.path)
        if m.tiered and last_written >= 0:  # (before W_0 there is nothing to start from)
            if norms_origin is None or norms_origin[0] != last_written:
                raise ProofDirectoryError(f"cannot resume: the Lightning checkpoint does not hold the model of the tiered proof's "
                                          f"checkpoint {last_written}, which the next update norms start from")
            self._last = norms_origin
        if monitored is not None:
            if len(m.monitored) < monitored:
                raise ProofDirectoryError(f"cannot resume: the proof records {len(m.monitored)} monitored values but the Lightning checkpoint expects {monitored}")
            m.keep_monitored(monitored)
        recorded = m.recorded_steps
        if recorded < flushed:
            raise ProofDirectoryError(f"cannot resume: the proof records {recorded} steps but the Lightning checkpoint expects {flushed}")
        if recorded > flushed:  # steps recorded after the checkpoint we resume from never happened
            steps = self._read_index_log().truncate(flushed)
            for chunk in m.clear_index_log():
                writer.drop(chunk.path)
            self._write_index_chunk(steps)
        self._filed = flushed
        m.mark_in_progress()
        self._commit(force=True)

    def start(self, first_commit: bool) -> None:
        """Fit starts writing: from here on the writer thread owns the proof. ``first_commit``: a new proof's
        first manifest (a reopened one was committed when reopened)."""
        assert self._writer is not None
        self._fitting = True
        m = self._writer.manifest
        self.checkpoints_taken = len(m.checkpoints)
        if self.references:  # a resumed run names the root's tensors; what it stores first is whole
            self._stored = StoredTensors.of_pretrained(m.init.arguments()) if m.init.strategy == "pretrained" else StoredTensors()
        if self.background:
            self._jobs = BackgroundWriter(self.max_pending)
        self._snapshots = SnapshotPool(self.max_pending, failed=lambda: self._jobs.error if self._jobs is not None else None,
                                       copy_host=self.background)
        if first_commit:
            self._run(lambda: self._commit(force=True))

    # ---------------------------------------------------------------- writing (training thread: each queues a job)
    def write_checkpoint(self, steps: Steps, state: dict[str, Any], step: int, epoch: int,
                         sample_epochs: list[list[int]], final: bool) -> None:
        """Hand over ``steps`` and write the checkpoint of ``step`` from the live training ``state``: it is copied here
        (:class:`~lightning_pol.runtime.snapshots.SnapshotPool`, waiting while every copy is with the writer), and
        the copy is written on the writer thread. ``final``: training ended at ``step``, and the proof is completed
        in the same commit."""
        assert self._snapshots is not None
        snapshot = self._snapshots.take(state)

        def job() -> None:
            try:
                if final:
                    self._complete(steps, sample_epochs, step)
                else:
                    self._unfiled.extend(steps)
                snapshot.wait()
                self._add_checkpoint(snapshot.state, step, epoch, final)
            finally:
                snapshot.release()
            self._writer.manifest.set_sample_epochs(sample_epochs)  # type: ignore[union-attr]
            self._commit(force=final)

        self._run(job)
        self.checkpoints_taken += 1

    def norms_origin(self) -> tuple[int, dict[str, torch.Tensor]] | None:
        """A tiered proof's last checkpoint step and model, which the next update norms start from (None for
        another proof): a Lightning checkpoint carries them, since that checkpoint may be digest-only. Waits for
        the writer thread, which owns them."""
        self.wait()
        return self._last

    def complete(self, steps: Steps, sample_epochs: list[list[int]], final_step: int) -> None:
        """Training ended at ``final_step`` without a checkpoint to write there: complete the proof and commit."""
        self._run(lambda: (self._complete(steps, sample_epochs, final_step), self._commit(force=True)))

    def add_monitored(self, value: MonitoredValue) -> None:
        """A value a plateau scheduler consumed: in the manifest from the next commit on."""
        self._run(lambda: self._writer.manifest.add_monitored(value))  # type: ignore[union-attr]

    def commit_data(self, leaves: torch.Tensor) -> None:
        """The data commitment (the leaves of every sample): written and committed when the next commit is due."""
        self._run(lambda: (self._put_leaves(leaves), self._commit()))

    def commit_now(self) -> None:
        """Commit what was handed over, and wait for it (a Lightning checkpoint must not promise uncommitted steps)."""
        if self._writer is None or not self._fitting:
            return  # after fit, everything was committed (or a failed write stopped the writing)
        self._run(self._commit_unless_complete)
        self.wait()

    def wait(self) -> None:
        """Wait for every queued job; raises a job's error."""
        if self._jobs is not None:
            self._jobs.flush()

    def end(self) -> None:
        """Fit ends (normally or not): commit what was written unless the proof is complete, stop the writer thread."""
        if self._fitting:  # once: Lightning may call on_exception after a teardown that raised
            self._fitting = False
            self._commit_on_exit()
        if self._jobs is not None:
            self._jobs.close()  # runs what is queued: every queued job leaves a consistent proof
            self._jobs = None

    # ---------------------------------------------------------------- reading (after wait() or end())
    @property
    def is_complete(self) -> bool:
        return self._writer is not None and self._writer.manifest.complete

    @property
    def total_bytes(self) -> int:
        return self._writer.total_bytes if self._writer is not None else 0

    @property
    def checkpoints(self) -> int:
        return len(self._writer.manifest.checkpoints) if self._writer is not None else 0

    # ---------------------------------------------------------------- jobs (writer thread)
    def _run(self, job: Callable[[], Any]) -> None:
        """Run a file job on the writer thread (in order), or here when ``background`` is off."""
        if self._jobs is not None:
            self._jobs.submit(job)
            return
        try:
            job()
        except BaseException:
            self._write_failed = True  # as on the background writer, nothing is written after a failed write
            raise

    def _add_checkpoint(self, state: dict[str, Any], step: int, epoch: int, final: bool) -> None:
        """List the checkpoint of ``step``: its file; in a tiered proof, its file compressed where a full state is due,
        else only its digest, either with the update norms from the last checkpoint. A stored file references the
        tensors stored before as they are now (:class:`~lightning_pol.prover.stored_tensors.StoredTensors`); the entry
        keeps the digest of the full file, which replay compares."""
        m = self._writer.manifest  # type: ignore[union-attr]
        norms = update_norms(self._last[1], state["model"]) if m.tiered and self._last is not None else None
        stored = self._stored
        if m.tiered and not (final or m.full_state_due(step)):
            m.add_checkpoint(step, epoch, None, layout.sha256_parts(checkpoint_parts(state))[0], norms)
        else:
            parts = checkpoint_parts(state, stored.referrer(step) if stored is not None else None)  # views: no second copy
            referenced = stored is not None and stored.referenced > 0
            full = layout.sha256_parts(checkpoint_parts(state))[0] if referenced else None
            if not m.tiered:
                rel = layout.checkpoint_path(step)
                self._writer.put(rel, parts)  # type: ignore[union-attr]
                m.add_checkpoint(step, epoch, rel, full)
            else:  # a tiered proof's rare full states, compressed (format.compression)
                rel = layout.checkpoint_path(step, compressed=True)
                data = b"".join(parts)
                self._writer.put(rel, compress_checkpoint(data))  # type: ignore[union-attr]
                m.add_checkpoint(step, epoch, rel, full or layout.sha256_bytes(data), norms)
            if stored is not None:
                stored.stored()
        if m.tiered:  # the snapshot's buffers are reused: the next update norms start from a copy of the model
            self._last = (step, {k: v.clone() for k, v in state["model"].items()})

    def _commit(self, force: bool = False) -> None:
        """Commit the manifest if ``commit_every_s`` passed since the last commit, or if ``force``.

        The steps handed over since the last commit are filed first, as one
        index-log chunk: the manifest never lists a checkpoint whose steps are
        not in its index log.
        """
        if not force and time.monotonic() - self._committed_at < self.commit_every_s:
            return
        if self._unfiled:
            steps, self._unfiled = self._unfiled, []
            self._write_index_chunk(IndexLog.from_steps(steps))
        self._writer.commit()  # type: ignore[union-attr]
        self._committed_at = time.monotonic()

    def _commit_unless_complete(self) -> None:
        """Commit now, unless the final commit, which marked the proof complete, was made."""
        if not self._writer.manifest.complete:  # type: ignore[union-attr]
            self._commit(force=True)

    def _commit_on_exit(self) -> None:
        if self._writer is None or self._write_failed or (self._jobs is not None and self._jobs.error is not None):
            return
        try:
            self._run(self._commit_unless_complete)
        except Exception as e:  # noqa: BLE001 - fit is already ending with its own exception
            log.warning("proof of learning: the last commit failed: %s", e)

    def _complete(self, steps: Steps, sample_epochs: list[list[int]], final_step: int) -> None:
        """Merge every chunk, the waiting steps and ``steps`` into the one index-log file of a complete proof, and
        mark the manifest complete; the caller's commit lands it."""
        writer = self._writer
        assert writer is not None
        chunks = writer.manifest.index_log
        last, self._unfiled = self._unfiled + steps, []
        if last or not (len(chunks) == 1 and chunks[0].path == layout.INDEX_LOG_FINAL):
            merged = IndexLog.concat([self._read_index_log(), IndexLog.from_steps(last)])
            for chunk in writer.manifest.clear_index_log():
                writer.drop(chunk.path)
            self._filed = 0
            self._write_index_chunk(merged, rel=layout.INDEX_LOG_FINAL)
        writer.manifest.set_sample_epochs(sample_epochs)
        writer.manifest.mark_complete(final_step)

    def _write_index_chunk(self, steps: IndexLog, rel: str | None = None) -> None:
        writer = self._writer
        assert writer is not None
        rel = rel or layout.index_chunk_path(self._filed)
        writer.put(rel, steps.to_bytes())
        writer.manifest.add_index_chunk(rel, steps.steps)
        self._filed += steps.steps

    def _read_index_log(self) -> IndexLog:
        # This run's own files: trusted, unlike a proof handed to a verifier.
        writer = self._writer
        assert writer is not None
        files = writer.manifest.files
        return IndexLog.concat([IndexLog.from_tensors(load(writer.store.read(c.path, files[c.path].bytes)))
                                for c in writer.manifest.index_log])

    def _put_leaves(self, leaves: torch.Tensor) -> None:
        self._writer.put(layout.LEAVES, leaves_file_bytes(leaves))  # type: ignore[union-attr]
        self._writer.manifest.commit_data(layout.LEAVES, root_of(leaves))  # type: ignore[union-attr]

    def identity(self) -> str:
        """SHA-256 of the manifest as committed now."""
        self.commit_now()
        return layout.sha256_bytes(self.store.read(layout.MANIFEST, layout.MAX_MANIFEST_BYTES))
