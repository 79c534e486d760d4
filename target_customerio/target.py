"""The target: settings, routing of streams to sinks, STATE only after delivery, exit codes."""

from __future__ import annotations

import copy
import ctypes
import logging
import os
import sys
import time
import typing as t
from functools import partial
from pathlib import Path
from types import FrameType

from singer_sdk.exceptions import (
    MapExpressionError,
    RecordsWithoutSchemaException,
    StreamMapConfigError,
)
from singer_sdk.helpers.capabilities import PluginCapabilities
from singer_sdk.mapper import SameRecordTransform
from singer_sdk.sinks import Sink

from target_customerio import cli, redaction, run_end
from target_customerio.app_api import AppClient
from target_customerio.campaigns import Campaigns, read_triggers
from target_customerio.delivery import Delivery, DryRun, make_delivery, workspace
from target_customerio.environment import check_env_reached, dotenv_here, env_config
from target_customerio.errors import ConfigError, TargetError, Terminated
from target_customerio.identity import open_identity
from target_customerio.ledger import open_ledger
from target_customerio.mapping_processes import ProcessMapping, make_mapping
from target_customerio.memberships import Memberships, segment_requests
from target_customerio.mirror import Mirror
from target_customerio.operations import KINDS
from target_customerio.read_back import ReadBack
from target_customerio.reading import SingerLineReader
from target_customerio.reconcile import Reconciler
from target_customerio.redaction import shown
from target_customerio.report import RunReport
from target_customerio.routes import near_miss
from target_customerio.run_events import RunEvents
from target_customerio.sdk import ConfigInput, SdkTarget
from target_customerio.setting_schema import CONFIG_SCHEMA, SDK_SETTINGS_IGNORED, about_text
from target_customerio.settings import check_config, load_settings
from target_customerio.sinks import CustomerIOSink, SinkNeeds, UnmappedSink
from target_customerio.stream_mapping import Item, compiled
from target_customerio.volume import check_streams


def near_miss_text(stream: str, route: str, what: str) -> str:
    """`stream 'shop-members' has no route; the route `members` matches no stream: ...`."""
    return (
        f"stream {stream!r} {what}: no route in `streams` matches it, and the route `{route}` "
        f"matches no stream of this run; did you mean to name the route `{stream}`?"
    )


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        sys.stdout = open(devnull, "w")  # noqa: SIM115 - for the rest of the process
    except (OSError, ValueError):
        pass


def _one_malloc_arena() -> None:
    """glibc gives each thread a malloc arena of its own: the delivery threads' 500 KB request
    bodies and the ledger's writes then fragment several arenas, and the process grows with the
    stream (docs/performance.md has the figures). One arena keeps it flat; Python allocates
    under the GIL anyway. (The MALLOC_ARENA_MAX environment variable, set from inside.)"""
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, 1)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


_M_ARENA_MAX = -8


