"""Routes: which stream becomes which Customer.io operation, read from the `streams` setting.

The options every route takes are read here; each kind's own options are read by its module
in `operations/` (see `operations.KINDS`)."""

from __future__ import annotations

import datetime as dt
import difflib
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from target_customerio.contracts import Contract, load_contract
from target_customerio.errors import ConfigError, did_you_mean
from target_customerio.redaction import shown
from target_customerio.values import timezone

IDENTIFIER_TYPES = ("id", "email", "cio_id")
ON_EXIT = ("unset", "suppress", "delete", "ignore")
DEFAULT_MAX_EXIT_RATIO = 0.1


@dataclass(frozen=True)
class Identifier:
    """A column holding one of a person's identifiers."""

    field: str
    type: str


@dataclass(frozen=True)
class Mirror:
    """A route that mirrors its view: who was in the last complete run and is not in this one
    has left it. `on_exit` says what leaving sends (a person route's; segment routes remove the
    membership); `max_exit_ratio` is the guard against a broken view."""

    on_exit: str = "unset"
    max_exit_ratio: float = DEFAULT_MAX_EXIT_RATIO


def max_exit_ratio_option(where: str, value: Any) -> float:
    if value is None:
        return DEFAULT_MAX_EXIT_RATIO
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(
            f"{where}: a share from 0 to 1 (0.1: when more than a tenth of the people the "
            "route knows would leave in one run, nobody does and the run fails)"
        )
    return float(value)


def max_campaign_entries_option(where: str, value: Any) -> int | None:
    """The most people one run may start a live campaign for (campaigns.py); None: no limit."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            f"{where}: a number of people, 0 or more (25: the run stops before the first event "
            "that would start a running campaign for a 26th person)"
        )
    return value


class KindOptions:
    """A kind's own route options (each kind module defines its class): the columns they
    name, for the check against the SCHEMA, and those that identify rather than describe."""

    def mirroring(self) -> Mirror | None:
        """How the route mirrors its view; None: it does not (rows that leave are not noticed)."""
        return None

    def columns_named(self) -> list[tuple[str, str]]:
        """(option, column) for each column the options name."""
        return []

    def identity_columns(self) -> tuple[str, ...]:
        """The columns that say who or what, never sent as attributes."""
        return ()


@dataclass(frozen=True)
class Route:
    """One stream's way into Customer.io, validated from the `streams` setting."""

    pattern: str
    kind: str
    options: Any  # the kind's own options (a KindOptions of its module in operations/)
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    rename: dict[str, str] = field(default_factory=dict)
    contract: Contract | None = None
    source_timezone: dt.tzinfo = dt.timezone.utc
    on_contract_violation: str = "reject"
    on_delete: str = "ignore"
    max_volume_change: float | None = None  # a share: received may move this far from the median
    identity_columns: frozenset[str] = frozenset()  # from `options`, never sent as attributes

    @property
    def mirror(self) -> Mirror | None:
        return self.options.mirroring()  # type: ignore[no-any-return]

    def attribute_name(self, column: str) -> str | None:
        """The outgoing attribute name of a column, or None when it is not sent."""
        if column in self.identity_columns or column.startswith("_sdc_"):
            return None
        if self.include is not None and column not in self.include:
            return None
        if column in self.exclude:
            return None
        return self.rename.get(column, column)

    def columns_named(self) -> list[tuple[str, str]]:
        """Every column the route names, with the option that names it: (option, column).

        `mirror_to_attribute` names an attribute that is sent, not a column, so it is not here.
        """
        named = list(self.options.columns_named())
        named += [("attributes.include", column) for column in self.include or ()]
        named += [("attributes.exclude", column) for column in self.exclude]
        named += [("attributes.rename", column) for column in self.rename]
        return named


