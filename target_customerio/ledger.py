"""The ledger: what was last delivered to a workspace, so unchanged rows are not sent again.

Keys and fingerprints are 64-bit hashes. A person's key is (workspace, stream, identifier) and
its fingerprint is the hash of the operation last accepted for it; an event's key is
(workspace, event ULID). Entries are written only after Customer.io accepted the operation, so
losing the ledger costs a full re-send, never a missed update.
"""

from __future__ import annotations

import contextlib
import threading
import time
import typing as t
from collections.abc import Collection, Iterable
from typing import Any, Protocol

import orjson
from xxhash import xxh3_64_intdigest

from target_customerio import ledger_db
from target_customerio.errors import TargetError
from target_customerio.redaction import shown
from target_customerio.settings import Settings

if t.TYPE_CHECKING:
    from target_customerio.report import RunReport

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS delivered "
    "(key INTEGER PRIMARY KEY, fingerprint INTEGER NOT NULL, at INTEGER NOT NULL)"
)
# Each completed run's counts per stream: the history `max_volume_change` compares with.
_RUNS = (
    "CREATE TABLE IF NOT EXISTS runs "
    "(scope TEXT NOT NULL, at INTEGER NOT NULL, counts TEXT NOT NULL)"
)
RUN_HISTORY = 7  # completed runs a run's volume is compared with
# Mirror routes: who (or which membership) the route has sent and was in its last complete run,
# with the fingerprint sent and what leaving needs (`member`: the kind's, see Kind.member).
# Written only at the end of a complete, delivered run. `scope` is the hash of the ledger scope.
_MIRROR = (
    "CREATE TABLE IF NOT EXISTS mirror (key INTEGER PRIMARY KEY, scope INTEGER NOT NULL, "
    "fingerprint INTEGER NOT NULL, member TEXT NOT NULL, at INTEGER NOT NULL)"
)
_MIRROR_SCOPE = "CREATE INDEX IF NOT EXISTS mirror_scope ON mirror (scope)"


_SIGNED = 1 << 63


def hash64(data: bytes, seed: int = 0) -> int:
    """A signed 64-bit hash (fits SQLite INTEGER and Postgres BIGINT): XXH3, the fastest well
    distributed one at hand. Not cryptographic; a ledger only needs accidental collisions to be
    rare."""
    return xxh3_64_intdigest(data, seed) - _SIGNED


def scope_id(scope: str) -> int:
    """A ledger scope as the mirror table keeps it (64 bits, not the text on every row)."""
    return hash64(scope.encode())


def scope_seed(scope: str) -> int:
    """The seed that makes ledger keys of one workspace and stream their own:
    key = hash64(dedupe, seed)."""
    return xxh3_64_intdigest(scope.encode())


_LOOKUP_CHUNK = 500  # keys per query: under SQLite's smallest limit on bound parameters (999)
_WRITE_BATCH = 20_000  # accepted entries held before they are written in one transaction


