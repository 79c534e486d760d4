"""The one place that talks to the ledger's database: connecting to it, creating its tables, and
turning whatever the database answers into one line and an exit code (docs/ledger-failures.md).

- A ledger another process holds locked is waited for, `ledger_lock_timeout` seconds at most
  (SQLite's busy timeout; Postgres's `lock_timeout`), then the run stops: `cannot write the
  ledger (…): the database is locked by another process (waited 30 s)`, exit 1, its report
  written. Any other failure while the run uses the ledger is the same line with the driver's
  reason, exit 1: nothing after the last STATE is confirmed, and the next run sends it again.
- A ledger that cannot be opened for a reason the settings can fix (a bad URL, a path that is a
  directory, psycopg2 missing) is a configuration error, exit 2.
- The Postgres tables are created under a transaction-scoped advisory lock: targets starting at
  once on a fresh database create them one after the other (two concurrent `CREATE TABLE IF
  NOT EXISTS` of one name may fail one of them on the catalog's unique index).
"""

from __future__ import annotations

import sqlite3
import typing as t
from pathlib import Path

from target_customerio.errors import ConfigError, TargetError
from target_customerio.redaction import shown

if t.TYPE_CHECKING:
    from target_customerio.settings import Settings

# Ledger methods that only read: their failure is `cannot read the ledger`.
READS = frozenset(
    {
        "fingerprints",
        "accepted",
        "mirrored",
        "mirror_keys",
        "mirror_members",
        "runs",
        "gone",
        "any_gone",
        "kept_at",
        "identity_empty",
        "identity_owners",
        "identity_holds",
        "identity_names",
    }
)
_LOCK_NOT_AVAILABLE = "55P03"  # Postgres: lock_timeout passed


class LedgerError(TargetError):
    """The ledger's database failed while the run used it: nothing after the last STATE is
    confirmed (exit 1)."""

    exit_code = 1


def where(settings: Settings) -> str:
    """The ledger as the user named it (never the URL: it holds a password)."""
    return "ledger_url" if settings.ledger_url else f"ledger_path {settings.ledger_path!r}"


def connect_sqlite(path: str, lock_timeout: float) -> sqlite3.Connection:
    """A connection in WAL mode (a lookup never waits for a write) that waits `lock_timeout`
    seconds for a lock another connection holds."""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=lock_timeout, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def connect_postgres(dsn: str, lock_timeout: float) -> t.Any:
    """An autocommit connection whose statements wait `lock_timeout` seconds for a lock."""
    try:
        import psycopg2  # noqa: PLC0415  (optional dependency: pip install target-customerio[postgres])
    except ImportError:
        raise RuntimeError(
            "ledger_url needs psycopg2: pip install 'target-customerio[postgres]'"
        ) from None
    pg = psycopg2.connect(dsn, options=f"-c lock_timeout={int(lock_timeout * 1000)}")
    pg.autocommit = True
    return pg


def create_postgres_tables(pg: t.Any, table: str, statements: list[str]) -> None:
    """Run the `CREATE … IF NOT EXISTS` statements in one transaction, holding an advisory lock
    named for the table: concurrent starters take turns, and each finds the tables made."""
    pg.autocommit = False
    try:
        with pg, pg.cursor() as cur:  # commits, or rolls back on an error
            name = f"target-customerio:{table}"
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (name,))
            for statement in statements:
                cur.execute(statement)
    finally:
        pg.autocommit = True


def open_failure(exc: Exception, settings: Settings) -> TargetError:
    """Why the ledger could not be opened: waiting for a lock is exit 1 (another process has
    it; run again later), anything else the settings must fix, exit 2."""
    if _locked(exc):
        return LedgerError(f"cannot write the ledger ({where(settings)}): {_reason(exc, settings)}")
    return ConfigError(f"cannot open the ledger ({where(settings)}): {_reason(exc, settings)}")


def _locked(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return "locked" in text or "busy" in text
    return getattr(exc, "pgcode", None) == _LOCK_NOT_AVAILABLE


def _reason(exc: BaseException, settings: Settings) -> str:
    if _locked(exc):
        return (
            f"the database is locked by another process "
            f"(waited {settings.ledger_lock_timeout:g} s: ledger_lock_timeout)"
        )
    if isinstance(exc, TargetError):
        return str(exc)
    reason = shown((str(exc).splitlines() or [""])[0])
    if settings.ledger_url and "dsn" in reason.lower():  # the driver quotes the DSN, secret and all
        reason = "not a valid Postgres URL or DSN"
    return f"{type(exc).__name__}: {reason}"


class GuardedLedger:
    """A ledger whose every call turns a failure into one LedgerError line (exit 1) naming the
    ledger: the methods of any ledger, present and future, without a try in each."""

    def __init__(self, ledger: t.Any, settings: Settings) -> None:
        self._ledger = ledger
        self._settings = settings

    def __getattr__(self, name: str) -> t.Any:
        method = getattr(self._ledger, name)
        if not callable(method):
            return method
        verb = "read" if name in READS else "write"

        def guarded(*args: t.Any, **kwargs: t.Any) -> t.Any:
            try:
                return method(*args, **kwargs)
            except LedgerError:
                raise
            except Exception as exc:  # noqa: BLE001 - any database failure: one line, exit 1
                # a TargetError the ledger made of a driver's error (the held writes' flush)
                # is told by that error
                cause = exc.__context__ if isinstance(exc, TargetError) else None
                raise LedgerError(
                    f"cannot {verb} the ledger ({where(self._settings)}): "
                    f"{_reason(cause or exc, self._settings)}"
                ) from None

        setattr(self, name, guarded)  # looked up once: later calls find it on the instance
        return guarded