def check_columns(route: Route, stream: str, declared: list[str]) -> None:
    """Raise ConfigError when the route names a column the stream's SCHEMA does not declare.

    A typo there would otherwise reject every record (an identifier "is empty") or send what
    should have been excluded; every such column is named at once, with the closest real one.
    """
    known = set(declared)
    problems = [
        f"streams.{route.pattern}.{option}: column {column!r} is not in stream {stream}"
        + _suggestion(column, declared)
        for option, column in route.columns_named()
        if column not in known
    ]
    if problems:
        raise ConfigError("; ".join(problems))
    changes = [column for column in CHANGE_DATA_COLUMNS if column in known]
    if route.mirror is not None and changes:
        raise ConfigError(
            f"streams.{route.pattern}: stream {stream} is change data capture (its SCHEMA "
            f"declares {changes[0]}): each run carries only the rows that changed, so everyone "
            "else would seem to leave the view; a mirrored view needs FULL_TABLE replication"
        )
    sent: dict[str, str] = {}
    for column in declared:
        name = route.attribute_name(column)
        if name is not None and name in sent:
            raise ConfigError(
                f"streams.{route.pattern}.attributes: columns {sent[name]!r} and {column!r} "
                f"of stream {stream} would both be sent as {name!r}; rename or exclude one"
            )
        if name is not None:
            sent[name] = column


# Columns that only log-based replication adds (tap-postgres LOG_BASED, tap-mssql CDC).
CHANGE_DATA_COLUMNS = ("_sdc_lsn", "_sdc_operation_type")


