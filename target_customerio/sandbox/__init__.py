"""Local Customer.io sandbox: for tests (faults, inspection) and as a QA workspace.

Modules, one job each: sandbox (the public `Sandbox`), server (HTTP, dispatch), track_v1 and
track_v2 (the Track API routes), app_api (the App API's segment reads), validation (operation
checks and limits), faults, rate_limit, responses, inspection (`/_sandbox/`), store (SQLite) and
operations (Customer.io's semantics), conditions (the segment condition language), segments,
page (the QA page) with checks (its flags) and rejects (a reject file's newest run), cli (the
console script).
"""

from target_customerio.sandbox.cli import main
from target_customerio.sandbox.sandbox import Sandbox

__all__ = ["Sandbox", "main"]
