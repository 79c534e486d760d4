"""Event ids: a ULID derived from the event's name and dedupe key, so that a re-sent event has
the id Customer.io has already seen, and is dropped there instead of firing twice."""

from __future__ import annotations

import hashlib
from typing import Any

from target_customerio.values import SCALARS, plain

_BLAKE2B_128 = hashlib.blake2b(digest_size=16)
_from_bytes = int.from_bytes
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]  # 10 bits -> 2 characters
_SEPARATOR = "\x1f"
_ESCAPED = b"\xff"  # never in UTF-8: the start of a key that holds a separator


def event_digest(event_name: str, key: list[Any]) -> bytes:
    """128 bits that are a pure function of the event name and its dedupe key (`key_bytes`)."""
    digest = _BLAKE2B_128.copy()  # a copy skips the constructor's keyword parsing
    digest.update(key_bytes(event_name, key))
    return digest.digest()


def key_bytes(event_name: str, key: list[Any]) -> bytes:
    """What an event's id is a hash of: the name and the key's values as text, one-to-one.

    A key whose values hold no separator (U+001F) is its text joined by it, as it always was,
    so its event keeps its id. Any other (a separator in a value, or text that is not valid
    UTF-8) is encoded with each part's length in front, behind a 0xFF byte: UTF-8 never holds
    that byte, so the two forms cannot meet, and neither form maps two keys to the same bytes.
    A value is its text: 7 and "7" are the same key (a column's type may change, its event not).
    """
    parts = [str(v if type(v) in SCALARS else plain(v)) for v in key]
    text = _SEPARATOR.join([event_name, *parts])
    if text.count(_SEPARATOR) == len(parts):  # the usual key: only the joins hold one
        try:
            return text.encode()
        except UnicodeEncodeError:  # a lone surrogate: not UTF-8 text
            pass
    return _ESCAPED + b"".join(_counted(part) for part in (event_name, *parts))


def _counted(part: str) -> bytes:
    data = part.encode("utf-8", "surrogatepass")
    return len(data).to_bytes(4, "big") + data


def dedupe_key(digest: bytes) -> int:
    """The first 64 bits of an event's digest: what a run remembers of each event it sent."""
    return _from_bytes(digest[:8], "big")


def event_ulid(event_name: str, key: list[Any]) -> str:
    """The event's ULID: the same key gives the same id on every run and machine."""
    return ulid_text(event_digest(event_name, key))


def ulid_text(value: bytes) -> str:
    """A ULID's text form: 128 bits as 26 Crockford base32 characters (2 zero bits in front).

    Ten bits make two characters: the first byte, behind the 2 zero bits, is the first pair;
    each 5 bytes after it are four pairs (cheaper than shifting one 128-bit integer).
    """
    p = _CROCKFORD_PAIRS
    a = _from_bytes(value[1:6], "big")
    b = _from_bytes(value[6:11], "big")
    c = _from_bytes(value[11:16], "big")
    return "".join((
        p[value[0]],
        p[a >> 30], p[(a >> 20) & 0x3FF], p[(a >> 10) & 0x3FF], p[a & 0x3FF],
        p[b >> 30], p[(b >> 20) & 0x3FF], p[(b >> 10) & 0x3FF], p[b & 0x3FF],
        p[c >> 30], p[(c >> 20) & 0x3FF], p[(c >> 10) & 0x3FF], p[c & 0x3FF],
    ))  # fmt: skip
