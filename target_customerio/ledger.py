"""The ledger: what Customer.io confirmed it holds, so unchanged rows are not sent again.

Keys and fingerprints are 64-bit hashes. A person's key is (workspace, stream, identifier) and
its fingerprint is the hash of the operation last accepted for it; an event's key is
(workspace, event ULID). The ledger is written ahead: before a request that changes what
Customer.io holds goes out, the keys it is about are marked *in doubt* (`in_doubt`, written
before it returns); only Customer.io's acceptance records the new fingerprint and clears the
mark it made (`record(entries, mark)`). A lost answer, exhausted retries or a kill leave the
mark, and a key in doubt is never `unchanged`: the next run sends it again. Losing the ledger
costs a full re-send, never a missed update.
"""

from __future__ import annotations

import contextlib
import itertools
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
# Keys whose last request's outcome is not known (yet): `mark` names the request that marked
# them, so an earlier request's acceptance does not clear a later one's doubt. Small: a row
# lives from the request's start until its acceptance is written.
_DOUBT = "CREATE TABLE IF NOT EXISTS doubt (key INTEGER PRIMARY KEY, mark INTEGER NOT NULL)"
# People this target deleted or suppressed (a workspace key: `person_key`), so that nothing it
# sends on its own account (an exit, a membership) re-creates them.
_GONE = "CREATE TABLE IF NOT EXISTS gone (key INTEGER PRIMARY KEY, at INTEGER NOT NULL)"


_SIGNED = 1 << 63


def hash64(data: bytes, seed: int = 0) -> int:
    """A signed 64-bit hash (fits SQLite INTEGER and Postgres BIGINT): XXH3, the fastest well
    distributed one at hand. Not cryptographic; a ledger only needs accidental collisions to be
    rare."""
    return xxh3_64_intdigest(data, seed) - _SIGNED


def scope_id(scope: str) -> int:
    """A ledger scope as the mirror table keeps it (64 bits, not the text on every row)."""
    return hash64(scope.encode())


def person_key(workspace: str, kind: str, value: str) -> int:
    """A person's key in a workspace, whatever the stream (who this target deleted)."""
    return seeded_person_key(kind.encode(), value.encode(), scope_seed(workspace))


def seeded_person_key(kind: bytes, value: bytes, seed: int) -> int:
    """`person_key` with the workspace's seed computed once (gone_people.py reads the
    identifier's bytes straight from an encoded operation)."""
    return hash64(kind + b":" + value, seed)


# The fingerprint the `delivered` table holds for a member whose exit (or membership removal)
# Customer.io accepted: no operation a route builds has it, so one who comes back is sent again.
EXIT_FINGERPRINT = hash64(b"target-customerio: left a mirrored view")

_marks = itertools.count(time.time_ns())  # request marks: unique in a process, rising across runs


def scope_seed(scope: str) -> int:
    """The seed that makes ledger keys of one workspace and stream their own:
    key = hash64(dedupe, seed)."""
    return xxh3_64_intdigest(scope.encode())


_LOOKUP_CHUNK = 500  # keys per query: under SQLite's smallest limit on bound parameters (999)
_WRITE_BATCH = 20_000  # accepted entries held before they are written in one transaction


