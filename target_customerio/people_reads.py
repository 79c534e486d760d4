"""The App API's people reads, for verification: profiles by identifier (100 a request), every
profile holding an email, and a person's activities. Each goes through AppClient.call: the one
retry policy and the 10 requests a second the run shares with reconcile checks."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson

from target_customerio.app_api import AppClient
from target_customerio.errors import DeliveryError

MAX_IDS = 100  # POST /v1/customers/attributes takes 1 to 100 ids
MAX_ACTIVITIES = 100  # the most activities one page holds
ACTIVITY_PAGES = 10  # pages read for one person: 1000 activities in the last 30 days


def profiles(client: AppClient, id_type: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The profiles Customer.io holds for these identifiers (of one type), by identifier;
    people that do not exist are left out."""
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), MAX_IDS):
        chunk = ids[start : start + MAX_IDS]
        data = client.call(
            "POST",
            f"/v1/customers/attributes?id_type={id_type}",
            orjson.dumps({"ids": chunk}),
            "customer attributes",
        )
        for item in _list(data, "customers"):
            customer = item.get("customer") if isinstance(item, dict) else None
            if not isinstance(customer, dict):
                continue
            key = _identifier(customer, id_type)
            if key is not None:
                found[key] = customer
    return found


def _identifier(customer: dict[str, Any], id_type: str) -> str | None:
    """The identifier of a profile the attributes read answered, as it was asked for."""
    identifiers = customer.get("identifiers")
    value = identifiers.get(id_type) if isinstance(identifiers, dict) else None
    if value is None and id_type == "id":
        value = customer.get("id")
    if value is None:
        return None
    return str(value).lower() if id_type == "email" else str(value)


def holders_of(client: AppClient, email: str) -> list[dict[str, Any]]:
    """Every profile holding this email (`+` and every other reserved character encoded)."""
    data = client.call(
        "GET", f"/v1/customers?email={quote(email, safe='')}", None, "customers by email"
    )
    return [r for r in _list(data, "results") if isinstance(r, dict)]


def activities(client: AppClient, id_type: str, identifier: str) -> list[dict[str, Any]]:
    """The person's activities (the last 30 days), page by page, at most ACTIVITY_PAGES pages;
    [] when Customer.io has no such person. Not cut at the run's start: an event's activity
    carries the event's own time, which a backfill puts before it."""
    path = f"/v1/customers/{quote(identifier, safe='')}/activities"
    out: list[dict[str, Any]] = []
    start = ""
    for _ in range(ACTIVITY_PAGES):
        cursor = f"&start={quote(start, safe='')}" if start else ""
        data = client.call(
            "GET",
            f"{path}?id_type={id_type}&limit={MAX_ACTIVITIES}{cursor}",
            None,
            "customer activities",
        )
        if data is None:
            return out
        page = [a for a in _list(data, "activities") if isinstance(a, dict)]
        out += page
        start = str(data.get("next") or "")
        if not start:
            return out
    return out


def _list(data: dict[str, Any] | None, key: str) -> list[Any]:
    if data is None:
        return []
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise DeliveryError(f"the App API answered a `{key}` that is not a list")
    return value
