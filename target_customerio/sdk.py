"""The one place that touches singer-sdk's members that are not its public API.

The target needs a few of them: STATE must wait for delivery (`_write_state_message`), records
must skip the SDK's per-record work on the fast path (`_process_record_message`,
`_validate_and_parse`), signals must stop between messages (`_handle_termination`). Each is
named in `PRIVATE_MEMBERS` and checked when this module is imported: a singer-sdk release that
renames one fails at start-up with one line naming it, instead of silently breaking a guarantee
(a renamed `_write_state_message` would emit STATE before delivery). Every other module uses the
hooks below; tests/test_sdk_adapter.py checks that no other module touches an SDK private.
"""

from __future__ import annotations

import inspect
import typing as t
from importlib.metadata import version
from types import FrameType

from singer_sdk import Target
from singer_sdk import plugin_base as _plugin_base
from singer_sdk.contrib.msgspec import MsgSpecReader
from singer_sdk.sinks import Sink

from target_customerio.errors import SdkMismatch

SDK_VERSION = version("singer-sdk")

# (class, member, its parameters): what this module relies on.
PRIVATE_MEMBERS: tuple[tuple[type, str, tuple[str, ...] | None], ...] = (
    (Target, "_process_record_message", ("self", "message_dict")),
    (Target, "_process_schema_message", ("self", "message_dict")),
    (Target, "_process_state_message", ("self", "message_dict")),
    (Target, "_write_state_message", ("self", "state")),
    (Target, "_handle_termination", ("self", "signum", "frame")),
    (Target, "_handle_max_record_age", ("self",)),
    (Target, "_MAX_RECORD_AGE_IN_MINUTES", None),
    (Target, "_get_about_info", ("cls",)),
    (Sink, "_validate_and_parse", ("self", "record")),
    (Sink, "_remove_sdc_metadata_from_record", ("self", "record")),
    (MsgSpecReader, "_process_unknown_message", ("self", "message_dict")),
)
# Attributes the SDK's Target sets on itself (its sinks), read from its source.
PRIVATE_ATTRIBUTES: tuple[tuple[type, str], ...] = (
    (Target, "_sinks_active"),
    (Target, "_sinks_to_clear"),
)
ConfigInput = getattr(_plugin_base, "_ConfigInput", None)  # what `--config` gives `invoke`


def check(
    members: t.Iterable[tuple[type, str, tuple[str, ...] | None]] = PRIVATE_MEMBERS,
    attributes: t.Iterable[tuple[type, str]] = PRIVATE_ATTRIBUTES,
) -> None:
    """Raise SdkMismatch, naming the first member missing or changed and the SDK's version."""

    def mismatch(what: str) -> SdkMismatch:
        return SdkMismatch(
            f"target-customerio relies on singer-sdk's {what}, which singer-sdk "
            f"{SDK_VERSION} does not have: install the singer-sdk version this "
            "release requires (pip install target-customerio again)"
        )

    if ConfigInput is None:
        raise mismatch("plugin_base._ConfigInput")
    for cls, name, parameters in members:
        member = inspect.getattr_static(cls, name, None)
        if member is None:
            raise mismatch(f"{cls.__name__}.{name}")
        if parameters is not None:
            function = (
                member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
            )
            if tuple(inspect.signature(function).parameters) != parameters:
                raise mismatch(f"{cls.__name__}.{name}({', '.join(parameters)})")
    for cls, name in attributes:
        if f"self.{name}" not in inspect.getsource(cls):
            raise mismatch(f"{cls.__name__}.{name}")


check()


class SdkTarget(Target):
    """singer-sdk's Target, its private members behind hooks a subclass overrides.

    Hooks (each defaults to the SDK's behaviour): `handle_record`, `handle_schema`,
    `handle_state`, `emit_state`, `on_signal`.
    """

    # Hooks

    def handle_record(self, message: dict) -> None:
        self.sdk_handle_record(message)

    def handle_schema(self, message: dict) -> None:
        self.sdk_handle_schema(message)

    def handle_state(self, message: dict) -> None:
        self.sdk_handle_state(message)

    def emit_state(self, state: dict) -> None:
        """Every STATE the SDK would write goes through here."""
        self.sdk_write_state(state)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.sdk_on_signal(signum, frame)

    # The SDK's own behaviour, by name

    def sdk_handle_record(self, message: dict) -> None:
        Target._process_record_message(self, message)

    def sdk_handle_schema(self, message: dict) -> None:
        Target._process_schema_message(self, message)

    def sdk_handle_state(self, message: dict) -> None:
        Target._process_state_message(self, message)

    def sdk_write_state(self, state: dict) -> None:
        Target._write_state_message(self, state)

    def sdk_on_signal(self, signum: int, frame: FrameType | None) -> None:
        Target._handle_termination(self, signum, frame)

    def drain_if_due(self) -> None:
        """The SDK's checkpoint: drain every sink (and write STATE) once records are old enough."""
        self._handle_max_record_age()

    def set_checkpoint_interval(self, seconds: float) -> None:
        """How old the oldest record may get before the SDK drains and writes STATE."""
        self._MAX_RECORD_AGE_IN_MINUTES = seconds / 60

    def active_sink(self, stream: str) -> Sink | None:
        return self._sinks_active.get(stream)

    def all_sinks(self) -> list[Sink]:
        """Every sink that may hold records: active ones and those a new SCHEMA replaced."""
        return [*self._sinks_to_clear, *self._sinks_active.values()]

    @classmethod
    def about_info(cls) -> t.Any:
        return cls._get_about_info()

    # The SDK's private members, routed to the hooks

    def _process_record_message(self, message_dict: dict) -> None:
        self.handle_record(message_dict)

    def _process_schema_message(self, message_dict: dict) -> None:
        self.handle_schema(message_dict)

    def _process_state_message(self, message_dict: dict) -> None:
        self.handle_state(message_dict)

    def _write_state_message(self, state: dict) -> None:
        self.emit_state(state)

    def _handle_termination(self, signum: int, frame: FrameType | None) -> None:
        self.on_signal(signum, frame)


class SdkSink(Sink):
    """singer-sdk's Sink with hooks: `prepare_record` (default: the SDK's validation and date
    parsing) and `KEPT_METADATA`, the `_sdc_` columns kept when the SDK strips its metadata."""

    KEPT_METADATA: t.ClassVar[tuple[str, ...]] = ()

    def prepare_record(self, record: dict) -> dict:
        return Sink._validate_and_parse(self, record)

    def _validate_and_parse(self, record: dict) -> dict:
        return self.prepare_record(record)

    def _remove_sdc_metadata_from_record(self, record: dict) -> None:
        kept = {name: record[name] for name in self.KEPT_METADATA if record.get(name)}
        Sink._remove_sdc_metadata_from_record(self, record)
        record.update(kept)


class SdkReader(MsgSpecReader):
    """singer-sdk's msgspec reader with the hook `unknown_message` (default: the SDK's)."""

    def unknown_message(self, message: dict) -> None:
        MsgSpecReader._process_unknown_message(self, message)

    def _process_unknown_message(self, message_dict: dict) -> None:
        self.unknown_message(message_dict)
