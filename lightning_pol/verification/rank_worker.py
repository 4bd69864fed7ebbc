"""One rank of a W-process replay: ``python -m lightning_pol.verification.rank_worker JOB_DIR``.

Started by :mod:`lightning_pol.verification.rank_processes`, never by hand: as the launcher that forks the W ranks
(``JOB_DIR W``: torch and Lightning imported once), or as one rank (where there is no fork). ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` say which rank this is and where the ranks meet, so Lightning joins them rather than launching
processes of its own. The rank opens the proof as the verifier did (its class gate again, before anything of the
proof is imported), replays the job's chains of segments under Lightning's DDP, and rank 0 writes each state it
reaches to the job's directory. The first rank to fail writes one line there and exits 3.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from lightning_pol.errors import PoLError, one_line
from lightning_pol.format.checkpoint import checkpoint_bytes
from lightning_pol.format.reader import ProofReader
from lightning_pol.verification.rank_processes import FAILURE, JOB, segment_file
from lightning_pol.verification.replay import PoLVerifierModule, VerifierFault


def _write_once(path: Path, data: bytes) -> None:
    """Write ``data`` under ``path`` whole, or not at all (the verifier reads it as soon as it appears)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _fail(job_dir: Path, rank: int, chain: int | None, error: str) -> None:
    """Record the first failure of the job (a later rank's, caused by this one, is not kept)."""
    try:
        fd = os.open(job_dir / FAILURE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        json.dump({"rank": rank, "chain": chain, "error": error}, f)


def _verifier(job: dict[str, Any], rank: int) -> PoLVerifierModule:
    from lightning_pol.verification.pretrained_check import use_trusted_root
    from lightning_pol.verification.registry import Registry

    reader = ProofReader(job["proof_dir"], job.get("storage_options"))
    use_trusted_root(reader, Registry(job["registry"]) if job.get("registry") else None, job.get("roots"))
    verifier = PoLVerifierModule(reader, accelerator=job["accelerator"], deterministic=job.get("deterministic"),
                                 overrides=job.get("overrides"), process_rank=rank, project_root=job.get("project_root"))
    verifier.backend = job.get("backend")
    return verifier


def run(job_dir: Path) -> int:
    rank = int(os.environ["LOCAL_RANK"])
    job = json.loads((job_dir / JOB).read_text())
    torch.set_num_threads(int(job["threads"]))
    # The replay's own temporary files (Lightning's resume file) live in the job's directory, which the verifier
    # removes: a rank killed because another failed leaves nothing behind in the system's temporary directory.
    tempfile.tempdir = str(job_dir)
    chain = None
    try:
        verifier = _verifier(job, rank)
        entries = {c.step: c for c in verifier.manifest.checkpoints}

        @functools.lru_cache(maxsize=3)
        def recorded(step: int) -> dict[str, Any] | None:
            return verifier.reader.load_checkpoint(entries[step]) if entries[step].full else None

        for chain, boundaries in enumerate(job["chains"]):

            def handed_over(start: int, end: int, state: dict[str, Any], chain: int = chain) -> None:
                if rank == 0:
                    _write_once(job_dir / segment_file(chain, start), checkpoint_bytes(state))

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                verifier.replay_chain(boundaries, recorded, handed_over)
    except PoLError as e:
        _fail(job_dir, rank, chain, one_line(e))
        return 3
    except VerifierFault as e:
        _fail(job_dir, rank, chain, f"the replay's own code failed on rank {rank}: {one_line(e)}")
        return 3
    return 0


def launch(job_dir: Path, world_size: int) -> int:
    """Fork the job's W ranks from this interpreter, which has imported torch and Lightning once and run nothing (no
    threads yet: a safe fork), each with its ``LOCAL_RANK`` and its output in ``rank{r}.log``; wait for them. A rank
    that exits with an error ends the others (they would wait for it at a collective). Returns the first error code."""
    children: dict[int, int] = {}
    for rank in range(world_size):
        pid = os.fork()
        if pid == 0:
            os.environ["LOCAL_RANK"] = str(rank)
            fd = os.open(job_dir / f"rank{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = 3
            try:
                code = run(job_dir)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = rank
    worst = 0
    while children:
        pid, status = os.wait()
        children.pop(pid, None)
        code = os.waitstatus_to_exitcode(status)
        if code != 0 and worst == 0:
            worst = code if code > 0 else 1
            for other in children:
                os.kill(other, signal.SIGKILL)
    return worst


if __name__ == "__main__":
    if len(sys.argv) == 3:  # the launcher: rank_processes started it, with the job and the number of ranks
        sys.exit(launch(Path(sys.argv[1]), int(sys.argv[2])))
    if len(sys.argv) != 2 or "LOCAL_RANK" not in os.environ:
        print("error: started by lightning_pol.verification.rank_processes, not by hand", file=sys.stderr)
        sys.exit(2)
    code = run(Path(sys.argv[1]))
    sys.stdout.flush()
    os._exit(code)  # without waiting at the process group's teardown for ranks that will never come
