"""`target-customerio-sandbox`: the console script that serves a sandbox until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
import threading

from target_customerio.sandbox.sandbox import Sandbox
from target_customerio.sandbox.track_v1 import REGION_URLS


def _loopback(host: str) -> str:
    # The sandbox has test credentials and no TLS: it must never be reachable from elsewhere.
    if host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_loopback and ":" not in host:
            return host
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{host!r}: only an IPv4 loopback address is allowed")


def main(argv: list[str] | None = None) -> None:
    """`target-customerio-sandbox`: serve a local Track API and QA page until Ctrl-C/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="target-customerio-sandbox",
        description="Local Customer.io Track API sandbox with a QA web page.",
    )
    parser.add_argument("--host", type=_loopback, default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--db", default="sandbox.sqlite", help="SQLite file (':memory:' for none)")
    parser.add_argument(
        "--site-id", default=os.environ.get("TARGET_CUSTOMERIO_SITE_ID", "sandbox-site")
    )
    parser.add_argument(
        "--api-key", default=os.environ.get("TARGET_CUSTOMERIO_API_KEY", "sandbox-key")
    )
    parser.add_argument("--rate-limit", type=float, default=None, help="requests per second")
    parser.add_argument("--region", choices=sorted(REGION_URLS), default="us")
    args = parser.parse_args(argv)

    sandbox = Sandbox(
        site_id=args.site_id,
        api_key=args.api_key,
        db_path=args.db,
        region=args.region,
        port=args.port,
        rate_limit=args.rate_limit,
        host=args.host,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        sandbox.start()
    except OSError as exc:
        parser.exit(1, f"cannot listen on {args.host}:{args.port}: {exc}\n")
    with sandbox:
        print(
            f"Customer.io sandbox: {sandbox.url}  (site_id {args.site_id!r}, db {args.db})",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    print("sandbox stopped", file=sys.stderr)
