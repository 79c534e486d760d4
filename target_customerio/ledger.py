"""The ledger: what was last delivered to a workspace, so unchanged rows are not sent again.

Keys and fingerprints are 64-bit hashes. A person's key is (workspace, stream, identifier) and
its fingerprint is the hash of the operation last accepted for it; an event's key is
(workspace, event ULID). Entries are written only after Customer.io accepted the operation, so
losing the ledger costs a full re-send, never a missed update.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Collection, Iterable, Protocol

from xxhash import xxh3_64_intdigest

_SCHEMA = "CREATE TABLE IF NOT EXISTS delivered (key INTEGER PRIMARY KEY, fingerprint INTEGER NOT NULL, at INTEGER NOT NULL)"
_UPSERT = "INSERT INTO delivered (key, fingerprint, at) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET fingerprint = excluded.fingerprint, at = excluded.at"


_SIGNED = 1 << 63


def hash64(data: bytes, seed: int = 0) -> int:
    """A signed 64-bit hash (fits SQLite INTEGER and Postgres BIGINT): XXH3, 0.2 us for a
    500-byte operation. Not cryptographic; a ledger only needs accidental collisions to be rare."""
    return xxh3_64_intdigest(data, seed) - _SIGNED


def scope_seed(scope: str) -> int:
    """The seed that makes ledger keys of one workspace and stream their own: key = hash64(dedupe, seed)."""
    return xxh3_64_intdigest(scope.encode())


_LOOKUP_CHUNK = 500  # keys per query: under SQLite's smallest limit on bound parameters (999)


class Ledger(Protocol):
    def fingerprints(self, keys: Collection[int]) -> dict[int, int]: ...
    def record(self, entries: Iterable[tuple[int, int]]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class NoLedger:
    """Change detection off: everything is sent."""

    def fingerprints(self, keys: Collection[int]) -> dict[int, int]:
        return {}

    def record(self, entries: Iterable[tuple[int, int]]) -> None:
        return None

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


_WRITE_BATCH = 100_000  # accepted entries held before they are written in one transaction


class SqliteLedger:
    """A local SQLite file. Thread-safe: the reader looks up, delivery threads record.

    A file ledger reads through a connection of its own: in WAL mode the reader's lookups then
    never wait for a delivery thread's write (an in-memory database has one connection).
    Accepted entries are held and written in key order, in one transaction per `flush` (the
    target flushes before each STATE) or per 100,000 entries: keys are random, so a
    transaction per request would rewrite most of the table's pages every time. An entry
    lost in a crash costs a re-send, never a missed update.
    """

    def __init__(self, path: str, *, full_resend: bool = False) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()
        if path == ":memory:":
            self._reader, self._read_lock = self._db, self._lock
        else:
            self._reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._read_lock = threading.Lock()
        self._full_resend = full_resend
        self._held: dict[int, tuple[int, int]] = {}  # key -> (fingerprint, at), not yet written

    def fingerprints(self, keys: Collection[int]) -> dict[int, int]:
        """The last delivered fingerprint of each key that has one, in one query per 500 keys
        (the reader looks up a batch of records at once)."""
        if self._full_resend or not keys:
            return {}
        keys = list(keys)
        held = self._held
        found = {key: held[key][0] for key in keys if key in held}
        with self._read_lock:
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = keys[start:start + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                for key, fingerprint in self._reader.execute(f"SELECT key, fingerprint FROM delivered WHERE key IN ({marks})", chunk):
                    found.setdefault(key, fingerprint)  # a held entry is newer than the written one
        return found

    def record(self, entries: Iterable[tuple[int, int]]) -> None:
        now = int(time.time())
        with self._lock:
            held = self._held
            for key, fingerprint in entries:
                held[key] = (fingerprint, now)
            if len(held) >= _WRITE_BATCH:
                self._write()

    def flush(self) -> None:
        """Write every held entry."""
        with self._lock:
            self._write()

    def _write(self) -> None:
        if not self._held:
            return
        rows = [(key, fingerprint, at) for key, (fingerprint, at) in sorted(self._held.items())]
        self._held = {}
        self._db.execute("BEGIN")
        self._db.executemany(_UPSERT, rows)
        self._db.execute("COMMIT")

    def close(self) -> None:
        self.flush()
        with self._read_lock:
            if self._reader is not self._db:
                self._reader.close()
        with self._lock:
            self._db.close()


class PostgresLedger:
    """For ephemeral runners: a Postgres table, read once into memory at start, written through."""

    def __init__(self, dsn: str, *, table: str = "target_customerio_ledger", full_resend: bool = False) -> None:
        try:
            import psycopg2  # noqa: PLC0415  (optional dependency: pip install target-customerio[postgres])
            from psycopg2.extras import execute_values  # noqa: PLC0415
        except ImportError:
            raise RuntimeError("ledger_url needs psycopg2: pip install 'target-customerio[postgres]'") from None
        if not table.replace("_", "").isalnum():
            raise ValueError(f"ledger table name {table!r} must be letters, digits and _")
        self._table = table
        self._execute_values = execute_values
        self._pg = psycopg2.connect(dsn)
        self._pg.autocommit = True
        self._lock = threading.Lock()
        with self._pg.cursor() as cur:
            cur.execute(f"CREATE TABLE IF NOT EXISTS {table} (key BIGINT PRIMARY KEY, fingerprint BIGINT NOT NULL, at BIGINT NOT NULL)")
            cur.execute(f"SELECT key, fingerprint FROM {table}")
            existing = cur.fetchall()
        self._local = SqliteLedger(":memory:", full_resend=full_resend)
        self._local.record(existing)

    def fingerprints(self, keys: Collection[int]) -> dict[int, int]:
        return self._local.fingerprints(keys)

    def flush(self) -> None:
        self._local.flush()

    def record(self, entries: Iterable[tuple[int, int]]) -> None:
        rows = list(entries)
        if not rows:
            return
        now = int(time.time())
        with self._lock, self._pg.cursor() as cur:
            self._execute_values(
                cur,
                f"INSERT INTO {self._table} (key, fingerprint, at) VALUES %s "
                "ON CONFLICT (key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, at = EXCLUDED.at",
                [(k, f, now) for k, f in rows],
            )
        self._local.record(rows)

    def close(self) -> None:
        self._local.close()
        self._pg.close()
