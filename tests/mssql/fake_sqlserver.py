"""An in-memory stand-in for a SQL Server database, shaped for tap-mssql 2.6.5.

It answers the queries tap-mssql really issues (INFORMATION_SCHEMA discovery, the column
SELECTs with their CONVERT(...) wrappers, the CDC catalogue and change functions) and returns
Python values the way pymssql 2.4 does: ``bool`` for bit, ``Decimal`` for money/decimal (money
with 4 places), ``uuid.UUID`` for uniqueidentifier, naive ``datetime`` for datetime/datetime2,
aware ``datetime`` for datetimeoffset and ``bytes`` for binary LSNs. Parameters are substituted
with pymssql's own quoting function, so a bookmark reaches the "server" exactly as pymssql sends it.

Anything it does not recognise raises ``pymssql.ProgrammingError`` naming the SQL, so a change
in the tap's queries fails loudly instead of being answered wrongly.

Database ``shop``, schema ``dbo``:

* table ``dbo.customers`` (CDC capture instance ``dbo_customers``), built by replaying its
  change log, so a full-table read and the CDC functions always agree;
* view ``dbo.order_events``: one row per order/refund event, ``occurred_at`` in server-local time.

The database has a history of transactions (``TRANSACTIONS``); ``FakeSqlServer(moment=...)``
shows it as of one of them: ``initial`` (before the later orders, refund and delete) or ``latest``.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pymssql
from pymssql import _mssql

# --------------------------------------------------------------------------------------------
# SQL Server values that Python has no exact type for
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Datetime2:
    """A datetime2(7) value, kept as SQL Server's 100 ns text: 'YYYY-MM-DD hh:mm:ss.fffffff'."""

    text: str

    def to_python(self) -> dt.datetime:  # what pymssql returns for a bare datetime2 column
        base, frac = self.text.split(".")
        return dt.datetime.fromisoformat(base).replace(microsecond=int(frac[:6]))


@dataclass(frozen=True)
class DatetimeOffset:
    """A datetimeoffset(7) value: 'YYYY-MM-DD hh:mm:ss.fffffff +hh:mm'."""

    text: str

    def to_python(self) -> dt.datetime:  # pymssql: aware datetime, fraction truncated to µs
        local, offset = self.text.rsplit(" ", 1)
        naive = Datetime2(local).to_python()
        sign = -1 if offset[0] == "-" else 1
        hours, minutes = offset[1:].split(":")
        delta = dt.timedelta(hours=int(hours), minutes=int(minutes)) * sign
        return naive.replace(tzinfo=dt.timezone(delta))


def sql_to_pymssql(value: Any) -> Any:
    """The Python object pymssql hands back for a stored value selected as-is."""
    if isinstance(value, (Datetime2, DatetimeOffset)):
        return value.to_python()
    return value


def convert_to_varchar(value: Any, style: int) -> str | None:
    """CONVERT(VARCHAR, value, style): VARCHAR without a length is VARCHAR(30), truncating."""
    if value is None:
        return None
    if isinstance(value, Datetime2) and style == 121:  # ODBC canonical, all 7 digits kept
        text = value.text
    elif isinstance(value, DatetimeOffset) and style == 127:  # ISO 8601, shifted to UTC, 'Z'
        local, _ = value.text.rsplit(" ", 1)
        frac = local.split(".")[1]
        utc = value.to_python().astimezone(dt.timezone.utc)
        # Assumption (docs): style 126/127 leave the fraction out when it is zero.
        text = utc.strftime("%Y-%m-%dT%H:%M:%S") + ("" if int(frac) == 0 else "." + frac) + "Z"
    else:
        raise pymssql.ProgrammingError(
            f"stand-in: CONVERT(VARCHAR, {value!r}, {style}) not modelled"
        )
    return text[:30]


