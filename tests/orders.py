"""The orders stream the tests send as events: its route, its SCHEMA and its records."""

from __future__ import annotations

from tests.harness import record, schema

ORDERS = "public-orders"
ORDER_ROUTE = {
    "kind": "event",
    "identifier": {"field": "customer_id", "type": "id"},
    "event_name": "order_placed",
    "event_id": ["order_id"],
    "timestamp": "placed_at",
}
ORDER_SCHEMA = schema(
    ORDERS,
    {
        "order_id": {"type": "integer"},
        "customer_id": {"type": "string"},
        "placed_at": {"type": "string", "format": "date-time"},
    },
)


def order(order_id: int, customer_id: str, placed_at: str) -> dict:
    """One order's RECORD message (`placed_at` an ISO 8601 time)."""
    return record(
        ORDERS, {"order_id": order_id, "customer_id": customer_id, "placed_at": placed_at}
    )
