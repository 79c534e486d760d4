"""The workspace identity map: which id, email and cio_id values this target has sent as one
person, so that two people never become one profile (issue 23).

Mapping (stream_mapping.py, in the mapping processes) turns each record it sends into a claim
(`Claims.add`): 64-bit hashes of the identifiers it names, and for a person record who it is,
sent back a chunk at a time as columns (`ChunkClaims`). The sink hands each chunk's claims to
the run-wide `IdentityMap` (`CustomerIOSink._account`), which decides as if record after record
(a chunk of new people, or of records that use people, at once):

- a person record whose email (identifier or attribute), id or cio_id belongs to another person
  is an identity conflict: rejected `identifier_conflict` (`on_identity_conflict: reject`, the
  default) or sent and counted (`send`); its claim is not taken (Customer.io keeps the value
  where it was: a `failed_attribute_change`);
- a person whose attribute email changes releases the old one, so emails that move between
  people are resolved in the order the rows arrive;
- on a route keyed by the tap's `key_properties` (not by its identifier), a key known with
  another identifier is the same person with a new one: with `on_identifier_change: merge` (the
  default) the old profile is merged into the new identifier, right after its identify, on the
  same delivery shard;
- an event, membership or object relationship naming an identifier no person record of this
  target claimed in the workspace is an unknown person: counted (`unknown_people`), and with
  `unknown_person: reject` rejected instead of creating an empty profile.

What is kept: in memory, a bounded cache of claims (hashes only: key -> owner), and the rows
changed since the last batch; in the ledger's database (the same file or Postgres database as
the ledger, table `identity_map`, through ledger_db.py and the ledger's held writes), a row a
person (the values it holds, and its name: for the reject message that names the other person,
and the old identifier a merge needs) and a row a claim of an attribute (two 64-bit integers).
With change detection off the map lives in an in-memory SQLite database for the run.
"""

from __future__ import annotations

import contextlib
import threading
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from target_customerio import ledger_db
from target_customerio.errors import ConfigError, TargetError
from target_customerio.ledger import _LOOKUP_CHUNK, _WRITE_BATCH, HeldRows, hash64, scope_seed

ON_IDENTITY_CONFLICT = ("reject", "send")
UNKNOWN_PERSON = ("send", "reject")
ON_IDENTIFIER_CHANGE = ("merge", "new")
PERSON_KEYS = ("on_identity_conflict", "on_identifier_change")
USE_KEYS = ("unknown_person",)

CACHE_CLAIMS = 1_000_000  # claims held in memory before they are written and the cache emptied
_SLOT = {"id": 0x5A5A_0001, "email": 0x5A5A_0002, "cio_id": 0x5A5A_0003}  # see `_slot`
# A row to write (`_Row`): [key, owner, id, email, cio_id, name]; None: as the database has it.
# A person's own row holds which identifier values it holds (the `id`, `email`, `cio_id`
# columns: claim keys, 0 for none) and its name; every other row is one claim, key -> owner.
_COLUMN = {"id": 2, "email": 3, "cio_id": 4}
_Row = list[Any]
_ID_ATTRIBUTES = ("id", "email", "cio_id")


@dataclass(frozen=True)
class IdentityOptions:
    """A route's identity options (the keys its kind declares; the others keep their default)."""

    on_identity_conflict: str = "reject"
    unknown_person: str = "send"
    on_identifier_change: str = "merge"


def identity_options(where: str, spec: dict[str, Any]) -> IdentityOptions:
    """The identity options of a route; ConfigError for a value that is not one of the choices
    (which keys a kind takes is its KEYS: a key of another kind is an error there)."""
    values = {}
    for key, choices in (
        ("on_identity_conflict", ON_IDENTITY_CONFLICT),
        ("unknown_person", UNKNOWN_PERSON),
        ("on_identifier_change", ON_IDENTIFIER_CHANGE),
    ):
        if key in spec:
            if spec[key] not in choices:
                raise ConfigError(
                    f"{where}.{key}: {spec[key]!r} is not one of {', '.join(choices)}"
                )
            values[key] = spec[key]
    return IdentityOptions(**values)


def workspace_seed(base_url: str, site_id: str) -> int:
    """The hash seed of one workspace: its claims are its own."""
    return scope_seed(f"identity\x1f{base_url}\x1f{site_id}")


def claim_key(kind: str, value: str, seed: int) -> int:
    """An identifier as the map knows it (value as sent: identifiers.as_sent); never 0 nor
    ABSENT, which a chunk's columns use (a 64-bit hash is one of them once in 2**63)."""
    key = hash64(f"{kind}\x1f{value}".encode(), seed)
    return key if key != 0 and key != ABSENT else 1


# ---- mapping's side: a chunk's claims ----------------------------------------------------------

# A claim as the sink's record-at-a-time path reads it (`ChunkClaims.records`):
# (index in the chunk, person, keys, fields, kinds, name, identifier)
# person: a keyed person's hash, else 0 (a person named by its identifier, keys[0], or a record
# that only uses people: an event, a membership, object relationships); keys[i] is 0 where
# the record clears that attribute (blank email: the person's email is released), fields[i]
# the column it comes from and kinds[i] the identifier it is (id, email, cio_id); name and
# identifier (`kind\x1fvalue`, keyed routes) only for person records.
Claim = tuple[int, int, tuple[int, ...], tuple[str, ...], tuple[str, ...], str, str]