def datetime2_key(text: str) -> str:
    """Comparable form of a datetime2 literal ('2025-11-20 09:15:02.123' -> 7 fractional digits)."""
    base, _, frac = text.replace("T", " ").partition(".")
    return f"{base}.{frac.ljust(7, '0')[:7]}"


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One row of INFORMATION_SCHEMA.COLUMNS (the fields tap-mssql reads)."""

    name: str
    data_type: str
    char_max_length: int | None = None
    numeric_precision: int | None = None
    numeric_scale: int | None = None


def INT(name: str) -> Column:
    return Column(name, "int", None, 10, 0)


def NVARCHAR(name: str, length: int) -> Column:  # nvarchar(max) would be -1
    return Column(name, "nvarchar", length)


def DECIMAL(name: str, precision: int, scale: int) -> Column:
    return Column(name, "decimal", None, precision, scale)


def MONEY(name: str) -> Column:
    return Column(name, "money", None, 19, 4)


def TYPE(name: str, data_type: str) -> Column:  # types with NULL length/precision/scale
    return Column(name, data_type)


@dataclass
class Relation:
    schema: str
    name: str
    table_type: str  # 'BASE TABLE' | 'VIEW'
    columns: list[Column]
    constraints: list[tuple[str, str, list[str]]] = field(default_factory=list)  # name, type, cols
    object_id: int = 0
    cdc_capture_instance: str | None = None

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name.lower() == name.lower():
                return col
        raise pymssql.ProgrammingError(f"Invalid column name '{name}'.")

    def key_columns(self) -> set[str]:
        """What tap-mssql's constraint CTE yields: columns of the first PK/UNIQUE constraint."""
        ranked = sorted(
            (c for c in self.constraints if c[1] in ("PRIMARY KEY", "UNIQUE")), key=lambda c: c[1]
        )
        return set(ranked[0][2]) if ranked else set()


CUSTOMERS = Relation(
    "dbo",
    "customers",
    "BASE TABLE",
    [
        INT("customer_id"),
        NVARCHAR("email", 320),
        NVARCHAR("first_name", 100),
        TYPE("last_order_date", "datetime2"),
        MONEY("lifetime_value"),
        TYPE("refund_flag", "bit"),
        NVARCHAR("vip_tier", 20),
        TYPE("external_ref", "uniqueidentifier"),
        TYPE("created_at", "datetimeoffset"),
        TYPE("updated_at", "datetime2"),
    ],
    constraints=[
        ("PK_customers", "PRIMARY KEY", ["customer_id"]),
        ("UQ_customers_external_ref", "UNIQUE", ["external_ref"]),
    ],
    object_id=581577110,
    cdc_capture_instance="dbo_customers",
)

ORDER_EVENTS = Relation(
    "dbo",
    "order_events",
    "VIEW",
    [
        NVARCHAR("event_id", 64),
        INT("customer_id"),
        NVARCHAR("event_name", 50),
        TYPE("occurred_at", "datetime2"),
        DECIMAL("amount", 12, 2),
        TYPE("legacy_time", "datetime"),
    ],
    object_id=629577281,
)

RELATIONS = [CUSTOMERS, ORDER_EVENTS]
DATABASE = "shop"
VERSION = (
    "Microsoft SQL Server 2022 (RTM-CU15) (KB5041321) - 16.0.4145.4 (X64) \n"
    "\tJul 26 2024 12:36:53 \n\tCopyright (C) 2022 Microsoft Corporation\n"
    "\tDeveloper Edition (64-bit) on Linux (Ubuntu 22.04.4 LTS) <X64>"
)

# --------------------------------------------------------------------------------------------
# Data: a transaction history. Times are the server's local clock (it runs on US Eastern).
# --------------------------------------------------------------------------------------------

Row = dict[str, Any]


