"""Routes (which stream becomes which Customer.io operation) and their contracts."""

from __future__ import annotations

import datetime as dt
import difflib
import fnmatch
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema_rs

from target_customerio.errors import ConfigError, did_you_mean
from target_customerio.redaction import shown
from target_customerio.values import parse_duration, snake_case, timezone

KINDS = ("person", "event", "merge", "object")
IDENTIFIER_TYPES = ("id", "email", "cio_id")
ON_DELETE = ("ignore", "delete", "suppress", "unsubscribe")
BUILTIN_PREFIX = "builtin:"
_REQUIRED_PROPERTY = re.compile(r'^"(.+)" is a required property')


@dataclass(frozen=True)
class Violation:
    """The first way a payload breaks its contract."""

    field: str
    message: str
    rule: str


class Contract:
    """A compiled JSON Schema (draft 2020-12) for outgoing attributes or event data."""

    def __init__(self, schema: dict[str, Any], source: str) -> None:
        if not jsonschema_rs.meta.is_valid(schema):
            raise ConfigError(f"contract {source} is not a valid JSON Schema")
        self.source = source
        self._validator = jsonschema_rs.Draft202012Validator(schema)

    def check(self, payload: dict[str, Any]) -> Violation | None:
        """None when the payload conforms, else the first violation."""
        if self._validator.is_valid(payload):
            return None
        error = next(iter(self._validator.iter_errors(payload)))
        path = [str(p) for p in error.instance_path]
        missing = _REQUIRED_PROPERTY.match(error.message)
        if missing:
            path.append(missing.group(1))
        rule = "/".join(str(p) for p in error.schema_path)
        return Violation(field=".".join(path), message=error.message, rule=rule)


def load_contract(ref: str, base_dir: Path) -> Contract:
    """`builtin:order_placed` (shipped with the package) or a path to a JSON Schema file."""
    if ref.startswith(BUILTIN_PREFIX):
        name = ref[len(BUILTIN_PREFIX):]
        resource = resources.files("target_customerio") / "contracts" / f"{name}.schema.json"
        if not resource.is_file():
            raise ConfigError(f"no built-in contract {name!r}; shipped: {', '.join(builtin_contracts())}")
        text = resource.read_text()
    else:
        path = Path(ref) if Path(ref).is_absolute() else base_dir / ref
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"contract {ref}: cannot read {path} ({exc.strerror})") from None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"contract {ref}: not JSON ({exc.msg} at line {exc.lineno})") from None
    return Contract(schema, ref)


def builtin_contracts() -> list[str]:
    """Names usable as `builtin:<name>`."""
    folder = resources.files("target_customerio") / "contracts"
    return sorted(p.name.removesuffix(".schema.json") for p in folder.iterdir() if p.name.endswith(".schema.json"))


@dataclass(frozen=True)
class Identifier:
    """A column holding one of a person's identifiers."""

    field: str
    type: str


@dataclass(frozen=True)
class Route:
    """One stream's way into Customer.io, validated from the `streams` setting."""

    pattern: str
    kind: str
    identifier_field: str
    identifier_type: str
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    rename: dict[str, str] = field(default_factory=dict)
    contract: Contract | None = None
    event_name: str | None = None
    event_name_field: str | None = None
    event_id: tuple[str, ...] = ()
    timestamp: str | None = None
    max_age: dt.timedelta | None = None
    source_timezone: dt.tzinfo = dt.timezone.utc
    on_contract_violation: str = "reject"
    on_delete: str = "ignore"
    mirror_to_attribute: str | None = None
    secondary: Identifier | None = None
    object_type_id: str | None = None
    relationships: tuple[Identifier, ...] = ()

    def attribute_name(self, column: str) -> str | None:
        """The outgoing attribute name of a column, or None when it is not sent."""
        if column in self._identity_columns or column.startswith("_sdc_"):
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
        named = [(_IDENTITY_OPTION[self.kind], self.identifier_field)]
        if self.secondary:
            named.append(("secondary.field", self.secondary.field))
        named += [(f"relationships[{i}].field", r.field) for i, r in enumerate(self.relationships)]
        named += [("event_id", column) for column in self.event_id]
        if self.timestamp:
            named.append(("timestamp", self.timestamp))
        if self.event_name_field:
            named.append(("event_name_field", self.event_name_field))
        named += [("attributes.include", column) for column in self.include or ()]
        named += [("attributes.exclude", column) for column in self.exclude]
        named += [("attributes.rename", column) for column in self.rename]
        return named

    @property
    def _identity_columns(self) -> frozenset[str]:
        columns = {self.identifier_field, self.event_name_field, *(r.field for r in self.relationships)}
        if self.secondary:
            columns.add(self.secondary.field)
        return frozenset(c for c in columns if c)


