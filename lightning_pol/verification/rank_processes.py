"""The W processes that replay a W-rank proof: Lightning's DDP on the proof's backend, started by the verifier.

A DDP step's gradient is the sum the backend's all-reduce computes, in an
order fixed by the backend, the world size and DDP's buckets: one process
cannot reproduce it bit for bit beyond two ranks (``a + b`` is ``b + a``;
``(a + b) + (c + d)`` is not ``((a + b) + c) + d``). So the replay is run the
way training ran: W processes on this machine, each a rank of Lightning's own
DDP with the proof's backend and DDP arguments, each fed its rank's recorded
micro-batches and RNG stream (:mod:`lightning_pol.verification.rank_worker`).
Everything else stays in the verifier's process: the gate and the code check
ran before, and the judging happens here, as for a one-process replay.

One job replays every chain of segments the verifier selected (processes and
their imports are paid once); rank 0 writes each replayed state to the job's
directory as it reaches it, and :meth:`RankProcesses.replay_chain` hands them
over in order, so progress is reported as the replay goes. A rank that fails
writes one line and the job stops: the segment it was in fails with that
line, and the segments after it are replayed by a new job.
"""

from __future__ import annotations

import json
import os
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning_pol.errors import PoLError
from lightning_pol.format import layout
from lightning_pol.format.safetensors_io import load_safetensors
from lightning_pol.format.state_codec import decode_state
from lightning_pol.format.strict_json import load_json

#: The most processes a replay starts: a proof is hostile input, and its world size a number it chooses.
MAX_RANKS = 64
#: How often the verifier looks for the ranks' next result, in seconds.
POLL_S = 0.05
#: A job's files: what the ranks are asked, the first failure, and each replayed state.
JOB, FAILURE = "job.json", "failure.json"
#: Environment variables of launchers and clusters that would make Lightning take the ranks for another job's.
_FOREIGN = ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS",
            "SLURM_JOB_ID", "SLURM_PROCID", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "JSM_NAMESPACE_SIZE")


class RankFailure(PoLError):
    """A rank of the replay failed: its one line, about the proof (its code raised) or the replay's processes."""


def segment_file(chain: int, start: int) -> str:
    """The file rank 0 writes the state that chain ``chain``'s segment from ``start`` reached to."""
    return f"{chain}-{start}.safetensors"


