"""Progress of long work: one line per replayed segment in a log or a pipe, a tqdm bar on a terminal, silence for none."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest

from lightning_pol import verify_proof
from lightning_pol.apps.progress import ReplayProgress
from tests.conftest import train_with_proof
from tests.unseen_project import UnseenDataModule, UnseenModule

REPO = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^segment (\d+)/(\d+) \(steps (\d+)->(\d+)\): (\d+) steps in [\d.]+ s, [\d.]+ steps/s(, ~.+ left)?$", re.MULTILINE)


@pytest.fixture(scope="module")
def proof(tmp_path_factory) -> Path:
    proof, _, _ = train_with_proof(tmp_path_factory.mktemp("progress"), UnseenModule, UnseenDataModule(num_workers=0),
                                   every_n_steps=8, max_steps=24, max_epochs=-1)
    return proof  # 3 segments: 0->8, 8->16, 16->24


def verify_command(proof: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "lightning_pol.verify", f"proof_dir={proof}", "verifier.q=0", f"hydra.run.dir={run_dir}"]


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def test_a_pipe_gets_one_flushed_line_per_segment(proof, tmp_path):
    done = subprocess.run(verify_command(proof, tmp_path / "run"), cwd=REPO, env=env(), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "\r" not in done.stderr
    lines = [m.groups() for m in map(LINE.match, done.stderr.splitlines()) if m]
    assert [(int(a), int(b), int(c), int(d), int(n)) for a, b, c, d, n, _ in lines] == [
        (1, 3, 0, 8, 8), (2, 3, 8, 16, 8), (3, 3, 16, 24, 8)]
    assert [left is not None for *_, left in lines] == [True, True, False]  # time left, until the last
    assert not [ln for ln in done.stderr.splitlines() if "segment" in ln and not LINE.match(ln)]
    assert "replaying segments" not in done.stderr and not LINE.search(done.stdout)  # no bar; stdout keeps the report


@pytest.mark.parametrize("size", [(40, 160), None], ids=["sized", "bare"])  # a bare pty reports 0x0: tqdm alone draws nothing
def test_a_terminal_gets_a_tqdm_bar(proof, tmp_path, size):
    master, slave = pty.openpty()
    if size is not None:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
    proc = subprocess.Popen(verify_command(proof, tmp_path / "run"), cwd=REPO, env=env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        reader.join(timeout=10)
        os.close(master)
    err = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, err[-3000:]
    bar = re.search(r"replaying segments: 100%\|[^|]+\| 3/3 \[[\d:]+<[\d:]+, +[\d.]+(segment/s|s/segment), steps 16->24, [\d.]+ steps/s\]", err)
    assert bar, err[-3000:]
    assert not LINE.search(err.replace("\r", "\n"))  # no log lines on a terminal
    assert b"valid" in out.lower()


def test_the_callback_gets_the_steps_when_it_asks_and_old_callbacks_still_work(proof):
    calls, old = [], []

    def progress(done, total, steps=None):
        calls.append((done, total, steps))

    verify_proof(proof, q=0, progress=progress)
    assert calls == [(0, 3, None), (1, 3, (0, 8)), (2, 3, (8, 16)), (3, 3, (16, 24))]
    verify_proof(proof, q=0, progress=lambda done, total: old.append((done, total)))
    assert old == [(0, 3), (1, 3), (2, 3), (3, 3)]


def test_nothing_when_there_are_no_segments_and_labels_in_a_log():
    stream = io.StringIO()
    show = ReplayProgress(stream=stream)
    show(0, 0)
    assert stream.getvalue() == ""
    show.say("k=4", done=0, total=1)
    show.say("k=4", done=1, total=1, steps=(4, 8))
    show.say("k=4: 1 segments")
    assert re.fullmatch(r"k=4: segment 1/1 \(steps 4->8\): 4 steps in [\d.]+ s, [\d.]+ steps/s\nk=4: 1 segments\n", stream.getvalue())
