"""The identity map's size and cost (issue 23): bytes a person, in the ledger's SQLite file and
in memory, and the time a record, for the claims mapping makes and the run-wide check.

    .venv-compiled/bin/python bench/identity.py                 # 200,000 people
    .venv-compiled/bin/python bench/identity.py --people 1000000

Each person record names an id and an email (attribute), as `public-customer_profiles` does in
bench/bench.py; a first run (a new map: nothing to look up) and a second (every claim read back
from the file, the cache emptied) are timed. `make bench` runs it after bench.py.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
import tracemalloc
from pathlib import Path

from target_customerio import identity  # the installed package: compiled in .venv-compiled
from target_customerio.routes import Routes

CHUNK = 500
SCHEMA = {"properties": {"customer_id": {"type": "string"}, "email": {"type": "string"}}}


def records(people: int) -> list[dict]:
    return [{"customer_id": f"c{n:08d}", "email": f"person{n}@example.com"} for n in range(people)]


def run(path: str, rows: list[dict]) -> tuple[float, float, float, int]:
    """(seconds making claims, seconds checking and writing them, of which in the sink's
    thread, peak bytes of the check's memory). Writing the map runs in a thread of its own
    (the ledger's held writes): the rest of the CPU time."""
    routes = Routes(
        {"s": {"kind": "person", "identifier": {"field": "customer_id", "type": "id"}}},
        Path.cwd(),
        "reject",
    )
    route = routes.match("s")
    seed = identity.workspace_seed("https://track.customer.io", "bench")
    claims = identity.Claims(route, SCHEMA, "s", [], seed)
    made = []
    start = time.process_time()
    for at in range(0, len(rows), CHUNK):
        claims.begin()
        for i, row in enumerate(rows[at : at + CHUNK]):
            claims.add(i, claims.pick(row), ("id", row["customer_id"]))
        made.append(claims.done())
    making = time.process_time() - start
    stream = identity.StreamIdentity(identity.IdentityOptions(), True)
    gc.collect()
    start = time.process_time()
    imap = identity.IdentityMap(identity.SqliteStore(path))
    sink = time.thread_time()
    for chunk in made:
        imap.account(stream, chunk)
    sink = time.thread_time() - sink
    imap.close()
    checking = time.process_time() - start
    return making, checking, sink, _peak(path, stream, made)


def _peak(path: str, stream: identity.StreamIdentity, made: list) -> int:
    """The check's peak memory (traced apart: tracing slows it several times), on a copy of the
    map's file so that it sees what the timed pass saw."""
    copy = f"{path}.copy"
    identity.SqliteStore(path).close()  # the WAL checkpointed into the file
    Path(copy).write_bytes(Path(path).read_bytes())
    tracemalloc.start()
    imap = identity.IdentityMap(identity.SqliteStore(copy))
    for chunk in made:
        imap.account(stream, chunk)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    imap.close(write=False)
    os.remove(copy)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=200_000)
    args = parser.parse_args()
    rows = records(args.people)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "ledger.sqlite")
        first = run(path, rows)
        second = run(path, rows)
        size = os.path.getsize(path) + sum(
            os.path.getsize(p) for p in (f"{path}-wal",) if os.path.exists(p)
        )
    n = args.people
    print(f"identity map, {n:,} people (an id and an email each), {identity.__file__}:")
    print(f"  ledger file: {size / n:.0f} bytes a person")
    for name, (making, checking, sink, peak) in (("new map", first), ("known people", second)):
        print(
            f"  {name:13} claims {making / n * 1e6:.2f} µs a record (mapping), "
            f"check {checking / n * 1e6:.2f} µs a record ({sink / n * 1e6:.2f} in the sink's "
            "thread, the rest writing the map), "
            f"peak memory {peak / 2**20:.0f} MB ({peak / min(n, identity.CACHE_CLAIMS // 3):.0f} "
            "bytes a cached person; the cache is bounded)"
        )


if __name__ == "__main__":
    main()