def read_state(path: Path) -> dict[str, Any]:
    """A replayed state rank 0 wrote (format.checkpoint's encoding, without an entry to check it against)."""
    tensors, metadata = load_safetensors(path.read_bytes(), path.name)
    return decode_state(tensors, load_json(metadata[layout.CHECKPOINT_STATE_KEY], path.name))


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now, for the ranks to meet at."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Job:
    """One start of the W processes, replaying ``chains`` (each a list of segment boundaries) in order."""

    def __init__(self, world_size: int, settings: dict[str, Any], chains: list[list[int]]) -> None:
        self.chains = chains
        self.dir = Path(tempfile.mkdtemp(prefix="pol-ranks-"))
        (self.dir / JOB).write_text(json.dumps({**settings, "chains": chains}))
        # The verifier's own import path and directory, so that every rank imports the proof's code as this process does.
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        env = {k: v for k, v in os.environ.items() if k not in _FOREIGN}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), NODE_RANK="0", PYTHONPATH=os.pathsep.join(paths),
                   OMP_NUM_THREADS=str(settings["threads"]), PYTHONUNBUFFERED="1")
        if hasattr(os, "fork"):  # one interpreter imports torch and Lightning, then forks the W ranks (rank_worker)
            with open(self.dir / "launcher.log", "wb") as out:
                self.procs: list[subprocess.Popen[bytes]] = [subprocess.Popen(
                    [sys.executable, "-m", "lightning_pol.verification.rank_worker", str(self.dir), str(world_size)],
                    env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)]
            return
        self.procs = []
        for rank in range(world_size):
            with open(self.dir / f"rank{rank}.log", "wb") as out:
                self.procs.append(subprocess.Popen([sys.executable, "-m", "lightning_pol.verification.rank_worker", str(self.dir)],
                                                   env={**env, "LOCAL_RANK": str(rank)}, stdout=out, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL))

    def deliver(self, index: int, on_segment: Callable[[int, int, dict[str, Any]], None]) -> None:
        """Hand over chain ``index``'s replayed states as rank 0 writes them; raise :class:`RankFailure` where it fails."""
        boundaries = self.chains[index]
        for start, end in zip(boundaries, boundaries[1:]):
            path = self.dir / segment_file(index, start)
            while not path.exists():
                failure = self.failure()
                if failure is not None:
                    raise RankFailure(failure)
                time.sleep(POLL_S)
            state = read_state(path)
            path.unlink()
            on_segment(start, end, state)

    def failure(self) -> str | None:
        """The first failure a rank wrote, or why the processes stopped without one; None while they run well."""
        try:
            return str(json.loads((self.dir / FAILURE).read_text())["error"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        codes = [p.poll() for p in self.procs]
        if any(c not in (None, 0) for c in codes) or all(c == 0 for c in codes):
            time.sleep(POLL_S)  # a rank that failed writes its line before it exits
            if (self.dir / FAILURE).exists():
                return self.failure()
            failed = next((r for r, c in enumerate(codes) if c not in (None, 0)), None)
            if failed is None:
                return "the replay's processes ended before rank 0 handed over every segment"
            return f"the replay's process exited with code {codes[failed]}: {self.last_line()}"
        return None

    def last_line(self) -> str:
        """The last line any process of the job wrote (a crash's message)."""
        lines = [line for log in sorted(self.dir.glob("*.log")) for line in log.read_text(errors="replace").strip().splitlines()[-1:]]
        return lines[-1][:300] if lines else "no output"

    def stop(self) -> None:
        """End the processes (those still waiting at a collective after a rank failed) and remove the job's files."""
        for p in self.procs:
            if p.poll() is None and hasattr(os, "killpg"):
                os.killpg(p.pid, signal.SIGKILL)  # the launcher's session: it and the ranks it forked
            elif p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class RankProcesses:
    """Replays a W-rank proof's segments in W processes, for :class:`~lightning_pol.verification.replay.PoLVerifierModule`.

    ``settings`` are what each rank needs to open the proof as the verifier did (``proof_dir``, ``accelerator``,
    ``deterministic``, ``overrides``, ``registry``, ``roots``, ``threads``). :meth:`prepare` names every chain the
    verification will ask for, so that one job replays them all.
    """

    def __init__(self, world_size: int, settings: dict[str, Any]) -> None:
        if not 1 < world_size <= MAX_RANKS:
            raise PoLError(f"the proof claims {world_size} ranks, and a replay starts at most {MAX_RANKS} processes: verify "
                           f"it with verifier.ranks=emulate and a tolerant verifier.delta")
        self.world_size, self.settings = world_size, settings
        self._planned: list[list[int]] = []
        self._job: _Job | None = None
        self._failed: int | None = None  # the chain of the current job that failed

    def prepare(self, chains: list[list[int]]) -> None:
        self._planned = [list(c) for c in chains]

    def replay_chain(self, boundaries: list[int], on_segment: Callable[[int, int, dict[str, Any]], None]) -> None:
        """``on_segment(start, end, state)`` for each segment of the chain, as its ranks reach its end."""
        boundaries = list(boundaries)
        job = self._job
        index = job.chains.index(boundaries) if job is not None and boundaries in job.chains else None
        if job is None or index is None or (self._failed is not None and index > self._failed):
            rest = self._planned[self._planned.index(boundaries):] if boundaries in self._planned else [boundaries]
            self._start(rest)
            job, index = self._job, 0
        assert job is not None
        try:
            job.deliver(index, on_segment)
        except RankFailure:
            self._failed = index
            job.stop()
            raise
        if index == len(job.chains) - 1:
            self.close()

    def replay(self, start: int, end: int) -> dict[str, Any]:
        """The state one segment's replay reaches (a job of its own: the segments after a failed one)."""
        got: list[dict[str, Any]] = []
        self._start([[start, end]])
        self.replay_chain([start, end], lambda a, b, state: got.append(state))
        return got[0]

    def _start(self, chains: list[list[int]]) -> None:
        self.close()
        self._job, self._failed = _Job(self.world_size, self.settings, chains), None

    def close(self) -> None:
        if self._job is not None:
            self._job.stop()
            self._job = None
