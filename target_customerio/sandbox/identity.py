"""Identity in the sandbox, as Customer.io behaves: a person's activity log for attribute
changes and merges, and the profiles nobody identified.

- An identify that sets an `email` (or `id`) another person holds changes neither the identifier
  nor the attribute; the person gets a `failed_attribute_change` activity naming the value
  (operations._identify records it). The Track API still answers 200.
- An identify that changes attributes leaves one `attribute_change` activity with what changed
  (`attribute_changes`); a merge leaves a `profile_merge` on the person kept.
- An event for a person who does not exist creates an empty profile (operations.py): a "ghost",
  never identified (its `updated` is still 0), which the QA page flags (`ghosts`).

The activities are the store's (store.Store.activity, store.Store.activities).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from target_customerio.sandbox.store import Store


def attribute_changes(store: Store, cio_id: str, before: dict, after: dict) -> None:
    """One `attribute_change` activity for what an identify changed (nothing when nothing did)."""
    changed = {
        name: [before.get(name), after.get(name)]
        for name in before.keys() | after.keys()
        if before.get(name) != after.get(name)
    }
    if changed:
        store.activity(cio_id, "attribute_change", None, time.time(), {"changes": changed})


def ghosts(store: Store) -> set[str]:
    """The cio_ids of profiles that exist only because something named them (an event for
    nobody): never identified, not suppressed."""
    rows = store.rows("SELECT cio_id FROM people WHERE updated = 0 AND suppressed = 0")
    return {row["cio_id"] for row in rows}


def conflicts(store: Store) -> dict[str, int]:
    """cio_id -> failed_attribute_change activities: identifies that were refused."""
    rows = store.rows(
        "SELECT cio_id, COUNT(*) AS n FROM activities WHERE type = 'failed_attribute_change' "
        "GROUP BY cio_id"
    )
    return {row["cio_id"]: row["n"] for row in rows}
