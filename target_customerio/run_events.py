"""Event dedupe, run-wide: the one place that decides which record of an event is the event.

An event is its name and dedupe key (operations/event_ids.py): the same 64-bit key is the same
event, whatever stream, SCHEMA, mapping process or delivery worker it came through. The target
holds one `RunEvents` for the run; every sink settles each answered chunk's event records with it,
in the order the records came. The first record of an event that was built claims it for its
stream (whether it is sent, or unchanged since the last run); every later record of it is a
`duplicate`, never sent nor counted as sent, even when its own data would be rejected ("the first
row of an event is the one mapped and checked"), and one of another stream names that stream in
the report (`duplicate_of`). A rejected record claims nothing: the next valid row is the event.

A mapping process skips building a row whose key it built moments ago (`Fate.REPEAT`: the rows
of one order come together), but decides nothing: the record comes here all the same, so the
outcome is the same with any number of processes.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

from target_customerio.errors import TargetError

# What became of an event record in its mapping process (one byte each in `Mapped.event_fates`).
SENT = 0  # built, to be sent
UNCHANGED = 1  # built; the ledger says it was delivered before
REPEAT = 2  # not built: its mapping process built a row of this event moments ago
REJECTED = 3  # rejected after its key was read


class Settled(NamedTuple):
    """What a chunk's event records came to beyond what their mapping process said."""

    duplicates: set[int]  # records (indexes in the chunk) that repeat an event already claimed
    of: Counter[str]  # the streams that claimed them first -> records (this stream included)
    unchanged: int  # records that claimed their event and are unchanged since the last run


_NOTHING = Settled(set(), Counter(), 0)


class RunEvents:
    """Every event claimed in this run, with the stream that claimed it (64-bit key -> index of
    the stream: ~80 bytes an event, ~80 MB at a million)."""

    def __init__(self) -> None:
        self._owner: dict[int, int] = {}
        self._streams: list[str] = []

    def stream_id(self, stream: str) -> int:
        """The index that stands for `stream` (the same for every sink of it: SCHEMA changes)."""
        if stream not in self._streams:
            self._streams.append(stream)
        return self._streams.index(stream)

    def settle(self, stream: int, items: list[int], keys: list[int], fates: bytes) -> Settled:
        """Claim the chunk's new events for `stream`; the records that repeat one are returned."""
        owner = self._owner
        if not fates:
            return _NOTHING
        if REJECTED not in fates:  # the usual chunk: quicker, to the same effect
            usual = self._settle_usual(stream, items, keys, fates)
            if usual is not None:
                return usual
        duplicates: set[int] = set()
        of: Counter[str] = Counter()
        unchanged = 0
        for item, key, fate in zip(items, keys, fates, strict=True):
            first = owner.get(key)
            if first is None:
                if fate == REJECTED:
                    continue  # stays a reject; the next valid row is the event
                if fate == REPEAT:  # its process's earlier row came here first and claimed it
                    raise _unclaimed()
                owner[key] = stream
                unchanged += fate == UNCHANGED
                continue
            duplicates.add(item)
            of[self._streams[first]] += 1
        return Settled(duplicates, of, unchanged)

    def _settle_usual(
        self, stream: int, items: list[int], keys: list[int], fates: bytes
    ) -> Settled | None:
        """`settle` for a chunk with no reject whose built events are each new to the run, once
        (None for any other): claimed at once, and the rows not built again are duplicates."""
        owner = self._owner
        if REPEAT in fates:
            built = [key for key, fate in zip(keys, fates, strict=True) if fate != REPEAT]
        else:
            built = keys
        if len(set(built)) != len(built) or not owner.keys().isdisjoint(built):
            return None
        owner.update(dict.fromkeys(built, stream))
        unchanged = fates.count(UNCHANGED)
        if len(built) == len(keys):
            return Settled(set(), Counter(), unchanged) if unchanged else _NOTHING
        repeats = [(i, k) for i, k, fate in zip(items, keys, fates, strict=True) if fate == REPEAT]
        firsts = [owner.get(key) for _, key in repeats]
        if None in firsts:
            raise _unclaimed()
        of = Counter(self._streams[first] for first in firsts if first is not None)
        return Settled({item for item, _ in repeats}, of, unchanged)


def _unclaimed() -> TargetError:
    """Never a silent loss: a row not built again must repeat an event claimed before."""
    return TargetError("event dedupe: a repeated event was never claimed (a bug)")