# In a chunk's key columns: the record does not have that column (no claim; 0 is a claim that
# clears). claim_key never returns it.
ABSENT = -(2**63)
_MISSING: Any = object()  # a column the record has not (`Claims.pick`)


@dataclass
class ChunkClaims:
    """One chunk's claims as columns, one entry a record sent, in record order: made in the
    mapping process and pickled back as a few arrays (not a tuple a record), so that the sink
    checks a chunk of new people with set operations (`IdentityMap._new_people`)."""

    fields: tuple[str, ...]  # column j's source field
    kinds: tuple[str, ...]  # column j's identifier (id, email, cio_id)
    index: array  # 'q': the record's index in the chunk
    keys: list[array]  # one 'q' column a field: column 0 the identifier; 0 clears; ABSENT
    person: array | None = None  # 'q': keyed people's hashes (None: the route is not keyed)
    names: list[str] | None = None  # person records': who they are (reject messages)
    identifiers: list[str] | None = None  # keyed person records': `kind\x1fvalue`

    def __len__(self) -> int:
        return len(self.index)

    def without(self, drop: set[int]) -> ChunkClaims:
        """The claims of the records not in `drop` (indexes in the chunk)."""
        keep = [at for at, index in enumerate(self.index) if index not in drop]
        if len(keep) == len(self.index):
            return self

        return ChunkClaims(
            self.fields,
            self.kinds,
            array("q", [self.index[at] for at in keep]),
            [array("q", [col[at] for at in keep]) for col in self.keys],
            None if self.person is None else array("q", [self.person[at] for at in keep]),
            None if self.names is None else [self.names[at] for at in keep],
            None if self.identifiers is None else [self.identifiers[at] for at in keep],
        )

    def records(self) -> Iterator[Claim]:
        """The claims one a record, as the record-at-a-time check reads them (ABSENT columns
        left out)."""
        fields, kinds, columns = self.fields, self.kinds, self.keys
        person, names, identifiers = self.person, self.names, self.identifiers
        width = range(len(columns))
        for at, index in enumerate(self.index):
            present = [j for j in width if columns[j][at] != ABSENT]
            yield (
                index,
                person[at] if person is not None else 0,
                tuple(columns[j][at] for j in present),
                tuple(fields[j] for j in present),
                tuple(kinds[j] for j in present),
                names[at] if names is not None else "",
                identifiers[at] if identifiers is not None else "",
            )


