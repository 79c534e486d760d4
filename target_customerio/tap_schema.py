"""The tap's SCHEMA of a stream, read as the default contract: each column's declared types and
whether it holds dates, seen through `$ref` (`definitions`, `$defs`), `allOf`, `anyOf` and
`oneOf`.

Only the JSON types are read (`type`); other keywords (`enum`, `minimum`, `pattern`, nested
`properties` …) are a route `contract`'s job. The rules a user sees (docs/routes.md, "Contracts"):

- null is accepted in every column, declared nullable or not: taps often leave "null" out of a
  nullable column's types, and Customer.io reads null as "remove the attribute".
- `oneOf` is read as `anyOf`: taps use it for a union of types (`oneOf: [integer, string]`), so a
  value that fits two branches (3 for `oneOf: [integer, number]`) is accepted, not refused.
- a `$ref` that does not point into the SCHEMA itself (`#/...`), or that loops, constrains nothing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

# What a value is, as far as a JSON type check can tell: a number is `integral` (3, 3.0) or a
# `fraction` (3.5); `integer` accepts the first, `number` both (as JSON Schema defines them).
CLASSES = frozenset({"null", "boolean", "string", "object", "array", "integral", "fraction"})
_OF_TYPE = {
    "null": {"null"},
    "boolean": {"boolean"},
    "string": {"string"},
    "object": {"object"},
    "array": {"array"},
    "integer": {"integral"},
    "number": {"integral", "fraction"},
}
# The Python types a class's values arrive as. Dates and times on the SDK's path are date-time
# strings parsed by the SDK; a float or Decimal is only known to be integral once looked at.
_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "null": (type(None),),
    "boolean": (bool,),
    "string": (str, dt.datetime, dt.date, dt.time),
    "object": (dict,),
    "array": (list, tuple),
    "integral": (int,),
    "fraction": (),
}
DATE_FORMATS = ("date-time", "date")


@dataclass(frozen=True)
class Column:
    """One column's declared contract."""

    accepts: frozenset[str]  # value classes (CLASSES) its declared types accept; null always
    dates: bool  # declared date-time or date (sent as unix seconds)
    fast: frozenset[type]  # Python types that conform without looking at the value
    declared: str  # its types as a user reads them: "integer", "string or object"

    @property
    def checked(self) -> bool:
        """False when any value conforms: nothing to check for it."""
        return self.accepts != CLASSES

    def conforms(self, value: Any) -> bool:
        """Whether a value fits the column's declared types (the slow path of `fast`)."""
        kind = value_class(value)
        return kind is None or kind in self.accepts


def value_class(value: Any) -> str | None:
    """The class (CLASSES) of a value as the tap's decoder or the SDK gives it; None for a
    Python type no JSON decoder returns (never refused: the type check cannot tell)."""
    kind = type(value)
    if value is None:
        return "null"
    if kind is bool:
        return "boolean"
    if kind is int:
        return "integral"
    if kind is float:
        return "integral" if value.is_integer() else "fraction"
    if kind is Decimal:
        return (
            "integral" if value.is_finite() and value == value.to_integral_value() else "fraction"
        )
    if kind is str or isinstance(value, (dt.date, dt.time)):
        return "string"
    if kind is dict:
        return "object"
    if kind is list or kind is tuple:
        return "array"
    return None


def columns(schema: dict[str, Any]) -> dict[str, Column] | None:
    """Each declared column's contract; None when the SCHEMA declares no properties at all."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict) or not properties:
        return None
    return {name: _column(prop, schema) for name, prop in properties.items()}


def _column(prop: Any, root: dict[str, Any]) -> Column:
    try:
        return _declared_column(prop, root)
    except RecursionError:  # a $ref chain or nesting past the stack: it constrains nothing
        return _declared_column(True, root)


def _declared_column(prop: Any, root: dict[str, Any]) -> Column:
    accepts = _accepts(prop, root, ()) | {"null"}
    fast = {t for kind in accepts for t in _PYTHON_TYPES[kind]}
    if {"integral", "fraction"} <= accepts:
        fast |= {float, Decimal}
    return Column(frozenset(accepts), _is_date(prop, root, ()), frozenset(fast), _declared(accepts))


def _accepts(node: Any, root: dict[str, Any], refs: tuple[str, ...]) -> frozenset[str]:
    """The value classes a (sub)schema accepts, by its types and those it combines."""
    if node is False:
        return frozenset()
    if not isinstance(node, dict):
        return CLASSES  # `true`, or not a schema: no constraint
    accepted = _of_type(node.get("type"))
    ref = node.get("$ref")
    if isinstance(ref, str) and ref not in refs:
        target = _resolve(ref, root)
        if target is not None:
            accepted &= _accepts(target, root, (*refs, ref))
    for sub in _subschemas(node, "allOf"):
        accepted &= _accepts(sub, root, refs)
    for key in ("anyOf", "oneOf"):
        branches = _subschemas(node, key)
        if branches:
            accepted &= frozenset().union(*(_accepts(b, root, refs) for b in branches))
    return accepted


def _of_type(declared: Any) -> frozenset[str]:
    names = [declared] if isinstance(declared, str) else declared
    if not isinstance(names, list) or not all(isinstance(n, str) and n in _OF_TYPE for n in names):
        return (
            CLASSES  # no `type`, or one this reader does not know (draft 3's "any"): no constraint
        )
    return frozenset(kind for name in names for kind in _OF_TYPE[name])


def _is_date(node: Any, root: dict[str, Any], refs: tuple[str, ...]) -> bool:
    """Declared date-time or date, on the node or anything it refers to or combines."""
    if not isinstance(node, dict):
        return False
    if node.get("format") in DATE_FORMATS:
        return True
    ref = node.get("$ref")
    if isinstance(ref, str) and ref not in refs:
        target = _resolve(ref, root)
        if target is not None and _is_date(target, root, (*refs, ref)):
            return True
    subs = [*_subschemas(node, "allOf"), *_subschemas(node, "anyOf"), *_subschemas(node, "oneOf")]
    return any(_is_date(sub, root, refs) for sub in subs)


def _subschemas(node: dict[str, Any], key: str) -> list[Any]:
    subs = node.get(key)
    return subs if isinstance(subs, list) else []


def _resolve(ref: str, root: dict[str, Any]) -> Any:
    """The subschema a local `$ref` (`#`, `#/$defs/money`, `#/definitions/ts`) points at; None
    for any other (a remote document is never fetched) or one that points nowhere."""
    if ref != "#" and not ref.startswith("#/"):
        return None  # remote, or a plain-name anchor (`#ts`): not followed, so no constraint
    node: Any = root
    for part in ref[1:].split("/")[1:] if ref != "#" else []:
        key = unquote(part).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return None
    return node


def _declared(accepts: frozenset[str]) -> str:
    names: list[str] = [n for n in ("boolean", "string", "object", "array") if n in accepts]
    if {"integral", "fraction"} <= accepts:
        names.append("number")
    elif "integral" in accepts:
        names.append("integer")
    return " or ".join(names) or "null"