def _suggestion(column: str, declared: list[str]) -> str:
    close = difflib.get_close_matches(column, declared, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    listed = ", ".join(declared[:12]) + (", …" if len(declared) > 12 else "")
    return f" (its columns: {listed})"


def near_miss(stream: str, routes: list[str]) -> str | None:
    """The route name that nearly names `stream`: one holds the other (`members`,
    `shop-members`), or a few typing mistakes apart (`public-order`, `public-orders`); None
    when none is. Streams of one tap share a prefix (`public-`), so a plain similarity ratio
    would call `public-secrets` a near miss of `public-customers`: edits are counted instead."""
    folded = stream.casefold()
    best: tuple[int, str] | None = None
    for route in routes:
        name = route.casefold()
        if len(name) >= 4 and len(folded) >= 4 and (name in folded or folded in name):
            return route
        allowed = min(3, max(1, min(len(name), len(folded)) // 6))
        distance = _edits(folded, name, allowed)
        if distance <= allowed and (best is None or distance < best[0]):
            best = (distance, route)
    return best[1] if best else None


def _edits(a: str, b: str, limit: int) -> int:
    """Levenshtein distance, or limit + 1 once it is known to be larger."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous = list(range(len(b) + 1))
    for i, char in enumerate(a, 1):
        current = [i]
        for j, other in enumerate(b, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char != other))
            )
        if min(current) > limit:
            return limit + 1
        previous = current
    return previous[-1]


class Routes:
    """The `streams` setting: stream name (exact or glob) → Route."""

    def __init__(self, config: Any, base_dir: Path, on_contract_violation: str) -> None:
        if not isinstance(config, dict) or not config:
            raise ConfigError("setting `streams` must map at least one stream name to a route")
        self._routes = {
            name: _route(name, spec, base_dir, on_contract_violation)
            for name, spec in config.items()
        }

    @property
    def names(self) -> list[str]:
        return list(self._routes)

    def all(self) -> list[Route]:
        return list(self._routes.values())

    def match(self, stream: str) -> Route | None:
        """The exact route for a stream, else the first glob that matches it."""
        if stream in self._routes:
            return self._routes[stream]
        for pattern, route in self._routes.items():
            if fnmatch.fnmatchcase(stream, pattern):
                return route
        return None


def _route(name: str, spec: Any, base_dir: Path, default_violation: str) -> Route:
    """A route, or a ConfigError: an option of the wrong type that the checks below do not name
    still fails as configuration (compiled code raises TypeError for it), never as a crash."""
    try:
        return _parse_route(name, spec, base_dir, default_violation)
    except TypeError as exc:
        raise ConfigError(
            f"streams.{name}: an option holds a value of the wrong type ({exc})"
        ) from None


def _parse_route(name: str, spec: Any, base_dir: Path, default_violation: str) -> Route:
    from target_customerio.operations import KINDS  # the kinds import this module

    where = f"streams.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(
            f"{where}: a route must be an object with at least `kind` and `identifier`"
        )
    check_keys(
        where, spec, frozenset(COMMON_KEYS).union(*(k.keys for k in KINDS.values())), "option"
    )
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}.kind: {kind!r} is not one of {', '.join(KINDS)}")
    applies = (*(KINDS[kind].common or COMMON_KEYS), *KINDS[kind].keys)
    for key in spec:
        if key not in applies:
            kinds = [
                k for k, of in KINDS.items() if key in of.keys or key in (of.common or COMMON_KEYS)
            ]
            raise ConfigError(
                f"{where}.{key}: does not apply to a {kind} route (it is an option "
                f"of {' and '.join(kinds)} routes)"
            )
    attributes = spec.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise ConfigError(f"{where}.attributes: an object with include, exclude and/or rename")
    check_keys(f"{where}.attributes", attributes, ("include", "exclude", "rename"), "key")
    for key in ("include", "exclude"):
        if key in attributes:
            columns_option(f"{where}.attributes.{key}", attributes[key])
    rename = attributes.get("rename", {})
    if not isinstance(rename, dict) or not all(
        isinstance(v, str) and v.strip() for v in rename.values()
    ):
        raise ConfigError(f"{where}.attributes.rename: an object of column: attribute name")
    violation = spec.get("on_contract_violation", default_violation)
    if violation not in ("reject", "fail"):
        raise ConfigError(f"{where}.on_contract_violation: {violation!r} is not reject or fail")
    on_delete = spec.get("on_delete", "ignore")
    if on_delete not in KINDS[kind].on_delete:
        allowed = KINDS[kind].on_delete
        raise ConfigError(
            f"{where}.on_delete: {on_delete!r} is not one of {', '.join(allowed)} "
            f"for a {kind} route"
        )
    for key in ("contract", "source_timezone"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise ConfigError(f"{where}.{key}: must be text, not {type(spec[key]).__name__}")
    try:
        tz = timezone(spec.get("source_timezone"))
    except ValueError as exc:
        raise ConfigError(f"{where}.source_timezone: {exc}") from None
    options = KINDS[kind].options(where, spec)
    volume = spec.get("max_volume_change")
    if volume is not None and (
        isinstance(volume, bool) or not isinstance(volume, (int, float)) or not volume > 0
    ):
        raise ConfigError(
            f"{where}.max_volume_change: a share greater than 0 "
            "(0.5: from half as many records to 1.5 times as many)"
        )
    return Route(
        pattern=name,
        kind=kind,
        options=options,
        include=columns_option(f"{where}.attributes.include", attributes["include"])
        if "include" in attributes
        else None,
        exclude=columns_option(f"{where}.attributes.exclude", attributes.get("exclude", [])),
        rename=dict(attributes.get("rename", {})),
        contract=load_contract(spec["contract"], base_dir) if spec.get("contract") else None,
        source_timezone=tz,
        on_contract_violation=violation,
        on_delete=on_delete,
        max_volume_change=float(volume) if volume is not None else None,
        identity_columns=frozenset(c for c in options.identity_columns() if c),
    )


def check_keys(where: str, spec: dict[str, Any], known: Any, what: str) -> None:
    """A key that is not known is a typo: a ConfigError naming it and the closest known one."""
    for key in spec:
        if key not in known:
            shown_key = shown(str(key), 60)
            raise ConfigError(
                f"{where}: unknown {what} `{shown_key}`{did_you_mean(shown_key, known)}; "
                f"known: {', '.join(sorted(known))}"
            )


def column_option(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: the name of a column of the stream")
    return value


def columns_option(where: str, value: Any) -> tuple[str, ...]:
    """One column or a list of them."""
    names: Any = [value] if isinstance(value, str) else value  # Any: compiled code checks types
    if not isinstance(names, list):
        raise ConfigError(f"{where}: a column name or a list of column names")
    return tuple(column_option(f"{where}[{i}]", name) for i, name in enumerate(names))


def identifier_option(where: str, value: Any, default_type: str = "id") -> Identifier:
    if not isinstance(value, dict) or not value.get("field"):
        raise ConfigError(f"{where}: needs {{field: <column>, type: id|email|cio_id}}")
    check_keys(where, value, ("field", "type"), "key")
    column_option(f"{where}.field", value["field"])
    kind = value.get("type", default_type)
    if kind not in IDENTIFIER_TYPES:
        raise ConfigError(f"{where}.type: {kind!r} is not one of {', '.join(IDENTIFIER_TYPES)}")
    return Identifier(value["field"], kind)


# The options every route takes; each kind adds its own (operations.KINDS). An option of
# another kind is an error too (`timestamp` on a person route does nothing: a mistake).
COMMON_KEYS = (
    "kind",
    "attributes",
    "contract",
    "on_contract_violation",
    "source_timezone",
    "on_delete",
    "max_volume_change",
)
