"""The public object: `Sandbox`, a local Customer.io workspace to start, point a target at, inspect.

It owns the store, the segments, the fault queue and the rate limits, and starts the HTTP server
(server.py) in a thread. The tests, the benchmark and the demo use it through this interface.
"""

from __future__ import annotations

import base64
import hmac
import threading
from typing import TYPE_CHECKING

from target_customerio.sandbox import identity, rejects, track_v1, track_v2
from target_customerio.sandbox.campaigns import Campaigns
from target_customerio.sandbox.faults import Fault, Faults
from target_customerio.sandbox.rate_limit import TokenBucket
from target_customerio.sandbox.segments import Segments
from target_customerio.sandbox.server import Server
from target_customerio.sandbox.store import Store
from target_customerio.sandbox.track_v1 import REGION_URLS

APP_RATE_LIMIT = 10.0  # requests a second: Customer.io's App API limit

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from 3.11; annotations only


class Sandbox:
    """A local Track API and App API. `with Sandbox() as sb: ...` or `sb.start()` / `sb.stop()`."""

    def __init__(
        self,
        site_id: str = "site",
        api_key: str = "secret",
        db_path: str = ":memory:",
        region: str = "us",
        port: int = 0,
        rate_limit: float | None = None,
        store: bool = True,
        host: str = "127.0.0.1",
        validate: bool = True,
        app_api_key: str = "app-secret",
        app_rate_limit: float | None = APP_RATE_LIMIT,
        segments_file: str | None = None,
        reject_file: str | None = None,
        report_file: str | None = None,
        campaigns_file: str | None = None,
    ) -> None:
        """`store=False` keeps nothing but counters and the request log (benchmarks); with
        `validate=False` as well, a well-formed batch is accepted without checking its operations
        (nor decoding them: only the JSON's structure is read), as fast as this server can
        (auth, size limit, rate limit and faults still apply).

        The App API (`/v1/...`) takes `Authorization: Bearer <app_api_key>` and answers 429
        beyond `app_rate_limit` requests a second (None: no limit). `segments_file` defines
        segments at start (segments.Segments.load_file); `reject_file` is a target's reject
        file, whose newest run the QA page shows; `report_file` a target's report file, whose
        verification the QA page shows; `campaigns_file` defines campaigns at start
        (campaigns.Campaigns.load_file)."""
        if region not in REGION_URLS:
            raise ValueError(f"region must be one of {sorted(REGION_URLS)}")
        self.site_id, self.api_key, self.region = site_id, api_key, region
        self.host, self.port = host, port
        self.store = Store(db_path, persist=store)
        self.validate = validate or store  # stored data is always validated first
        self.faults = Faults()
        self.bucket = TokenBucket(rate_limit) if rate_limit else None
        self._auth = "Basic " + base64.b64encode(f"{site_id}:{api_key}".encode()).decode()
        self.app_api_key = app_api_key
        self.app_bucket = TokenBucket(app_rate_limit) if app_rate_limit else None
        self.segment_store = Segments(self.store)
        if segments_file is not None:
            self.segment_store.load_file(segments_file)
        self.campaign_store = Campaigns(self.store)
        if campaigns_file is not None:
            self.campaign_store.load_file(campaigns_file)
        self.reject_file = reject_file
        self.report_file = report_file
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._server = Server((self.host, self.port), self)
        self.port = self._server.server_address[1]  # a restart keeps the same port
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"cio-sandbox-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; the data stays readable through people(), events() etc."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---- Track API behaviour ----

    def authorized(self, header: str | None) -> bool:
        # Constant-time: the sandbox is a stand-in, but it should not teach timing leaks.
        return header is not None and hmac.compare_digest(header.encode(), self._auth.encode())

    def app_authorized(self, header: str | None) -> bool:
        expected = f"Bearer {self.app_api_key}".encode()
        return header is not None and hmac.compare_digest(header.encode(), expected)

    def region_info(self) -> dict:
        return track_v1.region_info(self.region)

    def batch(self, body: bytes) -> None:
        """POST /api/v2/batch: raises the Response (200, 207, 400 or 413)."""
        track_v2.batch(self.store, body, self.validate)

    def entity(self, body: bytes) -> None:
        """POST /api/v2/entity: one v2 operation."""
        track_v2.entity(self.store, body)

    def v1_op(self, op: dict) -> None:
        """A v1 call expressed as a v2 op; an invalid one is a 400 (v1 has no 32 KB op limit)."""
        track_v1.apply(self.store, op)

    # ---- inspection and control ----

    def people(self) -> list[dict]:
        return self.store.people()

    def person(
        self, id: str | None = None, email: str | None = None, cio_id: str | None = None
    ) -> dict | None:
        return self.store.person(id=id, email=email, cio_id=cio_id)

    def events(self) -> list[dict]:
        return self.store.events()

    def objects(self) -> list[dict]:
        return self.store.objects()

    def ghosts(self) -> set[str]:
        """The cio_ids of profiles nobody identified (created by an event for nobody)."""
        return identity.ghosts(self.store)

    def requests(self) -> list[dict]:
        return self.store.requests()

    def counters(self) -> dict:
        counts = {"duplicate_events_dropped": 0, "rate_limited": 0}
        counts.update(self.store.counters_snapshot())
        return counts

    def rejects(self) -> dict:
        """The newest run of the reject file given as `reject_file` (rejects.newest_run)."""
        if not self.reject_file:
            return {"path": None, "exists": False, "lines": [], "truncated": False}
        return rejects.newest_run(self.reject_file)

    def inject(
        self,
        status: int = 500,
        times: int = 1,
        retry_after: float | None = None,
        body: dict | None = None,
        mode: str = "respond",
        delay: float = 5.0,
        path: str | None = None,
        skip: int = 0,
    ) -> None:
        """Queue a fault for the next `times` API requests to `path` (any, if None; see
        faults.FAULT_MODES), after `skip` of them are let through."""
        delay, skip = float(delay), int(skip)
        self.faults.add(Fault(int(status), int(times), retry_after, body, mode, delay, path, skip))

    def clear_faults(self) -> None:
        self.faults.clear()

    # ---- writes accepted late, or never (write_faults.py) ----

    def delay_writes(self, seconds: float) -> None:
        """Apply accepted writes `seconds` after they were accepted (0: at once), as
        Customer.io does asynchronously."""
        self.store.write_faults.delay = float(seconds)

    def ignore_writes(self, id: str | None = None, email: str | None = None) -> None:
        """Accept this person's writes (200) without ever applying them."""
        kind, value = ("id", id) if id is not None else ("email", email)
        if value is None:
            raise ValueError("ignore_writes needs id or email")
        self.store.write_faults.ignore(kind, value)

    def fail_events(self, name: str) -> None:
        """Accept events of this name and record them as `failed_event` activities."""
        self.store.write_faults.failed_events.add(name)

    def flush_writes(self) -> None:
        """Apply every write still waiting for its delay, now."""
        self.store.write_faults.flush()

    def add_person(
        self, id: str | None = None, email: str | None = None, attributes: dict | None = None
    ) -> dict:
        """A profile made elsewhere (front-end tracking, an older import): `email` is its
        identifier; an `email` in `attributes` only an attribute, as in a workspace where email
        was not an identifier when it was made."""
        self.store.add_person(id, email, attributes or {})
        person = self.store.person(id=id) if id is not None else self.store.person(email=email)
        assert person is not None
        return person

    def activities(
        self, id: str | None = None, email: str | None = None, type: str | None = None
    ) -> list[dict]:
        """A person's activities, newest first ([] when there is no such person); with neither
        `id` nor `email`, everyone's recorded ones (each with its `cio_id`): a
        `failed_attribute_change` (an identify that set an email or id another person holds),
        `attribute_change`, `profile_merge`, `failed_event`. `type`: only that type."""
        if id is None and email is None:
            return self.store.activities(None, type)
        person = self.store.person(id=id, email=email)
        return [] if person is None else self.store.activities(person["cio_id"], type)

    def reset(self) -> None:
        """Empty people, events, objects, the log and counters, and the fault queue; segment
        definitions stay (their manual members and expected counts go)."""
        self.store.reset()
        self.faults.clear()

    # ---- segments ----

    def add_segment(
        self,
        name: str,
        condition: str | None = None,
        kind: str | None = None,
        id: int | None = None,
    ) -> int:
        """Define a segment and return its id: dynamic with a condition (conditions.py), manual
        (`kind="manual"`, no condition) without. Raises segments.SegmentError (a ValueError)."""
        return self.segment_store.add(name, condition, kind, id)["id"]

    def load_segments(self, path: str) -> list[int]:
        """Define the segments of a JSON file (what --segments does); returns their ids."""
        return self.segment_store.load_file(path)

    def delete_segment(self, segment_id: int) -> bool:
        return self.segment_store.delete(segment_id)

    def segment(self, segment_id: int) -> dict | None:
        """A segment's definition with its live `count`, or None."""
        segment = self.segment_store.get(segment_id)
        if segment is None:
            return None
        return {**segment, "count": self.segment_store.count(segment_id)}

    def segments(self) -> list[dict]:
        """Every segment's definition with its live `count`."""
        counts = self.segment_store.counts()
        return [{**s, "count": counts.get(s["id"], 0)} for s in self.segment_store.all()]

    def segment_count(self, segment_id: int) -> int:
        """The live count (KeyError for an unknown segment)."""
        return self.segment_store.count(segment_id)

    def segment_members(self, segment_id: int) -> list[dict]:
        """The people in a segment (KeyError for an unknown segment)."""
        return self.segment_store.members(segment_id)

    def add_to_segment(self, segment_id: int, ids: list, id_type: str = "id") -> int:
        """What `POST /api/v1/segments/{id}/add_customers` does; returns the people added."""
        return self.segment_store.change_members(segment_id, ids, id_type, add=True)

    def remove_from_segment(self, segment_id: int, ids: list, id_type: str = "id") -> int:
        return self.segment_store.change_members(segment_id, ids, id_type, add=False)

    # ---- campaigns ----

    def add_campaign(
        self,
        name: str,
        event_name: str | None = None,
        trigger_segment_ids: list[int] | None = None,
        state: str = "running",
        id: int | None = None,
    ) -> int:
        """Define a campaign started by an event name or by manual segments; returns its id.
        Raises campaigns.CampaignError (a ValueError)."""
        return self.campaign_store.add(name, state, event_name, trigger_segment_ids, id)["id"]

    def load_campaigns(self, path: str) -> list[int]:
        """Define the campaigns of a JSON file (what --campaigns does); returns their ids."""
        return self.campaign_store.load_file(path)

    def campaigns(self) -> list[dict]:
        """Every campaign's definition with its number of `entries`."""
        counts = self.campaign_store.entry_counts()
        return [{**c, "entries": counts.get(c["id"], 0)} for c in self.campaign_store.all()]

    def campaign_entries(self, campaign_id: int) -> list[dict]:
        """Who entered the campaign and what started them (one entry per event id)."""
        return self.campaign_store.entries(campaign_id)

    def record_reconcile(self, segment_id: int, expected: int) -> None:
        """The hook for a reconcile run: the count it expected, shown beside the live one on
        the QA page (and in segment dicts as `expected`)."""
        self.segment_store.record_expected(segment_id, expected)