class Claims:
    """A stream's claims, made in the mapping process: `begin` a chunk, `add` each record sent,
    `done` hands the chunk's columns over."""

    def __init__(
        self,
        route: Any,
        schema: dict[str, Any],
        stream: str,
        key_properties: list[str],
        seed: int,
    ) -> None:
        from target_customerio.operations import delete  # noqa: PLC0415 - a cycle
        from target_customerio.operations.identifiers import as_sent  # noqa: PLC0415 - a cycle

        self._as_sent = as_sent
        self._marks_delete, self._is_delete = delete.marks_delete, delete.is_delete
        self._seed, self._stream = seed, stream
        self._kind = route.kind
        options = route.options
        identifier = getattr(options, "identifier", None)
        self._field = identifier.field if identifier is not None else ""
        self._type = identifier.type if identifier is not None else ""
        self._relationships = tuple(getattr(options, "relationships", ()))
        # Keyed: the row's key says who, the identifier may change (issue 23, item 4).
        self._key = (
            list(key_properties)
            if route.kind == "person" and key_properties and self._field not in key_properties
            else []
        )
        properties = schema.get("properties") if isinstance(schema, dict) else None
        columns = list(properties) if isinstance(properties, dict) else []
        # The columns sent as an identifier attribute (`email`, `id`, `cio_id`): Customer.io
        # sets that identifier from them.
        self._attributes = [
            (column, name)
            for column in columns
            if (name := route.attribute_name(column)) in _ID_ATTRIBUTES and name != self._type
        ]
        if self._kind == "object":
            self._fields = tuple(rel.field for rel in self._relationships)
            self._kinds = tuple(rel.type for rel in self._relationships)
        elif self._kind == "person":
            self._fields = (self._field, *(column for column, _ in self._attributes))
            self._kinds = (self._type, *(name for _, name in self._attributes))
        else:  # an event or a membership uses its person: an `email` in its data claims nothing
            self._fields, self._kinds = (self._field,), (self._type,)
        # the record's columns `add` reads (`pick`): attributes, then the key; relationships
        self._picks: tuple[str, ...] = (
            self._fields
            if self._kind == "object"
            else (*(column for column, _ in self._attributes), *self._key)
            if self._kind == "person"
            else ()
        )
        self._chunk: ChunkClaims | None = None

    def begin(self) -> None:
        """A new chunk."""
        person = self._kind == "person"
        self._chunk = ChunkClaims(
            self._fields,
            self._kinds,
            array("q"),
            [array("q") for _ in self._fields],
            array("q") if self._key else None,
            [] if person else None,
            [] if self._key else None,
        )

    def done(self) -> ChunkClaims | None:
        """The chunk's claims (None: no record claimed anything)."""
        chunk, self._chunk = self._chunk, None
        return chunk if chunk is not None and len(chunk.index) else None

    def pick(self, record: dict[str, Any]) -> tuple[Any, ...] | None:
        """What the record's claims need from it (its identity columns' values, `_MISSING`
        where it has not the column), kept in place of the record until the chunk's unchanged
        records are known: the records themselves are freed as soon as they are built. None:
        the record claims nothing (a delete or suppress: what it held stays held)."""
        if self._kind == "person" and self._deleted(record):
            return None
        columns = self._picks
        return tuple([record.get(column, _MISSING) for column in columns]) if columns else ()

    def add(
        self, index: int, picked: tuple[Any, ...] | None, identifier: tuple[str, str]
    ) -> str | None:
        """The record's claims (`pick`'s values), added to the chunk's columns; a keyed
        person's name (its operations travel on the delivery shard of its key), else None."""
        chunk = self._chunk
        assert chunk is not None  # begun
        if picked is None:
            return None
        kind, value = identifier
        seed = self._seed
        columns = chunk.keys
        if self._kind == "person":
            chunk.index.append(index)
            columns[0].append(claim_key(kind, value, seed))
            j = 1
            for _, name in self._attributes:
                raw = picked[j - 1]
                columns[j].append(ABSENT if raw is _MISSING else self._attribute(name, raw))
                j += 1
            names = chunk.names
            assert names is not None
            if self._key:
                parts = [None if raw is _MISSING else raw for raw in picked[j - 1 :]]
                text = orjson.dumps(parts, default=str)
                person = hash64(b"key\x1f" + self._stream.encode() + b"\x1f" + text, seed) or 1
                shown_key = ", ".join(str(part) for part in parts)
                name = f"{', '.join(self._key)} {shown_key} of {self._stream}"
                assert chunk.person is not None and chunk.identifiers is not None
                chunk.person.append(person)
                chunk.identifiers.append(f"{kind}\x1f{value}")
                names.append(name)
                return name
            names.append(f"{kind} {value}")
            return None
        if self._kind == "object":
            if not self._relationships:
                return None
            chunk.index.append(index)
            for j, rel in enumerate(self._relationships):
                raw = None if picked[j] is _MISSING else picked[j]
                sent = self._as_sent(raw if type(raw) is str else str(raw), rel.type)
                columns[j].append(claim_key(rel.type, sent, seed))
            return None
        if self._kind in ("event", "segment"):
            chunk.index.append(index)
            columns[0].append(claim_key(kind, value, seed))
        return None

    def _deleted(self, record: dict[str, Any]) -> bool:
        return self._marks_delete(record) and self._is_delete(record)

    def _attribute(self, name: str, raw: Any) -> int:
        """The claim an identifier attribute makes; 0 when it clears it (blank) or is not a
        usable identifier (Customer.io would not set it)."""
        if raw is None or type(raw) is bool or isinstance(raw, (dict, list)):
            return 0
        value = self._as_sent(raw if type(raw) is str else str(raw), name)
        if not value or not value.isprintable() or len(value.encode()) > 150:
            return 0
        if name == "email" and "@" not in value:
            return 0
        return claim_key(name, value, self._seed)


# ---- the sink's side: the run-wide map ----------------------------------------------------------


@dataclass
class Outcome:
    """What the map decided for one chunk's claims."""

    rejects: list[tuple[int, str, str, str]]  # (index, reason, field, message)
    merges: dict[int, tuple[bytes, str]]  # index -> (merge operation, its shard key)
    conflicts: int = 0
    unknown: int = 0
    changes: int = 0


@dataclass(frozen=True)
class StreamIdentity:
    """What the map needs to know about one stream's route."""

    options: IdentityOptions
    person: bool  # a person route (claims), else one that uses people


