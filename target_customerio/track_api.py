"""The Track API: the start-up credential and region check, v2 batch requests, and v1 manual
segment membership (add_customers / remove_customers)."""

from __future__ import annotations

import logging

import orjson
import requests

from target_customerio.api_client import (
    RETRY_EXCEPTIONS,
    RETRY_STATUSES,
    Answer,
    ApiClient,
    check_answer,
)
from target_customerio.errors import CredentialsError, DeliveryError
from target_customerio.redaction import shown


class TrackClient(ApiClient):
    """The Track API, with HTTP Basic `site_id:api_key`."""

    def __init__(
        self,
        base_url: str,
        site_id: str,
        api_key: str,
        *,
        per_second: float,
        timeout: float,
        max_retries: int,
        logger: logging.Logger,
    ) -> None:
        super().__init__(
            base_url, per_second=per_second, timeout=timeout, max_retries=max_retries, logger=logger
        )
        self._auth = (site_id, api_key)

    def _authorize(self, session: requests.Session) -> None:
        session.auth = self._auth

    def check_credentials(self, region: str | None) -> None:
        """One cheap call: wrong credentials or the wrong region fail here, in a second."""
        url = f"{self.base_url}/api/v1/accounts/region"
        try:
            answer, tries = self.request("GET", url, None, "credential check")
        except RETRY_EXCEPTIONS as exc:
            tried = f"{self._max_tries} tries, last: {type(exc).__name__}"
            raise DeliveryError(f"cannot reach Customer.io at {self.base_url} ({tried})") from None
        status = answer.status
        if status in (401, 403):
            raise CredentialsError(
                f"Customer.io refused site_id/api_key (HTTP {status}) at "
                f"{self.base_url}: check both settings",
                cause="api_key refused",
            )
        check_answer(answer, url)
        if status != 200:
            raise DeliveryError(
                f"Customer.io answered HTTP {status} to the credential check at "
                f"{url} after {tries} tries"
            )
        actual = (answer.json().get("region") or "").lower()
        if region and actual and actual != region:
            raise CredentialsError(
                f"these credentials belong to a workspace in region {actual!r}, but region is "
                f"{region!r}: set region: {actual}",
                cause="wrong region",
            )

    def post_batch(self, body: bytes) -> tuple[Answer, int]:
        """POST /api/v2/batch until it is answered for good; returns the answer and tries used."""
        url = f"{self.base_url}/api/v2/batch"
        try:
            answer, tries = self.request("POST", url, body, "batch request")
        except RETRY_EXCEPTIONS as exc:
            raise self._gave_up(self._max_tries, type(exc).__name__) from None
        status = answer.status
        if status in RETRY_STATUSES:
            raise self._gave_up(tries, f"HTTP {status}")
        if status in (401, 403):
            raise CredentialsError(
                f"Customer.io refused site_id/api_key (HTTP {status}): check both settings",
                cause="api_key refused",
            )
        check_answer(answer, url)
        if status not in (200, 207, 400, 413):
            raise DeliveryError(
                f"Customer.io answered HTTP {status} at {url}: {shown(answer.text)}"
            )
        return answer, tries

    def segment_members(
        self, segment_id: int, id_type: str, ids: list[str], add: bool
    ) -> tuple[Answer, int]:
        """POST /api/v1/segments/{id}/add_customers (or remove_customers) `{"ids": [...]}` (at
        most 1000; `id_type` for email or cio_id) until it is answered for good: the answer and
        the tries used. 200, 400 and 404 are returned (the caller rejects the rows of a refused
        request); others raise."""
        action = "add_customers" if add else "remove_customers"
        url = f"{self.base_url}/api/v1/segments/{segment_id}/{action}"
        if id_type != "id":
            url += f"?id_type={id_type}"
        try:
            answer, tries = self.request(
                "POST", url, orjson.dumps({"ids": ids}), f"segment {action}"
            )
        except RETRY_EXCEPTIONS as exc:
            raise DeliveryError(
                f"Customer.io did not answer segment {segment_id}'s {action} after "
                f"{self._max_tries} tries (last: {type(exc).__name__})"
            ) from None
        status = answer.status
        if status in RETRY_STATUSES:
            raise DeliveryError(
                f"Customer.io did not accept segment {segment_id}'s {action} after {tries} "
                f"tries (last: HTTP {status})"
            )
        if status in (401, 403):
            raise CredentialsError(
                f"Customer.io refused site_id/api_key (HTTP {status}): check both settings",
                cause="api_key refused",
            )
        if status == 200 and not answer.body.strip():  # v1 may answer an empty 200
            return answer, tries
        check_answer(answer, url)
        if status not in (200, 400, 404):
            raise DeliveryError(
                f"Customer.io answered HTTP {status} at {url}: {shown(answer.text)}"
            )
        return answer, tries

    def _gave_up(self, tries: int, last: str) -> DeliveryError:
        error = DeliveryError(
            f"Customer.io did not accept a batch after {tries} tries (last: "
            f"{last}); nothing after the last STATE was confirmed"
        )
        error.tries = tries  # the report counts them: a failed run's requests were made too
        return error
