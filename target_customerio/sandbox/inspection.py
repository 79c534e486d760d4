"""The inspection and control API under `/_sandbox/`: what the tests assert on and steer with.

No auth and no faults here: a test must be able to look at the sandbox while it misbehaves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from target_customerio.sandbox.responses import Response, error, json_object

if TYPE_CHECKING:
    from target_customerio.sandbox.sandbox import Sandbox


def route(
    sandbox: Sandbox, method: str, path: str, query: dict, read_body: Callable[[], bytes]
) -> None:
    """Answer one `/_sandbox/...` request (always by raising its Response)."""
    name = path[len("/_sandbox/") :].strip("/")
    if method == "GET":
        first = {k: v[0] for k, v in query.items() if k in ("id", "email", "cio_id")}
        getters = {
            "people": sandbox.people,
            "events": sandbox.events,
            "requests": sandbox.requests,
            "objects": sandbox.objects,
            "counters": sandbox.counters,
            "faults": sandbox.faults.pending,
            "person": lambda: sandbox.person(**first),
        }
        if name in getters:
            raise Response(200, getters[name]())
    body = read_body()
    if method == "POST" and name == "faults":
        try:
            sandbox.inject(**json_object(body))
        except (TypeError, ValueError) as exc:
            raise error(400, str(exc)) from None
        raise Response(200, sandbox.faults.pending())
    if method == "DELETE" and name == "faults":
        sandbox.clear_faults()
        raise Response(200, [])
    if method == "POST" and name == "reset":
        sandbox.reset()
        raise Response(200, {})
    raise error(404, f"no inspection route for {method} {path}")
