"""Live campaigns a run can start: their triggers read at start-up, counted as the run sends,
shown (the preview, the report's `campaigns`), and guarded (`max_campaign_entries`, exit 10).

With `app_api_key` set and a route that sends events or manual-segment memberships, the run
reads `GET /v1/campaigns` before anything is read from the tap: the running, active campaigns
and what starts each (an event name, normalised as the target normalises names, or manual
segments). The mapping processes send back, for each event whose name starts one of them, its
record, person and time (`Mapped.campaign_events`; nothing at all when no campaign is event
triggered); the sink hands them here in record order, where each is counted: an event whose
timestamp is within the 72 hours before the run started can start its campaigns, an older one
cannot (`too_old_to_trigger`). Memberships that `memberships.py` adds to a segment that
triggers a campaign are counted as they are accepted.

Customer.io does not expose a campaign's event-data filters, frequency or exit settings: every
count is an upper bound, and says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from target_customerio.app_api import AppClient
from target_customerio.errors import CampaignGuardError, DeliveryError
from target_customerio.redaction import shown
from target_customerio.values import snake_case, whole_number

WINDOW_SECONDS = 72 * 3600  # Customer.io: older backfilled events start no campaign
UPPER_BOUND = (
    "upper bounds: Customer.io does not expose a campaign's event-data filters, frequency or "
    "exit settings"
)

# A campaign event as mapping sends it back: (index in the chunk, event name, person, time).
CampaignEvent = tuple[int, str, tuple[str, str], int]


@dataclass(frozen=True)
class Trigger:
    """A running campaign and what starts it."""

    id: int
    name: str
    event_name: str | None  # normalised; None: segment triggered
    segment_ids: tuple[int, ...] = ()

    @property
    def described(self) -> str:
        if self.event_name is not None:
            return f"event {self.event_name}"
        return "segment " + ", ".join(str(s) for s in self.segment_ids)


def triggers(campaigns: list[Any]) -> list[Trigger]:
    """The running, active campaigns of a `GET /v1/campaigns` answer that an event or a
    manual segment starts (drafts, stopped ones and others start nobody)."""
    out = []
    for campaign in campaigns:
        if not isinstance(campaign, dict) or campaign.get("state") != "running":
            continue
        if campaign.get("active") is False:
            continue
        number = whole_number(campaign.get("id"))
        if number is None:
            continue
        name = str(campaign.get("name") or f"campaign {number}")
        event = campaign.get("event_name")
        if isinstance(event, str) and snake_case(event):
            out.append(Trigger(number, name, snake_case(event)))
            continue
        segments = campaign.get("trigger_segment_ids")
        ids = (
            tuple(s for s in (whole_number(x) for x in segments or []) if s)
            if isinstance(segments, list)
            else ()
        )
        if ids:
            out.append(Trigger(number, name, None, ids))
    return out


def read_triggers(client: AppClient) -> list[Trigger]:
    """The workspace's campaign triggers, from the App API."""
    try:
        return triggers(client.campaigns())
    except ValueError:  # an answer that is not JSON
        raise DeliveryError(
            f"the App API answered campaigns that are not JSON at {client.base_url}"
        ) from None


@dataclass
class _Count:
    """One campaign's count in this run."""

    trigger: Trigger
    events: int = 0  # events (or memberships) that can start it
    people: set[Any] = field(default_factory=set)
    too_old: int = 0
    guard: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        trigger = self.trigger
        return {
            "id": trigger.id,
            "name": trigger.name,
            "state": "running",
            "trigger": {"event_name": trigger.event_name}
            if trigger.event_name is not None
            else {"segment_ids": list(trigger.segment_ids)},
            "events": self.events,
            "people": len(self.people),
            "too_old_to_trigger": self.too_old,
            "guard": self.guard,
        }


