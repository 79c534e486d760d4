"""The condition language of data-driven segments: parse, print back, evaluate against a person.

    orders_count >= 2 AND last_order_at within 60 days
    orders_count > 0 AND (last_order_at blank OR performed refund_issued within 30 days)

Grammar (keywords are case-insensitive; AND binds tighter than OR):

    condition := and ("OR" and)*
    and       := term ("AND" term)*
    term      := "(" condition ")"
               | "performed" event ["within" N "days"]
               | name op value          op: = != > >= < <=
               | name "exists" | name "blank" | name "within" N "days"
    name      := word (letters, digits, _; not a keyword) | `any text but a backtick`
    event     := name | "a JSON string"
    value     := number | "a JSON string" | 'text without a quote' | true | false

Semantics, as a segment in Customer.io would see the stored profile: a comparison matches only
a present value of the literal's type (numbers as numbers, strings as strings, booleans with =
and != only); a present value of another type matches `!=` and nothing else; a missing (or null)
attribute matches no comparison at all. `blank` is missing, null or ""; `exists` is not blank.
`within N days` wants unix seconds (a number) in [now - N days, now]: an ISO string never
matches, which is exactly the undercount the QA page is there to show.
"""

from __future__ import annotations

import json
import math
import operator
import re
from dataclasses import dataclass, field
from typing import Any, NoReturn

KEYWORDS = frozenset(
    {"and", "or", "exists", "blank", "within", "days", "day", "performed", "true", "false"}
)
OPERATORS = ("=", "!=", ">", ">=", "<", "<=")
DAY_SECONDS = 86_400

_BARE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<number>-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
      | (?P<string>"(?:[^"\\]|\\.)*"|'[^']*')
      | (?P<quoted>`[^`]*`)
      | (?P<op>>=|<=|!=|==|=|>|<)
      | (?P<paren>[()])
      | (?P<word>[A-Za-z_][A-Za-z0-9_]*)""",
    re.VERBOSE,
)
_COMPARE = {
    "=": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


class ConditionError(ValueError):
    """A condition that does not parse; the message is one line and names the column."""


@dataclass(frozen=True)
class Subject:
    """What a condition is evaluated against: one person's attributes and events."""

    attributes: dict
    events: dict[str, list[int]] = field(default_factory=dict)  # event name -> timestamps
    now: float = 0.0


# ---- the tree -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Compare:
    attribute: str
    op: str
    value: int | float | str | bool

    def matches(self, subject: Subject) -> bool:
        actual = subject.attributes.get(self.attribute)
        if actual is None:
            return False
        kind = _kind(self.value)
        if _kind(actual) != kind:
            return self.op == "!="
        if kind == "boolean" and self.op not in ("=", "!="):
            return False
        return _COMPARE[self.op](actual, self.value)

    def __str__(self) -> str:
        return f"{_name(self.attribute)} {self.op} {_value(self.value)}"


@dataclass(frozen=True)
class Exists:
    attribute: str

    def matches(self, subject: Subject) -> bool:
        return not _blank(subject.attributes.get(self.attribute))

    def __str__(self) -> str:
        return f"{_name(self.attribute)} exists"


@dataclass(frozen=True)
class Blank:
    attribute: str

    def matches(self, subject: Subject) -> bool:
        return _blank(subject.attributes.get(self.attribute))

    def __str__(self) -> str:
        return f"{_name(self.attribute)} blank"


@dataclass(frozen=True)
class Within:
    attribute: str
    days: int

    def matches(self, subject: Subject) -> bool:
        value = subject.attributes.get(self.attribute)
        return _kind(value) == "number" and _in_window(value, self.days, subject.now)

    def __str__(self) -> str:
        return f"{_name(self.attribute)} within {self.days} days"


@dataclass(frozen=True)
class Performed:
    event: str
    days: int | None = None

    def matches(self, subject: Subject) -> bool:
        times = subject.events.get(self.event, ())
        if self.days is None:  # performed at all: by now (an event stamped in the future has not)
            return any(t <= subject.now for t in times)
        return any(_in_window(t, self.days, subject.now) for t in times)

    def __str__(self) -> str:
        within = "" if self.days is None else f" within {self.days} days"
        return f"performed {_name(self.event, event=True)}{within}"


@dataclass(frozen=True)
class And:
    terms: tuple[Node, ...]

    def matches(self, subject: Subject) -> bool:
        return all(term.matches(subject) for term in self.terms)

    def __str__(self) -> str:
        return " AND ".join(f"({t})" if isinstance(t, Or) else str(t) for t in self.terms)


@dataclass(frozen=True)
class Or:
    terms: tuple[Node, ...]

    def matches(self, subject: Subject) -> bool:
        return any(term.matches(subject) for term in self.terms)

    def __str__(self) -> str:
        # AND binds tighter, so these parentheses are only for the reader.
        return " OR ".join(f"({t})" if isinstance(t, And) else str(t) for t in self.terms)


Node = Compare | Exists | Blank | Within | Performed | And | Or


def join(kind: type[And | Or], terms: list[Node]) -> Node:
    """`kind` of `terms`, flattened (a AND (b AND c) is a AND b AND c): one tree per meaning,
    so that a condition printed back parses to the same tree."""
    flat: list[Node] = []
    for term in terms:
        flat.extend(term.terms if isinstance(term, kind) else (term,))
    return flat[0] if len(flat) == 1 else kind(tuple(flat))


def events_used(node: Node) -> set[str]:
    """The event names `performed` terms ask about (the store loads only those)."""
    if isinstance(node, Performed):
        return {node.event}
    if isinstance(node, (And, Or)):
        return set().union(*(events_used(t) for t in node.terms))
    return set()


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "string" if isinstance(value, str) else "other"


def _blank(value: Any) -> bool:
    return value is None or value == ""


def _in_window(timestamp: Any, days: int, now: float) -> bool:
    return now - days * DAY_SECONDS <= timestamp <= now


def _name(name: str, event: bool = False) -> str:
    if _BARE_NAME.fullmatch(name) and name.lower() not in KEYWORDS:
        return name
    if "`" not in name:
        return f"`{name}`"
    if event:
        return json.dumps(name, ensure_ascii=False)
    raise ValueError(f"an attribute name cannot contain a backtick: {name!r}")


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # repr round-trips a float exactly, and keeps 1.0 a float
    return json.dumps(value, ensure_ascii=False)