def customer(
    customer_id: int,
    email: str | None,
    first_name: str | None,
    last_order: str | None,
    ltv: str,
    refund: bool | None,
    vip: str | None,
    ref: str | None,
    created: str,
    updated: str,
) -> Row:
    return {
        "customer_id": customer_id,
        "email": email,
        "first_name": first_name,
        "last_order_date": Datetime2(last_order) if last_order else None,
        "lifetime_value": Decimal(ltv).quantize(Decimal("0.0001")),  # money: 4 places
        "refund_flag": refund,
        "vip_tier": vip,
        "external_ref": uuid.UUID(ref) if ref else None,
        "created_at": DatetimeOffset(created),
        "updated_at": Datetime2(updated),
    }


def event(
    event_id: str,
    customer_id: int,
    name: str,
    occurred: str,
    amount: str,
    legacy: dt.datetime | None,
) -> Row:
    return {
        "event_id": event_id,
        "customer_id": customer_id,
        "event_name": name,
        "occurred_at": Datetime2(occurred),
        "amount": Decimal(amount),
        "legacy_time": legacy,
    }


C1 = customer(
    1,
    "Ada.Lovelace@Example.com",
    "Ada",
    "2025-11-16 14:02:11.4830000",
    "1250.50",
    False,
    "gold",
    "6F9619FF-8B86-D011-B42D-00C04FC964FF",
    "2023-04-02 09:30:00.1234567 +02:00",
    "2025-11-17 08:00:00.0000000",
)
C2 = customer(
    2,
    "grace@example.com",
    "Grace",
    None,
    "0",
    False,
    None,
    "0E984725-C51C-4BF4-9960-E1C80E27ABA0",
    "2024-12-24 18:00:00.0000000 +00:00",
    "2025-11-17 08:00:00.0000000",
)
C3 = customer(
    3,
    None,
    "Linus",
    None,
    "0",
    None,
    None,
    None,  # phone order: no email, NULL bit
    "2025-01-05 22:10:05.5000000 -05:00",
    "2025-11-17 08:00:00.0000000",
)
C4 = customer(
    4,
    "MARGARET.Hamilton@EXAMPLE.COM",
    "Margaret",
    "2025-10-01 11:00:00.0000000",
    "310.00",
    False,
    "silver",
    "B3D2A1C0-0000-4000-8000-000000000004",
    "2024-06-30 23:45:10.7654321 +05:30",
    "2025-11-17 08:00:00.0000000",
)
C5 = customer(
    5,
    "katherine.j@example.com",
    None,
    "2025-09-09 09:09:09.0909090",
    "18250.75",
    False,
    "platinum",
    "C0FFEE00-1234-4567-89AB-CDEF01234567",
    "2022-02-22 02:22:22.2222222 -08:00",
    "2025-11-17 08:00:00.0000000",
)
C6 = customer(
    6,
    "New.Customer@Example.org",
    "Dorothy",
    "2025-11-21 23:59:59.9999999",
    "15.00",
    False,
    None,
    "7D444840-9DC0-11D1-B245-5FFDCE74FAD2",
    "2025-11-21 23:58:40.0000001 +00:00",
    "2025-11-21 23:59:59.9999999",
)


def changed(row: Row, **values: Any) -> Row:
    out = dict(row)
    for key, value in values.items():
        if key in ("last_order_date", "updated_at"):
            value = Datetime2(value)
        elif key == "lifetime_value":
            value = Decimal(value).quantize(Decimal("0.0001"))
        out[key] = value
    return out


C2b = changed(
    C2,
    last_order_date="2025-11-19 20:45:00.0000000",
    lifetime_value="89.99",
    updated_at="2025-11-19 20:45:01.2530000",
)
C4b = changed(
    C4,
    last_order_date="2025-11-20 09:15:02.1234567",
    lifetime_value="352.50",
    updated_at="2025-11-20 09:15:03.1100000",
)
C2c = changed(C2b, refund_flag=True, lifetime_value="0", updated_at="2025-11-21 09:12:30.4470000")


@dataclass(frozen=True)
class Change:
    """One row of cdc.dbo_customers_CT: __$operation 1=delete 2=insert 3=before 4=after update."""

    operation: int
    row: Row


