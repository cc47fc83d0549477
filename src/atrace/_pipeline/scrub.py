"""Scrubbing: secrets never reach a sink. Run by the flusher on encoded rows, never on the emit
path (a record keeps its values until then; what is stored and sent is scrubbed).

Two kinds of rule:

- **keys**: an attribute whose name holds a sensitive word, matched on whole words of the name
  (split at ``.``, ``_``, ``-``, spaces and camelCase): ``password``, ``passwd``, ``pwd``,
  ``secret``, ``token``, ``api key``, ``authorization``, ``cookie``, ``set-cookie``, ``session
  id``, ``private key``, ``credential``, ``jwt`` and their joined forms (``apikey``,
  ``sessionid``, ``accesstoken`` ...). ``author``, ``session_count`` or ``tokens_used`` are left
  alone: no whole word of theirs is one. Its value (nested values too) becomes
  ``"[scrubbed: <rule>]"``.
- **values**: inside any text (attribute strings, messages, error messages, stack traces,
  status messages): credentials in URLs (``postgresql://user:pw@host``), sensitive query
  parameters (``?token=...``), bearer and basic credentials, JWTs, PEM private keys, card
  numbers (13-19 digits passing the Luhn check), and ``password=...``-style pairs. Only the
  secret part is replaced: ``postgresql://user:[scrubbed: url password]@host``.

A row's columns are looked at only when a cheap first test finds a hint of a secret, so rows
without one cost one regular-expression scan of their text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from itertools import pairwise
from typing import Any

import orjson

from .._records import ATTRS, ERROR_MESSAGE, MESSAGE, STACK_TRACE, STATUS_MESSAGE, Row

__all__ = ("Scrubber", "luhn", "scrub_text", "sensitive_key")

_WORDS = frozenset(
    {
        "password", "passwd", "pwd", "passphrase", "secret", "token", "apikey", "authorization",
        "cookie", "setcookie", "sessionid", "privatekey", "credential", "credentials", "jwt",
        "accesstoken", "refreshtoken", "authtoken", "apitoken", "secretkey", "clientsecret",
        "accesskey", "xapikey",
    }
)  # fmt: skip
_PAIRS = frozenset(
    {
        ("api", "key"), ("session", "id"), ("private", "key"), ("set", "cookie"),
        ("access", "key"), ("secret", "key"), ("client", "secret"), ("access", "token"),
        ("refresh", "token"), ("auth", "token"),
    }
)  # fmt: skip
_SPLIT = re.compile(r"[^a-z0-9]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_KEY_CACHE: dict[str, str | None] = {}


def sensitive_key(key: str, extra: frozenset[str] = frozenset()) -> str | None:
    """The rule an attribute name falls under (its sensitive word), or None."""
    tokens = [t for t in _SPLIT.split(_CAMEL.sub("_", key).lower()) if t]
    for a, b in pairwise(tokens):
        if (a, b) in _PAIRS:
            return f"{a} {b}"
        if a + b in extra:
            return a + b
    for token in tokens:
        if token in _WORDS or token in extra:
            return token
    return None


def luhn(digits: str) -> bool:
    """Whether a string of digits passes the Luhn check (card numbers do)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _marker(rule: str) -> str:
    return f"[scrubbed: {rule}]"


_SENSITIVE_PARAM = (
    r"[a-z0-9_.-]*(?:token|api[_-]?key|apikey|password|passwd|secret|signature|session[_-]?id"
    r"|access[_-]?key|credential)[a-z0-9_.-]*"
)
# (pattern, rule, replacement) in order; each replacement keeps what is not secret.
_VALUE_RULES: tuple[tuple[re.Pattern[str], str, Callable[[re.Match[str]], str]], ...] = (
    (
        re.compile(
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", re.S
        ),
        "private key",
        lambda m: _marker("private key"),
    ),
    (
        re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^:/?#\s@]+):([^@/?#\s]+)@"),
        "url password",
        lambda m: f"{m.group(1)}{m.group(2)}:{_marker('url password')}@",
    ),
    (
        re.compile(rf"(?i)([?&;]{_SENSITIVE_PARAM}=)(?!\[scrubbed)[^&#\s]+"),
        "query",
        lambda m: f"{m.group(1)}{_marker('query')}",
    ),
    (
        re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}"),
        "jwt",
        lambda m: _marker("jwt"),
    ),
    (
        re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/-]{8,}=*"),
        "bearer",
        lambda m: f"{m.group(1)} {_marker('bearer')}",
    ),
    (
        re.compile(
            r"(?i)\b(password|passwd|pwd|secret|api[_-]?key|apikey|token|access[_-]?token"
            r"|client[_-]?secret)([\"']?\s*[=:]\s*)(?!\[scrubbed)(\"[^\"]*\"|'[^']*'|[^\s,;&]+)"
        ),
        "pair",
        lambda m: f"{m.group(1)}{m.group(2)}{_marker(m.group(1).lower())}",
    ),
)
_CARD = re.compile(r"(?<![\d.])(?:\d[ -]?){12,18}\d(?![\d.])")
# A hint of any value rule, in one scan (case-insensitive): most text has none.
_HINT = re.compile(
    r"(?i)private key|://[^/\s]*:[^/\s]*@|[?&;][a-z0-9_.-]*(?:token|key|passw|secret|signature"
    r"|session|credential)|eyJ|bearer|basic\s|passw|pwd|secret|api[_-]?key|token|(?:\d[ -]?){13}"
)


