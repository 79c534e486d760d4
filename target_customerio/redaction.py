"""Secrets masked in one place: every log line, error, report, reject and dry-run file.

The target learns its secrets from the configuration as soon as it is read (before it is
checked, so a malformed one is masked too): the value of every sensitive setting whatever its
type, the password of any URL or DSN among the settings, and any query value whose name looks
secret. Text that leaves the process goes through `redact`; on top of the known values, URL
userinfo and secret-looking `name=value` pairs are masked by their shape, so a secret the
target was never told about (a password inside a mistyped proxy URL) is masked as well.

The user's own data is masked by the known values only (`redact_values`): a rejected record
reaches the reject file as it came (`mailto:a:b@c`, `password=...` in a note), unless it holds
a secret of the configuration. The shapes are for what the target writes about its settings
and its errors, where a DSN or a proxy URL can appear.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

MASK = "****"
# Settings whose value is a secret, and names that look like one (a typo of a secret setting,
# a key inside `streams` or a DSN).
SENSITIVE_SETTINGS = frozenset({"api_key", "ledger_url", "app_api_key"})
_SECRET_NAME = re.compile(
    r"(pass(word|wd)?|secret|token|api[-_]?key|apikey|access[-_]?key|auth|credential"
    r"|signature|sig|private|(^|[-_])key$)",
    re.IGNORECASE,
)
# `scheme://user:password@host`: the userinfo, whatever the scheme (a mistyped `htps://` too).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<info>[^/@\s'\"]+)@")
# `user:password@host` after anything else (`http//user:pw@host`, a URL that does not parse).
_LOGIN = re.compile(r"(?P<user>[^\s/@'\":]+):(?P<password>[^\s/@'\"]+)@")
# `Authorization: Basic ...` (a server echoing the request's headers back).
_AUTH_HEADER = re.compile(
    r"(?P<name>authorization['\"]?\s*[:=]\s*['\"]?(?:basic|bearer|token)?\s*)[^\s'\",;}]+",
    re.IGNORECASE,
)
# `password=...`, `api_key: ...`, `?token=...`: a secret-looking name and its value.
_PAIR = re.compile(
    r"(?P<name>\b[\w-]*(?:pass(?:word|wd)?|secret|token|api[-_]?key|apikey|access[-_]?key|signature)[\w-]*)"
    r"(?P<sep>\s*=\s*['\"]?|['\"]\s*:\s*['\"])(?P<value>[^\s&'\",;}]+)",
    re.IGNORECASE,
)
# Shorter values are too common to mask everywhere: a sensitive setting's value of fewer than 4
# characters, or one found only by a secret-looking name (`hash_secret: 2024`) of fewer than 8.
_MIN_SENSITIVE, _MIN_SECRET = 4, 8


class Redactor:
    """The secrets known so far, and the masking of text that may hold them. Thread-safe."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()  # each value in every form it can be printed in
        self._values: set[str] = set()  # each value as given (and stripped)
        self._pattern: re.Pattern[str] | None = None
        self._value_pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def learn(self, value: Any, minimum: int = _MIN_SENSITIVE) -> None:
        """Remember a secret value: a string, or every string and number inside any value, in
        each form it can be printed in (as is, and escaped inside a JSON string)."""
        values = {text for text in _strings(value) if len(text) >= minimum}
        found = {form for text in values for form in _forms(text)}
        if found - self._secrets or values - self._values:
            with self._lock:
                self._secrets |= found
                self._values |= values
                self._pattern = _alternation(self._secrets)
                self._value_pattern = _alternation(self._values)

    def learn_config(self, config: Any) -> None:
        """Every secret a configuration holds (see the module docstring), and the HTTP Basic
        credential the Track API is called with, as a server could echo it back."""
        if not isinstance(config, dict):
            return
        site_id, api_key = config.get("site_id"), config.get("api_key")
        if isinstance(site_id, str) and isinstance(api_key, str):
            self.learn(base64.b64encode(f"{site_id}:{api_key}".encode("utf-8", "replace")).decode())
        for name, value in config.items():
            if name in SENSITIVE_SETTINGS:
                self.learn(value)
            elif _SECRET_NAME.search(str(name)):
                self.learn(value, _MIN_SECRET)
            for text in _strings(value):
                self._learn_url(text)
            if isinstance(value, dict):
                self.learn_config(value)

    def _learn_url(self, text: str) -> None:
        if "://" not in text and "=" not in text:
            return
        try:
            parts = urlsplit(text.strip())
            password = parts.password
        except ValueError:
            password = None
        if password:  # as written in the URL, and as the server knows it (`%40` is `@`)
            self.learn({password, unquote(password)})
        for key, value in _query_pairs(text):
            if _SECRET_NAME.search(key):
                self.learn(value, _MIN_SECRET)

    def redact(self, text: str) -> str:
        """The text with every known secret and every secret-shaped part masked."""
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(MASK, text)
        if "@" in text:
            text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
            text = _LOGIN.sub(lambda m: f"{m['user']}:{MASK}@", text)
        if "uthorization" in text or "UTHORIZATION" in text:
            text = _AUTH_HEADER.sub(lambda m: f"{m['name']}{MASK}", text)
        if "=" in text or ":" in text:
            text = _PAIR.sub(lambda m: f"{m['name']}{m['sep']}{MASK}", text)
        return text

    def redact_values(self, text: str) -> str:
        """The text with the known secrets masked, and nothing else: for the user's own data (a
        rejected record), which must stay as it came unless it holds a secret."""
        pattern = self._value_pattern
        return text if pattern is None else pattern.sub(MASK, text)

    def redact_bytes(self, data: bytes) -> bytes:
        """`redact` for encoded text: untouched when clean."""
        text = data.decode("utf-8", "surrogateescape")
        masked = self.redact(text)
        return data if masked == text else masked.encode("utf-8", "surrogateescape")

    def redact_json(
        self, data: bytes, indent: int | None = None, *, user_data: str | None = None
    ) -> bytes:
        """`redact` for a JSON document or line (reject, report and dry-run files), keeping it
        JSON: when something is masked, the document is masked value by value (a string in
        part, a number or literal that is a secret as a whole, as the string "****"). The
        top-level member `user_data` (a reject's `record`) is masked by `redact_values`."""
        if self.redact_bytes(data) == data:
            return data  # the usual case: nothing to mask
        try:
            value = json.loads(data.decode("utf-8", "surrogateescape"))
        except ValueError:
            return self.redact_bytes(data)
        if user_data is not None and isinstance(value, dict):
            masked = {self.redact(k): self._masked(v, k == user_data) for k, v in value.items()}
        else:
            masked = self._masked(value)
        try:
            out = json.dumps(masked, ensure_ascii=False, indent=indent).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: escaped, so the line stays UTF-8 JSON
            out = json.dumps(masked, ensure_ascii=True, indent=indent).encode()
        return out + (b"\n" if data.endswith(b"\n") else b"")

    def _masked(self, value: Any, user_data: bool = False) -> Any:
        text: Callable[[str], str] = self.redact_values if user_data else self.redact
        if isinstance(value, str):
            return text(value)
        if isinstance(value, dict):
            return {text(k): self._masked(v, user_data) for k, v in value.items()}
        if isinstance(value, list):
            return [self._masked(v, user_data) for v in value]
        pattern = self._value_pattern if user_data else self._pattern
        if pattern is not None and pattern.fullmatch(json.dumps(value)):
            return MASK
        return value