class TargetCustomerIO(SdkTarget):
    """Singer target for Customer.io person updates and events."""

    name = "target-customerio"
    config_jsonschema = copy.deepcopy(CONFIG_SCHEMA)  # the SDK adds its settings to this one
    default_sink_class = CustomerIOSink
    message_reader_class = SingerLineReader
    # Not `validate-records`: the SDK's record validation is replaced by contracts (sinks.py).
    capabilities: t.ClassVar[list] = [
        PluginCapabilities.ABOUT,
        PluginCapabilities.STREAM_MAPS,
        PluginCapabilities.FLATTENING,
        PluginCapabilities.STRUCTURED_LOGGING,
    ]

    @classmethod
    def append_builtin_config(cls, config_jsonschema: dict) -> None:
        """The SDK's settings, without those this target ignores (see settings.py)."""
        super().append_builtin_config(config_jsonschema)
        for name in SDK_SETTINGS_IGNORED:
            config_jsonschema["properties"].pop(name, None)

    @classmethod
    def print_about(cls, output_format: str | None = None) -> None:
        """`--about` as text says what each setting does and its default, as json and markdown do
        (the SDK's text form names only the type and the environment variable)."""
        if output_format not in (None, "text"):
            super().print_about(output_format)
            return
        print(about_text(cls.about_info()))

    def __init__(
        self,
        *,
        config: t.Any = None,
        parse_env_config: bool = False,
        validate_config: bool = True,
        message_reader: t.Any = None,
    ) -> None:
        redaction.install()
        # Checked before the SDK sees them (its messages quote values): a typo or a wrong type
        # stops here, with a message that never holds a secret.
        if parse_env_config:  # read here, strictly typed, rather than by the SDK (environment.py)
            schema = self.config_jsonschema
            self.append_builtin_config(schema)
            config = {
                **(config if isinstance(config, dict) else {}),
                **env_config(dict(os.environ), schema),
            }
        else:
            schema = self.config_jsonschema
            self.append_builtin_config(schema)
            file_config = config if isinstance(config, dict) else {}
            check_env_reached({**dotenv_here(), **os.environ}, file_config, schema)
        warnings = self._check_config(config, validate_config)
        super().__init__(
            config=config,
            parse_env_config=False,
            validate_config=validate_config,
            message_reader=message_reader,
        )
        # a try cut at its deadline is ours to report
        logging.getLogger("urllib3").setLevel(logging.ERROR)
        for warning in warnings:
            self.logger.warning("%s", warning)
        self.settings = load_settings(dict(self.config), Path.cwd())
        # First, while this process has no threads or connections: it may fork the mapper.
        _one_malloc_arena()
        self.mapping = make_mapping(self.settings)
        self.logger.info(
            "mapping: %s, %s",
            "compiled"
            if compiled()
            else "interpreted (plain Python, as expected from a source install; the compiled "
            "wheel maps about a fifth faster: docs/performance.md)",
            f"{self.mapping.size} worker process(es)"
            if isinstance(self.mapping, ProcessMapping)
            else "in the reading thread",
        )
        self.message_reader.record_taker = self._record_taker
        # The SDK writes STATE only when all sinks drain: drain often enough for checkpoints.
        self.set_checkpoint_interval(self.settings.checkpoint_interval_seconds)
        self.started_at = time.time()
        self.report = RunReport(
            reject_file=self.settings.reject_file,
            report_file=self.settings.report_file,
            dry_run=self.settings.dry_run,
            logger=self.logger,
        )
        self.ledger = open_ledger(self.settings, self.report)
        self.identity = open_identity(self.settings, self.report)  # beside the ledger
        self.delivery: Delivery | DryRun = make_delivery(
            self.settings,
            str(self.config.get("api_key", "")),
            self.report,
            self.ledger,
            self.logger,
        )
        key = str(self.config.get("app_api_key", ""))
        self.read_back = ReadBack(self.settings, key, self.delivery, self.report, self.logger)
        self.qa = self.read_back.qa  # a QA sync holds the records until the input ends
        self.events = RunEvents()  # every event of the run, whichever stream sent it
        self.reconciler = Reconciler(self.report, self.logger)
        self.memberships = Memberships(self.report, self.logger)
        self.mirror = Mirror(
            self.report,
            self.logger,
            workspace(self.settings),
            "ledger_url"
            if self.settings.ledger_url
            else f"ledger_path {self.settings.ledger_path}",
        )
        self.campaigns: Campaigns | None = None  # read at start-up (read_campaigns)
        # streams whose records skip the SDK's handling
        self._direct: dict[str, CustomerIOSink | UnmappedSink] = {}
        self._routed: dict[str, set[str]] = {}  # route name -> the streams it matched
        self._near_misses: dict[str, str] = {}  # a skipped stream -> the route it nearly named
        self._age_check_every = min(1.0, self.settings.checkpoint_interval_seconds / 4)
        self._next_age_check = 0.0
        self._busy = False
        self._checking = False  # inside the start-up credential check
        self._terminating = False

    @staticmethod
    def _check_config(config: t.Any, validate: bool) -> list[str]:
        config = config if isinstance(config, dict) else {}
        redaction.REDACTOR.learn_config(config)
        return check_config(config) if validate else []

    def ledger_scope(self, stream: str) -> str | None:
        """Ledger entries belong to one workspace and one stream; None when change detection is
        off."""
        if not self.settings.change_detection:
            return None
        return f"{self.settings.base_url}\x1f{self.settings.site_id}\x1f{stream}"

    def check_credentials(self) -> None:
        """Verify credentials and region at start-up, before anything is read (not on a dry run)."""
        kinds = {route.kind for route in self.settings.routes.all()}
        if isinstance(self.delivery, Delivery) and kinds != {"reconcile"}:
            self._checking = True  # nothing is half-done meanwhile: a signal stops it at once
            try:
                self.delivery.check_credentials(self.settings.region)
            finally:
                self._checking = False

    def read_campaigns(self) -> None:
        """The running campaigns and their triggers, before anything is read (campaigns.py):
        with `app_api_key`, when a route sends events or manual-segment memberships. A
        `max_campaign_entries` without the key is a ConfigError: a guard that cannot look
        must not pass."""
        key = str(self.config.get("app_api_key") or "").strip()
        routes = self.settings.routes.all()
        limits = [self.settings.max_campaign_entries] + [
            getattr(route.options, "max_campaign_entries", None) for route in routes
        ]
        if not key:
            if any(limit is not None for limit in limits):
                raise ConfigError(
                    "max_campaign_entries needs setting `app_api_key` (the campaigns are read "
                    "from the App API; TARGET_CUSTOMERIO_APP_API_KEY)"
                )
            return
        if not {route.kind for route in routes} & {"event", "segment"}:
            return
        self._checking = True  # reads only: a signal stops them at once
        try:  # the run's one App API client: its 10 requests a second shared (read_back.py)
            found = read_triggers(self.read_back.app_client())
        finally:
            self._checking = False
        self.campaigns = Campaigns(
            found,
            started_at=self.started_at,
            max_entries=self.settings.max_campaign_entries,
            dry_run=self.settings.dry_run,
            logger=self.logger,
        )
        self.campaigns.wait = self.delivery.wait
        self.memberships.on_added = self.campaigns.segment_added
        self.logger.info(
            "campaigns: %d running campaign(s) started by an event or a segment", len(found)
        )

    def sink_needs(self, stream: str) -> SinkNeeds:
        """What a stream's sink works with: where its kind's operations go (a reconcile route's
        checks to the reconciler, a segment route's memberships to `memberships`, every other
        route's operations to the Track API), and a mirror route's members."""
        route = self.settings.routes.match(stream)
        channel = KINDS[route.kind].channel if route is not None else "track"
        deliver: Delivery | DryRun | Reconciler | Memberships = {
            "track": self.delivery,
            "segments": self.memberships,
            "checks": self.reconciler,
        }[channel]
        # The App API key is checked when a checks stream comes, not at start: one loader
        # config serves every job, and only the job that reads the checks view needs it.
        no_key = not str(self.config.get("app_api_key") or "").strip()
        if route is not None and channel == "checks" and no_key and not self.settings.dry_run:
            raise ConfigError(
                f"setting `app_api_key` is required by the reconcile route "
                f"`{route.pattern}` (stream {stream}; TARGET_CUSTOMERIO_APP_API_KEY)"
            )
        scope = self.ledger_scope(stream)
        members = None
        if route is not None and route.mirror is not None and scope is not None:
            members = self.mirror.members(stream, route, scope)
        return SinkNeeds(
            route=route,
            report=self.report,
            mapping=self.mapping,
            submit=deliver.submit,
            shards=deliver.shards,
            started_at=self.started_at,
            ledger_scope=scope,
            max_reject_ratio=self.settings.max_reject_ratio,
            events=self.events,
            members=members,
            identity=self.identity,
            refused=self.delivery.refused_people,
            hold=self.qa.hold if self.qa is not None else None,
            campaigns=self.campaigns,
        )

    # Routing

    def get_sink_class(self, stream_name: str) -> type[Sink]:
        route = self.settings.routes.match(stream_name)
        if route is not None:
            self._routed.setdefault(route.pattern, set()).add(stream_name)
            return CustomerIOSink
        near = self._near_route(stream_name)
        if self.settings.unmapped_streams == "skip":
            if near is not None:  # most likely a typo in the route's name: checked before STATE
                self._near_misses[stream_name] = near
                self.logger.warning("%s", near_miss_text(stream_name, near, "skipped"))
            return UnmappedSink
        routes = ", ".join(self.settings.routes.names)
        if near is not None:
            raise ConfigError(
                f"{near_miss_text(stream_name, near, 'has no route')} (routes: {routes})"
            )
        raise ConfigError(
            f"stream {stream_name!r} has no route in `streams` (routes: {routes}); "
            "add one or set unmapped_streams: skip"
        )

    def _near_route(self, stream: str) -> str | None:
        """The route whose name nearly names a stream no route matched, if it has matched no
        stream of this run (a route that has its stream is not a typo)."""
        idle = [name for name in self.settings.routes.names if name not in self._routed]
        return near_miss(stream, idle)

    def _check_near_misses(self) -> None:
        """Under `unmapped_streams: skip`, a skipped stream whose name is a near miss of a route
        that has received nothing is a typo, not a stream to skip: exit 2, before any STATE
        covers the people it skipped."""
        for stream, route in self._near_misses.items():
            if route not in self._routed:
                raise ConfigError(
                    f"{near_miss_text(stream, route, 'was skipped')} If the stream is not "
                    f"meant for Customer.io, leave it out of the tap's `select`"
                )

    def idle_routes(self) -> list[str]:
        """The routes that received no record in this run (no stream matched them, or the
        streams they matched were empty), for the report."""
        return [
            name
            for name in self.settings.routes.names
            if not any(self.report.stream(s).received for s in self._routed.get(name, ()))
        ]

    def get_sink(
        self,
        stream_name: str,
        *,
        record: dict | None = None,
        schema: dict | None = None,
        key_properties: t.Sequence[str] | None = None,
    ) -> Sink:
        previous = self.active_sink(stream_name)
        sink = super().get_sink(
            stream_name, record=record, schema=schema, key_properties=key_properties
        )
        if sink is not previous:
            if previous is not None:
                previous.flush()  # the schema changed: the old sink's partial batches go out now
            self._route_directly(stream_name, sink)
        return sink

    def _route_directly(self, stream: str, sink: Sink) -> None:
        """Whether the stream's RECORD lines may skip the SDK's handling (see _record_taker):
        only when no stream map, flattening or record metadata would change them."""
        self._direct.pop(stream, None)
        maps = self.mapper.stream_maps.get(stream, [])
        plain_stream = (
            len(maps) == 1
            and type(maps[0]) is SameRecordTransform
            and not maps[0].flattening_enabled
        )
        if (
            plain_stream
            and not self.mapper.stream_maps_dict
            and not sink.include_sdc_metadata_properties
        ):
            self._direct[stream] = sink  # type: ignore[assignment]

    # STATE: only once everything before it is in Customer.io

    def _settle(self) -> None:
        """Everything received so far is delivered (or rejected), its ledger entries written,
        its rejects on disk, and no stream over max_reject_ratio: what a STATE promises."""
        sinks = self.all_sinks()
        for sink in sinks:
            sink.flush()
        self.delivery.wait()
        if self.memberships.waiting:  # after the identifies received before them are accepted
            self.memberships.send(
                segment_requests(self.delivery),
                None if self.settings.dry_run else self.ledger,
                self.delivery.refused_people,
                self.delivery.gone,
            )
            self.ledger.flush()
        for sink in sinks:
            sink.check_reject_ratio()
        self.identity.flush()
        self.report.flush()

    def emit_state(self, state: dict) -> None:
        self._check_near_misses()
        self._settle()
        if self.settings.dry_run or self.qa is not None:
            return  # nothing (or a QA sample) was sent, so no bookmark may move
        try:
            self.sdk_write_state(state)
        except (
            OSError,
            ValueError,
            AttributeError,
        ) as exc:  # a broken pipe, a full disk, closed, none
            _silence_stdout()
            reason = getattr(exc, "strerror", None) or (
                "no stdout" if isinstance(exc, AttributeError) else "closed"
            )
            raise TargetError(
                f"stdout is closed or cannot be written ({reason}): the STATE this run "
                "must emit reaches nobody (run it under Meltano, or pipe its stdout to a "
                "file)"
            ) from exc

    def process_endofpipe(self) -> None:
        """The last drain and STATE. A signal meanwhile only asks to stop afterwards: a drain cut
        between taking a batch and queueing it would lose the batch, and the STATE after it
        would cover what was never sent."""
        self._guarded(self._last_drain, None)

    def _last_drain(self, _: None) -> None:
        if self.qa is not None:
            self.qa.release()  # the chosen people's records, to their sinks
        super().process_endofpipe()
        self._check_near_misses()
        self._settle()
        run_end.after_last_state(
            self._mirror,
            lambda: check_streams(
                self.settings.routes, self.report, self.ledger, self.ledger_scope, self.logger
            ),
            self._reconcile,
            dry_run=self.settings.dry_run,
            verify=self._verify,
            qa=self.qa is not None,
        )

    def _mirror(self) -> list[str]:
        """Mirror routes, at the end of a run that read its input to the end and delivered it:
        who left each view is told (or nobody, past the guard); returns the guard's problems."""
        if not self.mirror.runs:
            return []
        if self._terminating:
            self.logger.warning("mirror: stopped by a signal: nobody left a view in this run")
            return []
        return self.mirror.finish(
            self.ledger,
            self.delivery,
            self.memberships,
            segment_requests(self.delivery),
            dry_run=self.settings.dry_run,
            app=self._app_client(),
        )

    def _app_client(self) -> AppClient | None:
        """The run's App API client (read_back.py), when `app_api_key` is set (not on a dry
        run): mirror exits ask it who exists, and a segment route whose ledger knows nobody
        reads its members back."""
        key = str(self.config.get("app_api_key") or "").strip()
        if not key or self.settings.dry_run:
            return None
        return self.read_back.app_client()

    def _reconcile(self) -> None:
        """The reconcile checks, after everything else is delivered and the last STATE written."""
        self._reading(partial(self.reconciler.run_checks, self.settings, self.read_back.app_client))

    def _verify(self) -> None:
        """The sample read back, last (read_back.py); not after a signal."""
        if not self._terminating:
            self._reading(partial(self.read_back.verify, self.started_at))

    def _reading(self, read: t.Callable[[], None]) -> None:
        self._checking = True  # reads only: a signal stops them at once
        try:
            read()
        finally:
            self._checking = False

    # Termination: stop between messages, never inside one

    def _record_taker(self, stream: str) -> t.Callable[[bytes], None] | None:
        """The reader's direct path: the RECORD lines of a stream with no stream maps go to its
        sink whole and undecoded. The SDK's handling (decode, copy, map, metadata, counters)
        would do nothing to them but cost time on every record. None: the SDK must handle them."""
        sink = self._direct.get(stream)
        return None if sink is None else partial(self._take_record, sink)

    def _take_record(self, sink: CustomerIOSink | UnmappedSink, item: Item) -> None:
        self._guarded(sink.receive, item)
        self._checkpoint_if_due()

    def handle_record(self, message_dict: dict) -> None:
        sink = self._direct.get(message_dict.get("stream"))  # type: ignore[arg-type]
        record = message_dict.get("record")
        if sink is None or type(record) is not dict:
            self._guarded(self._sdk_record, message_dict)  # maps, or the SDK's error
        else:
            # a RECORD line not in the form the reader passes on whole
            self._take_record(sink, record)

    def _sdk_record(self, message_dict: dict) -> None:
        """The SDK's handling of a record: its stream maps are the user's expressions, so one
        that fails on a record (a missing key, a division by zero) is a configuration error."""
        taken = self.report.taken_from_sdk
        try:
            self.sdk_handle_record(message_dict)
            if self.report.taken_from_sdk == taken:  # a stream map filtered it out: counted
                stream = str(message_dict.get("stream"))
                self.report.stream(stream).received += 1
                self.report.skip(stream, "stream_maps")
        except (
            TargetError,
            MapExpressionError,
            StreamMapConfigError,
            RecordsWithoutSchemaException,
        ):
            raise
        except Exception as exc:
            if not self.config.get("stream_maps"):
                raise
            stream = message_dict.get("stream")
            raise ConfigError(
                f"stream_maps: the map of stream {stream!r} failed on a record: "
                f"{type(exc).__name__}: {shown(str(exc))}"
            ) from None

    def _checkpoint_if_due(self) -> None:
        """Drain and write STATE every checkpoint_interval_seconds. The SDK's check reads the
        clock and a config proxy; it runs a few times an interval, not for every record."""
        now = time.monotonic()
        if now >= self._next_age_check:
            self._next_age_check = now + self._age_check_every
            self._guarded(self._drain_if_due, None)

    def _drain_if_due(self, _: None) -> None:
        """The SDK's checkpoint, whole (see process_endofpipe)."""
        self.drain_if_due()

    def handle_schema(self, message: dict) -> None:
        self._guarded(self.sdk_handle_schema, message)

    def handle_state(self, message: dict) -> None:
        self._guarded(self.sdk_handle_state, message)

    def _guarded(self, handle: t.Callable[[t.Any], None], message: t.Any) -> None:
        """Handle a message (or drain) whole: a signal meanwhile stops the run after it."""
        outer, self._busy = self._busy, True
        try:
            handle(message)
        finally:
            self._busy = outer
        if self._terminating and not outer:
            raise Terminated("stopped by signal after delivering what was received")

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._terminating = True
        delivery = getattr(self, "delivery", None)  # None: a signal while starting up
        if delivery is not None:
            delivery.interrupt()  # retry waits end now; a silent Customer.io is not waited for
        if not self._busy or getattr(self, "_checking", False):
            raise Terminated(f"stopped by signal {signum} after delivering what was received")

    def finish(self, status: str, error: str | None = None, cause: str | None = None) -> None:
        """Write the report and the one-line summary (naming the failure's cause)."""
        self.mapping.close()
        if self.campaigns is not None:
            self.campaigns.log()
            self.report.campaigns = self.campaigns.section()
        if isinstance(self.delivery, DryRun):
            try:
                self.delivery.close()
            except TargetError as exc:
                if status == "ok":
                    cli.stop(
                        type(self), None, exc
                    )  # exit 1: the would-be operations are not all on disk
                self.logger.error("%s", exc)
        self.report.idle_routes = self.idle_routes()
        if self.report.idle_routes:
            self.logger.info(
                "route(s) that received nothing in this run: %s", ", ".join(self.report.idle_routes)
            )
        if status != "ok" and not self.settings.dry_run and self.mirror.runs:
            try:
                self.ledger.flush()
                self.mirror.learn(self.ledger)
            except TargetError as exc:  # the run has failed already: this is not its cause
                self.logger.warning("mirror: the members sent in this run are not kept: %s", exc)
        try:
            self.identity.close(write=status == "ok")
            self.ledger.close()
        except TargetError as exc:
            # after the last STATE: the entries not written cost a re-send next run
            self.logger.warning("%s; the next run sends those operations again", exc)
        try:
            self.report.close(status, error)
        except TargetError as exc:
            if status == "ok":
                cli.stop(type(self), None, exc)  # exit 1: what the run did is not all on disk
            if str(exc) != error:  # not the failure the run already stopped on
                self.logger.error("%s", exc)
        self.logger.info("%s", self.report.summary(status, cause))
        names = self.report.near_duplicate_event_names()
        if names:
            self.logger.warning("event names that differ only in spelling at the source: %s", names)

    # CLI

    @classmethod
    def cb_config(cls, ctx: t.Any, param: t.Any, value: tuple[str, ...]) -> t.Any:
        """`--config` files (or ENV), read strictly: see cli.config_input."""
        return cli.config_input(cls, value)

    @classmethod
    def invoke(
        cls,
        *,
        about: bool = False,
        about_format: str | None = None,
        config: t.Any = None,
        file_input: t.IO[str] | None = None,
    ) -> None:  # type: ignore[override]
        """Run the target; a fatal error is one line on stderr and a meaningful exit code."""
        if about:
            super().invoke(
                about=about, about_format=about_format, config=config, file_input=file_input
            )
        cli.run(cls, config or ConfigInput(), file_input)
