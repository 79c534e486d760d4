"""A sample D2C retention database: tables, the views a retention team publishes, and data.

    python -m demo.sample_data --dsn postgresql://postgres:postgres@127.0.0.1:54329/shop
    python -m demo.sample_data --dsn ... --mutate      # the "second night" changes

`load()` drops and recreates everything in schema `public` and fills it with deterministic data
(same `seed` and `now` -> same rows). Event times are relative to `now`: most within the last
48 hours, some older than 3 days (for a `max_age` guard to skip). Every generated time is at
least 5 minutes before `now`, so `mutate()` rows (stamped within the minute before its own `now`)
always sort after the first night's bookmarks.

The views are what the target syncs (tap-postgres streams `public-<view>`):

    customer_profiles        one row per customer; replication key updated_at
    checkout_started_events  replication key started_at     (dedupe: event_key)
    order_placed_events      replication key placed_at      (DIRTY: one row per line item;
                                                             dedupe by order_id)
    order_fulfilled_events   replication key fulfilled_at   (dedupe: order_id)
    refund_issued_events     replication key issued_at      (dedupe: refund_id)
    subscription_events      replication key occurred_at    (dedupe: event_key; event_name varies)
    segment_checks           the reconcile checks: one row per Customer.io segment (segment_id,
                             expected, tolerance), read whole by the `reconcile-segments` job
    vip_customers            the VIPs (lifetime_value >= 300): customer_id, vip, vip_tier; read
                             whole (FULL_TABLE) by a mirror route: who leaves loses `vip`
    vip_segment              the same people as (customer_id, segment_id 3): the manual segment
                             "VIP (from SQL)", mirrored by a `kind: segment` route

Dirty cases from the field, on purpose: padded / mixed-case emails, customers with NULL or ''
email, a guest checkout (customer_id NULL) whose email later registered as a customer (in a
different case), refunds issued days after the order, a zero-total order, numeric money columns.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import psycopg2
from psycopg2.extras import execute_values

VIEWS = [
    "customer_profiles",
    "checkout_started_events",
    "order_placed_events",
    "order_fulfilled_events",
    "refund_issued_events",
    "subscription_events",
]
# The view the reconcile job reads (not synced as people or events: kind: reconcile).
CHECKS_VIEW = "segment_checks"
# Its segment ids are the ones demo/segments.json defines in the demo's sandbox.
# The mirrored views (FULL_TABLE, routes with `mirror: true` / `kind: segment`): the VIPs are the
# customers whose lifetime value (orders that are not canceled, less refunds: customer_profiles'
# own lifetime_value) is at least VIP_MIN_VALUE; gold from VIP_GOLD_VALUE, silver below.
VIP_VIEW = "vip_customers"
VIP_SEGMENT_VIEW = "vip_segment"
VIP_SEGMENT_ID = 3  # the manual segment "VIP (from SQL)" of demo/segments.json
VIP_MIN_VALUE = Decimal("300")
VIP_GOLD_VALUE = Decimal("500")
TABLES = [
    "customers",
    "products",
    "orders",
    "order_items",
    "checkouts",
    "fulfillments",
    "refunds",
    "subscriptions",
]
# The column each view is synced incrementally on, and the column that identifies one event.
REPLICATION_KEYS = {
    "customer_profiles": "updated_at",
    "checkout_started_events": "started_at",
    "order_placed_events": "placed_at",
    "order_fulfilled_events": "fulfilled_at",
    "refund_issued_events": "issued_at",
    "subscription_events": "occurred_at",
}
EVENT_KEYS = {
    "checkout_started_events": "event_key",
    "order_placed_events": "order_id",
    "order_fulfilled_events": "order_id",
    "refund_issued_events": "refund_id",
    "subscription_events": "event_key",
}
MIN_CUSTOMERS = 20

# --- schema ----------------------------------------------------------------------------------

DROP_SQL = """
DROP VIEW IF EXISTS vip_segment, vip_customers, segment_checks, customer_profiles,
    checkout_started_events, order_placed_events, order_fulfilled_events, refund_issued_events,
    subscription_events CASCADE;
DROP TABLE IF EXISTS refunds, fulfillments, checkouts, order_items, orders, subscriptions,
    products, customers CASCADE;
"""

TABLES_SQL = """
CREATE TABLE customers (
    customer_id   text PRIMARY KEY,                 -- 'C000123'
    email         text,                             -- raw: may be padded, mixed case, NULL or ''
    first_name    text,
    last_name     text,
    email_opt_in  boolean NOT NULL DEFAULT false,
    sms_opt_in    boolean NOT NULL DEFAULT false,
    phone         text,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);

CREATE TABLE products (
    sku             text PRIMARY KEY,
    name            text NOT NULL,
    category        text NOT NULL,
    price           numeric(12,2) NOT NULL,
    replenish_days  integer                         -- days one unit lasts; NULL if durable
);

CREATE TABLE orders (
    order_id     bigint PRIMARY KEY,
    customer_id  text NOT NULL REFERENCES customers,
    placed_at    timestamptz NOT NULL,
    total        numeric(12,2) NOT NULL,
    currency     text NOT NULL,
    status       text NOT NULL
                 CHECK (status IN ('paid', 'fulfilled', 'partially_refunded', 'refunded',
                                   'canceled'))
);

CREATE TABLE order_items (
    order_id     bigint NOT NULL REFERENCES orders,
    line_number  integer NOT NULL,
    sku          text NOT NULL REFERENCES products,
    quantity     integer NOT NULL,
    unit_price   numeric(12,2) NOT NULL,
    PRIMARY KEY (order_id, line_number)
);

CREATE TABLE checkouts (
    checkout_id         text PRIMARY KEY,           -- 'chk_000123'
    customer_id         text REFERENCES customers,  -- NULL for guest checkouts
    email               text,
    started_at          timestamptz NOT NULL,
    cart_value          numeric(12,2) NOT NULL,
    items_count         integer NOT NULL,
    currency            text NOT NULL,
    cart_token          text NOT NULL,
    completed_order_id  bigint REFERENCES orders    -- NULL = abandoned (so far)
);