def _alternation(texts: set[str]) -> re.Pattern[str]:
    """One pattern matching any of `texts`, the longest first (a secret that contains another
    is masked whole)."""
    return re.compile("|".join(map(re.escape, sorted(texts, key=len, reverse=True))))


def _strings(value: Any) -> Iterable[str]:
    """The text forms a value can be printed in: strings and numbers, nested ones too."""
    if isinstance(value, str):
        yield value
        if value.strip() != value:
            yield value.strip()
    elif isinstance(value, (bool, type(None))):
        return
    elif isinstance(value, (int, float)):
        yield str(value)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple, set)):
        for item in value:
            yield from _strings(item)
    else:
        yield str(value)


def _forms(text: str) -> set[str]:
    """A secret as printed, and as JSON writes it inside a string (the reject, report and
    dry-run files are masked after encoding): `"` and `\\` escaped, non-ASCII as is or `\\u`;
    and as Python's repr quotes it in a message."""
    forms = {
        text,
        json.dumps(text)[1:-1],
        json.dumps(text, ensure_ascii=False)[1:-1],
        repr(text)[1:-1],
    }
    return forms - {""}


def _query_pairs(text: str) -> list[tuple[str, str]]:
    """`name=value` pairs of a URL's query or a libpq DSN (`host=x password=y`)."""
    query = text.split("?", 1)[1] if "?" in text else text
    pairs = parse_qsl(query.replace(" ", "&"), keep_blank_values=False)
    return [(k, v.strip("'\"")) for k, v in pairs]


REDACTOR = Redactor()
redact = REDACTOR.redact


def shown(text: str, limit: int = 200) -> str:
    """Outside text (a server's answer, a driver's error) quoted in a message: masked first,
    then cut, so that a cut never leaves part of a secret that no longer matches."""
    masked = redact(text)
    return masked if len(masked) <= limit else masked[:limit] + "..."


class RedactingFilter(logging.Filter):
    """Masks a log record's message, arguments and traceback before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is still logged, masked
            message = f"{record.msg} {record.args}"
        record.msg, record.args = redact(message), None
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text, record.exc_info = redact(text), None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class RedactingStream(io.TextIOBase):
    """stderr for whatever writes to it directly (a thread's traceback, a warning)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def fileno(self) -> int:
        return int(self._stream.fileno())

    def isatty(self) -> bool:
        return bool(self._stream.isatty())

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self._stream, "encoding", "utf-8"))


_FILTER = RedactingFilter()


def install() -> None:
    """Mask everything the process prints: each logging handler's records, and whatever is
    written to stderr directly. Safe to call again (for handlers made since)."""
    if not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr)
    for logger in [logging.getLogger(), *_loggers()]:
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)


def _loggers() -> list[logging.Logger]:
    return [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