class Ledger(Protocol):
    def fingerprints(self, keys: Collection[int]) -> dict[int, int]: ...
    def in_doubt(self, keys: Collection[int]) -> int: ...
    def record(self, entries: Iterable[tuple[int, int]], mark: int = 0) -> None: ...
    def gone(self, keys: Collection[int]) -> dict[int, int]: ...
    def kept_at(self, keys: Collection[int]) -> dict[int, int]: ...
    def record_gone(self, keys: Collection[int]) -> None: ...
    def forget_gone(self, keys: Collection[int]) -> None: ...
    def any_gone(self) -> bool: ...
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

    def in_doubt(self, keys: Collection[int]) -> int:
        return 0

    def record(self, entries: Iterable[tuple[int, int]], mark: int = 0) -> None:
        return None

    def gone(self, keys: Collection[int]) -> dict[int, int]:
        return {}

    def kept_at(self, keys: Collection[int]) -> dict[int, int]:
        return {}

    def record_gone(self, keys: Collection[int]) -> None:
        return None

    def forget_gone(self, keys: Collection[int]) -> None:
        return None

    def any_gone(self) -> bool:
        return False

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
    tuples. Each request's entries are held with the mark its `in_doubt` made, and the write
    that records them clears those marks in the same transaction: an entry lost in a crash
    leaves its key in doubt, which costs a re-send, never a missed update."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _held
        self._writing = threading.Lock()  # one write at a time, on one connection
        self._held: list[tuple[int, list[tuple[int, int]]]] = []  # (mark, entries) per request
        self._count = 0  # entries held
        self._due = threading.Event()
        self._writer: threading.Thread | None = (
            None  # started by the first full batch (only the target writes)
        )
        self._failed: Exception | None = (
            None  # a background write's error, raised by the next flush
        )
        self._closing = False

    def in_doubt(self, keys: Collection[int]) -> int:
        """Mark the keys in doubt before the request about them goes out: written (committed)
        before this returns. Returns the mark that the request's `record` clears."""
        mark = next(_marks)
        if not keys:
            return mark
        try:
            with self._writing:
                self._mark(orjson.dumps(list(keys)).decode(), mark)
        except Exception as exc:  # noqa: BLE001 - nothing may go out that the ledger cannot mark
            raise cannot_write(exc) from None
        return mark

    def record_gone(self, keys: Collection[int]) -> None:
        """People this target deletes or suppresses (`person_key`), kept before the request
        goes out."""
        if not keys:
            return
        try:
            with self._writing:
                self._gone(sorted(set(keys)), int(time.time()))
        except Exception as exc:  # noqa: BLE001 - nothing may go out that the ledger cannot keep
            raise cannot_write(exc) from None

    def forget_gone(self, keys: Collection[int]) -> None:
        """People a person route identifies again (the database holds them again): no longer
        gone, written before the identify goes out."""
        if not keys:
            return
        try:
            with self._writing:
                self._back(sorted(set(keys)))
        except Exception as exc:  # noqa: BLE001 - nothing may go out that the ledger cannot keep
            raise cannot_write(exc) from None

    def _gone(self, keys: list[int], at: int) -> None:
        raise NotImplementedError

    def _back(self, keys: list[int]) -> None:
        raise NotImplementedError

    def record(self, entries: Iterable[tuple[int, int]], mark: int = 0) -> None:
        """Customer.io accepted these entries, from the request `mark` names (0: none)."""
        held = entries if isinstance(entries, list) else list(entries)
        with self._lock:
            self._held.append((mark, held))
            self._count += len(held)
            if self._count < _WRITE_BATCH:
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
                raise cannot_write(exc) from None

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
            groups, self._held, self._count = self._held, [], 0
        if groups:
            self._write(orjson.dumps(groups).decode(), int(time.time()))

    def close(self) -> None:
        """Stop the writer thread and write what is held."""
        self._closing = True
        self._due.set()
        self.flush()

    def _write(self, groups: str, at: int) -> None:
        """Record `[[mark, [[key, fingerprint], ...]], ...]` (later wins) and clear the marks."""
        raise NotImplementedError

    def _mark(self, keys: str, mark: int) -> None:
        """Mark the keys (a JSON array) in doubt with `mark`, committed."""
        raise NotImplementedError


class HeldRows(_HeldWrites):
    """The held writes of a table another module keeps in the ledger's database (identity.py:
    a compiled class is not subclassed outside its module): `write` writes one batch, the
    groups as `_write` gets them."""

    def __init__(self, write: t.Callable[[str, int], None]) -> None:
        super().__init__()
        self._write_rows = write

    def _write(self, groups: str, at: int) -> None:
        self._write_rows(groups, at)

    def drop(self) -> None:
        """Forget what is held (the run failed: it may not have reached Customer.io)."""
        with self._lock:
            self._held, self._count = [], 0

    def read(self, query: t.Callable[[], t.Any]) -> t.Any:
        """`query` on the writers' connection: after the write in flight and what is held."""
        with self._writing:
            self._write_held()
            return query()