@dataclass(frozen=True)
class Transaction:
    committed: dt.datetime  # cdc.lsn_time_mapping.tran_end_time (datetime, server local)
    customer_changes: tuple[Change, ...] = ()
    new_events: tuple[Row, ...] = ()  # rows that become visible in dbo.order_events


TRANSACTIONS: list[Transaction] = [
    # 1: backfill of customers (CDC was enabled just before), Ada's older order
    Transaction(
        dt.datetime(2025, 11, 17, 8, 0, 0),
        tuple(Change(2, c) for c in (C1, C2, C3, C4, C5)),
        (
            event(
                "order:1001:placed",
                1,
                "Order Placed",
                "2025-11-16 14:02:11.4830000",
                "120.00",
                dt.datetime(2025, 11, 16, 14, 2, 11, 483000),
            ),
        ),
    ),
    # 2: Grace's first order
    Transaction(
        dt.datetime(2025, 11, 19, 20, 45, 1, 253000),
        (Change(3, C2), Change(4, C2b)),
        (
            event(
                "order:1002:placed",
                2,
                "Order Placed",
                "2025-11-19 20:45:00.0000000",
                "89.99",
                dt.datetime(2025, 11, 19, 20, 45),
            ),
        ),
    ),
    # 3: Margaret's order  <- the "initial" moment
    Transaction(
        dt.datetime(2025, 11, 20, 9, 15, 3, 110000),
        (Change(3, C4), Change(4, C4b)),
        (
            event(
                "order:1003:placed",
                4,
                "Order Placed",
                "2025-11-20 09:15:02.1234567",
                "42.50",
                dt.datetime(2025, 11, 20, 9, 15, 2, 123000),
            ),
        ),
    ),
    # 4: Grace's refund, two days after her order
    Transaction(
        dt.datetime(2025, 11, 21, 9, 12, 30, 447000),
        (Change(3, C2b), Change(4, C2c)),
        (
            event(
                "refund:1002",
                2,
                "Refund Issued",
                "2025-11-21 09:12:29.8123456",
                "89.99",
                dt.datetime(2025, 11, 21, 9, 12, 29, 813000),
            ),
        ),
    ),
    # 5: a new customer orders a second before midnight (datetime rounds it to the next day)
    Transaction(
        dt.datetime(2025, 11, 22, 0, 0, 0, 3000),
        (Change(2, C6),),
        (
            event(
                "order:1004:placed",
                6,
                "Order Placed",
                "2025-11-21 23:59:59.9999999",
                "15.00",
                dt.datetime(2025, 11, 22, 0, 0),
            ),
        ),
    ),
    # 6: Margaret asks to be erased; a store POS uploads an order it took two days ago
    Transaction(
        dt.datetime(2025, 11, 22, 7, 30),
        (Change(1, C4b),),
        (
            event(
                "order:1005:placed", 1, "Order Placed", "2025-11-20 09:40:00.5000000", "7.25", None
            ),
        ),
    ),
]
MOMENTS = {"initial": 3, "latest": len(TRANSACTIONS)}


def lsn(txn: int, slot: int = 3) -> bytes:
    """A binary(10) LSN, VLF:block:slot like '0000002D:000001B8:0003'."""
    return bytes.fromhex(f"0000002d{0x1A8 + 0x10 * txn:08x}{slot:04x}")


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


def _split_top_level(text: str, sep: str = ",") -> list[str]:
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        elif not quoted and depth == 0 and ch == sep:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def _schema_filter(sql: str) -> Callable[[str], bool]:
    """tap-mssql's `WHERE c.TABLE_SCHEMA [NOT] IN (...)` clause (filter_dbs)."""
    m = re.search(r"WHERE c\.TABLE_SCHEMA (NOT )?IN \(([^)]*)\)", sql, re.IGNORECASE)
    if not m:
        return lambda schema: True
    names = {n.strip().strip("'").lower() for n in m.group(2).split(",")}
    return (lambda s: s.lower() not in names) if m.group(1) else (lambda s: s.lower() in names)