class Campaigns:
    """The run's campaign triggers and what it sends that can start them (the target's
    process; the reading thread counts events, memberships are counted at each settle)."""

    def __init__(
        self,
        found: list[Trigger],
        *,
        started_at: float,
        max_entries: int | None,
        dry_run: bool,
        logger: logging.Logger,
    ) -> None:
        self._counts = [_Count(trigger) for trigger in found]
        self._by_event: dict[str, list[_Count]] = {}
        self._by_segment: dict[int, list[_Count]] = {}
        for count in self._counts:
            if count.trigger.event_name is not None:
                self._by_event.setdefault(count.trigger.event_name, []).append(count)
            for segment in count.trigger.segment_ids:
                self._by_segment.setdefault(segment, []).append(count)
        self._oldest = started_at - WINDOW_SECONDS
        self.max_entries = max_entries
        self._dry_run = dry_run
        self._logger = logger
        self.wait: Callable[[], None] = _nothing  # delivery's: set by the target

    @property
    def event_names(self) -> frozenset[str]:
        """The event names that start a running campaign (what mapping sends back)."""
        return frozenset(self._by_event)

    def count_events(
        self, stream: str, limit: int | None, events: list[CampaignEvent]
    ) -> int | None:
        """Count a chunk's campaign events, in record order. Returns the index in the chunk of
        the first event past `limit` (the route's, else the setting's) on a real run: it and
        every record after it must not be sent. A dry run counts on and notes what the guard
        would do."""
        limit = self.max_entries if limit is None else limit
        for index, name, person, timestamp in events:
            counts = self._by_event.get(name)
            if not counts:
                continue
            if timestamp < self._oldest:
                for count in counts:
                    count.too_old += 1
                continue
            if limit is not None:
                for count in counts:
                    full = person not in count.people and len(count.people) >= limit
                    if full and self._trips(count, stream, name, limit):
                        return index
            for count in counts:
                count.events += 1
                count.people.add(person)
        return None

    def _trips(self, count: _Count, stream: str, name: str, limit: int) -> bool:
        """The guard on `count` meets an event for one person more than `limit`: noted once;
        True when the run stops (not a dry run, which counts on)."""
        if count.guard is None:
            count.guard = {
                "max_campaign_entries": limit,
                "stream": stream,
                "event_name": name,
                "action": "would stop the run (dry run)" if self._dry_run else "stopped the run",
            }
            self._logger.warning("campaigns: %s", self._guard_line(count))
        return not self._dry_run

    def _guard_line(self, count: _Count) -> str:
        guard = count.guard
        assert guard is not None
        would = "would start" if self._dry_run else "would have started"
        return (
            f"the {guard['event_name']} events of {guard['stream']} {would} campaign "
            f"{count.trigger.name!r} (id {count.trigger.id}, running) for more than "
            f"max_campaign_entries {guard['max_campaign_entries']} people"
        )

    def stop(self) -> None:
        """The guard tripped (a real run): what was handed to delivery before the first event
        past the limit is delivered, then the run ends (exit 10) without a new STATE."""
        self.wait()
        tripped = next(count for count in self._counts if count.guard is not None)
        raise CampaignGuardError(
            f"{self._guard_line(tripped)}: stopped before the first event past the limit; "
            f"events for {len(tripped.people)} people were delivered, and the STATE covers "
            "only what was delivered before it (raise max_campaign_entries, or set max_age on "
            "the route, to let them through)"
        )

    def segment_added(self, segment_id: int, id_type: str, ids: list[str]) -> None:
        """Memberships Customer.io accepted (or a dry run would add) to a manual segment."""
        for count in self._by_segment.get(segment_id, ()):
            count.events += len(ids)
            count.people.update((id_type, value) for value in ids)

    def section(self) -> dict[str, Any]:
        """The report's `campaigns`."""
        return {
            "window_hours": WINDOW_SECONDS // 3600,
            "max_campaign_entries": self.max_entries,
            "note": UPPER_BOUND,
            "campaigns": [count.as_dict() for count in self._counts],
        }

    def table(self) -> list[str]:
        """The preview: a line per running campaign that a route of this run can reach."""
        rows = [
            (
                f"{count.trigger.name} (running)",
                count.trigger.described,
                str(count.events),
                str(len(count.people)),
                str(count.too_old),
            )
            for count in self._counts
        ]
        head = ("campaign", "trigger", "events", "people", "too old to trigger")
        widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
        lines = [
            "  ".join(
                cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i])
                for i, cell in enumerate(row)
            )
            for row in [head, *rows]
        ]
        what = "this run would start" if self._dry_run else "the events this run sent can start"
        return [f"campaigns {what} ({UPPER_BOUND}):", *lines]

    def sentences(self) -> list[str]:
        """`order_placed can start Post-purchase (running) for 29 people; 412 older events
        cannot`, for each campaign this run reached."""
        out = []
        for count in self._counts:
            people = len(count.people)
            if not (count.events or count.too_old):
                continue
            what = count.trigger.event_name or f"adding to {count.trigger.described}"
            line = f"{what} can start {count.trigger.name} (running) for {people} people"
            if count.too_old:
                line += f"; {count.too_old} older events cannot"
            out.append(line)
        return out

    def log(self) -> None:
        """The preview on stderr (the logger's): never stdout, which is for STATE."""
        if not self._counts:
            self._logger.info("campaigns: no running campaign starts on an event or a segment")
            return
        for line in self.table():
            self._logger.info("campaigns: %s", shown(line, 300))
        for line in self.sentences():
            self._logger.info("campaigns: %s", shown(line, 300))


def _nothing() -> None:
    return None
