"""Requests to Customer.io's APIs, under one declared retry policy, a rate limit and a
deadline per try. The Track API client builds on it (track_api.py).

Every request is retried alike: 429, 5xx, timeouts and dropped connections, `max_retries`
times, with full-jitter exponential backoff or the server's Retry-After. The waits end at once
when `stopping` is set (SIGTERM/SIGINT): a run never sleeps through a signal.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from functools import partial
from typing import Any, NamedTuple

import requests
import urllib3
from tenacity import RetryCallState, Retrying, stop_after_attempt, wait_random_exponential

from target_customerio import http_session
from target_customerio.errors import DeliveryError, Terminated
from target_customerio.redaction import shown

_RETRY_BASE_SECONDS = 0.5
_RETRY_CAP_SECONDS = 30.0
_MAX_RETRY_AFTER_SECONDS = 300.0
_POLL_SECONDS = 0.25


class RateLimiter:
    """Spaces requests evenly at `per_second`, across all threads."""

    def __init__(self, per_second: float) -> None:
        self._interval = 1.0 / per_second
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self._interval
        if slot > now:
            time.sleep(slot - now)


# ---- the retry policy: one, declared, for every request to Customer.io ----------------------

RETRY_STATUSES = frozenset({429, *range(500, 600)})
# A dropped connection, a refused one, a timeout (the whole-request deadline included) and a body
# cut short are all "no answer": the request may or may not have landed, and re-sending is safe
# (events carry deterministic ids; identifies are idempotent).
RETRY_EXCEPTIONS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)
_full_jitter = wait_random_exponential(multiplier=_RETRY_BASE_SECONDS, max=_RETRY_CAP_SECONDS)


class Answer(NamedTuple):
    """Customer.io's answer to one request, read whole within the request's deadline."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def is_json_object(self) -> bool:
        """What the Track API answers with (`{}` at least): a page from anything else is not."""
        try:
            return isinstance(json.loads(self.body), dict)
        except ValueError:
            return False

    def json(self) -> dict[str, Any]:
        """The body as a JSON object, {} when it is not one."""
        try:
            data = json.loads(self.body or b"{}")
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks to wait (delta-seconds or an HTTP date), capped; None if absent."""
    value = (headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    if not seconds > 0:  # NaN, negative, a date gone by: the jittered backoff instead
        return None
    return min(seconds, _MAX_RETRY_AFTER_SECONDS)


def check_answer(
    answer: Answer, url: str, api: str = "Track API", setting: str = "track_api_url"
) -> None:
    """An answer that is not the API's stops the run (exit 4) rather than count as
    accepted. A redirect is never followed: requests would turn the POST into a GET that a
    200 answers (the batch lost, the STATE moved), or send the batch to another host."""
    if 300 <= answer.status < 400:
        where = shown(str(answer.headers.get("Location") or "nowhere"), 120)
        raise DeliveryError(
            f"{url} answered HTTP {answer.status}, a redirect to {where}: redirects "
            f"are never followed; set {setting} to the address that answers"
        )
    if answer.status in (200, 207) and not answer.is_json_object:
        raise DeliveryError(
            f"{url} answered HTTP {answer.status} but not with JSON "
            f"({shown(answer.text, 80)!r}): that is not the {api} (a proxy or "
            "captive portal?); nothing after the last STATE was confirmed"
        )


def _should_retry(state: RetryCallState) -> bool:
    outcome = state.outcome
    if outcome is None:
        return False
    if outcome.failed:
        return isinstance(outcome.exception(), RETRY_EXCEPTIONS)
    answer: Answer = outcome.result()
    return answer.status in RETRY_STATUSES


def backoff(state: RetryCallState) -> float:
    """Retry-After when the answer has it (429 may come without), else full-jitter backoff."""
    outcome = state.outcome
    if outcome is not None and not outcome.failed:
        seconds = retry_after(outcome.result().headers)
        if seconds is not None:
            return seconds
    return float(_full_jitter(state))


def _last_outcome(state: RetryCallState) -> Answer:
    """After the last try: its answer, or its exception raised again."""
    assert state.outcome is not None
    answer: Answer = state.outcome.result()
    return answer


def problem(state: RetryCallState) -> str:
    """What went wrong with the last try, for logs and errors."""
    outcome = state.outcome
    if outcome is None:
        return "nothing yet"
    if outcome.failed:
        return type(outcome.exception()).__name__
    return f"HTTP {outcome.result().status}"


class ApiClient:
    """HTTP to one of Customer.io's APIs: the rate limit, the retry policy, a deadline per try.
    Thread-safe: each thread has its own session."""

    def __init__(
        self,
        base_url: str,
        *,
        per_second: float,
        timeout: float,
        max_retries: int,
        logger: logging.Logger,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._limiter = RateLimiter(per_second)
        self._timeout = timeout
        self._max_tries = max_retries + 1
        self._logger = logger
        self._local = threading.local()
        self.stopping = threading.Event()

    def _authorize(self, session: requests.Session) -> None:
        """Set the API's credentials on a new session."""
        raise NotImplementedError

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = http_session.session()
            self._authorize(session)
            session.headers.update(
                {"Content-Type": "application/json", "User-Agent": "target-customerio"}
            )
        return session

    def request(self, method: str, url: str, body: bytes | None, what: str) -> tuple[Answer, int]:
        """The request under the retry policy: its last answer (any status) and the tries used;
        a connection problem on the last try is raised."""
        policy = Retrying(
            retry=_should_retry,
            stop=stop_after_attempt(self._max_tries),
            wait=backoff,
            sleep=self._sleep,
            before_sleep=partial(self._log_retry, what),
            retry_error_callback=_last_outcome,
        )
        answer: Answer = policy(self._attempt, method, url, body)
        return answer, int(policy.statistics.get("attempt_number", 1))

    def _attempt(self, method: str, url: str, body: bytes | None) -> Answer:
        """One try, bounded as a whole by `request_timeout`: connect, headers and body."""
        self._limiter.acquire()
        deadline = time.monotonic() + self._timeout
        # urllib3's total: the wait for the first byte of the answer is what connecting left.
        limit = self._timeout
        timeout = urllib3.Timeout(connect=min(10.0, limit), read=limit, total=limit)
        # requests passes a urllib3 Timeout through (its stubs only name floats)
        with http_session.deadline(deadline):  # the request and its headers
            response = self._session().request(
                method,
                url,
                data=body,
                timeout=timeout,  # type: ignore[arg-type]
                stream=True,
                allow_redirects=False,
            )  # see check_answer
        try:
            data = http_session.read_body(response, deadline)
        except BaseException:
            response.close()  # the connection is mid-answer: never reuse it
            raise
        return Answer(response.status_code, response.headers, data)

    def _sleep(self, seconds: float) -> None:
        """Backoff that a signal cuts short: the run stops instead of waiting to retry."""
        if threading.current_thread() is threading.main_thread():
            # Signal handlers run in this thread and set the event: waiting on the event here
            # could hold its lock as the handler takes it. Look at the flag instead.
            end = time.monotonic() + seconds
            while not self.stopping.is_set() and time.monotonic() < end:
                time.sleep(min(_POLL_SECONDS, max(0.0, end - time.monotonic())))
            stopped = self.stopping.is_set()
        else:
            stopped = self.stopping.wait(seconds)
        if stopped:
            raise Terminated(
                "stopped by signal while waiting to retry a request; "
                "nothing after the last STATE was confirmed"
            )

    def _log_retry(self, what: str, state: RetryCallState) -> None:
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        self._logger.warning(
            "%s failed (%s), retry %d/%d in %.1fs",
            what,
            problem(state),
            state.attempt_number,
            self._max_tries - 1,
            wait,
        )
