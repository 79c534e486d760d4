"""The App API (bearer `app_api_key`): segment names and counts, for reconcile checks; the
campaigns and what triggers them (campaigns.py); its requests (`call`) for the people reads
of verification (people_reads.py)."""

from __future__ import annotations

import logging
from typing import Any

import requests

from target_customerio.api_client import RETRY_EXCEPTIONS, RETRY_STATUSES, ApiClient, check_answer
from target_customerio.errors import CredentialsError, DeliveryError
from target_customerio.redaction import shown

MAX_REQUESTS_PER_SECOND = 10  # the App API's documented limit


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
