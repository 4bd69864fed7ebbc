"""Where each optimizer step's micro-batches are: in flight, pending in memory, or handed to the proof session."""

from __future__ import annotations

from typing import Any


class StepLedger:
    """The batch bookkeeping of a run that writes a proof; touched by the training thread only.

    A batch is *in flight* from ``on_train_batch_start`` to ``on_train_batch_end``,
    then *pending*: filed under its optimizer step, in memory. At a checkpoint
    the steps before it are *flushed*: taken out of the ledger and handed to
    the proof session, which writes them with its next commit. Steps
    ``[0, flushed)`` were handed over; ``pending[i]`` holds the micro-batches
    of step ``flushed + i``.

    It also keeps the ``sample_epochs`` runs (with which epoch's seeds each
    step's samples were drawn) and when the next checkpoint is due. Its
    :meth:`state_dict` goes into Lightning checkpoints, so a resume continues
    the same proof.
    """

    def __init__(self, every_n_steps: int) -> None:
        self.every_n_steps = every_n_steps
        self.flushed = 0
        self.pending: list[list[list[int]]] = []
        self.sample_epochs: list[list[int]] = []  # [first_step, epoch] runs
        self.last_written = -1
        self.next_due = 0
        self._inflight: tuple[int, int, list[int]] | None = None  # (step, epoch, indices)
        self._new_run = False  # the next batch starts a run even within the same epoch (a resume)

    @property
    def trained(self) -> int:
        """Steps trained so far (flushed and pending)."""
        return self.flushed + len(self.pending)

    def batch_started(self, step: int, epoch: int, indices: list[int]) -> bool:
        """A micro-batch of ``step`` starts; returns whether the checkpoint of ``step`` is due before it."""
        self._inflight = (step, epoch, indices)
        return self.due(step)

    def due(self, step: int) -> bool:
        """Whether the checkpoint of ``step`` is due (and not yet taken)."""
        return step >= self.next_due and step > self.last_written

    def batch_ended(self) -> tuple[int, list[int]] | None:
        """The micro-batch in flight reached the end of its step's batch: file it. Returns its (seed epoch, indices)."""
        if self._inflight is None:
            return None
        step, epoch, indices = self._inflight
        self._inflight = None
        slot = step - self.flushed
        if slot < len(self.pending) - 1 or slot < 0:
            raise RuntimeError(f"batch of step {step} arrived after step {self.trained - 1}")
        while len(self.pending) <= slot:
            self.pending.append([])
        self.pending[slot].append(indices)
        if not self.sample_epochs or self.sample_epochs[-1][1] != epoch or (self._new_run and self.sample_epochs[-1][0] < step):
            self.sample_epochs.append([step, epoch])
        self._new_run = False
        return epoch, indices

    def take(self, upto: int) -> list[list[list[int]]]:
        """Steps ``[flushed, upto)`` out of memory (a step never trained on has no micro-batch); they are flushed."""
        n = upto - self.flushed
        steps = self.pending[: max(n, 0)] + [[] for _ in range(n - len(self.pending))]
        self.pending = self.pending[max(n, 0):]
        self.flushed = max(upto, self.flushed)
        return steps

    def checkpoint_taken(self, step: int) -> None:
        self.last_written = step
        self.next_due = (step // self.every_n_steps + 1) * self.every_n_steps

    def recorded_epochs(self) -> list[list[int]]:
        """The ``sample_epochs`` runs of the flushed steps: what the proof's manifest may list so far."""
        return [list(r) for r in self.sample_epochs if r[0] < self.flushed]

    # -- Lightning checkpoints ---------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "flushed": self.flushed,
            "pending": [[list(b) for b in p] for p in self.pending],
            "sample_epochs": [list(r) for r in self.sample_epochs],
            "last_written": self.last_written,
            "next_due": self.next_due,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.flushed = int(state["flushed"])
        self.pending = [[list(b) for b in p] for p in state["pending"]]
        self.sample_epochs = [list(r) for r in state["sample_epochs"]]
        self.last_written = int(state["last_written"])
        self.next_due = int(state["next_due"])
        # Lightning resumes mid-epoch with a fresh iteration of the sampler (a new shuffle), so what this run
        # trains on in the epoch is a second draw: recorded as a run of its own, checked on its own.
        self._new_run = True
