"""The verifier's record of verified proofs (chain of trust): SQLite in WAL mode.

Example::

    registry = Registry("verified.sqlite")
    registry.lookup(identity)          # None, or the record of an earlier verification

Several verifiers may write to one registry at once: each write is one
transaction, WAL lets readers and a writer proceed together, and a busy
database is waited for (``timeout``) rather than failed.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

from lightning_pol.errors import PoLError

T = TypeVar("T")

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
CREATE TABLE IF NOT EXISTS roots (
    name TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL,
    tensors TEXT NOT NULL,
    layouts TEXT NOT NULL,
    added_at REAL NOT NULL
);
"""
#: Columns added since: (table, column, its declaration), added to an older registry when it is opened.
_ADDED_COLUMNS = (("roots", "path", "TEXT"),)


class RegistryError(PoLError):
    """The registry file cannot be used (not a database, not writable, locked for longer than the timeout)."""


def _database(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def run(self: Registry, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as e:
            raise RegistryError(f"registry {self.path}: {e}") from None

    return run


class Registry:
    @_database
    def __init__(self, path: str | os.PathLike[str], timeout: float = 60.0) -> None:
        self.path = str(path)
        self.timeout = timeout
        deadline = time.monotonic() + timeout
        while True:  # switching a new database to WAL takes it whole, and SQLite does not wait for that: we do
            db = self._connect()
            try:
                if str(db.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                    db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
                for table, column, kind in _ADDED_COLUMNS:
                    if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
            finally:
                db.close()
            time.sleep(0.05)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        db.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
        return db

    @_database
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

    @_database
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

    @_database
    def count(self) -> int:
        db = self._connect()
        try:
            return int(db.execute("SELECT COUNT(*) FROM proofs").fetchone()[0])
        finally:
            db.close()

    # -- trusted roots: published weights this verifier trusts without a proof ------------------
    @_database
    def add_root(self, name: str, sha256: str, tensors: dict[str, str], layouts: dict[str, str], path: str | None = None) -> None:
        """Trust the weights file of digest ``sha256`` (its tensors' digests and ``dtype[shape]``s) under ``name``;
        ``path``: where it is, read when a proof references its tensors (the digest is checked again then)."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            if db.execute("SELECT 1 FROM roots WHERE name = ?", (name,)).fetchone():
                db.execute("ROLLBACK")
                raise RegistryError(f"registry {self.path}: a root named {name!r} exists; remove it first")
            db.execute("INSERT INTO roots (name, sha256, tensors, layouts, added_at, path) VALUES (?, ?, ?, ?, ?, ?)",
                       (name, sha256, json.dumps(tensors, sort_keys=True), json.dumps(layouts, sort_keys=True), time.time(), path))
            db.execute("COMMIT")
        finally:
            db.close()

    @_database
    def remove_root(self, name: str) -> bool:
        db = self._connect()
        try:
            return db.execute("DELETE FROM roots WHERE name = ?", (name,)).rowcount > 0
        finally:
            db.close()

    @_database
    def roots(self) -> list[dict[str, Any]]:
        """``{"name", "sha256", "tensors", "layouts", "added_at", "path"}`` of every trusted root, by name."""
        db = self._connect()
        try:
            rows = db.execute("SELECT name, sha256, tensors, layouts, added_at, path FROM roots ORDER BY name").fetchall()
        finally:
            db.close()
        return [{"name": n, "sha256": d, "tensors": json.loads(t), "layouts": json.loads(lay), "added_at": a, "path": p}
                for n, d, t, lay, a, p in rows]

    def root(self, sha256: str) -> dict[str, Any] | None:
        """The trusted root with this file digest, or None."""
        return next((r for r in self.roots() if r["sha256"] == sha256), None)
