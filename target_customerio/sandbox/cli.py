"""`target-customerio-sandbox`: the console script that serves a sandbox until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
import threading

from target_customerio.sandbox.campaigns import CampaignError
from target_customerio.sandbox.sandbox import APP_RATE_LIMIT, Sandbox
from target_customerio.sandbox.segments import SegmentError
from target_customerio.sandbox.track_v1 import REGION_URLS

# The sandbox's own test credentials: printed at start and in --help, so that a target can be
# pointed at it without reading the source.
DEFAULT_SITE_ID, DEFAULT_API_KEY, DEFAULT_APP_API_KEY = (
    "sandbox-site",
    "sandbox-key",
    "sandbox-app-key",
)

CREDENTIALS_HELP = f"""credentials it accepts (a target's settings):
  site_id      {DEFAULT_SITE_ID}
  api_key      {DEFAULT_API_KEY}
  app_api_key  {DEFAULT_APP_API_KEY}
unless TARGET_CUSTOMERIO_SITE_ID, TARGET_CUSTOMERIO_API_KEY or
TARGET_CUSTOMERIO_APP_API_KEY is set, or --site-id, --api-key, --app-api-key given."""


def _key(value: str, default: str) -> str:
    """A key as printed at start: the sandbox's own default in full; one taken from the
    environment or the command line may be a real one, so it is not shown."""
    return value if value == default else "(as given, not shown)"


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
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=CREDENTIALS_HELP,
    )
    parser.add_argument("--host", type=_loopback, default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--db", default="sandbox.sqlite", help="SQLite file (':memory:' for none)")
    parser.add_argument(
        "--site-id",
        default=os.environ.get("TARGET_CUSTOMERIO_SITE_ID", DEFAULT_SITE_ID),
        help="the Track API site id it accepts (below)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("TARGET_CUSTOMERIO_API_KEY", DEFAULT_API_KEY),
        help="the Track API key it accepts (below)",
    )
    parser.add_argument("--rate-limit", type=float, default=None, help="requests per second")
    parser.add_argument("--region", choices=sorted(REGION_URLS), default="us")
    parser.add_argument(
        "--app-api-key",
        default=os.environ.get("TARGET_CUSTOMERIO_APP_API_KEY", DEFAULT_APP_API_KEY),
        help="the App API bearer key it accepts (below)",
    )
    parser.add_argument(
        "--app-rate-limit",
        type=float,
        default=APP_RATE_LIMIT,
        help=f"App API requests per second (default {APP_RATE_LIMIT:g}; 0 for none)",
    )
    parser.add_argument("--segments", metavar="FILE", help="JSON file of segments to define")
    parser.add_argument(
        "--campaigns", metavar="FILE", help="JSON file of campaigns to define (and simulate)"
    )
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
            campaigns_file=args.campaigns,
        )
    except SegmentError as exc:
        parser.exit(2, f"target-customerio-sandbox: --segments: {exc}\n")
    except CampaignError as exc:
        parser.exit(2, f"target-customerio-sandbox: --campaigns: {exc}\n")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        sandbox.start()
    except OSError as exc:
        parser.exit(1, f"cannot listen on {args.host}:{args.port}: {exc}\n")
    with sandbox:
        print(
            f"Customer.io sandbox: {sandbox.url}  (db {args.db},"
            f" {len(sandbox.segment_store.all())} segment(s))\n"
            f"  site_id {args.site_id}, api_key {_key(args.api_key, DEFAULT_API_KEY)},"
            f" app_api_key {_key(args.app_api_key, DEFAULT_APP_API_KEY)}",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    print("sandbox stopped", file=sys.stderr)