class IdentityMap:
    """The run-wide identity map of one workspace (one per target process)."""

    def __init__(self, store: Any, dry_run: bool = False) -> None:
        self._store = store  # an IdentityStore behind ledger_db.GuardedLedger
        self._dry_run = dry_run
        self._owner: dict[int, int] = {}  # key -> owner (0: released); cache of the database
        # The rows changed since they were last handed to the store, one a key (`_Row`): a new
        # person is its own row and one a claim of an attribute, written in one statement.
        self._rows: dict[int, _Row] = {}
        self._store_empty = store.identity_empty()  # nothing to look up until the cache empties
        # identifiers released in this run -> who released them: Customer.io may not have applied
        # the release yet (people travel on different delivery shards), so another person may
        # take them from the next run on
        self._released: dict[int, int] = {}
        self._lock = threading.Lock()  # sinks account in the reader's thread; flush may not
        # The sinks of person routes: their partial chunk is sent before a chunk of a route that
        # uses people starts, so that people are known before their events (`before_chunk`).
        self._person_sinks: list[Any] = []

    # -- one chunk, in record order --

    def before_chunk(self, sink: Any, person: bool) -> None:
        """A sink starts a chunk: a person route's registers; any other sends the person
        routes' partial chunks first (a stream's records wait for a full chunk of 500)."""
        if person:
            if sink not in self._person_sinks:
                self._person_sinks.append(sink)
            return
        for other in self._person_sinks:
            other.send_partial_chunk()

    def account(self, stream: StreamIdentity, chunk: ChunkClaims) -> Outcome:
        """Decide one chunk's claims, in record order: a chunk of new people at once (the usual
        first sync), any other person record by record, the records that use people at once."""
        with self._lock:
            self._load(chunk, stream.person)
            out = Outcome([], {})
            if not stream.person:
                self._uses(stream.options, chunk, out)
            elif not self._new_people(chunk):
                for claim in chunk.records():
                    self._person(stream.options, claim, out)
            if len(self._owner) > CACHE_CLAIMS or len(self._rows) >= _WRITE_BATCH:
                self._write(forget=len(self._owner) > CACHE_CLAIMS)
            return out

    def _load(self, chunk: ChunkClaims, people: bool) -> None:
        """The chunk's keys the cache misses, read from the database in one query a 500:
        identifiers and keyed people first, then the attribute slots of the people named."""
        if self._store_empty:
            return
        owner = self._owner
        keys: set[int] = set()
        for column in chunk.keys:
            keys.update(column)
        if chunk.person is not None:
            keys.update(chunk.person)
        # the chunk's side is iterated, never the cache's (it holds up to CACHE_CLAIMS)
        wanted = [key for key in keys if key not in owner and key != 0 and key != ABSENT]
        if wanted:
            owner.update(self._store.identity_owners(wanted))
        if people and len(chunk.keys) > 1:
            persons = self._unheld(chunk)
            if persons:  # which values they hold: their own rows
                held = self._store.identity_holds(persons)
                for person in persons:
                    values = held.get(person) or (0, 0, 0)
                    for kind, value in zip(("id", "email", "cio_id"), values, strict=True):
                        owner.setdefault(_slot(person, kind), value or 0)

    def _unheld(self, chunk: ChunkClaims) -> set[int]:
        """The people of the chunk's records naming an attribute whose held value (their
        slot) the cache misses."""
        owner, first, keyed = self._owner, chunk.keys[0], chunk.person
        attributes = list(zip(chunk.kinds[1:], chunk.keys[1:], strict=True))
        persons: set[int] = set()
        for at in range(len(first)):
            kinds = [kind for kind, column in attributes if column[at] != ABSENT]
            if not kinds:
                continue
            key = first[at]
            person = (keyed[at] if keyed is not None else 0) or owner.get(key) or key
            if any(_slot(person, kind) not in owner for kind in kinds):
                persons.add(person)
        return persons

    def _get(self, key: int) -> int:
        return self._owner.get(key, 0)

    def _held_by(self, key: int) -> int:
        """Who holds `key`, read from the database when the cache misses it: the value a
        person's attribute held before (rare: only when it changes) is not among the chunk's."""
        owner = self._owner.get(key)
        if owner is None and not self._store_empty:
            owner = self._owner[key] = self._store.identity_owners([key]).get(key, 0)
        return owner or 0

    def _row(self, key: int) -> _Row:
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = [key, None, None, None, None, None]
        elif len(row) < 6:  # a claim's row (key, owner) that is a person's too
            row.extend([None] * (6 - len(row)))
        return row

    def _new_people(self, chunk: ChunkClaims) -> bool:
        """The usual first sync, in bulk: a chunk of people none keyed, named by identifiers
        the map has never seen (none twice in the chunk, none released in this run): each
        claims its own at once, with set operations over the chunk's columns and no check a
        record (what `_new` decides for one record, for the whole chunk)."""
        if chunk.person is not None:
            return False
        owner, released, columns = self._owner, self._released, chunk.keys
        unique: set[int] = set()
        claimed = 0
        for column in columns:
            unique.update(column)
            claimed += len(column) - column.count(0) - column.count(ABSENT)
        unique.discard(0)
        unique.discard(ABSENT)
        if (
            len(unique) != claimed
            or not owner.keys().isdisjoint(unique)  # a view: iterates the smaller side
            or not self._rows.keys().isdisjoint(unique)
            or (released and not released.keys().isdisjoint(unique))
        ):
            return False
        self._claim_chunk(chunk)
        return True

    def _claim_chunk(self, chunk: ChunkClaims) -> None:
        """New people claim their identifiers and attributes (none held by anybody): the cache
        updated and the rows made from the columns (zip, not a loop a record): a person's own
        row `[key, key, id, email, cio_id, name, 1]`, whose 1 makes the store write the rows of
        the values it holds, `[value, key]` (see `_SQLITE_UPSERT`)."""
        owner, first = self._owner, chunk.keys[0]
        owner.update(zip(first, first, strict=True))
        held: dict[int, list[Any]] = {}  # _COLUMN -> the values the people hold (None: none)
        pairs_made: list[list[tuple[int, int]]] = []
        overridden: list[tuple[int, int]] = []
        for kind, column in zip(chunk.kinds[1:], chunk.keys[1:], strict=True):
            pairs = [
                (key, person)
                for key, person in zip(column, first, strict=True)
                if key != 0 and key != ABSENT
            ]
            if not pairs:
                continue
            bits = _SLOT[kind]
            owner.update(pairs)
            owner.update(((person ^ bits) or 1, key) for key, person in pairs)
            values = [key if key != 0 and key != ABSENT else None for key in column]
            earlier = held.get(_COLUMN[kind])
            if earlier is not None:  # two columns set one identifier: the later one wins
                # (the earlier value stays claimed: its row is written, the row holds the later)
                overridden.extend(
                    (old, person)
                    for new, old, person in zip(values, earlier, first, strict=True)
                    if new is not None and old is not None
                )
                values = [
                    new if new is not None else old
                    for new, old in zip(values, earlier, strict=True)
                ]
            held[_COLUMN[kind]] = values
            pairs_made.append(pairs)
        n = len(first)
        nones = [None] * n
        names = chunk.names if chunk.names is not None else [""] * n
        columns = (first, first, held.get(2, nones), held.get(3, nones), held.get(4, nones), names)
        if self._dry_run:  # nothing is handed to the store: the rows are the run's record
            for row in zip(*columns, strict=True):
                self._rows[row[0]] = list(row)
            for pairs in pairs_made:
                for key, person in pairs:
                    self._rows[key] = [key, person]
        else:  # handed at once, before any later change to these keys (`_rows`); a new
            # person's row claims the values it holds (`_SQLITE_UPSERT`): no row a claim
            rows: list[Any] = list(zip(*columns, [1] * n, strict=True))
            self._store.record(rows + overridden if overridden else rows)

    def _set(self, key: int, owner: int) -> None:
        self._owner[key] = owner
        self._row(key)[1] = owner

    def _set_slot(self, person: int, kind: str, key: int) -> None:
        """The person holds `key` as its `kind` now (0: none)."""
        self._owner[_slot(person, kind)] = key
        self._row(person)[_COLUMN[kind]] = key

    def _set_name(self, person: int, name: str, identifier: str) -> None:
        self._row(person)[5] = f"{name}\x1e{identifier}" if identifier else name

    def _person(self, options: IdentityOptions, claim: Claim, out: Outcome) -> None:
        index, person, keys, fields, kinds, name, identifier = claim
        owner = self._owner
        first = keys[0]
        keyed = person != 0
        if not keyed and first not in owner and self._new(claim):
            return  # the usual first sync: somebody nobody named before
        if not keyed:
            person = owner.get(first) or first
        conflict = self._conflict(person, keys, 0 if keyed else 1)
        if conflict is not None:
            out.conflicts += 1
            if options.on_identity_conflict == "reject":
                field = fields[conflict[0]]
                message = self._message(field, conflict[1], conflict[2])
                out.rejects.append((index, "identifier_conflict", field, message))
                return
        if keyed:
            self._keyed(options, person, first, name, identifier, index, out)
        elif first not in owner:
            self._set_name(person, name, identifier)
        if owner.get(first) != person:
            self._set(first, person)
        for i in range(1, len(keys)):
            if conflict is not None and i == conflict[0]:
                continue  # Customer.io keeps it where it was
            key = keys[i]
            slot = (person ^ _SLOT[kinds[i]]) or 1
            if key and owner.get(slot) == key and owner.get(key) == person:
                continue  # as it was: the usual case
            if key:
                self._claim_attribute(person, key, kinds[i])
            else:
                self._release(person, kinds[i])

    def _new(self, claim: Claim) -> bool:
        """A person named by an identifier the map has never seen (`_load` read the chunk's
        keys): claimed at once unless one of its attributes is held (or was released in this
        run) by somebody, which takes the general path."""
        _, _, keys, _, kinds, name, identifier = claim
        owner, released = self._owner, self._released
        for i in range(1, len(keys)):
            key = keys[i]
            if key and (owner.get(key) or released.get(key)):
                return False
        self._claim_new(keys, kinds, name, identifier)
        return True

    def _claim_new(self, keys: tuple, kinds: tuple, name: str, identifier: str) -> None:
        """A new person claims its identifier and its attributes' (none held by anybody)."""
        owner, rows = self._owner, self._rows
        first = keys[0]
        row = [first, first, None, None, None, f"{name}\x1e{identifier}" if identifier else name]
        owner[first] = first
        for i in range(1, len(keys)):
            key = keys[i]
            if key:
                kind = kinds[i]
                owner[(first ^ _SLOT[kind]) or 1] = key
                row[_COLUMN[kind]] = key
                owner[key] = first
                rows[key] = [key, first]  # a claim's row: the columns after are NULL
        rows[first] = row

    def _keyed(
        self,
        options: IdentityOptions,
        person: int,
        first: int,
        name: str,
        identifier: str,
        index: int,
        out: Outcome,
    ) -> None:
        """A keyed person: its identifier now is `first`; a change is followed (item 4)."""
        previous = self._get(person)
        if previous == first:
            return
        if previous:
            out.changes += 1
            if options.on_identifier_change == "merge":
                merge = self._merge(person, identifier, name)
                if merge is not None:
                    out.merges[index] = merge
                    if self._held_by(previous) == person:
                        self._free(previous, person)  # merged away: the old identifier is free
        self._set(person, first)
        self._set_name(person, name, identifier)

    def _conflict(
        self, person: int, keys: tuple[int, ...], start: int
    ) -> tuple[int, int, bool] | None:
        """The first identifier the record names that another person holds, or released in this
        run: (position, owner, released)."""
        for i in range(start, len(keys)):
            key = keys[i]
            if key:
                owner = self._get(key)
                released = not owner
                owner = owner or self._released.get(key, 0)
                if owner and owner != person:
                    return i, owner, released
        return None

    def _free(self, key: int, person: int) -> None:
        """`person` no longer holds `key`."""
        self._set(key, 0)
        self._released[key] = person

    def _claim_attribute(self, person: int, key: int, kind: str) -> None:
        """The person's `kind` attribute is `key` now: the value it held before is free."""
        slot = _slot(person, kind)
        previous = self._get(slot)
        if previous != key:
            if previous and self._held_by(previous) == person:
                self._free(previous, person)
            self._set_slot(person, kind, key)
        if self._get(key) != person:
            self._set(key, person)

    def _release(self, person: int, kind: str) -> None:
        """The record clears the person's `kind` attribute: its value is free."""
        slot = _slot(person, kind)
        previous = self._get(slot)
        if previous:
            if self._held_by(previous) == person:
                self._free(previous, person)
            self._set_slot(person, kind, 0)

    def _uses(self, options: IdentityOptions, chunk: ChunkClaims, out: Outcome) -> None:
        """Records that use people (events, memberships, relationships): each whose first
        person nobody holds is counted, and rejected with `unknown_person: reject`."""
        owner, columns, fields = self._owner, chunk.keys, chunk.fields
        if len(columns) == 1:
            unknown = [(at, 0) for at, key in enumerate(columns[0]) if not owner.get(key)]
        else:
            unknown = []
            for at in range(len(chunk.index)):
                for j, column in enumerate(columns):
                    if not owner.get(column[at]):
                        unknown.append((at, j))
                        break
        out.unknown += len(unknown)
        if options.unknown_person != "reject":
            return
        for at, j in unknown:
            field = fields[j]
            out.rejects.append(
                (
                    chunk.index[at],
                    "unknown_person",
                    field,
                    f"{field} names a person this target never identified in this "
                    "workspace (unknown_person: reject; an event for nobody would create "
                    "an empty profile)",
                )
            )

    def _message(self, field: str, other: int, released: bool) -> str:
        if released:
            return (
                f"the {field} value was released by {self._name(other)} earlier in this run; "
                "Customer.io may not have applied that yet (people are delivered in parallel), "
                "so another person can take it from the next run on (on_identity_conflict: "
                "reject)"
            )
        return (
            f"the {field} value belongs to another person, {self._name(other)} (sent earlier "
            "in this run or by an earlier one; on_identity_conflict: reject): Customer.io would "
            "refuse the change or merge the two people"
        )

    def _stored_name(self, person: int) -> tuple[str, str] | None:
        """(name, identifier) of a person: the row not yet handed over, else the database's."""
        row = self._rows.get(person)
        text = row[5] if row is not None else None
        if text is None:
            text = self._store.identity_names([person]).get(person)
        if text is None:
            return None
        name, _, identifier = text.partition("\x1e")
        return name, identifier

    def _name(self, person: int) -> str:
        found = self._stored_name(person)
        return found[0] if found is not None else f"person #{person & 0xFFFFFF:06x}"

    def _merge(self, person: int, identifier: str, name: str) -> tuple[bytes, str] | None:
        """The merge that folds the profile of the person's old identifier into the new one, on
        the delivery shard of the person's key (`name`), as all its operations."""
        old = self._stored_name(person)
        if old is None or not old[1] or "\x1f" not in identifier:
            return None
        old_kind, old_value = old[1].split("\x1f", 1)
        kind, value = identifier.split("\x1f", 1)
        body = orjson.dumps({
            "type": "person", "action": "merge",
            "primary": {kind: value}, "secondary": {old_kind: old_value},
        })  # fmt: skip
        return body, name

    # -- writing --

    def flush(self) -> None:
        """Write every claim and name held, and return once written (the target calls it
        before each STATE)."""
        with self._lock:
            self._write(forget=False, wait=True)

    def _write(self, forget: bool, wait: bool = False) -> None:
        """Hand the changed rows to the store's held writes (ledger._HeldWrites: written in one
        statement, in a thread of their own, per batch); `wait`: return once written; `forget`:
        then empty the cache (its claims are read back from the database when needed)."""
        if self._dry_run:  # nothing may be written: the cache keeps the whole run's claims
            return
        if self._rows:
            self._store.record(list(self._rows.values()))
            self._rows = {}
        if forget or wait:
            self._store.flush()
        if forget:
            self._owner.clear()
            self._store_empty = False

    def close(self, write: bool = True) -> None:
        """`write`: the run ended normally (else the claims since the last STATE are not kept:
        what they claim may not have reached Customer.io)."""
        try:
            if write:
                self.flush()
            else:
                self._rows = {}
                self._store.drop_held()
        finally:
            self._store.close()


