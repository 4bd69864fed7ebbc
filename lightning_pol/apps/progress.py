"""Progress of a long replay on stderr, for the apps (``verify``, ``reproduce``, ``attacks``).

A full replay takes as long as training, so the apps show how far it got, the
way Lightning shows training: a tqdm bar on a terminal. A log or a pipe gets
one flushed line per segment instead, since carriage-return bars turn a log
file into noise. The library stays silent: it only calls the callbacks this
class provides (:data:`lightning_pol.verification.segments.Progress`).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 20 s``, ``2 h 05 min``: a time left, readable in a log."""
    s = max(0, round(seconds))
    if s < 90:
        return f"{s} s"
    if s < 5400:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s // 60 % 60:02d} min"


class ReplayProgress:
    """Segments replayed of total, steps per second and time left, as a bar on a terminal or one line per segment.

    Pass the instance as ``verify_proof(..., progress=...)``; pass :meth:`say` to
    the hooks that take a message (``reproduction_errors``, ``run_suite``). Use it
    as a context manager so that a bar is closed when the work raises.
    """

    def __init__(self, what: str = "replaying segments", label: str = "", stream: TextIO | None = None,
                 tty: bool | None = None) -> None:
        self.what, self.label = what, label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self._bar: Any = None
        self._total = 0
        self._start = self._last = 0.0
        self._steps = 0

    def __enter__(self) -> ReplayProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, done: int, total: int, steps: tuple[int, int] | None = None) -> None:
        """``verify_proof``'s callback: ``done`` of ``total`` segments, ``steps`` the (start, end) of the one just judged."""
        self._update(self.label, done, total, steps)

    def say(self, message: str, done: int | None = None, total: int | None = None, steps: tuple[int, int] | None = None) -> None:
        """A message hook: a line saying what is done now, or, with ``done``/``total``, progress of the replay ``message`` names."""
        if done is None or total is None:
            self.close()
            self._write(message)
        else:
            self._update(message, done, total, steps)

    def close(self) -> None:
        """Leave the finished bar on the terminal (as Lightning does); nothing in a log."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _update(self, label: str, done: int, total: int, steps: tuple[int, int] | None) -> None:
        now = time.monotonic()
        if done == 0 or total != self._total:  # a new replay starts
            self.close()
            self._total, self._start, self._last, self._steps = total, now, now, 0
            if self.tty and total > 0:
                self._bar = self._new_bar(label, total)
            if done == 0:
                return
        seconds, self._last = now - self._last, now
        self._steps += steps[1] - steps[0] if steps is not None else 0
        if self._bar is not None:
            if steps is not None:  # tqdm's own rate counts segments; steps/s is over the whole replay so far
                rate = self._steps / (now - self._start) if now > self._start else 0.0
                self._bar.set_postfix_str(f"steps {steps[0]}->{steps[1]}, {rate:.1f} steps/s", refresh=False)
            self._bar.update(done - self._bar.n)
            if done >= total:
                self.close()
        elif not self.tty and total > 0:
            self._write(self._line(label, done, total, steps, seconds))

    def _line(self, label: str, done: int, total: int, steps: tuple[int, int] | None, seconds: float) -> str:
        """``segment 3/10 (steps 16->24): 8 steps in 1.3 s, 6.1 steps/s, ~9 s left``: one segment, for a log."""
        line = f"{label}: segment {done}/{total}" if label else f"segment {done}/{total}"
        if steps is not None:
            n = steps[1] - steps[0]
            line += f" (steps {steps[0]}->{steps[1]}): {n} step{'' if n == 1 else 's'} in {seconds:.1f} s, "
            line += f"{n / seconds if seconds > 0 else 0.0:.1f} steps/s"
        else:
            line += f": {seconds:.1f} s"
        if done < total:
            line += f", ~{duration((time.monotonic() - self._start) / done * (total - done))} left"
        return line

    def _new_bar(self, label: str, total: int) -> Any:
        from tqdm import tqdm

        try:
            cols, rows = os.get_terminal_size(self.stream.fileno())
        except (AttributeError, OSError, ValueError):
            cols, rows = 0, 0
        # A terminal that reports no size (a bare pty) would get no bar at all from tqdm: assume one.
        shape: dict[str, Any] = {"dynamic_ncols": True} if cols and rows else {"ncols": cols or 100, "nrows": rows or 20}
        return tqdm(total=total, desc=f"{label}: {self.what}" if label else self.what, unit="segment", file=self.stream,
                    leave=True, **shape)

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()
