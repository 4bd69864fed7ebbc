"""A single background thread that runs the proof's file work in order, off the training path."""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable
from typing import Any

_STOP = object()


class BackgroundWriter:
    """Runs submitted jobs one at a time, in submission order, on one daemon thread.

    Example::

        jobs = BackgroundWriter(max_pending=2)
        jobs.submit(lambda: write_checkpoint(state))   # returns at once unless 2 jobs wait
        jobs.flush()                                   # waits; raises the first job error here

    Order is what keeps a proof crash-consistent: a checkpoint's file is
    written before the manifest that lists it, because both are jobs of the
    same thread. ``max_pending`` bounds memory (each job holds a snapshot of
    the training state): ``submit`` blocks while that many jobs wait, which
    is the backpressure a slow disk puts on training. A job that raises
    stops the thread; the error is raised in the training process by the
    next ``submit`` or ``flush``, and no later job runs, so nothing is
    written after a failed write.

    While a job runs, the interpreter's switch interval is at most
    ``switch_interval`` seconds (then put back, unless someone else changed it
    meanwhile). A job is partly pure Python (encoding the state, the
    manifest's JSON), and the training thread re-takes the GIL after every
    torch op: with the default 5 ms interval it would wait up to 5 ms each
    time the writer holds the GIL, and training would pay for the writer's
    work instead of overlapping it.
    """

    def __init__(self, max_pending: int = 2, name: str = "lightning-pol-writer", switch_interval: float | None = 5e-4) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.switch_interval = switch_interval
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is _STOP:
                    return
                if self._error is None:
                    self._run_job(job)
            except BaseException as e:  # noqa: BLE001 - handed to the training thread
                self._error = e
            finally:
                self._queue.task_done()

    def _run_job(self, job: Callable[[], None]) -> None:
        previous, short = sys.getswitchinterval(), self.switch_interval
        if short is None or previous <= short:
            job()
            return
        sys.setswitchinterval(short)
        short = sys.getswitchinterval()  # as the interpreter stores it (in microseconds)
        try:
            job()
        finally:
            if sys.getswitchinterval() == short:
                sys.setswitchinterval(previous)

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job``; blocks while ``max_pending`` jobs wait. Raises an earlier job's error."""
        self._raise()
        if not self._thread.is_alive():
            raise RuntimeError("the proof writer thread has stopped")
        self._queue.put(job)

    def flush(self) -> None:
        """Wait until every queued job has run; raises the first job error."""
        if self._thread.is_alive():
            self._queue.join()
        self._raise()

    def close(self) -> None:
        """Run what is queued, then stop the thread. Does not raise job errors (call ``flush`` for that)."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    @property
    def error(self) -> BaseException | None:
        return self._error
