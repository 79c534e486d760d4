"""Reading Singer messages from stdin: fast for the common line, lenient for odd ones.

A RECORD line of a stream the target maps directly goes to that stream's sink whole and
undecoded: the reader only matches the start of the line, as taps write it, against the last
such stream's (`{"type":"RECORD","stream":"<name>","record":{`). It is decoded where it is
mapped (see stream_mapping.py). Every other message is decoded whole and handed to the SDK's
handlers.
"""

from __future__ import annotations

import io
import json
import re
import sys
import typing as t
from collections import Counter
from decimal import Decimal

import msgspec

from target_customerio.errors import InputError
from target_customerio.sdk import SdkReader
from target_customerio.values import (
    json_number,  # compiled: called for every number with a fraction
)

_decode = msgspec.json.Decoder(float_hook=json_number).decode


class _RecordLine(msgspec.Struct):
    type: str = ""
    stream: str = ""
    record: t.Any = None


_decode_record_line = msgspec.json.Decoder(_RecordLine, float_hook=json_number).decode
# The start of a RECORD line as singer-sdk taps (compact) and singer-python taps (", ", ": ")
# write it, up to the record's opening brace; the stream name in plain ASCII, unescaped.
_RECORD_START = re.compile(
    rb'\{"type": ?"RECORD", ?"stream": ?"([\x20-\x21\x23-\x5b\x5d-\x7e]+)", ?"record": ?\{'
)
_STRICT_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
# What each message type must hold for the SDK's handlers (checked for every message but the
# RECORD lines the reader passes on whole, whose start it has matched).
_SHAPES: dict[str, tuple[tuple[str, type], ...]] = {
    "RECORD": (("stream", str), ("record", dict)),
    "SCHEMA": (("stream", str), ("schema", dict)),
    "ACTIVATE_VERSION": (("stream", str), ("version", int)),
}
_NAMES = {str: "a string", dict: "an object", int: "an integer"}


def lenient_decode(line: str | bytes) -> t.Any:
    """What Python taps emit but strict JSON forbids: NaN, Infinity, lone surrogates, bad UTF-8.

    Such a line still parses (numbers as Decimal), so the one bad value is rejected with its
    record and field by the mapper instead of stopping the whole run. Raises ValueError or
    RecursionError when even this cannot read it.
    """
    text = line.decode("utf-8", errors="surrogateescape") if isinstance(line, bytes) else line
    return json.loads(text, parse_float=Decimal, parse_constant=Decimal, parse_int=_integer)


def _integer(digits: str) -> int | Decimal:
    """An integer, or past Python's limit on converting digits (4300 of them) a Decimal: a
    value the mapper rejects with its record, not a line that ends the run."""
    try:
        return int(digits)
    except ValueError:
        return Decimal(digits)


def _decode_any(data: str | bytes) -> tuple[t.Any, bool]:
    """The value, and whether the strict decoder read it (else the lenient one did). Raises
    ValueError (json.JSONDecodeError) or RecursionError when neither can."""
    try:
        return _decode(data), True
    except _STRICT_ERRORS:
        return lenient_decode(data), False


def decode_record(line: bytes, stream: str) -> tuple[dict, bool]:
    """The record of a RECORD line of `stream` that the reader passed on whole, and whether it
    is native: only what a strict JSON decoder returns (str, int, finite float, bool, None,
    list, dict), which the mapper sends unwalked."""
    try:
        message, native = _decode_record_line(line), True
    except _STRICT_ERRORS:
        try:
            decoded, native = lenient_decode(line), False
        except RecursionError:
            raise InputError(f"a {stream} record is nested too deeply to read") from None
        except ValueError as exc:
            raise InputError(f"a {stream} record is not valid JSON: {exc}") from None
        message = _RecordLine(
            decoded.get("type", ""), decoded.get("stream", ""), decoded.get("record")
        )
    if message.type != "RECORD" or message.stream != stream or type(message.record) is not dict:
        raise InputError(
            f"a {stream} RECORD line repeats its type, stream or record key with another value"
        )
    return message.record, native


def _byte_lines(lines: t.IO[t.Any]) -> t.Iterable[bytes]:
    """Lines as bytes: stdin's buffer is read as it is; a text stream (the SDK's test runner
    passes one) is encoded."""
    if isinstance(lines, io.TextIOBase):
        return (line.encode("utf-8", "surrogatepass") for line in lines)
    return lines


