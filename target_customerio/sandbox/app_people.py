"""The App API's people reads, as Customer.io serves them, over the sandbox's store:

- `POST /v1/customers/attributes?id_type=id|email|cio_id` `{"ids": [...]}` (1 to 100): the
  profiles, people that do not exist left out;
- `GET /v1/customers/{id}/attributes?id_type=`: one profile, 404 when absent;
- `GET /v1/customers?email=`: every profile holding that email, as its identifier or as its
  `email` attribute (a profile created before email was an identifier keeps it there);
- `GET /v1/customers/{id}/activities?id_type=&type=&name=&limit=&start=`: newest first, at
  most 100 a page, paged by `next`.

Every attribute comes back as a string, as Customer.io stores them: a number as its decimal
text, true/false, an object or list as its JSON. A suppressed person is gone: never answered.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from target_customerio.sandbox.responses import Response, json_object

if TYPE_CHECKING:
    from target_customerio.sandbox.sandbox import Sandbox

MAX_IDS = 100
MAX_ACTIVITIES = 100
_ID_TYPES = ("id", "email", "cio_id")
_ONE = re.compile(r"/v1/customers/([^/]+)/(attributes|activities)")


def error(status: int, detail: str) -> Response:
    return Response(status, {"errors": [{"detail": detail, "status": str(status)}]})


def handle(sandbox: Sandbox, method: str, path: str, query: dict, body: bytes) -> None:
    """A people read: always raises the Response."""
    if path == "/v1/customers/attributes" and method == "POST":
        raise Response(200, {"customers": _many(sandbox, _id_type(query), body)})
    if path.rstrip("/") == "/v1/customers" and method == "GET":
        raise Response(200, {"results": _holders(sandbox, query)})
    match = _ONE.fullmatch(path)
    if match is None or method != "GET":
        raise error(404, f"no App API route for {method} {path}")
    person = _person(sandbox, _id_type(query), unquote(match.group(1)))
    if person is None:
        raise error(404, "customer not found")
    if match.group(2) == "attributes":
        raise Response(200, {"customer": customer(person)})
    raise Response(200, _activities(sandbox, person, query))


def _id_type(query: dict) -> str:
    id_type = query.get("id_type", ["id"])[0]
    if id_type not in _ID_TYPES:
        raise error(400, f"id_type must be one of {', '.join(_ID_TYPES)}")
    return id_type


def _person(sandbox: Sandbox, id_type: str, value: str) -> dict | None:
    person = sandbox.store.person(**{id_type: value})
    return None if person is None or person["suppressed"] else person


def _many(sandbox: Sandbox, id_type: str, body: bytes) -> list[dict]:
    ids = json_object(body).get("ids")
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_IDS:
        raise error(400, f'body must be {{"ids": [...]}} with 1 to {MAX_IDS} ids')
    out = []
    for value in ids:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise error(400, f"ids must be strings, got {value!r}")
        person = _person(sandbox, id_type, str(value))
        if person is not None:
            out.append({"customer": customer(person)})
    return out


def _holders(sandbox: Sandbox, query: dict) -> list[dict]:
    email = (query.get("email", [""])[0] or "").strip().lower()
    if not email:
        raise error(400, "email is required")
    rows = sandbox.store.rows(
        "SELECT id, email, cio_id FROM people WHERE suppressed = 0 AND (email = ?"
        " OR lower(json_extract(attributes, '$.email')) = ?) ORDER BY seq",
        (email, email),
    )
    return [{"email": email, "id": row["id"], "cio_id": row["cio_id"]} for row in rows]


def _activities(sandbox: Sandbox, person: dict, query: dict) -> dict:
    try:
        limit = int(query.get("limit", [str(MAX_ACTIVITIES)])[0])
        start = int(query.get("start", ["0"])[0] or 0)
    except ValueError:
        raise error(400, "limit and start must be integers") from None
    if not 1 <= limit <= MAX_ACTIVITIES or start < 0:
        raise error(400, f"limit must be 1..{MAX_ACTIVITIES} and start >= 0")
    kind = query.get("type", [None])[0]
    name = query.get("name", [None])[0]
    found = [
        a
        for a in sandbox.store.activities(person["cio_id"])
        if (kind is None or a["type"] == kind) and (name is None or a["name"] == name)
    ]
    page = found[start : start + limit]
    more = start + limit < len(found)
    return {
        "activities": [
            {"id": f"{person['cio_id']}-{start + i}", "customer_id": person["id"], **a}
            for i, a in enumerate(page)
        ],
        "next": str(start + limit) if more else "",
    }


def customer(person: dict) -> dict:
    """A profile as the App API answers it: identifiers, attributes as strings, timestamps."""
    attributes = {name: as_stored(value) for name, value in person["attributes"].items()}
    identifiers = {"id": person["id"], "email": person["email"], "cio_id": person["cio_id"]}
    attributes.update({k: v for k, v in identifiers.items() if v is not None})
    return {
        "id": person["id"],
        "identifiers": identifiers,
        "attributes": attributes,
        "timestamps": {"_last_updated": person["updated"]},
        "unsubscribed": attributes.get("unsubscribed") == "true",
        "devices": [],
    }


def as_stored(value: Any) -> str:
    """An attribute as Customer.io stores it: a string."""
    if isinstance(value, str):
        return value
    if value is True or value is False:
        return "true" if value else "false"
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