def _binary_literal(expr: str) -> bytes:
    """CONVERT(BINARY(10),'0x...',1), optionally inside sys.fn_cdc_increment_lsn(...)."""
    m = re.fullmatch(
        r"(sys\.fn_cdc_increment_lsn\()?CONVERT\(BINARY\(10\),'0x([0-9a-f]+)',1\)\)?",
        expr.strip(),
        re.IGNORECASE,
    )
    if not m:
        raise pymssql.ProgrammingError(f"stand-in: cannot evaluate LSN expression {expr!r}")
    value = bytes.fromhex(m.group(2).rjust(20, "0"))
    if m.group(1):  # next LSN
        value = (int.from_bytes(value, "big") + 1).to_bytes(10, "big")
    return value


# The column SELECTs of every sync mode, whitespace collapsed: optional CDC preamble, select
# list, a table/view or cdc.fn_cdc_get_all_changes_*, optional `WHERE "col" >= x` / ORDER BY.
SELECT_PATTERN = (
    r"^(?:DECLARE @from_lsn binary \(10\), @to_lsn binary \(10\)"
    r" SET @from_lsn = (?P<from>.+?) SET @to_lsn = (?P<to>.+?) )?"
    r"SELECT (?P<items>.+?) FROM "
    r"(?P<source>cdc\.\"[^\"]+\"\(@from_lsn, @to_lsn, 'all'\)|\"[^\"]+\"\.\"[^\"]+\")"
    r"(?: WHERE \"(?P<wcol>[^\"]+)\" >= (?P<wval>'[^']*'|[-\d.]+))?"
    r"(?: ORDER BY (?P<order>.+?))?\s*;?\s*$"
)
Evaluator = Callable[[Row], Any]
CHANGE_COLUMNS = ("__$start_lsn", "__$seqval", "__$operation", "__$commit_time")