# ---- the parser -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str  # number, string, quoted, op, paren, word, end
    text: str
    pos: int

    def keyword(self, *words: str) -> bool:
        return self.kind == "word" and self.text.lower() in words

    def shown(self) -> str:
        return "the end" if self.kind == "end" else repr(self.text)


def parse(text: str) -> Node:
    """The tree of a condition, or a ConditionError saying what is wrong and where."""
    if not isinstance(text, str):
        raise ConditionError("a condition must be a string")
    parser = _Parser(_tokens(text))
    if parser.peek().kind == "end":
        raise ConditionError("the condition is empty")
    node = parser.condition()
    token = parser.peek()
    if token.kind != "end":
        parser.fail(f"expected AND, OR or the end, got {token.shown()}", token)
    return node


def _tokens(text: str) -> list[_Token]:
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ConditionError(f"unexpected character {text[pos]!r} (column {pos + 1})")
        if match.lastgroup != "space":
            tokens.append(_Token(match.lastgroup or "", match.group(), pos))
        pos = match.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


class _Parser:
    """Recursive descent over the token list, one method per grammar rule."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens, self.i = tokens, 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        self.i += token.kind != "end"
        return token

    def fail(self, message: str, token: _Token) -> NoReturn:
        raise ConditionError(f"{message} (column {token.pos + 1})")

    def condition(self) -> Node:
        terms = [self.conjunction()]
        while self.peek().keyword("or"):
            self.take()
            terms.append(self.conjunction())
        return join(Or, terms)

    def conjunction(self) -> Node:
        terms = [self.term()]
        while self.peek().keyword("and"):
            self.take()
            terms.append(self.term())
        return join(And, terms)

    def term(self) -> Node:
        token = self.take()
        if token.text == "(":
            node = self.condition()
            if self.peek().text != ")":
                self.fail(f"expected ')' to close the '(' of column {token.pos + 1}", self.peek())
            self.take()
            return node
        if token.keyword("performed"):
            event = self.name(self.take(), "an event name after 'performed'", event=True)
            days = self.days() if self.peek().keyword("within") else None
            return Performed(event, days)
        attribute = self.name(token, "a condition")
        following = self.peek()
        if following.kind == "op":
            self.take()
            op = "=" if following.text == "==" else following.text
            return Compare(attribute, op, self.value(following))
        if following.keyword("exists", "blank"):
            self.take()
            return Exists(attribute) if following.text.lower() == "exists" else Blank(attribute)
        if following.keyword("within"):
            return Within(attribute, self.days())
        self.fail(
            f"expected an operator, exists, blank or within after {attribute!r}, "
            f"got {following.shown()}",
            following,
        )

    def name(self, token: _Token, wanted: str, event: bool = False) -> str:
        if token.kind == "word" and token.text.lower() not in KEYWORDS:
            return token.text
        if token.kind == "quoted" and len(token.text) > 2:
            return token.text[1:-1]
        if event and token.kind == "string":
            text = _string(token)
            if text:
                return text
        hint = ""
        if token.kind == "string":
            hint = " (a name that is not a plain word goes in `backticks`)"
        self.fail(f"expected {wanted}, got {token.shown()}{hint}", token)

    def days(self) -> int:
        self.take()  # within
        token = self.take()
        if token.kind != "number" or not token.text.isdigit():
            self.fail(f"expected a whole number of days after 'within', got {token.shown()}", token)
        unit = self.take()
        if not unit.keyword("days", "day"):
            self.fail(f"expected 'days' after 'within {token.text}', got {unit.shown()}", unit)
        return int(token.text)

    def value(self, op: _Token) -> int | float | str | bool:
        token = self.take()
        if token.kind == "number":
            if not any(c in token.text for c in ".eE"):
                return int(token.text)
            number = float(token.text)
            if not math.isfinite(number):
                self.fail(f"number out of range: {token.text}", token)
            return number
        if token.kind == "string":
            return _string(token)
        if token.keyword("true", "false"):
            return token.text.lower() == "true"
        self.fail(
            f'expected a value (a number, a "string", true or false) after {op.text!r}, '
            f"got {token.shown()}",
            token,
        )


def _string(token: _Token) -> str:
    if token.text.startswith("'"):
        return token.text[1:-1]
    try:
        return json.loads(token.text)
    except ValueError:
        raise ConditionError(f"bad escape in the string (column {token.pos + 1})") from None
