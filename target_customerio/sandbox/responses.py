"""How a route answers: the Response it raises, error bodies, and strict JSON request bodies.

Routes raise a Response instead of returning one so that a check deep inside a route can end the
request at once; the handler (server.py) turns it into the HTTP answer and the request log line.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson

UNAUTHORIZED = {"meta": {"error": "Unauthorized request"}}


class Response(Exception):
    """Raised inside a route to answer at once with a status and a JSON body.

    `ops` and `errors` are what the request log records: operations received, items rejected.
    """

    def __init__(self, status: int, body: Any, ops: int = 0, errors: int = 0) -> None:
        super().__init__(status)
        self.status, self.body, self.ops, self.errors = status, body, ops, errors


def error(status: int, message: str) -> Response:
    """The Track API's error shape, `{"meta": {"error": message}}`."""
    return Response(status, {"meta": {"error": message}})


def json_object(body: bytes) -> dict:
    """The request body as a JSON object, or a 400 saying why it is not one."""
    try:
        data = orjson.loads(body or b"{}")  # strict JSON, as Customer.io reads it: no NaN
    except ValueError:
        raise error(400, "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise error(400, "request body must be a JSON object")
    return data


def phrase(status: int) -> str:
    """The reason phrase of a status; injected faults may use statuses HTTPStatus lacks."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"
