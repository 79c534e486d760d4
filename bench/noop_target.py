"""The baseline: a singer-sdk target that reads every message and does nothing with the records.

Validation is off (`get_validator` returns None) and so is the SDK's timestamp parsing, and it
reads with the SDK's msgspec reader (`singer_sdk.contrib.msgspec.MsgSpecReader`, over stdin bytes
rather than text, which only makes it faster). What is left is the floor any singer-sdk target
pays: reading, decoding, and the SDK's per-record message handling. bench.py divides
target-customerio's wall time by this one's. (target-customerio has its own reader and skips the
SDK's per-record handling; the baseline keeps the SDK's, on purpose.)

    python bench/noop_target.py < stream.jsonl
"""

from __future__ import annotations

import sys
import typing as t

from singer_sdk import Sink, Target
from singer_sdk.contrib.msgspec import MsgSpecReader


class NoopSink(Sink):
    def get_validator(self) -> None:
        return None

    def _parse_timestamps_in_record(self, record: dict, schema: dict, treatment: t.Any) -> None:
        """Off, as in target-customerio (its mapper parses dates itself)."""

    def process_record(self, record: dict, context: dict) -> None:
        """Nothing: this is the baseline."""

    def process_batch(self, context: dict) -> None:
        """Nothing."""


class BytesMsgSpecReader(MsgSpecReader):
    @property
    def default_input(self) -> t.IO[t.Any]:  # type: ignore[override]
        return sys.stdin.buffer


class NoopTarget(Target):
    name = "target-noop"
    config_jsonschema: t.ClassVar[dict] = {"type": "object", "properties": {}}
    default_sink_class = NoopSink
    message_reader_class = BytesMsgSpecReader


if __name__ == "__main__":
    NoopTarget.cli()
