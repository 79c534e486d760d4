"""Verification: the sampled people (run_sample.py) read back from Customer.io's App API after
everything else in the run, and checked against what the run sent them.

For each person: the profile exists (or is gone after a delete or suppression); each email the
run gave them is held by exactly one profile; every attribute sent equals what Customer.io
holds, compared as Customer.io stores it (every attribute as a string); no
`failed_attribute_change` or `failed_event` activity since the run started; each event sent
appears exactly once, by name and time. Customer.io applies writes asynchronously, so a
mismatch is read again (with growing pauses) until `verify_timeout` before it counts; a failed
change or a repeated event is final at once (waiting cannot undo it).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from target_customerio import people_reads
from target_customerio.app_api import AppClient
from target_customerio.errors import VerifyError
from target_customerio.run_sample import Sent

CHECKS = (
    "missing_profile",
    "duplicate_profile",
    "attribute",
    "failed_attribute_change",
    "failed_event",
    "event_missing",
    "event_repeated",
)
# Found once, they stay: Customer.io refused the write, or already holds the event twice.
FINAL = frozenset({"failed_attribute_change", "failed_event", "event_repeated"})
LOGGED = 20  # discrepancies logged one a line; the rest are counted
_FIRST_PAUSE, _MAX_PAUSE = 1.0, 30.0


@dataclass
class Discrepancy:
    stream: str
    identifier: str
    check: str
    sent: Any
    found: Any

    def line(self) -> str:
        return (
            f"verification: {self.stream}: {self.identifier}: {self.check}: sent "
            f"{_shown(self.sent)}, Customer.io holds {_shown(self.found)}"
        )


def _shown(value: Any) -> str:
    text = orjson.dumps(value, default=str).decode()
    return text if len(text) <= 200 else text[:197] + "..."


class Verifier:
    """Reads the sample back and returns the report's `verification` section."""

    def __init__(
        self,
        client: AppClient,
        started_at: float,
        timeout: float,
        logger: logging.Logger,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client, self._since = client, int(started_at)
        self._timeout, self._logger = timeout, logger
        self._clock, self._sleep = clock, sleep

    def verify(self, people: list[Sent]) -> dict[str, Any]:
        deadline = self._clock() + self._timeout
        found: dict[int, list[Discrepancy]] = {}
        pending = list(range(len(people)))
        pause, rounds = _FIRST_PAUSE, 0
        while pending:
            rounds += 1
            read = self._read([people[i] for i in pending])
            found.update(zip(pending, read, strict=True))
            pending = [
                i for i in pending if found[i] and not any(d.check in FINAL for d in found[i])
            ]
            left = deadline - self._clock()
            if not pending or left <= 0:
                break
            self._logger.info(
                "verification: %d of %d people do not match yet; reading them again in %.1fs",
                len(pending),
                len(people),
                min(pause, left),
            )
            self._sleep(min(pause, left))
            pause = min(pause * 2, _MAX_PAUSE)
        discrepancies = [d for i in sorted(found) for d in found[i]]
        return {
            "sampled": len(people),
            "checked": len(found),
            "ok": sum(1 for problems in found.values() if not problems),
            "rounds": rounds,
            "discrepancies": [asdict(d) for d in discrepancies],
        }

    def _read(self, people: list[Sent]) -> list[list[Discrepancy]]:
        """One read of each person: their discrepancies now."""
        profiles: dict[str, dict[str, dict[str, Any]]] = {}
        for id_type in sorted({p.id_type for p in people}):
            ids = [p.identifier for p in people if p.id_type == id_type]
            profiles[id_type] = people_reads.profiles(self._client, id_type, ids)
        return [self._check(p, profiles[p.id_type].get(p.identifier)) for p in people]

    def _check(self, person: Sent, profile: dict[str, Any] | None) -> list[Discrepancy]:
        who = person.identifier
        if person.gone:
            if profile is None:
                return []
            sent = "no profile (deleted)" if not person.suppressed else "no profile (suppressed)"
            return [Discrepancy(person.stream, who, "missing_profile", sent, _cio_id(profile))]
        if profile is None:
            return [Discrepancy(person.stream, who, "missing_profile", "a profile", None)]
        out = self._attributes(person, profile)
        out += self._emails(person)
        out += self._activities(person)
        return out

    def _attributes(self, person: Sent, profile: dict[str, Any]) -> list[Discrepancy]:
        held = profile.get("attributes")
        held = held if isinstance(held, dict) else {}
        out = []
        for name, (value, stream) in person.attributes.items():
            if not stored_equal(value, held.get(name)):
                sent, found = {name: value}, {name: held.get(name)}
                out.append(Discrepancy(stream, person.identifier, "attribute", sent, found))
        return out

    def _emails(self, person: Sent) -> list[Discrepancy]:
        out = []
        for email in person.emails():
            holders = people_reads.holders_of(self._client, email)
            if len(holders) > 1:
                found = sorted(str(h.get("id") or h.get("cio_id")) for h in holders)
                value, stream = person.attributes.get("email", (None, person.stream))
                if not (isinstance(value, str) and value.lower() == email):
                    stream = person.stream  # the identifier's email, not the attribute's
                check = "duplicate_profile"
                out.append(Discrepancy(stream, person.identifier, check, email, found))
        return out

    def _activities(self, person: Sent) -> list[Discrepancy]:
        activities = people_reads.activities(self._client, person.id_type, person.identifier)
        who, out = person.identifier, []
        for activity in activities:
            kind, at = activity.get("type"), _time(activity)
            if kind in ("failed_attribute_change", "failed_event") and (at or 0) >= self._since:
                stream, sent = _sent_for(person, activity)
                found = {"name": activity.get("name"), "data": activity.get("data")}
                out.append(Discrepancy(stream, who, str(kind), sent, found))
        held = Counter(
            (str(a.get("name")), _time(a)) for a in activities if a.get("type") == "event"
        )
        expected = Counter((name, timestamp) for name, timestamp, _ in person.events)
        streams = {(name, timestamp): stream for name, timestamp, stream in person.events}
        for (name, timestamp), count in expected.items():
            there = held[(name, timestamp)]
            if there == count:
                continue
            check = "event_missing" if there < count else "event_repeated"
            sent = {"name": name, "timestamp": timestamp, "times": count}
            found = {"name": name, "timestamp": timestamp, "times": there}
            out.append(Discrepancy(streams[(name, timestamp)], who, check, sent, found))
        return out


def _sent_for(person: Sent, activity: dict[str, Any]) -> tuple[str, Any]:
    """The stream and what it sent that a failed activity is about: the attribute it names,
    or the event (by name)."""
    data = activity.get("data")
    name = data.get("attribute") if isinstance(data, dict) else None
    if isinstance(name, str) and name in person.attributes:
        value, stream = person.attributes[name]
        return stream, {name: value}
    event = activity.get("name")
    streams = [stream for sent, _, stream in person.events if sent == event]
    return (streams[-1] if streams else person.stream), event


def _time(activity: dict[str, Any]) -> int | None:
    value = activity.get("timestamp")
    return value if type(value) is int else None


def _cio_id(profile: dict[str, Any]) -> Any:
    identifiers = profile.get("identifiers")
    return identifiers.get("cio_id") if isinstance(identifiers, dict) else profile.get("id")


def stored_form(value: Any) -> str | None:
    """A value as Customer.io stores it: every attribute as a string (a unix date as its digits,
    true/false, a number as its decimal text, an object or list as its JSON); None (or "")
    removes the attribute."""
    if value is None or value == "":
        return None
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def stored_equal(sent: Any, held: Any) -> bool:
    """Whether Customer.io holds what was sent: as stored, and a number equal as a number
    (`250.0` may come back as `250`)."""
    want = stored_form(sent)
    if want is None or held is None:
        return want is None and held in (None, "")
    have = held if isinstance(held, str) else stored_form(held)
    if want == have:
        return True
    if isinstance(sent, (int, float)) and not isinstance(sent, bool):
        try:
            return Decimal(want) == Decimal(str(have))
        except InvalidOperation:
            return False
    if isinstance(sent, (dict, list)):
        try:
            return json.loads(str(have)) == sent
        except ValueError:
            return False
    return False


def report_lines(
    section: dict[str, Any], logger: logging.Logger, warn_only: bool, qa: bool = False
) -> None:
    """One line a discrepancy (the first LOGGED, then how many more), and the outcome; raises
    VerifyError (exit 9) when any remains, unless `warn_only`. `qa`: a QA sync's (no STATE)."""
    problems = section["discrepancies"]
    log = logger.warning if warn_only else logger.error
    for item in problems[:LOGGED]:
        log("%s", Discrepancy(**item).line())
    if len(problems) > LOGGED:
        log(
            "verification: %d more discrepancies (the report's verification lists them all)",
            len(problems) - LOGGED,
        )
    bad = section["checked"] - section["ok"]
    said = (
        f"{section['checked']} of {section['sampled']} sampled people read back from "
        f"Customer.io, {section['ok']} ok"
    )
    if not problems:
        logger.info("verification: %s", said)
        return
    if warn_only:
        logger.warning("verification: %s, %d not (on_verify_failure: warn)", said, bad)
        return
    raise VerifyError(
        f"verification: {bad} of {section['checked']} people read back do not hold what the run "
        f"sent them ({len(problems)} discrepancies; see the report's verification); "
        + (
            "the QA sync delivered everything (no STATE)"
            if qa
            else "everything was delivered and its STATE written"
        )
    )