_IDENTITY_OPTION = {
    "person": "identifier.field", "event": "identifier.field",
    "merge": "primary.field", "object": "object_id",
}


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
    sent: dict[str, str] = {}
    for column in declared:
        name = route.attribute_name(column)
        if name is not None and name in sent:
            raise ConfigError(f"streams.{route.pattern}.attributes: columns {sent[name]!r} and {column!r} "
                              f"of stream {stream} would both be sent as {name!r}; rename or exclude one")
        if name is not None:
            sent[name] = column


def _suggestion(column: str, declared: list[str]) -> str:
    close = difflib.get_close_matches(column, declared, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    listed = ", ".join(declared[:12]) + (", …" if len(declared) > 12 else "")
    return f" (its columns: {listed})"


class Routes:
    """The `streams` setting: stream name (exact or glob) → Route."""

    def __init__(self, config: Any, base_dir: Path, on_contract_violation: str) -> None:
        if not isinstance(config, dict) or not config:
            raise ConfigError("setting `streams` must map at least one stream name to a route")
        self._routes = {name: _route(name, spec, base_dir, on_contract_violation) for name, spec in config.items()}

    @property
    def names(self) -> list[str]:
        return list(self._routes)

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
        raise ConfigError(f"streams.{name}: an option holds a value of the wrong type ({exc})") from None


def _parse_route(name: str, spec: Any, base_dir: Path, default_violation: str) -> Route:
    where = f"streams.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: a route must be an object with at least `kind` and `identifier`")
    check_keys(where, spec, _ROUTE_KEYS, "option")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}.kind: {kind!r} is not one of {', '.join(KINDS)}")
    for key in spec:
        if key not in _COMMON_KEYS and key not in _KIND_KEYS[kind]:
            kinds = [k for k, keys in _KIND_KEYS.items() if key in keys]
            raise ConfigError(f"{where}.{key}: does not apply to a {kind} route (it is an option "
                              f"of {' and '.join(kinds)} routes)")
    attributes = spec.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise ConfigError(f"{where}.attributes: an object with include, exclude and/or rename")
    check_keys(f"{where}.attributes", attributes, ("include", "exclude", "rename"), "key")
    for key in ("include", "exclude"):
        if key in attributes:
            _columns(f"{where}.attributes.{key}", attributes[key])
    rename = attributes.get("rename", {})
    if not isinstance(rename, dict) or not all(isinstance(v, str) and v.strip() for v in rename.values()):
        raise ConfigError(f"{where}.attributes.rename: an object of column: attribute name")
    violation = spec.get("on_contract_violation", default_violation)
    if violation not in ("reject", "fail"):
        raise ConfigError(f"{where}.on_contract_violation: {violation!r} is not reject or fail")
    on_delete = spec.get("on_delete", "ignore")
    if on_delete not in ON_DELETE or (kind != "person" and on_delete != "ignore"):
        allowed = ON_DELETE if kind == "person" else ("ignore",)
        raise ConfigError(f"{where}.on_delete: {on_delete!r} is not one of {', '.join(allowed)} for a {kind} route")
    for key in ("contract", "source_timezone", "max_age"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise ConfigError(f"{where}.{key}: must be text, not {type(spec[key]).__name__}")
    try:
        tz = timezone(spec.get("source_timezone"))
    except ValueError as exc:
        raise ConfigError(f"{where}.source_timezone: {exc}") from None
    return Route(
        pattern=name,
        kind=kind,
        include=_columns(f"{where}.attributes.include", attributes["include"]) if "include" in attributes else None,
        exclude=_columns(f"{where}.attributes.exclude", attributes.get("exclude", [])),
        rename=dict(attributes.get("rename", {})),
        contract=load_contract(spec["contract"], base_dir) if spec.get("contract") else None,
        source_timezone=tz,
        on_contract_violation=violation,
        on_delete=on_delete,
        **_KIND_OPTIONS[kind](where, spec),
    )


def check_keys(where: str, spec: dict[str, Any], known: Any, what: str) -> None:
    """A key that is not known is a typo: a ConfigError naming it and the closest known one."""
    for key in spec:
        if key not in known:
            shown_key = shown(str(key), 60)
            raise ConfigError(f"{where}: unknown {what} `{shown_key}`{did_you_mean(shown_key, known)}; "
                              f"known: {', '.join(sorted(known))}")


def _column(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: the name of a column of the stream")
    return value


def _columns(where: str, value: Any) -> tuple[str, ...]:
    """One column or a list of them."""
    names: Any = [value] if isinstance(value, str) else value  # Any: compiled code checks types
    if not isinstance(names, list):
        raise ConfigError(f"{where}: a column name or a list of column names")
    return tuple(_column(f"{where}[{i}]", name) for i, name in enumerate(names))


def _identifier(where: str, value: Any, default_type: str = "id") -> Identifier:
    if not isinstance(value, dict) or not value.get("field"):
        raise ConfigError(f"{where}: needs {{field: <column>, type: id|email|cio_id}}")
    check_keys(where, value, ("field", "type"), "key")
    _column(f"{where}.field", value["field"])
    kind = value.get("type", default_type)
    if kind not in IDENTIFIER_TYPES:
        raise ConfigError(f"{where}.type: {kind!r} is not one of {', '.join(IDENTIFIER_TYPES)}")
    return Identifier(value["field"], kind)


def _person_options(where: str, spec: dict[str, Any]) -> dict[str, Any]:
    ident = _identifier(f"{where}.identifier", spec.get("identifier"))
    return {"identifier_field": ident.field, "identifier_type": ident.type}


def _merge_options(where: str, spec: dict[str, Any]) -> dict[str, Any]:
    primary = _identifier(f"{where}.primary", spec.get("primary"))
    secondary = _identifier(f"{where}.secondary", spec.get("secondary"))
    return {"identifier_field": primary.field, "identifier_type": primary.type, "secondary": secondary}


def _object_options(where: str, spec: dict[str, Any]) -> dict[str, Any]:
    type_id, id_field = spec.get("object_type_id"), spec.get("object_id")
    if type_id is None or not str(type_id).strip():
        raise ConfigError(f"{where}.object_type_id: the Customer.io object type id (e.g. 1) is required")
    if not id_field:
        raise ConfigError(f"{where}.object_id: name the column holding the object's id")
    _column(f"{where}.object_id", id_field)
    relations = spec.get("relationships") or []
    if not isinstance(relations, list):
        raise ConfigError(f"{where}.relationships: a list of {{field, type}} person identifiers")
    return {
        "identifier_field": id_field,
        "identifier_type": "object_id",
        "object_type_id": str(type_id),
        "relationships": tuple(_identifier(f"{where}.relationships[{i}]", r) for i, r in enumerate(relations)),
    }


def _event_route_options(where: str, spec: dict[str, Any]) -> dict[str, Any]:
    options = {**_person_options(where, spec), **_event_options(where, spec)}
    mirror = spec.get("mirror_to_attribute")
    if mirror is not None and (not isinstance(mirror, str) or not mirror.strip()):
        raise ConfigError(f"{where}.mirror_to_attribute: the person attribute to set to the event's time")
    options["mirror_to_attribute"] = mirror
    return options


def _event_options(where: str, spec: dict[str, Any]) -> dict[str, Any]:
    name, name_field = spec.get("event_name"), spec.get("event_name_field")
    if bool(name) == bool(name_field):
        raise ConfigError(f"{where}: an event route needs exactly one of `event_name` or `event_name_field`")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{where}.event_name: the name of the event, as text")
    if name and not snake_case(name):
        raise ConfigError(f"{where}.event_name: {name!r} has no letters or digits")
    if name_field:
        _column(f"{where}.event_name_field", name_field)
    if not spec.get("timestamp"):
        raise ConfigError(f"{where}.timestamp: an event route names the column holding when it happened")
    _column(f"{where}.timestamp", spec["timestamp"])
    event_id = spec.get("event_id")
    if not event_id:
        raise ConfigError(f"{where}.event_id: name the column(s) that identify one event (the dedupe key)")
    event_id = _columns(f"{where}.event_id", event_id)
    max_age = None
    if spec.get("max_age") is not None:
        try:
            max_age = parse_duration(spec["max_age"])
        except ValueError as exc:
            raise ConfigError(f"{where}.max_age: {exc}") from None
        if not max_age:
            raise ConfigError(f"{where}.max_age: 0 would skip every event; leave it out to keep them all")
    return {
        "event_name": snake_case(name) if name else None,
        "event_name_field": name_field,
        "event_id": event_id,
        "timestamp": spec["timestamp"],
        "max_age": max_age,
    }


_KIND_OPTIONS = {
    "person": _person_options,
    "event": _event_route_options,
    "merge": _merge_options,
    "object": _object_options,
}
# The options every route takes, and those of each kind: an option of another kind is an error
# too (`timestamp` on a person route does nothing, so it is a mistake).
_COMMON_KEYS = ("kind", "attributes", "contract", "on_contract_violation", "source_timezone", "on_delete")
_KIND_KEYS = {
    "person": ("identifier",),
    "event": ("identifier", "event_name", "event_name_field", "event_id", "timestamp", "max_age",
              "mirror_to_attribute"),
    "merge": ("primary", "secondary"),
    "object": ("object_type_id", "object_id", "relationships"),
}
_ROUTE_KEYS = frozenset(_COMMON_KEYS).union(*_KIND_KEYS.values())
