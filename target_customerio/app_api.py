"""The App API (bearer `app_api_key`): segment names and counts, for reconcile checks; the
campaigns and what triggers them (campaigns.py); its requests (`call`) for the people reads
of verification (people_reads.py); which people exist (before a mirror route's exits) and a
segment's members (a segment route's read-back when its ledger knows nobody)."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import requests

from target_customerio.api_client import RETRY_EXCEPTIONS, RETRY_STATUSES, ApiClient, check_answer
from target_customerio.errors import CredentialsError, DeliveryError
from target_customerio.redaction import shown

MAX_REQUESTS_PER_SECOND = 10  # the App API's documented limit
MAX_PEOPLE = 100  # ids one POST /v1/customers/attributes may ask for


class AppClient(ApiClient):
    def __init__(
        self,
        base_url: str,
        app_api_key: str,
        *,
        timeout: float,
        max_retries: int,
        logger: logging.Logger,
        per_second: float = MAX_REQUESTS_PER_SECOND,
    ) -> None:
        super().__init__(
            base_url, per_second=per_second, timeout=timeout, max_retries=max_retries, logger=logger
        )
        self._bearer = f"Bearer {app_api_key}"

    def _authorize(self, session: requests.Session) -> None:
        session.headers["Authorization"] = self._bearer

    def segment(self, segment_id: int) -> dict[str, Any] | None:
        """The segment (`name`, `type`, …), or None when Customer.io has no such segment."""
        data = self._get(f"/v1/segments/{segment_id}", "segment")
        if data is None:
            return None
        segment = data.get("segment")
        return segment if isinstance(segment, dict) else {}

    def customer_count(self, segment_id: int) -> int | None:
        """How many people the segment holds now, or None when there is no such segment."""
        data = self._get(f"/v1/segments/{segment_id}/customer_count", "segment count")
        if data is None:
            return None
        count = data.get("count")
        if type(count) is not int or count < 0:
            raise DeliveryError(
                f"the App API answered a segment count that is not a count: {shown(str(count), 40)}"
            )
        return count

    def existing(self, id_type: str, ids: list[str]) -> set[str]:
        """Which of `ids` (of `id_type`) are people Customer.io holds, asked 100 at a time
        (`POST /v1/customers/attributes`, which leaves out people that do not exist)."""
        found: set[str] = set()
        for start in range(0, len(ids), MAX_PEOPLE):
            part = ids[start : start + MAX_PEOPLE]
            body = orjson.dumps({"ids": part})
            path = f"/v1/customers/attributes?id_type={id_type}"
            data = self.call("POST", path, body, "people") or {}
            customers = data.get("customers")
            if not isinstance(customers, list):
                raise DeliveryError("the App API answered people without a `customers` list")
            for entry in customers:
                customer = entry.get("customer") if isinstance(entry, dict) else None
                identifiers = customer.get("identifiers") if isinstance(customer, dict) else None
                value = identifiers.get(id_type) if isinstance(identifiers, dict) else None
                if value is not None:
                    found.add(str(value).lower() if id_type == "email" else str(value))
        return found

    def segment_members(self, segment_id: int, id_type: str) -> list[str] | None:
        """The `id_type` identifiers of a segment's members (`GET /v1/segments/{id}/membership`,
        paged by `start`/`next`); None when Customer.io has no such segment."""
        members: list[str] = []
        start = ""
        for _ in range(100_000):  # a bound: a cursor that never ends is an App API fault
            query = f"?start={start}" if start else ""
            data = self._get(f"/v1/segments/{segment_id}/membership{query}", "segment members")
            if data is None:
                return None
            for identifiers in data.get("identifiers") or []:
                value = identifiers.get(id_type) if isinstance(identifiers, dict) else None
                if value is not None:
                    members.append(str(value))
            start = str(data.get("next") or "")
            if not start:
                return members
        raise DeliveryError(f"the App API's membership of segment {segment_id} never ended")

    def campaigns(self) -> list[Any]:
        """Every campaign of the workspace, as `GET /v1/campaigns` lists them."""
        data = self._get("/v1/campaigns", "campaigns")
        campaigns = (data or {}).get("campaigns")
        if not isinstance(campaigns, list):
            raise DeliveryError(
                f"the App API answered no list of campaigns at {self.base_url}/v1/campaigns"
            )
        return campaigns

    def _get(self, path: str, what: str) -> dict[str, Any] | None:
        return self.call("GET", path, None, what)

    def call(self, method: str, path: str, body: bytes | None, what: str) -> dict[str, Any] | None:
        """One App API request under the retry policy and the shared rate limit: its JSON
        answer, or None for a 404; a refused key is CredentialsError (exit 3), any other
        failure DeliveryError (exit 4)."""
        url = f"{self.base_url}{path}"
        try:
            answer, tries = self.request(method, url, body, f"App API {what}")
        except RETRY_EXCEPTIONS as exc:
            raise DeliveryError(
                f"cannot reach the App API at {self.base_url} ({self._max_tries} tries, "
                f"last: {type(exc).__name__})"
            ) from None
        if answer.status in (401, 403):
            raise CredentialsError(
                f"the App API refused app_api_key (HTTP {answer.status}): check the setting "
                "(Customer.io > Settings > API Credentials > App API Keys)",
                cause="app_api_key refused",
            )
        if answer.status == 404:
            return None
        if answer.status in RETRY_STATUSES:
            raise DeliveryError(
                f"the App API answered HTTP {answer.status} to {url} after {tries} tries"
            )
        check_answer(answer, url, "App API", "app_api_url")
        if answer.status != 200:
            raise DeliveryError(
                f"the App API answered HTTP {answer.status} at {url}: {shown(answer.text)}"
            )
        return answer.json()