class SingerLineReader(SdkReader):
    """msgspec reader over raw bytes: fast, and a bad line is one clear error, not a traceback.

    `record_taker(stream)`, when set, gives the function that takes a stream's RECORD lines
    whole (the target's direct path), or None for a stream the SDK must handle.
    """

    def __init__(self) -> None:
        super().__init__()
        self.line_number = 0
        self._schemas: set[str] = set()  # streams whose SCHEMA has been read
        self.record_taker: t.Callable[[str], t.Callable[[bytes], None] | None] | None = None

    @property
    def default_input(self) -> t.IO[t.Any]:  # type: ignore[override]
        return sys.stdin.buffer

    def process_lines(
        self, file_input: t.IO[t.Any] | None, callbacks: dict[str, t.Callable[[dict], None]]
    ) -> Counter[str]:
        """The SDK's loop, without its per-line bookkeeping, and direct RECORD lines undecoded."""
        counts: dict[str, int] = dict.fromkeys(callbacks, 0)
        start, take = b"", None  # the start of the last direct stream's RECORD lines, and its taker
        for line in _byte_lines(file_input or self.default_input):
            self.line_number += 1
            if take is not None and line.startswith(start):
                take(line)
                counts["RECORD"] += 1
                continue
            take = None  # any other message may change the streams' sinks
            taker_of = self.record_taker
            match = _RECORD_START.match(line) if taker_of is not None else None
            if (
                match is not None
                and taker_of is not None
                and (taker := taker_of(match.group(1).decode()))
            ):
                start, take = match.group(0), taker
                take(line)
                counts["RECORD"] += 1
                continue
            message = self._decode_message(line)
            self._check_shape(message)
            kind = message.get("type")
            callback = callbacks.get(kind)  # type: ignore[arg-type]
            if callback is None:
                self.assert_line_requires(message, requires={"type"})
                self.unknown_message(message)
            callback(message)  # type: ignore[misc]
            counts[kind] += 1  # type: ignore[index]
        return Counter(counts)

    def _check_shape(self, message: dict) -> None:
        """A message the SDK's handlers can take: the keys its type needs, of the right types.
        Anything else is one InputError naming the line, not a crash inside the SDK."""
        kind = message.get("type")
        where = f"input line {self.line_number}"
        if kind == "BATCH":
            raise InputError(
                f"{where}: BATCH messages are not supported (the tap's records must come "
                "as RECORD messages: turn off the tap's batch_config)"
            )
        for key, kinds in _SHAPES.get(kind, ()):  # type: ignore[arg-type]
            if not isinstance(message.get(key), kinds) or (
                kinds is int and isinstance(message[key], bool)
            ):
                raise InputError(f"{where}: a {kind} message needs `{key}` ({_NAMES[kinds]})")
        if kind == "SCHEMA":
            schema, keys = message["schema"], message.get("key_properties", [])
            if not isinstance(schema.get("properties", {}), dict):
                raise InputError(f"{where}: the SCHEMA's `properties` must be an object")
            if keys is not None and (
                not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)
            ):
                raise InputError(f"{where}: `key_properties` must be a list of column names")
            self._schemas.add(message["stream"])
        elif kind == "STATE" and "value" not in message:
            raise InputError(f"{where}: a STATE message needs `value`")
        elif kind == "ACTIVATE_VERSION" and message["stream"] not in self._schemas:
            raise InputError(
                f"{where}: ACTIVATE_VERSION for stream {message['stream']!r}, which has no SCHEMA"
            )

    def deserialize_json(self, line: str | bytes) -> dict:
        self.line_number += 1
        return self._decode_message(line)

    def _decode_message(self, line: str | bytes) -> dict:
        try:
            message, _ = _decode_any(line)
        except json.JSONDecodeError as exc:
            raise InputError(
                f"input line {self.line_number} is not valid JSON: {exc.msg} at column {exc.colno}"
            ) from None
        except RecursionError:
            raise InputError(
                f"input line {self.line_number} is nested too deeply to read"
            ) from None
        if type(message) is not dict:
            raise InputError(f"input line {self.line_number} is not a JSON object")
        return message

    def unknown_message(self, message_dict: dict) -> None:
        raise InputError(
            f"input line {self.line_number}: unknown message type {message_dict.get('type')!r}"
        )
