"""The identity map decides a chunk at once (claims as columns, a chunk of new people with set
operations, the records that use people in one pass): the same verdicts, the same map in the
database, as the record-at-a-time definition, over generated identity histories (identity.py).

A unit property test: the real Claims (as the mapping process makes them) and the real
IdentityMap over SQLite files, run twice side by side, the second made to take the
record-at-a-time path for every record. The end-to-end rules are tests/test_identity.py's.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from target_customerio import identity
from target_customerio.routes import Routes

P, E, K = "people", "orders", "members"
SEED = identity.workspace_seed("https://track.customer.io", "chunks")
IDS = ["1001", "1002", "1003", "1004", "1005"]
EMAILS = ["a@x.com", "b@x.com", "c@x.com", "1001"]  # an email that is somebody's id, too
MEMBER_EMAILS = ["m1@x.com", "m2@x.com", "a@x.com"]
LONG = os.environ.get("TEST_IDENTITY_LONG") == "1"

ROUTES = {
    P: {"kind": "person", "identifier": {"field": "member_id", "type": "id"}},
    E: {
        "kind": "event",
        "identifier": {"field": "member_id", "type": "id"},
        "event_name": "purchase",
        "timestamp": "at",
        "event_id": "order_id",
    },
    K: {"kind": "person", "identifier": {"field": "mail", "type": "email"}},
}
SCHEMAS = {
    P: {"properties": {"member_id": {"type": "string"}, "email": {"type": ["string", "null"]}}},
    E: {
        "properties": {
            "member_id": {"type": "string"},
            "at": {"type": "integer"},
            "order_id": {"type": "integer"},
        }
    },
    K: {"properties": {"member_no": {"type": "integer"}, "mail": {"type": "string"}}},
}
KEYS = {P: [], E: [], K: ["member_no"]}


class RecordAtATime(identity.IdentityMap):
    """The definition: every person record through `_person`, every use one by one."""

    def _new_people(self, chunk: identity.ChunkClaims) -> bool:
        return False

    def _uses(
        self, options: identity.IdentityOptions, chunk: identity.ChunkClaims, out: Any
    ) -> None:
        for index, _, keys, fields, _, _, _ in chunk.records():
            for key, field in zip(keys, fields, strict=True):
                if not self._get(key):
                    out.unknown += 1
                    if options.unknown_person == "reject":
                        out.rejects.append((index, "unknown_person", field, "unknown"))
                    break


@st.composite
def person_records(draw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"member_id": draw(st.sampled_from(IDS))}
    email = draw(st.sampled_from([*EMAILS, None, "absent", "not an email"]))
    if email != "absent":
        row["email"] = email if email is None else draw(st.sampled_from([email, email.upper()]))
    return row


@st.composite
def chunks(draw: Any) -> tuple[str, list[dict[str, Any]]]:
    stream = draw(st.sampled_from([P, P, E, K]))
    if stream == P:
        rows = draw(st.lists(person_records(), min_size=1, max_size=6))
    elif stream == E:
        ids = st.lists(st.sampled_from([*IDS, "9999"]), min_size=1, max_size=4)
        rows = [{"member_id": i} for i in draw(ids)]
    else:
        pairs = st.tuples(st.integers(1, 3), st.sampled_from(MEMBER_EMAILS))
        rows = [
            {"member_no": n, "mail": m} for n, m in draw(st.lists(pairs, min_size=1, max_size=4))
        ]
    return stream, rows


def histories() -> Any:
    """Runs of chunks; a person chunk of ids nobody used yet is likely (the bulk path)."""
    fresh = st.builds(
        lambda n, base, taken: (
            P,
            [
                {
                    "member_id": f"n{base}-{i}",
                    "email": taken if i == 0 and taken else f"n{base}-{i}@x.com",
                }
                for i in range(n)
            ],
        ),
        st.integers(1, 5),
        st.integers(0, 3),
        st.sampled_from(["", *EMAILS]),  # one of them may take an email somebody held
    )
    return st.lists(
        st.lists(st.one_of(chunks(), fresh), min_size=1, max_size=6), min_size=1, max_size=3
    )


def claims_of(rows: list[dict[str, Any]], stream: str, claims: identity.Claims) -> Any:
    claims.begin()
    for index, row in enumerate(rows):
        field = ROUTES[stream]["identifier"]["field"]
        kind = ROUTES[stream]["identifier"]["type"]
        value = str(row[field]).strip().lower() if kind == "email" else str(row[field])
        claims.add(index, claims.pick(row), (kind, value))
    return claims.done()


def table(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT * FROM identity_map ORDER BY key").fetchall()


@pytest.mark.parametrize("cache", [3, identity.CACHE_CLAIMS])
@settings(
    max_examples=300 if LONG else 60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # the same value every example
)
@given(history=histories(), reject=st.booleans(), send=st.booleans())
def test_a_chunk_at_once_decides_as_record_at_a_time(cache, history, reject, send, monkeypatch):
    monkeypatch.setattr(identity, "CACHE_CLAIMS", cache)  # small: the cache emptied and read back
    routes = Routes(ROUTES, Path.cwd(), "reject")
    options = identity.IdentityOptions(
        on_identity_conflict="send" if send else "reject",
        unknown_person="reject" if reject else "send",
    )
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "chunked.sqlite", Path(tmp) / "one-by-one.sqlite"
        for run in history:
            chunked = identity.IdentityMap(identity.SqliteStore(str(a)))
            reference = RecordAtATime(identity.SqliteStore(str(b)))
            for stream, rows in run:
                route = routes.match(stream)
                claims = identity.Claims(route, SCHEMAS[stream], stream, KEYS[stream], SEED)
                made = claims_of(rows, stream, claims)
                if made is None:
                    continue
                where = identity.StreamIdentity(options, route.kind == "person")
                got = chunked.account(where, made)
                want = reference.account(where, made)
                assert (got.conflicts, got.unknown, got.changes) == (
                    want.conflicts,
                    want.unknown,
                    want.changes,
                ), (stream, rows)
                assert [r[:3] for r in got.rejects] == [r[:3] for r in want.rejects]
                assert got.merges == want.merges
            chunked.close()
            reference.close()
            assert table(a) == table(b)


def test_claims_travel_as_columns_and_read_back_one_a_record():
    routes = Routes(ROUTES, Path.cwd(), "reject")
    claims = identity.Claims(routes.match(P), SCHEMAS[P], P, [], SEED)
    rows = [
        {"member_id": "1", "email": "a@x.com"},
        {"member_id": "2"},
        {"member_id": "3", "email": None},
    ]
    made = claims_of(rows, P, claims)
    assert [len(column) for column in made.keys] == [3, 3]
    [first, second, third] = list(made.records())
    assert first[3] == ("member_id", "email") and first[2][1] == identity.claim_key(
        "email", "a@x.com", SEED
    )
    assert second[2] == (identity.claim_key("id", "2", SEED),)  # no email column: no claim
    assert third[2][1] == 0  # a null email clears it
    assert [claim[0] for claim in made.without({1}).records()] == [0, 2]


@given(
    st.lists(
        st.tuples(
            st.integers(1, 9),
            st.integers(0, 9),
            st.sampled_from([None, 11, 12]),
            st.sampled_from([None, 13, 14]),
            st.booleans(),
        ),
        max_size=8,
    )
)
@settings(max_examples=40 if not LONG else 200, deadline=None)
def test_a_new_persons_row_writes_the_claims_postgres_gets_one_a_row(rows):
    """The SQLite statement derives a new person's claims (its row's seventh element); the
    Postgres store is handed them as rows (`_claims_made`): the same table either way."""
    made = [
        [k, o, i, e, None, f"p{k}", 1] if new else [k, o, i, e, None, None]
        for k, o, i, e, new in rows
    ]
    groups = identity.orjson.dumps([[0, made]]).decode()
    with tempfile.TemporaryDirectory() as tmp:
        derived, given_rows = Path(tmp) / "a.sqlite", Path(tmp) / "b.sqlite"
        for path, text in ((derived, groups), (given_rows, identity._claims_made(groups))):
            store = identity.SqliteStore(str(path))
            store._write(text, 0)
            store.close()
        assert table(derived) == table(given_rows)
