#!/usr/bin/env python3
"""Run the real tap-mssql (discovery and sync) against the in-memory stand-in SQL Server.

Run it with the tap's own venv (tap-mssql's dependencies clash with singer-sdk):

    .venv-tap-mssql/bin/python tests/mssql/run_tap.py --mode discover --config cfg.json
    .venv-tap-mssql/bin/python tests/mssql/run_tap.py --mode sync --config cfg.json \
        --catalog catalog.json [--state state.json] [--snapshot initial|latest]

Only the connection class is replaced; tap_mssql.main() parses the arguments, discovers,
selects, queries, converts rows and writes the Singer messages to stdout exactly as in
production. The tap's usual flags (--config/--discover/--catalog/--state) are accepted too, so
this file can stand in for the `tap-mssql` executable; FAKE_MSSQL_SNAPSHOT and
FAKE_MSSQL_QUERY_LOG then choose the moment and a file that receives every SQL statement.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fake_sqlserver
import tap_mssql
import tap_mssql.connection


def install(snapshot: str = "latest", query_log: str | None = None) -> None:
    """Point every tap_mssql module that bound MSSQLConnection at the stand-in."""
    fake_sqlserver.FakeConnection.server = fake_sqlserver.FakeSqlServer(snapshot, query_log)
    real = tap_mssql.connection.MSSQLConnection
    for name, module in list(sys.modules.items()):
        if name.startswith("tap_mssql") and getattr(module, "MSSQLConnection", None) is real:
            module.MSSQLConnection = fake_sqlserver.FakeConnection


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["discover", "sync"])
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--catalog")
    parser.add_argument("-p", "--properties")
    parser.add_argument("-s", "--state")
    parser.add_argument("-d", "--discover", action="store_true")
    parser.add_argument(
        "--snapshot",
        choices=sorted(fake_sqlserver.MOMENTS),
        default=os.environ.get("FAKE_MSSQL_SNAPSHOT", "latest"),
        help="which moment of the stand-in database's history the tap sees",
    )
    parser.add_argument(
        "--query-log",
        default=os.environ.get("FAKE_MSSQL_QUERY_LOG"),
        help="append every SQL statement the tap issues to this file",
    )
    args = parser.parse_args(argv)

    tap_argv = ["tap-mssql", "--config", args.config]
    if args.mode == "discover" or args.discover:
        tap_argv.append("--discover")
    else:
        catalog = args.catalog or args.properties
        if not catalog:
            parser.error("sync needs --catalog")
        tap_argv += ["--catalog", catalog]
        if args.state:
            tap_argv += ["--state", args.state]

    install(args.snapshot, args.query_log)
    sys.argv = tap_argv
    tap_mssql.main()  # the real entry point: singer.utils.parse_args, do_discover / do_sync


if __name__ == "__main__":
    main()