class Ledger(Protocol):
    def fingerprints(self, keys: Collection[int]) -> dict[int, int]: ...
    def record(self, entries: Iterable[tuple[int, int]]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...
    def runs(self, scope: str) -> list[dict[str, int]]: ...
    def record_run(self, scope: str, counts: dict[str, int]) -> None: ...
    def mirrored(self, keys: Collection[int]) -> dict[int, int]: ...
    def accepted(self, keys: Collection[int]) -> dict[int, int]: ...
    def mirror_keys(self, scope: str) -> set[int]: ...
    def mirror_members(self, keys: Collection[int]) -> dict[int, str]: ...
    def update_mirror(
        self, scope: str, members: list[tuple[int, int, str]], removed: Collection[int]
    ) -> None: ...


def open_ledger(settings: Settings, report: RunReport | None = None) -> Ledger:
    """The ledger the settings ask for, every failure of it one line (ledger_db.py): opening it
    raises a ConfigError, or a LedgerError when another process holds it locked; the target's
    `report` is written first (the run stops before reading anything)."""
    if not settings.change_detection:
        return NoLedger()
    wait, resend = settings.ledger_lock_timeout, settings.full_resend
    try:
        ledger: Ledger
        if settings.ledger_url:
            ledger = PostgresLedger(settings.ledger_url, full_resend=resend, lock_timeout=wait)
        else:
            ledger = SqliteLedger(settings.ledger_path, full_resend=resend, lock_timeout=wait)
    except Exception as exc:  # noqa: BLE001 - any reason the ledger cannot open: one line
        failure = ledger_db.open_failure(exc, settings)
        if report is not None:
            with contextlib.suppress(TargetError):  # its own failure is not the one to tell
                report.close("failed", str(failure))
        raise failure from None
    return t.cast(Ledger, ledger_db.GuardedLedger(ledger, settings))


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

    def runs(self, scope: str) -> list[dict[str, int]]:
        return []

    def record_run(self, scope: str, counts: dict[str, int]) -> None:
        return None

    def mirrored(self, keys: Collection[int]) -> dict[int, int]:
        return {}

    def accepted(self, keys: Collection[int]) -> dict[int, int]:
        return {}

    def mirror_keys(self, scope: str) -> set[int]:
        return set()

    def mirror_members(self, keys: Collection[int]) -> dict[int, str]:
        return {}

    def update_mirror(
        self, scope: str, members: list[tuple[int, int, str]], removed: Collection[int]
    ) -> None:
        return None


class _HeldWrites:
    """Accepted entries, held and written in one statement per `flush` (the target flushes
    before each STATE) or, in a thread of their own, per 20,000 entries (so the writing
    overlaps the mapping and delivery instead of all waiting for the end), in key order: keys
    are random, so a transaction per request would rewrite most of the table's pages every time.
    Delivery threads only hold entries, never wait for a write: at a million people one pass
    over the table takes long enough to stall every shard behind it. The rows travel as one
    JSON text that the database unpacks and sorts (the later entry for a key wins), not as bound
    tuples. An entry lost in a crash costs a re-send, never a missed update."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _held
        self._writing = threading.Lock()  # one write at a time, on one connection
        self._held: list[tuple[int, int]] = []
        self._due = threading.Event()
        self._writer: threading.Thread | None = (
            None  # started by the first full batch (only the target writes)
        )
        self._failed: Exception | None = (
            None  # a background write's error, raised by the next flush
        )
        self._closing = False

    def record(self, entries: Iterable[tuple[int, int]]) -> None:
        with self._lock:
            self._held.extend(entries)
            if len(self._held) < _WRITE_BATCH:
                return
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_when_due, name="ledger-writer", daemon=True
                )
                self._writer.start()
        self._due.set()

    def flush(self) -> None:
        """Return once every entry recorded so far is written; raises what a write raised."""
        with self._writing:
            failed, self._failed = self._failed, None
            try:
                if failed is not None:
                    raise failed
                self._write_held()
            except Exception as exc:  # noqa: BLE001 - the run stops before its next STATE, with the reason
                reason = shown((str(exc).splitlines() or [""])[0])
                raise TargetError(
                    f"cannot write the ledger: {type(exc).__name__}: {reason}"
                ) from None

    def _write_when_due(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            if self._closing:
                return
            with self._writing:
                try:
                    self._write_held()
                except Exception as exc:  # noqa: BLE001 - raised by the flush before the next STATE
                    self._failed = exc

    def _write_held(self) -> None:
        with self._lock:
            rows, self._held = self._held, []
        if rows:
            self._write(orjson.dumps(rows).decode(), int(time.time()))

    def close(self) -> None:
        """Stop the writer thread and write what is held."""
        self._closing = True
        self._due.set()
        self.flush()

    def _write(self, rows: str, at: int) -> None:
        raise NotImplementedError


def _history(rows: list[Any]) -> list[dict[str, int]]:
    """(at, counts as JSON) rows, newest first, as the counts with their time, oldest first."""
    runs: list[dict[str, int]] = []
    for row in rows[::-1]:
        run: dict[str, int] = {"at": int(row[0])}
        run.update(orjson.loads(row[1]))
        runs.append(run)
    return runs


class SqliteLedger(_HeldWrites):
    """A local SQLite file: the target writes, its mapping process looks up (each with a
    connection of its own; in WAL mode a lookup never waits for a write)."""

    def __init__(self, path: str, *, full_resend: bool = False, lock_timeout: float = 30) -> None:
        super().__init__()
        self._db = ledger_db.connect_sqlite(path, lock_timeout)
        self._db.execute(_SCHEMA)
        self._db.execute(_RUNS)
        self._db.execute(_MIRROR)
        self._db.execute(_MIRROR_SCOPE)
        self._full_resend = full_resend

    def fingerprints(self, keys: Collection[int]) -> dict[int, int]:
        """Change detection: the last delivered fingerprint of each key that has one (none
        with full_resend), in one query per 500 keys."""
        return {} if self._full_resend or not keys else self.accepted(keys)

    def _write(self, rows: str, at: int) -> None:
        self._db.execute(_UPSERT_JSON, (at, rows))

    def _lookup(self, sql: str, keys: Collection[int]) -> dict[int, Any]:
        """`sql` (ending `IN (`) for the keys, 500 at a time."""
        keys = list(keys)
        found: dict[int, Any] = {}
        for start in range(0, len(keys), _LOOKUP_CHUNK):
            chunk = keys[start : start + _LOOKUP_CHUNK]
            found.update(self._db.execute(f"{sql}{','.join('?' * len(chunk))})", chunk))
        return found

    def mirrored(self, keys: Collection[int]) -> dict[int, int]:
        """A mirror route's change detection: the fingerprint of each key whose last delivered
        operation is also what its last complete run kept (else it is sent again)."""
        if self._full_resend or not keys:
            return {}
        return self._lookup(
            "SELECT d.key, d.fingerprint FROM delivered d JOIN mirror m ON m.key = d.key "
            "AND m.fingerprint = d.fingerprint WHERE d.key IN (",
            keys,
        )

    def accepted(self, keys: Collection[int]) -> dict[int, int]:
        """The delivered fingerprint of each key that has one (full_resend or not)."""
        return self._lookup("SELECT key, fingerprint FROM delivered WHERE key IN (", keys)

    def mirror_keys(self, scope: str) -> set[int]:
        rows = self._db.execute("SELECT key FROM mirror WHERE scope = ?", (scope_id(scope),))
        return {key for (key,) in rows}

    def mirror_members(self, keys: Collection[int]) -> dict[int, str]:
        return self._lookup("SELECT key, member FROM mirror WHERE key IN (", keys)

    def update_mirror(
        self, scope: str, members: list[tuple[int, int, str]], removed: Collection[int]
    ) -> None:
        """One transaction: the members who left are forgotten, those sent are kept."""
        sid, at = scope_id(scope), int(time.time())
        with self._writing:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("DELETE FROM mirror WHERE key = ?", ((k,) for k in removed))
                self._db.executemany(
                    "INSERT INTO mirror (key, scope, fingerprint, member, at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                    "scope = excluded.scope, fingerprint = excluded.fingerprint, "
                    "member = excluded.member, at = excluded.at",
                    ((key, sid, fp, member, at) for key, fp, member in members),
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def runs(self, scope: str) -> list[dict[str, int]]:
        """The last completed runs' counts for a stream, oldest first."""
        rows: list[tuple[int, str]] = self._db.execute(
            "SELECT at, counts FROM runs WHERE scope = ? ORDER BY at DESC, rowid DESC LIMIT ?",
            (scope, RUN_HISTORY),
        ).fetchall()
        return _history(rows)

    def record_run(self, scope: str, counts: dict[str, int]) -> None:
        self._db.execute(
            "INSERT INTO runs (scope, at, counts) VALUES (?, ?, ?)",
            (scope, int(time.time()), orjson.dumps(counts).decode()),
        )

    def close(self) -> None:
        super().close()
        self._db.close()


_UPSERT_JSON = (
    "INSERT INTO delivered (key, fingerprint, at) "
    "SELECT value ->> 0, value ->> 1, ? FROM json_each(?) ORDER BY value ->> 0, key "
    "ON CONFLICT(key) DO UPDATE SET fingerprint = excluded.fingerprint, at = excluded.at"
)


class PostgresLedger(_HeldWrites):
    """For ephemeral runners: the ledger in a Postgres table."""

    def __init__(
        self,
        dsn: str,
        *,
        table: str = "target_customerio_ledger",
        full_resend: bool = False,
        lock_timeout: float = 30,
    ) -> None:
        super().__init__()
        if not table.replace("_", "").isalnum():
            raise ValueError(f"ledger table name {table!r} must be letters, digits and _")
        self._table = table
        self._pg = ledger_db.connect_postgres(dsn, lock_timeout)
        self._full_resend = full_resend
        ledger_db.create_postgres_tables(
            self._pg,
            table,
            [
                f"CREATE TABLE IF NOT EXISTS {table} "
                "(key BIGINT PRIMARY KEY, fingerprint BIGINT NOT NULL, at BIGINT NOT NULL)",
                f"CREATE TABLE IF NOT EXISTS {table}_runs "
                "(id BIGSERIAL PRIMARY KEY, scope TEXT NOT NULL, "
                "at BIGINT NOT NULL, counts TEXT NOT NULL)",
                f"CREATE TABLE IF NOT EXISTS {table}_mirror (key BIGINT PRIMARY KEY, "
                "scope BIGINT NOT NULL, fingerprint BIGINT NOT NULL, member TEXT NOT NULL, "
                "at BIGINT NOT NULL)",
                f"CREATE INDEX IF NOT EXISTS {table}_mirror_scope ON {table}_mirror (scope)",
            ],
        )

    def fingerprints(self, keys: Collection[int]) -> dict[int, int]:
        return {} if self._full_resend or not keys else self.accepted(keys)

    def runs(self, scope: str) -> list[dict[str, int]]:
        with self._pg.cursor() as cur:
            cur.execute(
                f"SELECT at, counts FROM {self._table}_runs WHERE scope = %s "
                "ORDER BY at DESC, id DESC LIMIT %s",
                (scope, RUN_HISTORY),
            )
            rows = cur.fetchall()
        return _history(rows)

    def record_run(self, scope: str, counts: dict[str, int]) -> None:
        with self._pg.cursor() as cur:
            cur.execute(
                f"INSERT INTO {self._table}_runs (scope, at, counts) VALUES (%s, %s, %s)",
                (scope, int(time.time()), orjson.dumps(counts).decode()),
            )

    def _select(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._writing, self._pg.cursor() as cur:  # one connection: one statement at a time
            cur.execute(sql, params)
            return list(cur.fetchall())

    def mirrored(self, keys: Collection[int]) -> dict[int, int]:
        if self._full_resend or not keys:
            return {}
        t = self._table
        rows = self._select(
            f"SELECT d.key, d.fingerprint FROM {t} d JOIN {t}_mirror m ON m.key = d.key "
            "AND m.fingerprint = d.fingerprint WHERE d.key = ANY(%s)",
            (list(keys),),
        )
        return dict(rows)

    def accepted(self, keys: Collection[int]) -> dict[int, int]:
        if not keys:
            return {}
        sql = f"SELECT key, fingerprint FROM {self._table} WHERE key = ANY(%s)"
        return dict(self._select(sql, (list(keys),)))

    def mirror_keys(self, scope: str) -> set[int]:
        sql = f"SELECT key FROM {self._table}_mirror WHERE scope = %s"
        return {key for (key,) in self._select(sql, (scope_id(scope),))}

    def mirror_members(self, keys: Collection[int]) -> dict[int, str]:
        if not keys:
            return {}
        sql = f"SELECT key, member FROM {self._table}_mirror WHERE key = ANY(%s)"
        return dict(self._select(sql, (list(keys),)))

    def update_mirror(
        self, scope: str, members: list[tuple[int, int, str]], removed: Collection[int]
    ) -> None:
        """One transaction: the members who left are forgotten, those sent are kept."""
        t, sid, at = self._table, scope_id(scope), int(time.time())
        rows = orjson.dumps([[key, fp, member] for key, fp, member in members]).decode()
        with self._writing:
            self._pg.autocommit = False
            try:
                with self._pg, self._pg.cursor() as cur:  # commits, or rolls back on an error
                    cur.execute(f"DELETE FROM {t}_mirror WHERE key = ANY(%s)", (list(removed),))
                    cur.execute(
                        f"INSERT INTO {t}_mirror (key, scope, fingerprint, member, at) "
                        "SELECT DISTINCT ON (k) k, %s, f, m, %s FROM "
                        "(SELECT (r ->> 0)::bigint AS k, (r ->> 1)::bigint AS f, r ->> 2 AS m, n "
                        "FROM json_array_elements(%s::json) WITH ORDINALITY AS e(r, n)) AS rows "
                        "ORDER BY k, n DESC ON CONFLICT (key) DO UPDATE SET "
                        "scope = EXCLUDED.scope, fingerprint = EXCLUDED.fingerprint, "
                        "member = EXCLUDED.member, at = EXCLUDED.at",
                        (sid, at, rows),
                    )
            finally:
                self._pg.autocommit = True

    def _write(self, rows: str, at: int) -> None:
        with self._pg.cursor() as cur:
            cur.execute(
                f"INSERT INTO {self._table} (key, fingerprint, at) "
                "SELECT DISTINCT ON (k) k, f, %s FROM "
                "(SELECT (r ->> 0)::bigint AS k, (r ->> 1)::bigint AS f, n "
                "FROM json_array_elements(%s::json) WITH ORDINALITY AS e(r, n)) AS rows "
                "ORDER BY k, n DESC "
                "ON CONFLICT (key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, "
                "at = EXCLUDED.at",
                (at, rows),
            )

    def close(self) -> None:
        super().close()
        self._pg.close()