def cannot_write(exc: Exception) -> TargetError:
    """A failed ledger write, as the one line the run ends with."""
    reason = shown((str(exc).splitlines() or [""])[0])
    return TargetError(f"cannot write the ledger: {type(exc).__name__}: {reason}")


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
        self._db.execute(_DOUBT)
        self._db.execute(_GONE)
        self._full_resend = full_resend

    def fingerprints(self, keys: Collection[int]) -> dict[int, int]:
        """Change detection: the last delivered fingerprint of each key that has one (none
        with full_resend), in one query per 500 keys."""
        return {} if self._full_resend or not keys else self.accepted(keys)

    def _write(self, groups: str, at: int) -> None:
        self._db.execute("BEGIN")
        try:
            self._db.execute(_UPSERT_JSON, (at, groups))
            self._db.execute(_CLEAR_DOUBT_JSON, (groups,))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _mark(self, keys: str, mark: int) -> None:
        self._db.execute(_MARK_JSON, (mark, keys))

    def gone(self, keys: Collection[int]) -> dict[int, int]:
        """People (`person_key`) this target deleted or suppressed, with when (unix seconds)."""
        return self._lookup("SELECT key, at FROM gone WHERE key IN (", keys)

    def kept_at(self, keys: Collection[int]) -> dict[int, int]:
        """When a mirror route last kept each member (the end of its last complete run)."""
        return self._lookup("SELECT key, at FROM mirror WHERE key IN (", keys)

    def _gone(self, keys: list[int], at: int) -> None:
        self._db.executemany(
            "INSERT INTO gone (key, at) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET at = ?",
            ((key, at, at) for key in keys),
        )

    def _back(self, keys: list[int]) -> None:
        self._db.executemany("DELETE FROM gone WHERE key = ?", ((key,) for key in keys))

    def any_gone(self) -> bool:
        """Whether this target ever deleted or suppressed anyone it still counts as gone."""
        return self._db.execute("SELECT 1 FROM gone LIMIT 1").fetchone() is not None

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
            f"AND m.fingerprint = d.fingerprint WHERE {_CONFIRMED} AND d.key IN (",
            keys,
        )

    def accepted(self, keys: Collection[int]) -> dict[int, int]:
        """The confirmed fingerprint of each key that has one and is not in doubt (full_resend
        or not)."""
        return self._lookup(
            f"SELECT d.key, d.fingerprint FROM delivered d WHERE {_CONFIRMED} AND d.key IN (",
            keys,
        )

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