class FakeSqlServer:
    """The `shop` database as of one moment of its history."""

    def __init__(self, moment: str = "latest", query_log: str | Path | None = None) -> None:
        if moment not in MOMENTS:
            raise ValueError(f"moment must be one of {sorted(MOMENTS)}")
        self.moment = moment
        self.upto = MOMENTS[moment]  # transactions 1..upto are committed
        self.query_log = Path(query_log) if query_log else None

    # ---- state derived from the history --------------------------------------------------
    def changes(self) -> list[Row]:
        """cdc.dbo_customers_CT as rows with the __$ columns."""
        out = []
        for txn_no, txn in enumerate(TRANSACTIONS[: self.upto], start=1):
            for seq, ch in enumerate(txn.customer_changes, start=1):
                seqval = lsn(txn_no, seq)
                out.append(
                    {
                        **ch.row,
                        "__$start_lsn": lsn(txn_no),
                        "__$seqval": seqval,
                        "__$operation": ch.operation,
                        "__$commit_time": txn.committed,
                    }
                )
        return out

    def rows(self, relation: Relation) -> list[Row]:
        if relation is ORDER_EVENTS:
            return [r for txn in TRANSACTIONS[: self.upto] for r in txn.new_events]
        table: dict[int, Row] = {}
        for ch in self.changes():
            key = ch["customer_id"]
            if ch["__$operation"] in (2, 4):
                table[key] = {k: v for k, v in ch.items() if not k.startswith("__$")}
            elif ch["__$operation"] == 1:
                table.pop(key, None)
        return [table[k] for k in sorted(table)]  # clustered PK order

    def min_lsn(self) -> bytes:
        return lsn(0)  # capture instance created just before the backfill

    def max_lsn(self) -> bytes:
        return lsn(self.upto)

    # ---- query dispatch ----------------------------------------------------------------------
    def execute(self, sql: str) -> list[tuple]:
        if self.query_log:
            with self.query_log.open("a", encoding="utf-8") as fh:
                fh.write(sql.strip() + "\n-- end of query\n")
        q = " ".join(sql.split())
        for pattern, handler in self._handlers():
            m = re.search(pattern, q, re.IGNORECASE | re.DOTALL)
            if m:
                return handler(q, m)
        raise pymssql.ProgrammingError(f"stand-in SQL Server cannot answer: {q[:300]}")

    def _handlers(self) -> list[tuple[str, Callable[[str, re.Match], list[tuple]]]]:
        return [
            (r"^SELECT @@VERSION as version, @@lock_timeout", lambda q, m: [(VERSION, -1)]),
            (r"FROM INFORMATION_SCHEMA\.TABLES c", self._tables),
            (r"FROM INFORMATION_SCHEMA\.COLUMNS c", self._columns),
            (
                r"from sys\.tables t join sys\.schemas s .* "
                r"t\.name = '([^']*)' and s\.name = '([^']*)'",
                self._sys_tables,
            ),
            (r"^SELECT name, is_cdc_enabled FROM sys\.databases", lambda q, m: [(DATABASE, True)]),
            (
                r"^SELECT DB_NAME\(database_id\), is_read_committed_snapshot_on",
                lambda q, m: [(DATABASE, False, "OFF")],
            ),
            (
                r"^SELECT sys\.fn_cdc_get_min_lsn \( '([^']*)' \) lsn_from , "
                r"sys\.fn_cdc_get_max_lsn \(\)",
                self._lsn_range,
            ),
            (r"^select sys\.fn_cdc_get_max_lsn \(\)\s*$", lambda q, m: [(self.max_lsn(),)]),
            (SELECT_PATTERN, self._select),
        ]

    def _relations(self, q: str) -> list[Relation]:
        keep = _schema_filter(q)
        return [r for r in RELATIONS if keep(r.schema)]

    def _tables(self, q: str, m: re.Match) -> list[tuple]:
        return [(r.schema, r.name, r.table_type) for r in self._relations(q)]

    def _columns(self, q: str, m: re.Match) -> list[tuple]:
        rows = []
        for r in sorted(self._relations(q), key=lambda r: (r.schema, r.name)):
            keys = r.key_columns()
            for c in r.columns:  # ORDER BY ... ORDINAL_POSITION
                rows.append(
                    (
                        r.schema,
                        r.name,
                        c.name,
                        c.data_type,
                        c.char_max_length,
                        c.numeric_precision,
                        c.numeric_scale,
                        1 if c.name in keys else 0,
                    )
                )
        return rows

    def _sys_tables(self, q: str, m: re.Match) -> list[tuple]:
        table, schema = m.group(1).lower(), m.group(2).lower()
        return [
            (r.schema, r.name, r.cdc_capture_instance is not None, r.object_id)
            for r in RELATIONS
            if r.table_type == "BASE TABLE" and (r.schema, r.name) == (schema, table)
        ]

    def _lsn_range(self, q: str, m: re.Match) -> list[tuple]:
        known = any(r.cdc_capture_instance == m.group(1) for r in RELATIONS)
        return [(self.min_lsn() if known else bytes(10), self.max_lsn())]

    # ---- SELECT ... FROM <table|view|cdc function> -------------------------------------------
    def _select(self, q: str, m: re.Match) -> list[tuple]:
        source = m.group("source")
        if source.lower().startswith("cdc."):
            relation, rows = self._cdc_rows(source, m.group("from"), m.group("to"))
        else:
            schema, name = (part.strip('"').lower() for part in source.split("."))
            matches = [r for r in RELATIONS if (r.schema, r.name) == (schema, name)]
            if not matches:
                raise pymssql.ProgrammingError(f"Invalid object name '{schema}.{name}'.")
            relation, rows = matches[0], self.rows(matches[0])
        evaluators = [self._item(relation, item) for item in _split_top_level(m.group("items"))]
        if m.group("wcol"):
            rows = self._where(relation, rows, m.group("wcol"), m.group("wval"))
        if m.group("order"):
            rows = self._order(relation, rows, m.group("order"))
        return [tuple(ev(row) for ev in evaluators) for row in rows]

    def _cdc_rows(
        self, source: str, from_expr: str | None, to_expr: str | None
    ) -> tuple[Relation, list[Row]]:
        function = re.match(r'cdc\."fn_cdc_get_all_changes_([^"]+)"', source, re.IGNORECASE).group(
            1
        )
        relation = next((r for r in RELATIONS if r.cdc_capture_instance == function), None)
        if relation is None or from_expr is None or to_expr is None:
            raise pymssql.ProgrammingError(
                f"Invalid object name 'cdc.fn_cdc_get_all_changes_{function}'."
            )
        lo, hi = _binary_literal(from_expr), _binary_literal(to_expr)
        if lo < self.min_lsn() or hi > self.max_lsn() or lo > hi:  # SQL Server's famous Msg 313
            raise pymssql.OperationalError(
                "An insufficient number of arguments were supplied for the procedure or function "
                f"cdc.fn_cdc_get_all_changes_{function}."
            )
        rows = [
            c for c in self.changes() if lo <= c["__$start_lsn"] <= hi and c["__$operation"] != 3
        ]  # row filter 'all': after-images only
        return relation, rows

    def _item(self, relation: Relation, item: str) -> Evaluator:
        """Compile one select-list item into a function of the row."""
        col = r'"(?P<col>[^"]+)"'
        if m := re.fullmatch(col, item):
            name = relation.column(m["col"]).name
            return lambda row: sql_to_pymssql(row[name])
        if m := re.fullmatch(
            rf'case when {col} is not null then CONVERT\(VARCHAR, ?"(?P=col)" ?,(?P<style>\d+)\)'
            r" else null end",
            item,
            re.IGNORECASE,
        ):
            name, style = relation.column(m["col"]).name, int(m["style"])
            return lambda row: convert_to_varchar(row[name], style)
        if m := re.fullmatch(r"'(?P<lit>[^']*)' \w+", item):
            return lambda row: m["lit"]
        if m := re.fullmatch(r"cast\('(?P<lit>[^']*)' as datetime\) \w+", item, re.IGNORECASE):
            value = dt.datetime.fromisoformat(m["lit"])
            return lambda row: value
        if re.fullmatch(r"null \w+", item, re.IGNORECASE):
            return lambda row: None
        if m := re.fullmatch(r"(?P<num>\d+) as \w+", item, re.IGNORECASE):
            return lambda row: int(m["num"])
        if re.fullmatch(r"case __\$operation (when \d+ then '\w' )+end \w+", item, re.IGNORECASE):
            codes = {int(k): v for k, v in re.findall(r"when (\d+) then '(\w)'", item)}
            return lambda row: codes.get(row["__$operation"])
        if re.fullmatch(r"sys\.fn_cdc_map_lsn_to_time\(__\$start_lsn\) \w+", item, re.IGNORECASE):
            return lambda row: row["__$commit_time"]
        if re.fullmatch(
            r"case __\$operation when 1 then sys\.fn_cdc_map_lsn_to_time\(__\$start_lsn\)"
            r" else null end \w+",
            item,
            re.IGNORECASE,
        ):
            return lambda row: row["__$commit_time"] if row["__$operation"] == 1 else None
        if m := re.fullmatch(r"(?P<col>__\$(start_lsn|seqval|operation)) \w+", item, re.IGNORECASE):
            return lambda row: row[m["col"]]
        raise pymssql.ProgrammingError(f"stand-in SQL Server cannot evaluate select item: {item}")

    def _sort_key(self, relation: Relation, name: str) -> Callable[[Row], tuple]:
        if name.startswith("__$"):
            return lambda row: (row[name] is not None, row[name])
        name = relation.column(name).name
        return lambda row: (
            row[name] is not None,  # NULLs sort first, as in SQL Server
            row[name].text if isinstance(row[name], Datetime2) else row[name],
        )

    def _where(self, relation: Relation, rows: list[Row], column: str, literal: str) -> list[Row]:
        col = relation.column(column)
        text = literal.strip("'")
        if col.data_type == "datetime2":  # the literal is implicitly converted to datetime2
            bound: Any = datetime2_key(text)

            def value(row: Row) -> Any:
                return row[col.name] and row[col.name].text

        elif col.data_type in ("datetime", "smalldatetime"):
            bound, value = dt.datetime.fromisoformat(text), lambda row: row[col.name]
        elif col.data_type in ("int", "bigint", "smallint", "tinyint"):
            bound, value = int(text), lambda row: row[col.name]
        else:
            raise pymssql.ProgrammingError(f"stand-in: WHERE on {col.data_type} not modelled")
        return [row for row in rows if value(row) is not None and value(row) >= bound]

    def _order(self, relation: Relation, rows: list[Row], order: str) -> list[Row]:
        for term in reversed(_split_top_level(order)):
            name, _, direction = term.partition(" ")
            rows = sorted(
                rows,
                key=self._sort_key(relation, name.strip('"')),
                reverse=direction.strip().upper() == "DESC",
            )
        return rows