def with_after(segment: Any, after: dict[int, bytes]) -> Any:
    """The segment (wire.Segment) with an operation added after the last one of each record
    (index) in `after`: a keyed person's merge, right behind its identify."""
    if not after:
        return segment
    from target_customerio.wire import SegmentBuilder  # noqa: PLC0415 - wire imports the kinds

    builder, entries = SegmentBuilder(), segment.ledger_at()
    items = segment.item_of
    for i, item in enumerate(items):
        builder.add(segment.body(i), item, entries.get(i))
        last = i + 1 == len(items) or items[i + 1] != item
        if last and item in after:
            builder.add(after[item], item, None)
    return builder.segment(segment.items)


def _slot(person: int, kind: str) -> int:
    """Where the map keeps which value of an identifier attribute (`kind`) a person holds."""
    return (person ^ _SLOT[kind]) or 1


# ---- the database ------------------------------------------------------------------------------

# One table beside the ledger's: a row a claim (key -> owner) and a person's own row (which values
# it holds, its name), written as the ledger writes (ledger._HeldWrites): one statement a batch,
# the rows as one JSON text in key order; a NULL column is left as it was. A new person's row
# (`IdentityMap._claim_chunk`) has a seventh element, 1: its held values are claimed by it too,
# their rows made by the statement (`_NEW`), not encoded one a claim.
_TABLE = "identity_map"
_SQLITE_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {_TABLE} (key INTEGER PRIMARY KEY, owner INTEGER, "
    "id INTEGER, email INTEGER, cio_id INTEGER, name TEXT)"
)
# SQLite 3.40 parses a row's JSON again for each `->>`: each row's fields are read once (the
# materialized `rows`), and the claims of new people derived from them.
_SQLITE_UPSERT = (
    "WITH rows AS MATERIALIZED (SELECT r.value ->> 0 AS key, r.value ->> 1 AS owner, "
    "r.value ->> 2 AS id, r.value ->> 3 AS email, r.value ->> 4 AS cio_id, r.value ->> 5 AS name, "
    "r.value ->> 6 AS new, g.key AS gk, r.key AS rk "
    "FROM json_each(?) AS g, json_each(g.value, '$[1]') AS r) "
    f"INSERT INTO {_TABLE} (key, owner, id, email, cio_id, name) "
    "SELECT key, owner, id, email, cio_id, name FROM ("
    "SELECT key, owner, id, email, cio_id, name, gk, rk, 0 AS n FROM rows "
    "UNION ALL SELECT id, key, NULL, NULL, NULL, NULL, gk, rk, 1 FROM rows "
    "WHERE new AND id IS NOT NULL "
    "UNION ALL SELECT email, key, NULL, NULL, NULL, NULL, gk, rk, 2 FROM rows "
    "WHERE new AND email IS NOT NULL "
    "UNION ALL SELECT cio_id, key, NULL, NULL, NULL, NULL, gk, rk, 3 FROM rows "
    "WHERE new AND cio_id IS NOT NULL) "
    "ORDER BY key, gk, rk, n "  # a key handed over twice: the later one last
    "ON CONFLICT(key) DO UPDATE SET owner = coalesce(excluded.owner, owner), "
    "id = coalesce(excluded.id, id), email = coalesce(excluded.email, email), "
    "cio_id = coalesce(excluded.cio_id, cio_id), name = coalesce(excluded.name, name)"
)