CREATE TABLE fulfillments (
    fulfillment_id   bigint PRIMARY KEY,
    order_id         bigint NOT NULL REFERENCES orders,
    fulfilled_at     timestamptz NOT NULL,
    carrier          text NOT NULL,
    tracking_number  text NOT NULL
);

CREATE TABLE refunds (
    refund_id  text PRIMARY KEY,                    -- 'RF00012'
    order_id   bigint NOT NULL REFERENCES orders,
    amount     numeric(12,2) NOT NULL,
    issued_at  timestamptz NOT NULL,
    reason     text NOT NULL
);

CREATE TABLE subscriptions (
    subscription_id  text PRIMARY KEY,              -- 'SUB0007'
    customer_id      text NOT NULL REFERENCES customers,
    sku              text NOT NULL REFERENCES products,
    status           text NOT NULL CHECK (status IN ('active', 'paused', 'canceled')),
    interval_days    integer NOT NULL,
    next_charge_at   timestamptz,
    paused_at        timestamptz,
    canceled_at      timestamptz,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
"""

VIEWS_SQL = """
-- One row per customer, with the retention state Customer.io segments on.
-- updated_at moves forward when the customer, their orders, refunds or subscriptions change.
CREATE VIEW customer_profiles AS
WITH order_stats AS (
    SELECT customer_id,
           count(*) FILTER (WHERE status <> 'canceled')::integer AS orders_count,
           max(placed_at) FILTER (WHERE status <> 'canceled')    AS last_order_at,
           coalesce(sum(total) FILTER (WHERE status <> 'canceled'), 0) AS gross,
           max(placed_at)                                        AS changed_at
    FROM orders
    GROUP BY customer_id
), refund_stats AS (
    SELECT o.customer_id, sum(r.amount) AS refunded, max(r.issued_at) AS changed_at
    FROM refunds r JOIN orders o USING (order_id)
    GROUP BY o.customer_id
), last_order AS (
    SELECT DISTINCT ON (customer_id) customer_id, order_id, placed_at
    FROM orders
    WHERE status <> 'canceled'
    ORDER BY customer_id, placed_at DESC, order_id DESC
), reorder AS (
    SELECT lo.customer_id, lo.placed_at + make_interval(days => min(p.replenish_days)) AS due_at
    FROM last_order lo
    JOIN order_items oi USING (order_id)
    JOIN products p USING (sku)
    WHERE p.replenish_days IS NOT NULL
    GROUP BY lo.customer_id, lo.placed_at
), main_subscription AS (
    SELECT DISTINCT ON (customer_id) customer_id, status, next_charge_at
    FROM subscriptions
    ORDER BY customer_id,
             CASE status WHEN 'active' THEN 0 WHEN 'paused' THEN 1 ELSE 2 END,
             updated_at DESC
), subscription_changes AS (
    SELECT customer_id, max(updated_at) AS changed_at
    FROM subscriptions
    GROUP BY customer_id
)
SELECT c.customer_id,
       c.email,
       c.first_name,
       c.last_name,
       c.email_opt_in,
       c.sms_opt_in,
       coalesce(s.status = 'active', false)                            AS is_subscriber,
       coalesce(s.status, 'none')                                      AS subscription_status,
       os.last_order_at,
       coalesce(os.orders_count, 0)                                    AS orders_count,
       (coalesce(os.gross, 0) - coalesce(rs.refunded, 0))::numeric(12,2) AS lifetime_value,
       CASE WHEN s.status = 'active' THEN s.next_charge_at ELSE ro.due_at END
                                                                       AS next_reorder_due_at,
       greatest(c.updated_at, os.changed_at, rs.changed_at, sc.changed_at) AS updated_at
FROM customers c
LEFT JOIN order_stats os          USING (customer_id)
LEFT JOIN refund_stats rs         USING (customer_id)
LEFT JOIN reorder ro              USING (customer_id)
LEFT JOIN main_subscription s     USING (customer_id)
LEFT JOIN subscription_changes sc USING (customer_id);

-- Every checkout start, converted or not; guests have customer_id NULL and only an email.
CREATE VIEW checkout_started_events AS
SELECT 'checkout:' || ch.checkout_id                      AS event_key,
       ch.customer_id,
       ch.email,
       ch.checkout_id,
       ch.started_at,
       ch.cart_value,
       ch.items_count,
       ch.currency,
       'https://shop.example.com/cart/recover/' || ch.cart_token AS cart_url,
       ch.completed_order_id IS NOT NULL                  AS converted
FROM checkouts ch;

-- DIRTY ON PURPOSE (as found in the field): joined to the line items, so an order appears
-- once per line. Whoever syncs it must dedupe by order_id.
CREATE VIEW order_placed_events AS
SELECT o.order_id,
       o.customer_id,
       o.placed_at,
       o.total,
       o.currency,
       (sum(oi.quantity) OVER (PARTITION BY o.order_id))::integer AS items_count,
       oi.sku
FROM orders o
JOIN order_items oi USING (order_id);

CREATE VIEW order_fulfilled_events AS
SELECT f.order_id, o.customer_id, f.fulfilled_at, f.carrier
FROM fulfillments f
JOIN orders o USING (order_id);

CREATE VIEW refund_issued_events AS
SELECT r.refund_id, r.order_id, o.customer_id, r.issued_at, r.amount, r.reason
FROM refunds r
JOIN orders o USING (order_id);

-- One view, many event types: event_name says which.
CREATE VIEW subscription_events AS
SELECT 'subscription_paused:' || s.subscription_id || ':'
           || extract(epoch FROM s.paused_at)::bigint     AS event_key,
       s.customer_id,
       'subscription_paused'::text                        AS event_name,
       s.paused_at                                        AS occurred_at,
       s.subscription_id,
       s.interval_days
FROM subscriptions s
WHERE s.paused_at IS NOT NULL
UNION ALL
SELECT 'subscription_canceled:' || s.subscription_id || ':'
           || extract(epoch FROM s.canceled_at)::bigint,
       s.customer_id,
       'subscription_canceled'::text,
       s.canceled_at,
       s.subscription_id,
       s.interval_days
FROM subscriptions s
WHERE s.canceled_at IS NOT NULL;

-- The reconcile checks: one row per Customer.io segment with the count the database says it
-- should have (route kind: reconcile; the job reconcile-segments). Counted from the tables with
-- customer_profiles' own definitions (orders that are not canceled), not from customer_profiles
-- itself: a bug in the published view must not move the expected count along with it.
--   1 canary:    orders_count >= 2 AND last_order_at within 60 days   (within 2%)
--   2 guardrail: orders_count > 0 AND last_order_at blank             (0, exactly: placed_at is
--                NOT NULL, so a non-empty segment means the sync lost last_order_at)
CREATE VIEW segment_checks AS
WITH order_stats AS (
    SELECT customer_id,
           count(*) FILTER (WHERE status <> 'canceled')::integer AS orders_count,
           max(placed_at) FILTER (WHERE status <> 'canceled')    AS last_order_at
    FROM orders
    GROUP BY customer_id
), people AS (
    SELECT c.customer_id, coalesce(os.orders_count, 0) AS orders_count, os.last_order_at
    FROM customers c
    LEFT JOIN order_stats os USING (customer_id)
)
SELECT 1 AS segment_id,
       (count(*) FILTER (WHERE orders_count >= 2
                           AND last_order_at BETWEEN now() - interval '60 days' AND now()))::integer
           AS expected,
       '2%'::text AS tolerance
FROM people
UNION ALL
SELECT 2,
       (count(*) FILTER (WHERE orders_count > 0 AND last_order_at IS NULL))::integer,
       '0'::text
FROM people;

-- The VIPs, for a mirror route (FULL_TABLE): lifetime value (orders that are not canceled, less
-- refunds, as customer_profiles.lifetime_value) of at least 300; gold from 500. Someone whose
-- value drops below 300 (a refund) leaves the view, and the route removes `vip` and `vip_tier`.
CREATE VIEW vip_customers AS
WITH value AS (
    SELECT c.customer_id,
           (coalesce((SELECT sum(o.total) FROM orders o
                      WHERE o.customer_id = c.customer_id AND o.status <> 'canceled'), 0)
            - coalesce((SELECT sum(r.amount) FROM refunds r JOIN orders o USING (order_id)
                        WHERE o.customer_id = c.customer_id), 0))::numeric(12,2) AS lifetime_value
    FROM customers c
)
SELECT customer_id,
       true AS vip,
       CASE WHEN lifetime_value >= 500 THEN 'gold' ELSE 'silver' END AS vip_tier
FROM value
WHERE lifetime_value >= 300;

-- The same people as members of the manual segment "VIP (from SQL)" (id 3, demo/segments.json),
-- for a `kind: segment` route: a row that disappears removes the person from the segment.
CREATE VIEW vip_segment AS
SELECT customer_id, 3 AS segment_id FROM vip_customers;
"""

# A "broken sync" for the demo's later night (run_demo `again --broken`, `make demo-again
# NIGHT=3`): customer_profiles redeployed with a bug that publishes last_order_at as NULL. Every
# profile that changes from then on reaches Customer.io without it (an attribute sent as null is
# removed), so the guardrail segment fills and the reconcile check fails (exit 7).
BROKEN_MARK = "broken: last_order_at is not published (the demo's broken night)"
BROKEN_COLUMN = "NULL::timestamptz AS last_order_at,  -- the bug"

# sku, name, category, price, replenish_days
PRODUCTS: list[tuple[str, str, str, str, int | None]] = [
    ("COF-HOUSE-12", "House Blend Coffee 12oz", "coffee", "16.00", 21),
    ("COF-DECAF-12", "Swiss Water Decaf 12oz", "coffee", "17.50", 21),
    ("COF-ESPR-2LB", "Espresso Roast 2lb", "coffee", "38.00", 45),
    ("TEA-SENCHA-50", "Sencha Green Tea 50g", "tea", "12.25", 30),
    ("SKN-SERUM-30", "Vitamin C Serum 30ml", "skincare", "34.99", 45),
    ("SKN-SPF-50", "Daily Mineral SPF 50", "skincare", "24.00", 60),
    ("SUP-PROT-VAN", "Whey Protein Vanilla 2lb", "supplements", "49.90", 30),
    ("RZR-BLADE-8", "Razor Blades 8-pack", "shaving", "19.00", 56),
    ("GRD-BURR-01", "Burr Grinder", "equipment", "129.00", None),
    ("BTL-STEEL-1L", "Steel Bottle 1L", "equipment", "32.00", None),
]
REPLENISHABLE = [p[0] for p in PRODUCTS if p[4] is not None]
PRICES = {p[0]: Decimal(p[3]) for p in PRODUCTS}
FIRST_NAMES = [
    "Ava",
    "Liam",
    "Mia",
    "Noah",
    "Zoe",
    "Omar",
    "Priya",
    "Lucas",
    "Hana",
    "Mateo",
    "Chloe",
    "Ethan",
    "Sofia",
    "Kenji",
    "Amara",
    "Leo",
    "Nora",
    "Diego",
    "Ines",
    "Sam",
]
LAST_NAMES = [
    "Nguyen",
    "Smith",
    "Garcia",
    "Okafor",
    "Kowalski",
    "Haddad",
    "Silva",
    "Chen",
    "Brown",
    "Muller",
    "Rossi",
    "Patel",
    "Kim",
    "Dubois",
    "Larsen",
    "Moreau",
]
DOMAINS = ["example.com", "example.org", "mail.example.net"]
CARRIERS = ["UPS", "USPS", "FedEx", "DHL"]
REFUND_REASONS = ["damaged", "changed_mind", "late_delivery", "wrong_item"]

HOUR = 3600
DAY = 24 * HOUR
FRESH_MARGIN = 5 * 60  # nothing generated by load() is later than now - 5 minutes


# --- data generation -------------------------------------------------------------------------


@dataclass
class _Rows:
    customers: list[dict] = field(default_factory=list)
    orders: list[dict] = field(default_factory=list)
    order_items: list[dict] = field(default_factory=list)
    checkouts: list[dict] = field(default_factory=list)
    fulfillments: list[dict] = field(default_factory=list)
    refunds: list[dict] = field(default_factory=list)
    subscriptions: list[dict] = field(default_factory=list)


class _Generator:
    """Builds the rows for load(): a handful of hand-written field cases, then random customers."""

    def __init__(self, seed: int, now: datetime) -> None:
        self.rng = random.Random(seed)
        self.now = now
        self.rows = _Rows()
        self.refunded: dict[int, Decimal] = {}

    # time helpers: seconds ago -> timestamp
    def ago(self, seconds: float) -> datetime:
        return self.now - timedelta(seconds=int(max(seconds, FRESH_MARGIN)))

    def fresh(self) -> datetime:
        """Within the last 48 hours."""
        return self.ago(self.rng.uniform(FRESH_MARGIN, 47 * HOUR))

    def old(self) -> datetime:
        """Older than 3 days (a max_age guard skips these)."""
        return self.ago(self.rng.uniform(3.5 * DAY, 365 * DAY))

    def token(self) -> str:
        return f"{self.rng.getrandbits(64):016x}"

    # row builders
    def add_customer(self, **values: Any) -> dict:
        n = len(self.rows.customers) + 1
        created = values.pop("created_at", None) or self.ago(self.rng.uniform(3 * DAY, 700 * DAY))
        age = (self.now - created).total_seconds()
        row = {
            "customer_id": f"C{n:06d}",
            "email": None,
            "first_name": None,
            "last_name": None,
            "email_opt_in": False,
            "sms_opt_in": False,
            "phone": None,
            "created_at": created,
            "updated_at": self.ago(age * self.rng.uniform(0.0, 1.0)),
            **values,
        }
        self.rows.customers.append(row)
        return row

    def add_order(
        self,
        customer: dict,
        placed_at: datetime,
        lines: list[tuple[str, int]] | None = None,
        *,
        discount: Decimal = Decimal(0),
        currency: str = "USD",
        canceled: bool = False,
        fulfill: bool | None = None,
    ) -> dict:
        order_id = 100001 + len(self.rows.orders)
        lines = lines or self.random_lines()
        for number, (sku, qty) in enumerate(lines, start=1):
            self.rows.order_items.append(
                {
                    "order_id": order_id,
                    "line_number": number,
                    "sku": sku,
                    "quantity": qty,
                    "unit_price": PRICES[sku],
                }
            )
        subtotal = sum((PRICES[sku] * qty for sku, qty in lines), Decimal(0))
        order = {
            "order_id": order_id,
            "customer_id": customer["customer_id"],
            "placed_at": placed_at,
            "total": _money(subtotal * (1 - discount)),
            "currency": currency,
            "status": "canceled" if canceled else "paid",
        }
        self.rows.orders.append(order)
        self.add_checkout(
            customer,
            placed_at - timedelta(minutes=self.rng.randint(2, 30)),
            lines,
            currency=currency,
            order=order,
        )
        if not canceled:
            self.maybe_fulfill(order, fulfill)
        return order

    def random_lines(self) -> list[tuple[str, int]]:
        count = self.rng.choices([1, 2, 3, 4], weights=[40, 30, 20, 10])[0]
        skus = self.rng.sample([p[0] for p in PRODUCTS], count)
        return [(sku, self.rng.choices([1, 2, 3], weights=[70, 20, 10])[0]) for sku in skus]

    def add_checkout(
        self,
        customer: dict | None,
        started_at: datetime,
        lines: list[tuple[str, int]] | None = None,
        *,
        email: str | None = None,
        currency: str = "USD",
        order: dict | None = None,
    ) -> dict:
        lines = lines or self.random_lines()
        row = {
            "checkout_id": f"chk_{len(self.rows.checkouts) + 1:06d}",
            "customer_id": customer["customer_id"] if customer else None,
            "email": email if email is not None else (customer or {}).get("email"),
            "started_at": started_at,
            "cart_value": _money(sum((PRICES[s] * q for s, q in lines), Decimal(0))),
            "items_count": sum(q for _, q in lines),
            "currency": currency,
            "cart_token": self.token(),
            "completed_order_id": order["order_id"] if order else None,
        }
        self.rows.checkouts.append(row)
        return row

    def maybe_fulfill(self, order: dict, fulfill: bool | None) -> None:
        age = (self.now - order["placed_at"]).total_seconds()
        if fulfill is None:
            chance = 0.95 if age > 30 * HOUR else 0.5 if age > 6 * HOUR else 0.0
            fulfill = self.rng.random() < chance
        latest = age - FRESH_MARGIN
        if not fulfill or latest < 2 * HOUR:
            return
        after = self.rng.uniform(2 * HOUR, min(28 * HOUR, latest))
        self.rows.fulfillments.append(
            {
                "fulfillment_id": len(self.rows.fulfillments) + 1,
                "order_id": order["order_id"],
                "fulfilled_at": order["placed_at"] + timedelta(seconds=int(after)),
                "carrier": self.rng.choice(CARRIERS),
                "tracking_number": f"1Z{self.rng.getrandbits(40):012X}",
            }
        )
        order["status"] = "fulfilled"

    def add_refund(self, order: dict, issued_at: datetime, amount: Decimal, reason: str) -> dict:
        row = {
            "refund_id": f"RF{len(self.rows.refunds) + 1:05d}",
            "order_id": order["order_id"],
            "amount": _money(amount),
            "issued_at": issued_at,
            "reason": reason,
        }
        self.rows.refunds.append(row)
        refunded = self.refunded.get(order["order_id"], Decimal(0)) + row["amount"]
        self.refunded[order["order_id"]] = refunded
        order["status"] = "refunded" if refunded >= order["total"] else "partially_refunded"
        return row

    def add_subscription(
        self,
        customer: dict,
        sku: str,
        status: str,
        *,
        created_at: datetime,
        paused_at: datetime | None = None,
        canceled_at: datetime | None = None,
    ) -> dict:
        interval = self.rng.choice([30, 45, 60])
        next_charge = None
        if status == "active":
            next_charge = self.now + timedelta(seconds=int(self.rng.uniform(DAY, interval * DAY)))
        changes = [t for t in (created_at, paused_at, canceled_at) if t is not None]
        row = {
            "subscription_id": f"SUB{len(self.rows.subscriptions) + 1:04d}",
            "customer_id": customer["customer_id"],
            "sku": sku,
            "status": status,
            "interval_days": interval,
            "next_charge_at": next_charge,
            "paused_at": paused_at,
            "canceled_at": canceled_at,
            "created_at": created_at,
            "updated_at": max(changes),
        }
        self.rows.subscriptions.append(row)
        return row


def _money(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def _field_cases(g: _Generator) -> None:
    """C000001..C000010: the cases users hit in the field, written out by hand."""
    # C000001 padded, mixed-case email; active subscriber; a fresh 3-line order (3 view rows).
    jane = g.add_customer(
        email="  Jane.Doe@Example.COM ",
        first_name="Jane",
        last_name="Doe",
        email_opt_in=True,
        sms_opt_in=True,
        phone="+1 (555) 010-0001",
    )
    first = g.add_order(jane, g.ago(40 * DAY), [("COF-HOUSE-12", 2)], fulfill=True)
    g.add_order(
        jane,
        g.ago(20 * HOUR),
        [("COF-HOUSE-12", 2), ("GRD-BURR-01", 1), ("BTL-STEEL-1L", 1)],
        fulfill=True,
    )
    g.add_subscription(jane, "COF-HOUSE-12", "active", created_at=first["placed_at"])
    # C000002 no email at all (SMS only).
    sam = g.add_customer(
        first_name="Sam", last_name="Okafor", sms_opt_in=True, phone="555.010.0002"
    )
    g.add_order(sam, g.ago(9 * HOUR), [("SUP-PROT-VAN", 1)], fulfill=False)
    # C000003 empty-string email; an abandoned fresh checkout.
    ines = g.add_customer(email="", first_name="Ines", last_name="Silva")
    g.add_checkout(ines, g.ago(3 * HOUR), [("SKN-SERUM-30", 1)])
    # C000004 started a guest checkout 40h ago, registered 20h ago in another case, then ordered.
    g.add_checkout(None, g.ago(40 * HOUR), [("TEA-SENCHA-50", 2)], email="guest.buyer@example.com ")
    guest = g.add_customer(
        email="Guest.Buyer@Example.com",
        first_name="Priya",
        last_name="Patel",
        email_opt_in=True,
        created_at=g.ago(20 * HOUR),
    )
    guest["updated_at"] = guest["created_at"]
    g.add_order(guest, g.ago(10 * HOUR), [("TEA-SENCHA-50", 2)], fulfill=False)
    # C000005 ordered 10 days ago; refund issued yesterday (days after the order).
    leo = g.add_customer(
        email="leo.chen@example.org", first_name="Leo", last_name="Chen", email_opt_in=True
    )
    late = g.add_order(leo, g.ago(10 * DAY), [("SKN-SPF-50", 2), ("RZR-BLADE-8", 1)], fulfill=True)
    g.add_refund(late, g.ago(26 * HOUR), PRICES["SKN-SPF-50"], "damaged")
    # C000006 paused subscription (fresh event).
    mia = g.add_customer(
        email="mia.rossi@example.com", first_name="Mia", last_name="Rossi", email_opt_in=True
    )
    start = g.add_order(mia, g.ago(50 * DAY), [("COF-ESPR-2LB", 1)], fulfill=True)
    g.add_subscription(
        mia, "COF-ESPR-2LB", "paused", created_at=start["placed_at"], paused_at=g.ago(5 * HOUR)
    )
    # C000007 paused 4 days ago (old event), canceled 20h ago (fresh event).
    omar = g.add_customer(
        email="OMAR.HADDAD@EXAMPLE.NET", first_name="Omar", last_name="Haddad", email_opt_in=True
    )
    start = g.add_order(omar, g.ago(90 * DAY), [("RZR-BLADE-8", 2)], fulfill=True)
    g.add_subscription(
        omar,
        "RZR-BLADE-8",
        "canceled",
        created_at=start["placed_at"],
        paused_at=g.ago(4 * DAY),
        canceled_at=g.ago(20 * HOUR),
    )
    # C000008 canceled 10 days ago (old event only).
    hana = g.add_customer(email="hana.kim@example.com", first_name="Hana", last_name="Kim")
    start = g.add_order(hana, g.ago(100 * DAY), [("TEA-SENCHA-50", 1)], fulfill=True)
    g.add_subscription(
        hana,
        "TEA-SENCHA-50",
        "canceled",
        created_at=start["placed_at"],
        canceled_at=g.ago(10 * DAY),
    )
    # C000009 opted out of email, never ordered; abandoned a checkout 5 days ago (old).
    nora = g.add_customer(email="nora.larsen@example.com", first_name="Nora", last_name="Larsen")
    g.add_checkout(nora, g.ago(5 * DAY), [("SKN-SERUM-30", 1), ("SKN-SPF-50", 1)])
    # C000010 a 100%-discount order (total 0.00) and a large CAD order with cents.
    diego = g.add_customer(
        email="diego.garcia@example.com",
        first_name="Diego",
        last_name="Garcia",
        email_opt_in=True,
        phone="+15550100010",
    )
    g.add_order(diego, g.ago(30 * HOUR), [("BTL-STEEL-1L", 1)], discount=Decimal(1))
    g.add_order(
        diego,
        g.ago(2 * HOUR),
        [("GRD-BURR-01", 9), ("COF-ESPR-2LB", 2)],
        currency="CAD",
        discount=Decimal("0.02"),
    )


def _random_customer(g: _Generator) -> None:
    rng = g.rng
    n = len(g.rows.customers) + 1
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    email: str | None = f"{first}.{last}{n}@{rng.choice(DOMAINS)}".lower()
    roll = rng.random()
    if roll < 0.04:
        email = None
    elif roll < 0.10:
        email = f"{first}.{last}{n}@{rng.choice(DOMAINS)}".title()
    elif roll < 0.14:
        email = f" {email}  "
    phone = rng.choice(
        [None, None, f"+1 555 01{n % 100:02d} {n:04d}", f"(555) 01{n % 100:02d}-{n:04d}"]
    )
    customer = g.add_customer(
        email=email,
        first_name=first,
        last_name=last,
        email_opt_in=rng.random() < 0.75,
        sms_opt_in=phone is not None and rng.random() < 0.5,
        phone=phone,
    )
    _random_orders(g, customer)
    if rng.random() < 0.3:
        g.add_checkout(customer, g.fresh() if rng.random() < 0.8 else g.old())


def _random_orders(g: _Generator, customer: dict) -> None:
    rng = g.rng
    count = rng.choices([0, 1, 2, 3, 4], weights=[25, 35, 20, 12, 8])[0]
    currency = "CAD" if rng.random() < 0.1 else "USD"
    times = sorted(g.fresh() if rng.random() < 0.75 else g.old() for _ in range(count))
    orders = [
        g.add_order(
            customer,
            placed_at,
            currency=currency,
            discount=Decimal("0.15") if rng.random() < 0.05 else Decimal(0),
            canceled=rng.random() < 0.03,
        )
        for placed_at in times
    ]
    for order in orders:
        _maybe_refund(g, order)
    if orders and rng.random() < 0.2:
        _random_subscription(g, customer, orders[0])


def _maybe_refund(g: _Generator, order: dict) -> None:
    """Some fulfilled orders get a refund, always at least a day after the order; mostly fresh."""
    rng = g.rng
    if order["status"] != "fulfilled" or rng.random() > 0.12:
        return
    if rng.random() < 0.7:
        issued_at = g.fresh()
    else:
        issued_at = order["placed_at"] + timedelta(seconds=int(rng.uniform(DAY, 10 * DAY)))
    if issued_at < order["placed_at"] + timedelta(days=1) or issued_at > g.ago(FRESH_MARGIN):
        return
    amount = order["total"] if rng.random() < 0.5 else _money(order["total"] / 2)
    g.add_refund(order, issued_at, amount, rng.choice(REFUND_REASONS))


def _random_subscription(g: _Generator, customer: dict, first_order: dict) -> None:
    rng = g.rng
    status = rng.choices(["active", "paused", "canceled"], weights=[70, 15, 15])[0]
    created = first_order["placed_at"]
    changed = None
    if status != "active":
        changed = max(created + timedelta(hours=1), g.fresh() if rng.random() < 0.7 else g.old())
        changed = min(changed, g.ago(FRESH_MARGIN))
    g.add_subscription(
        customer,
        rng.choice(REPLENISHABLE),
        status,
        created_at=created,
        paused_at=changed if status == "paused" else None,
        canceled_at=changed if status == "canceled" else None,
    )


def generate(customers: int, seed: int, now: datetime) -> _Rows:
    """All rows for load(), deterministic for (customers, seed, now)."""
    if customers < MIN_CUSTOMERS:
        raise ValueError(f"customers must be at least {MIN_CUSTOMERS}")
    g = _Generator(seed, now)
    _field_cases(g)
    while len(g.rows.customers) < customers:
        _random_customer(g)
    return g.rows


# --- loading ---------------------------------------------------------------------------------


def load(
    dsn: str, *, customers: int = 200, seed: int = 7, now: datetime | None = None
) -> dict[str, int]:
    """Drop and recreate the sample schema in `dsn`, fill it; return row counts per table/view.

    The counts also carry `order_placed_events_distinct_orders` (fewer than the view's rows).
    """
    now = _as_utc(now)
    rows = generate(customers, seed, now)
    with _connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(DROP_SQL)
        cur.execute(TABLES_SQL)
        cur.execute(VIEWS_SQL)
        execute_values(cur, "INSERT INTO products VALUES %s", PRODUCTS)
        for table in TABLES:
            if table != "products":
                _insert(cur, table, getattr(rows, table))
        return _counts(cur)


def _insert(cur: Any, table: str, rows: list[dict]) -> None:
    if not rows:
        return
    columns = list(rows[0])
    query = f"INSERT INTO {table} ({', '.join(columns)}) VALUES %s"
    execute_values(cur, query, [tuple(r[c] for c in columns) for r in rows])


def _counts(cur: Any) -> dict[str, int]:
    counts = {}
    for name in TABLES + VIEWS + [CHECKS_VIEW, VIP_VIEW, VIP_SEGMENT_VIEW]:
        cur.execute(f"SELECT count(*) FROM {name}")
        counts[name] = cur.fetchone()[0]
    cur.execute("SELECT count(DISTINCT order_id) FROM order_placed_events")
    counts["order_placed_events_distinct_orders"] = cur.fetchone()[0]
    return counts


def _connect(dsn: str) -> Any:
    conn = psycopg2.connect(dsn)
    conn.autocommit = False
    return _Transaction(conn)


class _Transaction:
    """`with _connect(dsn) as conn`: commit on success, roll back on error, always close."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def __enter__(self) -> Any:
        return self.conn

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            if exc_type is None:
                self.conn.commit()
            else:
                self.conn.rollback()
        finally:
            self.conn.close()


def _as_utc(now: datetime | None) -> datetime:
    """`now` as an aware UTC datetime, whole seconds. Naive datetimes are taken as UTC."""
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    return now.astimezone(timezone.utc).replace(microsecond=0)


# --- the second night ------------------------------------------------------------------------

MUTATE_ATTRIBUTES_SQL = """
-- Jane unsubscribes from SMS; Sam (no email) finally gives one; the newest customer changes name.
UPDATE customers SET sms_opt_in = false, updated_at = %(now)s WHERE customer_id = 'C000001';
UPDATE customers SET email = 'Sam.Okafor@Example.com', email_opt_in = true, updated_at = %(now)s
 WHERE customer_id = 'C000002';
UPDATE customers SET last_name = last_name || '-Larsen', updated_at = %(now)s
 WHERE customer_id = (SELECT max(customer_id) FROM customers);
"""

NEW_ORDER_SQL = """
WITH new_order AS (
    INSERT INTO orders (order_id, customer_id, placed_at, total, currency, status)
    SELECT (SELECT max(order_id) + 1 FROM orders), %(customer_id)s, %(at)s,
           p.price * %(quantity)s, 'USD', 'paid'
    FROM products p WHERE p.sku = %(sku)s
    RETURNING order_id, total
), line AS (
    INSERT INTO order_items (order_id, line_number, sku, quantity, unit_price)
    SELECT order_id, 1, %(sku)s, %(quantity)s, total / %(quantity)s FROM new_order
)
INSERT INTO checkouts (checkout_id, customer_id, email, started_at, cart_value, items_count,
                       currency, cart_token, completed_order_id)
SELECT %(checkout_id)s, c.customer_id, c.email, %(at)s - interval '5 minutes', o.total,
       %(quantity)s, 'USD', md5(%(checkout_id)s), o.order_id
FROM new_order o, customers c WHERE c.customer_id = %(customer_id)s
RETURNING completed_order_id
"""

NEW_GUEST_CHECKOUT_SQL = """
INSERT INTO checkouts (checkout_id, customer_id, email, started_at, cart_value, items_count,
                       currency, cart_token, completed_order_id)
SELECT %(checkout_id)s, NULL, ' New.Visitor@Example.com', %(at)s, p.price * 2, 2, 'USD',
       md5(%(checkout_id)s), NULL
FROM products p WHERE p.sku = 'SKN-SERUM-30'
"""

LATE_REFUND_SQL = """
-- A refund for an order placed more than 3 days ago (the oldest such fulfilled order).
WITH target AS (
    SELECT order_id, total FROM orders
    WHERE status = 'fulfilled' AND placed_at < %(at)s - interval '3 days'
    ORDER BY placed_at, order_id LIMIT 1
), refund AS (
    INSERT INTO refunds (refund_id, order_id, amount, issued_at, reason)
    SELECT 'RF' || lpad(((SELECT count(*) FROM refunds) + 1)::text, 5, '0'), order_id, total,
           %(at)s, 'changed_mind'
    FROM target
    RETURNING refund_id, order_id
)
UPDATE orders o SET status = 'refunded' FROM refund r WHERE o.order_id = r.order_id
RETURNING r.refund_id, o.customer_id
"""

FULFILL_SQL = """
-- The oldest paid, unfulfilled order ships.
WITH target AS (
    SELECT order_id FROM orders
    WHERE status = 'paid' AND placed_at < %(at)s - interval '1 hour'
    ORDER BY placed_at, order_id LIMIT 1
), shipped AS (
    INSERT INTO fulfillments (fulfillment_id, order_id, fulfilled_at, carrier, tracking_number)
    SELECT (SELECT coalesce(max(fulfillment_id), 0) + 1 FROM fulfillments), order_id, %(at)s,
           'UPS', '1ZMUTATE' || order_id
    FROM target
    RETURNING order_id
)
UPDATE orders o SET status = 'fulfilled' FROM shipped s WHERE o.order_id = s.order_id
RETURNING o.order_id
"""

PAUSE_SQL = """
-- The first active subscription is paused.
UPDATE subscriptions
   SET status = 'paused', paused_at = %(at)s, next_charge_at = NULL, updated_at = %(at)s
 WHERE subscription_id = (SELECT min(subscription_id) FROM subscriptions WHERE status = 'active')
RETURNING 'subscription_paused:' || subscription_id || ':' || extract(epoch FROM paused_at)::bigint,
          customer_id
"""


def mutate(dsn: str, *, now: datetime | None = None) -> dict[str, Any]:
    """Apply the "second night" changes (once, after load()) and say what changed.

    Every change is stamped within the minute before `now` (default: the current time), so with
    `now` later than load()'s, an incremental sync picks up exactly these rows (plus the rows
    sitting on the previous bookmark, since tap-postgres filters with `>=`).

    Returns {"now", "changed_customer_ids": [...], "new_event_keys": {view: [dedupe keys]}}, where
    the keys are the values of EVENT_KEYS[view] (order_id is an int, the others are strings).
    """
    now = _as_utc(now)
    at = {
        name: now - timedelta(seconds=s)
        for name, s in [
            ("order_a", 50),
            ("order_b", 40),
            ("guest", 30),
            ("refund", 20),
            ("ship", 15),
            ("pause", 10),
        ]
    }
    changed: list[str] = []
    keys: dict[str, list] = {view: [] for view in EVENT_KEYS}
    with _connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(MUTATE_ATTRIBUTES_SQL, {"now": now})
        cur.execute("SELECT customer_id FROM customers WHERE updated_at = %s", (now,))
        changed += [r[0] for r in cur.fetchall()]
        for name, customer_id, sku, qty in [
            ("order_a", "C000004", "TEA-SENCHA-50", 2),
            ("order_b", "C000009", "SKN-SERUM-30", 1),
        ]:
            checkout_id = _next_checkout_id(cur)
            cur.execute(
                NEW_ORDER_SQL,
                {
                    "customer_id": customer_id,
                    "at": at[name],
                    "sku": sku,
                    "quantity": qty,
                    "checkout_id": checkout_id,
                },
            )
            keys["order_placed_events"].append(cur.fetchone()[0])
            keys["checkout_started_events"].append(f"checkout:{checkout_id}")
            changed.append(customer_id)
        checkout_id = _next_checkout_id(cur)
        cur.execute(NEW_GUEST_CHECKOUT_SQL, {"checkout_id": checkout_id, "at": at["guest"]})
        keys["checkout_started_events"].append(f"checkout:{checkout_id}")
        cur.execute(LATE_REFUND_SQL, {"at": at["refund"]})
        for refund_id, customer_id in cur.fetchall():
            keys["refund_issued_events"].append(refund_id)
            changed.append(customer_id)
        cur.execute(FULFILL_SQL, {"at": at["ship"]})
        keys["order_fulfilled_events"] += [r[0] for r in cur.fetchall()]
        cur.execute(PAUSE_SQL, {"at": at["pause"]})
        for event_key, customer_id in cur.fetchall():
            keys["subscription_events"].append(event_key)
            changed.append(customer_id)
    return {
        "now": now.isoformat(),
        "changed_customer_ids": sorted(set(changed)),
        "new_event_keys": keys,
    }


SECOND_ORDER_CANDIDATES_SQL = """
-- One-time buyers (one order that is not canceled), the oldest customers first.
SELECT customer_id FROM orders
WHERE status <> 'canceled' AND customer_id NOT IN ('C000004', 'C000009')  -- mutate()'s buyers
GROUP BY customer_id HAVING count(*) = 1
ORDER BY customer_id LIMIT %(count)s
"""


def second_orders(dsn: str, count: int, *, now: datetime | None = None) -> dict[str, Any]:
    """`count` one-time buyers place their second order (stamped in the minute before `now`):
    new repeat buyers, so the canary segment grows by `count` at the source.

    Returns {"customer_ids": [...], "order_ids": [...]} (their customer_profiles rows change)."""
    now = _as_utc(now)
    customers: list[str] = []
    orders: list[int] = []
    with _connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(SECOND_ORDER_CANDIDATES_SQL, {"count": count})
        for i, (customer_id,) in enumerate(cur.fetchall()):
            checkout_id = _next_checkout_id(cur)
            cur.execute(
                NEW_ORDER_SQL,
                {
                    "customer_id": customer_id,
                    "sku": "COF-HOUSE-12",
                    "quantity": 1,
                    "checkout_id": checkout_id,
                    "at": now - timedelta(seconds=45 - i),
                },
            )
            orders.append(cur.fetchone()[0])
            customers.append(customer_id)
    return {"customer_ids": customers, "order_ids": orders}


DEMOTE_VIPS_SQL = """
-- The VIPs closest to the threshold whose largest order, refunded, takes them below it.
WITH value AS (
    SELECT customer_id, lifetime_value FROM customer_profiles
    WHERE customer_id IN (SELECT customer_id FROM vip_customers)
), biggest AS (
    SELECT DISTINCT ON (o.customer_id) o.customer_id, o.order_id, o.total
    FROM orders o
    WHERE o.status NOT IN ('canceled', 'refunded')
      AND NOT EXISTS (SELECT 1 FROM refunds r WHERE r.order_id = o.order_id)
    ORDER BY o.customer_id, o.total DESC, o.order_id
)
SELECT v.customer_id, b.order_id, b.total FROM value v JOIN biggest b USING (customer_id)
WHERE v.lifetime_value - b.total < %(min_value)s
ORDER BY v.lifetime_value, v.customer_id
LIMIT %(count)s
"""

REFUND_ORDER_SQL = """
WITH refund AS (
    INSERT INTO refunds (refund_id, order_id, amount, issued_at, reason)
    SELECT 'RF' || lpad(((SELECT count(*) FROM refunds) + 1)::text, 5, '0'), %(order_id)s,
           %(amount)s, %(at)s, 'damaged'
    RETURNING refund_id, order_id
)
UPDATE orders o SET status = 'refunded' FROM refund r WHERE o.order_id = r.order_id
RETURNING r.refund_id
"""


def vips(dsn: str) -> dict[str, str]:
    """customer_id -> vip_tier: who the vip_customers view selects."""
    with _connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT customer_id, vip_tier FROM {VIP_VIEW} ORDER BY customer_id")
        return dict(cur.fetchall())


def demote_vips(dsn: str, count: int = 2, *, now: datetime | None = None) -> dict[str, Any]:
    """`count` VIPs get their largest order refunded (stamped in the minute before `now`), which
    takes their lifetime value below VIP_MIN_VALUE: they leave vip_customers and vip_segment.

    Returns {"customer_ids": [...], "refund_ids": [...]} (their customer_profiles rows change,
    and refund_issued_events gains one row each)."""
    now = _as_utc(now)
    customers: list[str] = []
    refunds: list[str] = []
    with _connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(DEMOTE_VIPS_SQL, {"count": count, "min_value": VIP_MIN_VALUE})
        for i, (customer_id, order_id, total) in enumerate(cur.fetchall()):
            cur.execute(
                REFUND_ORDER_SQL,
                {"order_id": order_id, "amount": total, "at": now - timedelta(seconds=25 - i)},
            )
            refunds.append(cur.fetchone()[0])
            customers.append(customer_id)
    return {"customer_ids": customers, "refund_ids": refunds}


def expected_counts(dsn: str) -> dict[int, int]:
    """segment id -> the count the segment_checks view expects (what the reconcile job reads)."""
    with _connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT segment_id, expected FROM {CHECKS_VIEW} ORDER BY segment_id")
        return dict(cur.fetchall())


def _profiles_sql(broken: bool) -> str:
    """customer_profiles' CREATE VIEW (healthy, or with last_order_at published as NULL)."""
    start = VIEWS_SQL.index("CREATE VIEW customer_profiles AS")
    sql = VIEWS_SQL[start : VIEWS_SQL.index(";", start) + 1]
    if broken:
        healthy = "os.last_order_at,"
        assert sql.count(healthy) == 1
        sql = sql.replace(healthy, BROKEN_COLUMN)
    return sql.replace("CREATE VIEW", "CREATE OR REPLACE VIEW", 1)


def break_profiles(dsn: str) -> None:
    """Redeploy customer_profiles with the bug (same columns; last_order_at always NULL)."""
    with _connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(_profiles_sql(broken=True))
        cur.execute("COMMENT ON VIEW customer_profiles IS %s", (BROKEN_MARK,))


def profiles_broken(dsn: str) -> bool:
    """Whether customer_profiles is the broken version (break_profiles; load() restores it)."""
    with _connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT obj_description('customer_profiles'::regclass, 'pg_class')")
        return cur.fetchone()[0] == BROKEN_MARK


def _next_checkout_id(cur: Any) -> str:
    cur.execute("SELECT max(substr(checkout_id, 5)::integer) + 1 FROM checkouts")
    return f"chk_{cur.fetchone()[0]:06d}"


# --- CLI --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo.sample_data",
        description="Load (or mutate) the sample retention database.",
    )
    parser.add_argument(
        "--dsn", required=True, help="libpq URL, e.g. postgresql://u:p@127.0.0.1:5432/shop"
    )
    parser.add_argument("--mutate", action="store_true", help="apply the second-night changes")
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--now",
        type=datetime.fromisoformat,
        default=None,
        help="ISO time the data is relative to (default: the current time)",
    )
    args = parser.parse_args(argv)
    if args.mutate:
        result: dict = mutate(args.dsn, now=args.now)
    else:
        result = load(args.dsn, customers=args.customers, seed=args.seed, now=args.now)
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
