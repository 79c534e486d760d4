"""Reading Singer messages from stdin: fast for the common line, lenient for odd ones.

A RECORD line is decoded only down to its envelope (type, stream, and the record's raw bytes);
the record itself is decoded where it is mapped (see mapping_worker.py). Every other message
is decoded whole and handed to the SDK's handlers.
"""

from __future__ import annotations

import json
import sys
import typing as t
from collections import Counter
from decimal import Decimal

import msgspec
from singer_sdk.contrib.msgspec import MsgSpecReader

from target_customerio.errors import InputError

_EXACT = 2**53  # floats below this size hold integers exactly


def _json_number(text: str) -> int | float:
    """A JSON number with a fraction or exponent: an integer when its value is one (a
    numeric(10,2) of 250.00 is sent as 250, not 250.0), else a float (always finite: the
    decoder refuses numbers out of a float's range)."""
    number = float(text)
    return int(number) if number.is_integer() and -_EXACT < number < _EXACT else number


_decode = msgspec.json.Decoder(float_hook=_json_number).decode


class _Envelope(msgspec.Struct):
    type: str = ""
    stream: str = ""
    record: msgspec.Raw = msgspec.Raw(b"")


_decode_envelope = msgspec.json.Decoder(_Envelope).decode
_STRICT_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def lenient_decode(line: str | bytes) -> t.Any:
    """What Python taps emit but strict JSON forbids: NaN, Infinity, lone surrogates, bad UTF-8.

    Such a line still parses (numbers as Decimal), so the one bad value is rejected with its
    record and field by the mapper instead of stopping the whole run. Raises ValueError or
    RecursionError when even this cannot read it.
    """
    text = line.decode("utf-8", errors="surrogateescape") if isinstance(line, bytes) else line
    return json.loads(text, parse_float=Decimal, parse_constant=Decimal)


def _decode_any(data: str | bytes) -> tuple[t.Any, bool]:
    """The value, and whether the strict decoder read it (else the lenient one did). Raises
    ValueError (json.JSONDecodeError) or RecursionError when neither can."""
    try:
        return _decode(data), True
    except _STRICT_ERRORS:
        return lenient_decode(data), False


def decode_record(raw: bytes) -> tuple[t.Any, bool]:
    """A record's value, and whether it is native: only what a strict JSON decoder returns
    (str, int, finite float, bool, None, list, dict), which the mapper sends unwalked."""
    try:
        return _decode_any(raw)
    except RecursionError:
        raise InputError("a record is nested too deeply to read") from None
    except ValueError as exc:
        raise InputError(f"a record is not valid JSON: {exc}") from None


class SingerLineReader(MsgSpecReader):
    """msgspec reader over raw bytes: fast, and a bad line is one clear error, not a traceback.

    `take_record(stream, raw)`, when set, is offered each RECORD line's raw record first (the
    target's direct path); it returns False for a stream the SDK must handle.
    """

    def __init__(self) -> None:
        super().__init__()
        self.line_number = 0
        self.take_record: t.Callable[[str, bytes], bool] | None = None

    @property
    def default_input(self) -> t.IO[t.Any]:  # type: ignore[override]
        return sys.stdin.buffer

    def process_lines(self, file_input: t.IO[t.Any] | None, callbacks: dict[str, t.Callable[[dict], None]]) -> Counter[str]:
        """The SDK's loop, without its per-line bookkeeping, and RECORD lines decoded lazily."""
        counts: dict[str, int] = dict.fromkeys(callbacks, 0)
        take_record = self.take_record
        for line in file_input or self.default_input:
            self.line_number += 1
            if take_record is not None:
                try:
                    envelope = _decode_envelope(line)
                except _STRICT_ERRORS:
                    pass  # decoded whole below, leniently
                else:
                    raw = bytes(envelope.record)
                    if envelope.type == "RECORD" and raw.startswith(b"{") and take_record(envelope.stream, raw):
                        counts["RECORD"] += 1
                        continue
            message = self._decode_message(line)
            kind = message.get("type")
            callback = callbacks.get(kind)  # type: ignore[arg-type]
            if callback is None:
                self.assert_line_requires(message, requires={"type"})
                self._process_unknown_message(message)
            callback(message)  # type: ignore[misc]
            counts[kind] += 1  # type: ignore[index]
        return Counter(counts)

    def deserialize_json(self, line: str | bytes) -> dict:
        self.line_number += 1
        return self._decode_message(line)

    def _decode_message(self, line: str | bytes) -> dict:
        try:
            message, _ = _decode_any(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"input line {self.line_number} is not valid JSON: {exc.msg} at column {exc.colno}") from None
        except RecursionError:
            raise InputError(f"input line {self.line_number} is nested too deeply to read") from None
        if type(message) is not dict:
            raise InputError(f"input line {self.line_number} is not a JSON object")
        return message

    def _process_unknown_message(self, message_dict: dict) -> None:
        raise InputError(f"input line {self.line_number}: unknown message type {message_dict.get('type')!r}")