def _claims_made(groups: str) -> str:
    """The groups with each new person's row (seventh element) followed by the rows of the
    values it holds, `[value, person]`: one row a claim, as every other store writes them."""
    out = []
    for mark, rows in orjson.loads(groups):
        expanded: list[Any] = []
        for row in rows:
            if len(row) > 6:
                expanded.append(row[:6])
                expanded += ([value, row[0]] for value in row[2:5] if value is not None)
            else:
                expanded.append(row)
        out.append([mark, expanded])
    return orjson.dumps(out).decode()


class _IdentityStore:
    """The identity map's table, written as the ledger writes (ledger.HeldRows): reads wait for
    the write in flight (one connection) and see every row handed over (what is held is
    written first: reads are cache misses, rare)."""

    def __init__(self) -> None:
        self._held = HeldRows(self._write)

    def record(self, rows: list[_Row]) -> None:
        self._held.record(rows)  # type: ignore[arg-type]

    def flush(self) -> None:
        self._held.flush()

    def drop_held(self) -> None:
        """The rows held are not written (the run failed: they may not have reached
        Customer.io)."""
        self._held.drop()

    def close(self) -> None:
        self._held.close()

    def _write(self, groups: str, at: int) -> None:
        raise NotImplementedError

    def _read(self, sql: str, keys: Iterable[int]) -> list[tuple[Any, ...]]:
        wanted = list(keys)
        rows: list[tuple[Any, ...]] = self._held.read(lambda: self._select(sql, wanted))
        return rows

    def _select(self, sql: str, keys: list[int]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def identity_empty(self) -> bool:
        return not self._read(f"SELECT 1 FROM {_TABLE} LIMIT 1", [])

    def identity_owners(self, keys: Iterable[int]) -> dict[int, int]:
        sql = f"SELECT key, coalesce(owner, 0) FROM {_TABLE} WHERE key IN "
        return {row[0]: row[1] for row in self._read(sql, keys)}

    def identity_holds(self, people: Iterable[int]) -> dict[int, tuple[int, int, int]]:
        sql = f"SELECT key, id, email, cio_id FROM {_TABLE} WHERE key IN "
        return {row[0]: (row[1] or 0, row[2] or 0, row[3] or 0) for row in self._read(sql, people)}

    def identity_names(self, people: Iterable[int]) -> dict[int, str]:
        sql = f"SELECT key, name FROM {_TABLE} WHERE name IS NOT NULL AND key IN "
        return {row[0]: row[1] for row in self._read(sql, people)}


class SqliteStore(_IdentityStore):
    """In the ledger's SQLite file (`:memory:` when change detection is off)."""

    def __init__(self, path: str, lock_timeout: float = 30) -> None:
        super().__init__()
        self._db = ledger_db.connect_sqlite(path, lock_timeout)
        self._db.execute(_SQLITE_TABLE)

    def _select(self, sql: str, keys: list[int]) -> list[tuple[Any, ...]]:
        if not sql.endswith("IN "):
            return list(self._db.execute(sql))
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(keys), _LOOKUP_CHUNK):
            chunk = keys[start : start + _LOOKUP_CHUNK]
            rows += self._db.execute(f"{sql}({','.join('?' * len(chunk))})", chunk).fetchall()
        return rows

    def _write(self, groups: str, at: int) -> None:
        """`[[0, [row, ...]], ...]` (ledger._HeldWrites: no marks here), in one statement."""
        self._db.execute(_SQLITE_UPSERT, (groups,))

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._db.close()


