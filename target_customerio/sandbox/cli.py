"""`target-customerio-sandbox`: the console script that serves a sandbox until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
import threading

from target_customerio.sandbox.sandbox import APP_RATE_LIMIT, Sandbox
from target_customerio.sandbox.segments import SegmentError
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
    parser.add_argument(
        "--app-api-key",
        default=os.environ.get("TARGET_CUSTOMERIO_APP_API_KEY", "sandbox-app-key"),
        help="the App API bearer key (/v1/segments/...)",
    )
    parser.add_argument(
        "--app-rate-limit",
        type=float,
        default=APP_RATE_LIMIT,
        help=f"App API requests per second (default {APP_RATE_LIMIT:g}; 0 for none)",
    )
    parser.add_argument("--segments", metavar="FILE", help="JSON file of segments to define")
    parser.add_argument(
        "--reject-file", metavar="FILE", help="a target's reject_file, shown on the QA page"
    )
    parser.add_argument(
        "--report-file",
        metavar="FILE",
        help="a target's report_file, whose last verification the QA page shows",
    )
    args = parser.parse_args(argv)

    try:
        sandbox = Sandbox(
            site_id=args.site_id,
            api_key=args.api_key,
            db_path=args.db,
            region=args.region,
            port=args.port,
            rate_limit=args.rate_limit,
            host=args.host,
            app_api_key=args.app_api_key,
            app_rate_limit=args.app_rate_limit or None,
            segments_file=args.segments,
            reject_file=args.reject_file,
            report_file=args.report_file,
        )
    except SegmentError as exc:
        parser.exit(2, f"target-customerio-sandbox: --segments: {exc}\n")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        sandbox.start()
    except OSError as exc:
        parser.exit(1, f"cannot listen on {args.host}:{args.port}: {exc}\n")
    with sandbox:
        print(
            f"Customer.io sandbox: {sandbox.url}  (site_id {args.site_id!r}, db {args.db},"
            f" {len(sandbox.segment_store.all())} segment(s))",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    print("sandbox stopped", file=sys.stderr)
