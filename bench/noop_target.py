"""The baseline: a singer-sdk target that reads every message and does nothing with the records.

Validation is off (`get_validator` returns None) and so is the SDK's timestamp parsing, exactly as
in target-customerio's sink, and it reads with the same reader (`SingerLineReader`: msgspec over
stdin bytes). What is left is the floor any singer-sdk target pays: reading, decoding, and the
SDK's per-record message handling. bench.py divides target-customerio's wall time by this one's.

    python bench/noop_target.py < stream.jsonl
"""

from __future__ import annotations

import typing as t

from singer_sdk import Sink, Target

from target_customerio.target import SingerLineReader


class NoopSink(Sink):
    def get_validator(self) -> None:
        return None

    def _parse_timestamps_in_record(self, record: dict, schema: dict, treatment: t.Any) -> None:
        """Off, as in target-customerio (its mapper parses dates itself)."""

    def process_record(self, record: dict, context: dict) -> None:
        """Nothing: this is the baseline."""

    def process_batch(self, context: dict) -> None:
        """Nothing."""


class NoopTarget(Target):
    name = "target-noop"
    config_jsonschema: t.ClassVar[dict] = {"type": "object", "properties": {}}
    default_sink_class = NoopSink
    message_reader_class = SingerLineReader


if __name__ == "__main__":
    NoopTarget.cli()