# --------------------------------------------------------------------------------------------
# DB-API connection / cursor (the subset tap-mssql uses, with pymssql's behaviour)
# --------------------------------------------------------------------------------------------


class FakeCursor:
    def __init__(self, server: FakeSqlServer, charset: str) -> None:
        self._server, self._charset = server, charset
        self._rows: Iterator[tuple] | None = None
        self.description: list[tuple] | None = None
        self.rowcount = -1

    def execute(self, operation: str, params: Any = None) -> None:
        if params is not None:  # pymssql's own quoting (datetime -> 'YYYY-MM-DD hh:mm:ss.mmm')
            operation = _mssql.substitute_params(operation, params, False, self._charset).decode(
                self._charset
            )
        rows = self._server.execute(operation)
        self._rows, self.rowcount = iter(rows), len(rows)
        self.description = [
            (f"col{i}", None, None, None, None, None, None)
            for i in range(len(rows[0]) if rows else 0)
        ]

    def _require(self) -> Iterator[tuple]:
        if self._rows is None:
            raise pymssql.OperationalError(
                "Statement not executed or executed statement has no resultset"
            )
        return self._rows

    def fetchone(self) -> tuple | None:
        return next(self._require(), None)

    def fetchmany(self, size: int = 1) -> list[tuple]:
        rows = self._require()
        return [row for _, row in zip(range(size), rows, strict=False)]

    def fetchall(self) -> list[tuple]:
        return list(self._require())

    def __iter__(self) -> Iterator[tuple]:
        return self._require()

    def close(self) -> None:
        self._rows = None

    def __enter__(self) -> FakeCursor:  # noqa: PYI034 (Self needs 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FakeConnection:
    """Drop-in for tap_mssql.connection.MSSQLConnection: same constructor, same use."""

    server: FakeSqlServer = FakeSqlServer()  # replaced by run_tap.install()

    def __init__(self, config: dict[str, Any]) -> None:
        if config.get("database", "").lower() != DATABASE:
            raise pymssql.OperationalError(
                f'Cannot open database "{config.get("database")}" '
                "requested by the login. The login failed."
            )
        self._charset = config.get("characterset", "utf8")
        self._closed = False

    def cursor(self) -> FakeCursor:
        if self._closed:
            raise pymssql.InterfaceError("Connection is closed.")
        return FakeCursor(type(self).server, self._charset)

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> FakeConnection:  # noqa: PYI034 (Self needs 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