def scrub_text(text: str) -> tuple[str, int]:
    """``text`` with the secrets the value rules find replaced, and how many were."""
    if not _HINT.search(text):
        return text, 0
    count = 0
    for pattern, _rule, replace in _VALUE_RULES:
        text, n = pattern.subn(replace, text)
        count += n

    def card(m: re.Match[str]) -> str:
        nonlocal count
        digits = re.sub(r"[ -]", "", m.group())
        if 13 <= len(digits) <= 19 and luhn(digits):
            count += 1
            return _marker("card number")
        return m.group()

    text = _CARD.sub(card, text)
    return text, count


# In the JSON text of a row's attributes: a key or value worth a closer look.
_ATTRS_HINT = re.compile(
    rb"(?i)passw|pwd|passphrase|secret|token|api.?key|authoriz|cookie|session.?id|private.?key"
    rb"|credential|jwt|access.?key|eyJ|bearer|basic\s|://[^/\s\"]*:[^/\s\"]*@|(?:\d[ -]?){13}"
)
_TEXT_COLUMNS = (MESSAGE, ERROR_MESSAGE, STACK_TRACE, STATUS_MESSAGE)


class Scrubber:
    """The scrubbing rules of a configuration (see the module): the built-in ones, ``words``
    added as sensitive key words, and ``keep(key, value)``, which may keep a value a key rule
    would scrub (return True)."""

    __slots__ = ("count", "keep", "words")

    def __init__(
        self, words: Iterable[str] = (), keep: Callable[[str, Any], bool] | None = None
    ) -> None:
        self.words = frozenset(w.lower().replace("_", "").replace("-", "") for w in words)
        self.keep = keep
        self.count = 0  # values scrubbed so far

    def rows(self, rows: Sequence[Row]) -> list[Row]:
        """The rows with their secrets scrubbed (the same row objects when nothing was)."""
        out = list(rows)
        for i, row in enumerate(out):
            fixed = self.row(row)
            if fixed is not row:
                out[i] = fixed
        return out

    def row(self, row: Row) -> Row:
        changed: dict[int, Any] = {}
        raw = row[ATTRS]
        if raw is not None and (self.words or _ATTRS_HINT.search(raw)):
            attrs = orjson.loads(raw)
            n = self._walk(attrs, None)
            if n:
                changed[ATTRS] = orjson.dumps(attrs)
                self.count += n
        for col in _TEXT_COLUMNS:
            text = row[col]
            if text:
                clean, n = scrub_text(text)
                if n:
                    changed[col] = clean
                    self.count += n
        if not changed:
            return row
        values = list(row)
        for col, value in changed.items():
            values[col] = value
        return tuple(values)

    def _walk(self, node: Any, rule: str | None) -> int:
        # Scrub ``node`` in place: under a sensitive key (``rule``) every value, else the
        # sensitive keys' values and secrets inside strings. Returns how many were scrubbed.
        count = 0
        items: Iterable[tuple[Any, Any]]
        if isinstance(node, dict):
            items = list(node.items())
        elif isinstance(node, list):
            items = list(enumerate(node))
        else:
            return 0
        for key, value in items:
            here = rule
            if here is None and isinstance(key, str):
                if self.words:
                    here = sensitive_key(key, self.words)
                else:
                    found = _KEY_CACHE.get(key, "")
                    if found == "":
                        found = sensitive_key(key)
                        if len(_KEY_CACHE) < 10_000:
                            _KEY_CACHE[key] = found
                    here = found
            if here is not None and self.keep is not None and self.keep(key, value):
                continue
            if isinstance(value, (dict, list)):
                count += self._walk(value, here)
            elif here is not None:
                if value is not None and not isinstance(value, bool):
                    node[key] = _marker(here)
                    count += 1
            elif isinstance(value, str):
                clean, n = scrub_text(value)
                if n:
                    node[key] = clean
                    count += n
        return count