class PostgresStore(_IdentityStore):
    """Beside the ledger's table in Postgres (`ledger_url`): `<table>_identity_map`."""

    def __init__(
        self, dsn: str, table: str = "target_customerio_ledger", lock_timeout: float = 30
    ) -> None:
        super().__init__()
        self._t = f"{table}_{_TABLE}"
        self._pg = ledger_db.connect_postgres(dsn, lock_timeout)
        ledger_db.create_postgres_tables(
            self._pg,
            table,
            [
                f"CREATE TABLE IF NOT EXISTS {self._t} (key BIGINT PRIMARY KEY, owner BIGINT, "
                "id BIGINT, email BIGINT, cio_id BIGINT, name TEXT)"
            ],
        )

    def _select(self, sql: str, keys: list[int]) -> list[tuple[Any, ...]]:
        sql = sql.replace(_TABLE, self._t)
        with self._pg.cursor() as cur:
            if sql.endswith("IN "):
                cur.execute(sql.removesuffix("IN ") + "= ANY(%s)", (keys,))
            else:
                cur.execute(sql)
            return list(cur.fetchall())

    def _write(self, groups: str, at: int) -> None:
        """`[[0, [row, ...]], ...]` in one statement; a key handed over twice in the batch is
        folded first (Postgres updates a row once a statement), its later non-NULL columns
        winning."""
        t = self._t

        def last(column: str) -> str:
            return (
                f"(array_agg({column} ORDER BY gn DESC, rn DESC) "
                f"FILTER (WHERE {column} IS NOT NULL))[1]"
            )

        groups = _claims_made(groups)
        with self._pg.cursor() as cur:
            cur.execute(
                f"INSERT INTO {t} (key, owner, id, email, cio_id, name) "
                f"SELECT key, {last('owner')}, {last('id')}, {last('email')}, "
                f"{last('cio_id')}, {last('name')} FROM ("
                "SELECT (r ->> 0)::bigint AS key, (r ->> 1)::bigint AS owner, "
                "(r ->> 2)::bigint AS id, (r ->> 3)::bigint AS email, "
                "(r ->> 4)::bigint AS cio_id, r ->> 5 AS name, gn, rn "
                "FROM json_array_elements(%s::json) WITH ORDINALITY AS g(grp, gn), "
                "json_array_elements(grp -> 1) WITH ORDINALITY AS x(r, rn)) AS rows "
                "GROUP BY key ORDER BY key "
                f"ON CONFLICT (key) DO UPDATE SET owner = coalesce(EXCLUDED.owner, {t}.owner), "
                f"id = coalesce(EXCLUDED.id, {t}.id), "
                f"email = coalesce(EXCLUDED.email, {t}.email), "
                f"cio_id = coalesce(EXCLUDED.cio_id, {t}.cio_id), "
                f"name = coalesce(EXCLUDED.name, {t}.name)",
                (groups,),
            )

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._pg.close()


def open_identity(settings: Any, report: Any = None) -> IdentityMap:
    """The workspace's identity map, in the ledger's database (an in-memory one without it),
    through ledger_db as the ledger: a lock waited for `ledger_lock_timeout` at most, every
    failure one line (LedgerError, exit 1; opening it: ledger_db.open_failure)."""
    wait = settings.ledger_lock_timeout
    try:
        store: _IdentityStore
        if not settings.change_detection:
            store = SqliteStore(":memory:", wait)
        elif settings.ledger_url:
            store = PostgresStore(settings.ledger_url, lock_timeout=wait)
        else:
            store = SqliteStore(settings.ledger_path, wait)
    except Exception as exc:  # noqa: BLE001 - as the ledger: one line
        failure: TargetError = ledger_db.open_failure(exc, settings)
        if report is not None:
            with contextlib.suppress(TargetError):  # its own failure is not the one to tell
                report.close("failed", str(failure))
        raise failure from None
    return IdentityMap(ledger_db.GuardedLedger(store, settings), dry_run=settings.dry_run)
