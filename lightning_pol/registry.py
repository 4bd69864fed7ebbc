"""The verifier's record of verified proofs (chain of trust): SQLite in WAL mode.

Example::

    registry = Registry("verified.sqlite")
    registry.lookup(identity)          # None, or the record of an earlier verification

Several verifiers may write to one registry at once: each write is one
transaction, WAL lets readers and a writer proceed together, and a busy
database is waited for (``timeout``) rather than failed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS proofs (
    identity TEXT NOT NULL,
    final_digest TEXT NOT NULL,
    valid INTEGER NOT NULL,
    vsr REAL NOT NULL,
    settings TEXT NOT NULL,
    environment TEXT NOT NULL,
    verified_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS proofs_identity ON proofs(identity);
"""


class Registry:
    def __init__(self, path: str | os.PathLike[str], timeout: float = 60.0) -> None:
        self.path = str(path)
        self.timeout = timeout
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        db.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
        return db

    def record(self, identity: str, final_digest: str, valid: bool, vsr: float, settings: dict[str, Any], environment: dict[str, Any]) -> None:
        """Append one verification (every verification is kept; lookups take the latest)."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO proofs VALUES (?, ?, ?, ?, ?, ?, ?)",
                (identity, final_digest, int(valid), float(vsr), json.dumps(settings, default=str), json.dumps(environment, default=str), time.time()),
            )
            db.execute("COMMIT")
        finally:
            db.close()

    def lookup(self, identity: str) -> dict[str, Any] | None:
        """The latest record of ``identity``, or None."""
        db = self._connect()
        try:
            row = db.execute(
                "SELECT identity, final_digest, valid, vsr, settings, environment, verified_at FROM proofs "
                "WHERE identity = ? ORDER BY verified_at DESC, rowid DESC LIMIT 1",
                (identity,),
            ).fetchone()
        finally:
            db.close()
        if row is None:
            return None
        keys = ("identity", "final_digest", "valid", "vsr", "settings", "environment", "verified_at")
        rec = dict(zip(keys, row))
        rec["valid"] = bool(rec["valid"])
        rec["settings"], rec["environment"] = json.loads(rec["settings"]), json.loads(rec["environment"])
        return rec

    def count(self) -> int:
        db = self._connect()
        try:
            return int(db.execute("SELECT COUNT(*) FROM proofs").fetchone()[0])
        finally:
            db.close()
