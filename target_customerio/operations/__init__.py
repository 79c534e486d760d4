"""The Customer.io operation kinds, one module each, over shared helpers.

A kind module (person, event, merge, objects, segment, reconcile) declares its route options, reads
and checks them, and builds each record's operations (`Builder.build` -> `Built`: the
operations with their identifier and time). The helpers every kind shares: identifiers.py,
payload.py
(attributes and event data), timestamps.py, event_ids.py and operation.py (what a builder
returns, sizes, ledger entries); delete.py says how taps mark deleted rows.

Adding a Customer.io operation is one new module here, listed in KINDS, and its test module.
"""

from __future__ import annotations

from target_customerio.operations import event, merge, objects, person, reconcile, segment
from target_customerio.operations.operation import Kind

KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (person.KIND, event.KIND, merge.KIND, objects.KIND, segment.KIND, reconcile.KIND)
}