# A delivered entry counts only while no request about its key is in doubt.
_CONFIRMED = "NOT EXISTS (SELECT 1 FROM doubt x WHERE x.key = d.key)"
# The held groups `[[mark, [[key, fingerprint], ...]], ...]`, in key order, the later winning.
_UPSERT_JSON = (
    "INSERT INTO delivered (key, fingerprint, at) "
    "SELECT e.value ->> 0, e.value ->> 1, ? FROM json_each(?) g, json_each(g.value, '$[1]') e "
    "WHERE true ORDER BY e.value ->> 0, g.key, e.key "
    "ON CONFLICT(key) DO UPDATE SET fingerprint = excluded.fingerprint, at = excluded.at"
)
# The doubt each accepted request marked, cleared (a later request's mark stays).
# The mark of each group read once (materialized): read per entry, the group's whole JSON text
# would be parsed again for each of its entries.
_CLEAR_DOUBT_JSON = (
    "WITH g AS MATERIALIZED (SELECT value ->> 0 AS mark, value -> 1 AS entries "
    "FROM json_each(?) WHERE value ->> 0 != 0), "
    "done AS MATERIALIZED (SELECT e.value ->> 0 AS key, g.mark AS mark "
    "FROM g, json_each(g.entries) e) "
    "DELETE FROM doubt WHERE key IN "
    "(SELECT x.key FROM done JOIN doubt x ON x.key = done.key AND x.mark = done.mark)"
)
_MARK_JSON = (
    "INSERT INTO doubt (key, mark) SELECT value, ? FROM json_each(?) WHERE true "
    "ON CONFLICT(key) DO UPDATE SET mark = excluded.mark"
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
                f"CREATE TABLE IF NOT EXISTS {table}_doubt "
                "(key BIGINT PRIMARY KEY, mark BIGINT NOT NULL)",
                f"CREATE TABLE IF NOT EXISTS {table}_gone "
                "(key BIGINT PRIMARY KEY, at BIGINT NOT NULL)",
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
            f"AND m.fingerprint = d.fingerprint WHERE d.key = ANY(%s) AND {self._confirmed}",
            (list(keys),),
        )
        return dict(rows)

    @property
    def _confirmed(self) -> str:
        """A delivered entry counts only while no request about its key is in doubt."""
        return f"NOT EXISTS (SELECT 1 FROM {self._table}_doubt x WHERE x.key = d.key)"

    def accepted(self, keys: Collection[int]) -> dict[int, int]:
        if not keys:
            return {}
        sql = (
            f"SELECT d.key, d.fingerprint FROM {self._table} d "
            f"WHERE d.key = ANY(%s) AND {self._confirmed}"
        )
        return dict(self._select(sql, (list(keys),)))

    def gone(self, keys: Collection[int]) -> dict[int, int]:
        if not keys:
            return {}
        sql = f"SELECT key, at FROM {self._table}_gone WHERE key = ANY(%s)"
        return dict(self._select(sql, (list(keys),)))

    def kept_at(self, keys: Collection[int]) -> dict[int, int]:
        if not keys:
            return {}
        sql = f"SELECT key, at FROM {self._table}_mirror WHERE key = ANY(%s)"
        return dict(self._select(sql, (list(keys),)))

    def _gone(self, keys: list[int], at: int) -> None:
        with self._pg.cursor() as cur:
            cur.execute(
                f"INSERT INTO {self._table}_gone (key, at) SELECT k, %s FROM unnest(%s) AS k "
                "ON CONFLICT (key) DO UPDATE SET at = EXCLUDED.at",
                (at, keys),
            )

    def _back(self, keys: list[int]) -> None:
        with self._pg.cursor() as cur:
            cur.execute(f"DELETE FROM {self._table}_gone WHERE key = ANY(%s)", (keys,))

    def any_gone(self) -> bool:
        return bool(self._select(f"SELECT 1 FROM {self._table}_gone LIMIT 1", ()))

    def _mark(self, keys: str, mark: int) -> None:
        with self._pg.cursor() as cur:
            cur.execute(
                f"INSERT INTO {self._table}_doubt (key, mark) "
                "SELECT DISTINCT k::bigint, %s FROM json_array_elements_text(%s::json) AS k "
                "ORDER BY 1 ON CONFLICT (key) DO UPDATE SET mark = EXCLUDED.mark",
                (mark, keys),
            )

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

    def _write(self, groups: str, at: int) -> None:
        t = self._table
        self._pg.autocommit = False
        try:
            with self._pg, self._pg.cursor() as cur:  # one transaction: recorded and cleared
                cur.execute(
                    f"INSERT INTO {t} (key, fingerprint, at) "
                    "SELECT DISTINCT ON (k) k, f, %s FROM "
                    "(SELECT (r ->> 0)::bigint AS k, (r ->> 1)::bigint AS f, gn, n "
                    "FROM json_array_elements(%s::json) WITH ORDINALITY AS g(grp, gn), "
                    "json_array_elements(grp -> 1) WITH ORDINALITY AS e(r, n)) AS rows "
                    "ORDER BY k, gn DESC, n DESC "
                    "ON CONFLICT (key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, "
                    "at = EXCLUDED.at",
                    (at, groups),
                )
                cur.execute(  # jsonb: a group's mark is read without parsing it again
                    f"DELETE FROM {t}_doubt x USING "
                    "(SELECT (grp ->> 0)::bigint AS m, (r ->> 0)::bigint AS k "
                    "FROM jsonb_array_elements(%s::jsonb) AS g(grp), "
                    "jsonb_array_elements(grp -> 1) AS e(r)) AS done "
                    "WHERE x.key = done.k AND x.mark = done.m",
                    (groups,),
                )
        finally:
            self._pg.autocommit = True

    def close(self) -> None:
        super().close()
        self._pg.close()
