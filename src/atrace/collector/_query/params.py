"""What a query is asked, parsed and checked: times, levels, filters, cursors, API parameters."""

from __future__ import annotations

import base64
import datetime as dt
import math
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..._emit.ids import parse_trace_id
from ..._records import (
    ATTRS,
    ERROR_MESSAGE,
    ERROR_TYPE,
    KIND,
    KIND_NAMES,
    LEVEL,
    LEVELS,
    MAX_LEVEL,
    MESSAGE,
    NAME,
    SERVICE,
    TRACE_ID,
    Kind,
)
from ...errors import QueryError

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Search, stats and errors look this far back unless told otherwise.
DEFAULT_RANGE_NS = 24 * 3600 * 1_000_000_000
# Error groups are computed over at most this many of the newest error rows of the range.
DEFAULT_ERROR_SCAN = 10_000
MAX_ERROR_SCAN = 100_000
MAX_ATTR_FILTERS = 20
# A kind filter by name or number; "span" means every span row, whichever way it was written.
_KIND_FILTERS: dict[str, tuple[int, ...]] = {
    **{name: (kind,) for kind, name in KIND_NAMES.items()},
    **{str(kind): (kind,) for kind in KIND_NAMES},
    KIND_NAMES[Kind.SPAN]: (Kind.SPAN_START.value, Kind.SPAN_END.value, Kind.SPAN.value),
}
NS_PER_S = 1_000_000_000
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE = re.compile(r"(\d{1,9})\s*([smhdw])", re.I)
_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?"
    r"\s*(Z|[+-]\d{2}(?::?\d{2})?)?",
    re.I,
)
_CTID = re.compile(r"\(\d{1,10},\d{1,5}\)")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def parse_time(value: str | int | dt.datetime, *, now: int, field: str = "time") -> int:
    """Nanoseconds since the epoch from ISO 8601, a relative age (``15m``, ``2h``, ``1d``: that
    long before ``now``), ``now``, integer nanoseconds, or a datetime (naive means UTC)."""
    if isinstance(value, dt.datetime):
        return datetime_ns(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.lower() == "now":
        return now
    if text.isdigit():
        return int(text)
    m = _RELATIVE.fullmatch(text)
    if m is not None:
        return now - int(m[1]) * _UNITS[m[2].lower()] * NS_PER_S
    m = _ISO.fullmatch(text)
    if m is not None:
        try:
            return _iso_ns(m)
        except ValueError:
            pass
    raise QueryError(
        field, value, "expected ISO 8601, a relative age like 15m, 2h or 1d, or integer ns"
    )


def _iso_ns(m: re.Match[str]) -> int:
    year, month, day, hour, minute, second = (int(m[i] or 0) for i in range(1, 7))
    zone = m[8]
    tz = dt.timezone.utc
    if zone and zone.upper() != "Z":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        tz = dt.timezone(sign * dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0)))
    base = dt.datetime(year, month, day, hour, minute, second, tzinfo=tz)
    fraction = int((m[7] or "").ljust(9, "0"))
    return datetime_ns(base) + fraction


def datetime_ns(value: dt.datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return (value - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def parse_level(value: str | int) -> int:
    """A level name (``debug`` … ``critical``, ``warn``, ``fatal``) or number, as a number."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in LEVELS:
        return LEVELS[text]
    if text.isdigit() and int(text) <= MAX_LEVEL:
        return int(text)
    raise QueryError("level", value, "expected debug, info, warning, error, critical or 0-100")


def _parse_limit(value: str | int | None, default: int, maximum: int, name: str) -> int:
    if value is None or value == "":
        return default
    try:
        limit = int(value)
    except (TypeError, ValueError):
        raise QueryError(name, value, "expected an integer") from None
    if not 1 <= limit <= maximum:
        raise QueryError(name, value, f"expected 1 to {maximum}")
    return limit


def parse_trace_param(value: str) -> str:
    trace_id = parse_trace_id(value.strip())
    if trace_id is None:
        raise QueryError("trace_id", value, "expected 32 hex digits (not all zero)")
    return trace_id


def _attr_value(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def attr_alternatives(value: Any) -> tuple[Any, ...]:
    """The stored values an ``attr.KEY=VALUE`` filter accepts, the asked one first.

    A number or a boolean also matches its text stored as a string, and that text matches
    the same as the number or boolean: ``42``, ``42.0``, ``"42"`` and ``"42.0"`` are
    interchangeable (numbers compare as numbers), as are ``4.5`` and ``"4.5"``, ``true`` and
    ``"true"``. Only those spellings count (``"042"``, ``" 42"`` or ``"1e3"`` match themselves
    alone), and ``true`` is never ``1``. Any other value (other text, ``null``, arrays,
    objects) matches as jsonb containment does.
    """
    if isinstance(value, bool):
        return (value, "true" if value else "false")
    if isinstance(value, (int, float)):
        return (value, *_number_texts(value))
    if isinstance(value, str):
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            return (value,)
        if isinstance(parsed, bool) and value in ("true", "false"):
            return (value, parsed)
        if isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
            texts = _number_texts(parsed)
            if value in texts:
                return (value, parsed, *(t for t in texts if t != value))
    return (value,)


def _number_texts(value: float) -> tuple[str, ...]:
    # How a number is written as text: "42" and "42.0" for an integral one, else its JSON.
    if isinstance(value, float):
        if not math.isfinite(value):
            return ()
        if not value.is_integer():
            return (orjson.dumps(value).decode(),)
    whole = int(value)
    return (str(whole), f"{whole}.0")


def _scalar_texts(value: Any, out: list[str]) -> None:
    # Every scalar of an attribute value as text, containers walked (the tail's ``q``).
    if isinstance(value, dict):
        for v in value.values():
            _scalar_texts(v, out)
    elif isinstance(value, list):
        for v in value:
            _scalar_texts(v, out)
    elif isinstance(value, bool):
        out.append("true" if value else "false")
    elif value is not None:
        out.append(str(value))


@dataclass(frozen=True)
class Filters:
    """What to select, parsed and validated; ``since``/``until`` are ns (``until`` exclusive),
    ``limit`` is the number of records in one page (a search returns ``limit`` records and a
    cursor to the next page)."""

    project: str
    since: int | None = None
    until: int | None = None
    service: str | None = None
    min_level: int | None = None
    kinds: tuple[int, ...] | None = None
    q: str | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)
    trace_id: str | None = None
    limit: int = DEFAULT_LIMIT
    cursor: tuple[int, str] | None = None

    def matches(self, row: Sequence[Any], attrs: Any = None) -> bool:
        """Whether a row (COLUMNS order) passes the filters, in memory (the live tail).

        ``q`` is a case-insensitive substring here, of the name, message, error type, error
        message or an attribute value; ``attrs`` is the row's decoded attributes when the
        caller already has them. Attribute filters match as in SQL (:func:`attr_alternatives`).
        """
        if self.service is not None and row[SERVICE] != self.service:
            return False
        if self.min_level is not None and row[LEVEL] < self.min_level:
            return False
        if self.kinds is not None and row[KIND] not in self.kinds:
            return False
        if self.trace_id is not None and trace_hex(row[TRACE_ID]) != self.trace_id:
            return False
        if self.q:
            want = self.q.lower()
            fields = (row[NAME], row[MESSAGE], row[ERROR_TYPE], row[ERROR_MESSAGE])
            text = " ".join(f for f in fields if f).lower()
            if want not in text:
                if attrs is None:
                    attrs = jsonb_value(row[ATTRS])
                values: list[str] = []
                _scalar_texts(attrs, values)
                if want not in " ".join(values).lower():
                    return False
        if self.attrs:
            have = attrs if attrs is not None else jsonb_value(row[ATTRS])
            if not isinstance(have, dict):
                return False
            for key, value in self.attrs.items():
                if key not in have or not any(
                    _contains(have[key], alt) for alt in attr_alternatives(value)
                ):
                    return False
        return True


def _contains(have: Any, want: Any) -> bool:
    # jsonb's @>: objects by key, arrays by element, scalars by equal value (true is not 1).
    if isinstance(want, dict):
        return isinstance(have, dict) and all(
            k in have and _contains(have[k], v) for k, v in want.items()
        )
    if isinstance(want, list):
        if not isinstance(have, list):
            return False
        return all(any(_contains(h, w) for h in have) for w in want)
    if isinstance(want, bool) or isinstance(have, bool):
        return type(want) is type(have) and want == have
    return bool(have == want)


def trace_hex(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, uuid.UUID):
        return value.hex
    return str(value).replace("-", "").lower()


def jsonb_value(value: Any) -> Any:
    # jsonb arrives as bytes (atrace's codec), str (asyncpg's default) or already decoded.
    if value is None or isinstance(value, (dict, list)):
        return value
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return None


def parse_filters(
    params: Iterable[tuple[str, str]] | Mapping[str, str],
    *,
    project: str,
    now: int | None = None,
    default_range_ns: int | None = DEFAULT_RANGE_NS,
) -> Filters:
    """Filters from query parameters: ``service``, ``level``, ``kind``, ``since``, ``until``,
    ``q``, ``attr.KEY=VALUE`` (VALUE as JSON when it parses, else a string; numbers and booleans
    also match their text, see :func:`attr_alternatives`), ``trace_id``, ``limit`` (records per
    page), ``cursor``. Unknown parameters are refused, so a typo never widens a query."""
    now = time.time_ns() if now is None else now
    items = list(params.items()) if isinstance(params, Mapping) else list(params)
    seen: dict[str, str] = {}
    attrs: dict[str, Any] = {}
    for key, value in items:
        if key.startswith("attr."):
            name = key[5:]
            if not name:
                raise QueryError(key, value, "an attribute filter needs a key: attr.KEY=VALUE")
            attrs[name] = _attr_value(value)
        elif key in _FILTER_KEYS:
            seen[key] = value
        else:
            raise QueryError(key, value, f"unknown parameter; expected one of {_FILTER_NAMES}")
    if len(attrs) > MAX_ATTR_FILTERS:
        raise QueryError("attr", len(attrs), f"at most {MAX_ATTR_FILTERS} attribute filters")
    since = seen.get("since")
    until = seen.get("until")
    kind = seen.get("kind")
    if kind is not None and kind.strip().lower() not in _KIND_FILTERS:
        raise QueryError("kind", kind, "expected log, span, span_start or span_end")
    q = (seen.get("q") or "").strip()
    level = seen.get("level")
    service = seen.get("service")
    trace_id = seen.get("trace_id")
    cursor = seen.get("cursor")
    until_ns = parse_time(until, now=now, field="until") if until else None
    if since:
        since_ns: int | None = parse_time(since, now=now, field="since")
    elif default_range_ns is not None:
        # The default window ends where the range does: "until=2h" alone means 26 h to 2 h ago.
        since_ns = (now if until_ns is None else until_ns) - default_range_ns
    else:
        since_ns = None
    return Filters(
        project=project,
        since=since_ns,
        until=until_ns,
        service=service or None,
        min_level=parse_level(level) if level else None,
        kinds=_KIND_FILTERS[kind.strip().lower()] if kind else None,
        q=q or None,
        attrs=attrs,
        trace_id=parse_trace_param(trace_id) if trace_id else None,
        limit=_parse_limit(seen.get("limit"), DEFAULT_LIMIT, MAX_LIMIT, "limit"),
        cursor=_decode_cursor(cursor) if cursor else None,
    )


_FILTER_KEYS = frozenset(
    ("service", "level", "kind", "since", "until", "q", "trace_id", "limit", "cursor")
)
_FILTER_NAMES = ", ".join(sorted(_FILTER_KEYS)) + ", attr.KEY"


def encode_cursor(ts_us: int, rid: str) -> str:
    raw = orjson.dumps([ts_us, rid])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode_cursor(text: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        ts_us, rid = orjson.loads(raw)
        if type(ts_us) is int and isinstance(rid, str) and _CTID.fullmatch(rid):
            return ts_us, rid
    except (ValueError, TypeError):
        pass
    raise QueryError("cursor", text, "not a cursor this API returned")


# -- query parameters as keyword arguments ----------------------------------------------------


def spans_params(params: Mapping[str, str], *, now: int) -> dict[str, Any]:
    """Keyword arguments of :func:`spans` from query parameters."""
    _only(params, ("since", "until", "service", "slow_ms", "errors", "limit"))
    flag = params.get("errors", "").strip().lower()
    if flag not in ("", "0", "1", "true", "false", "yes", "no"):
        raise QueryError("errors", flag, "expected true or false")
    slow = params.get("slow_ms")
    try:
        slow_ns = None if slow in (None, "") else int(float(slow) * 1_000_000)
    except ValueError:
        raise QueryError("slow_ms", slow, "expected a number of milliseconds") from None
    return {
        "since": parse_time(params["since"], now=now, field="since") if "since" in params else None,
        "until": parse_time(params["until"], now=now, field="until") if "until" in params else None,
        "service": params.get("service") or None,
        "slow_ns": slow_ns,
        "errors_only": flag in ("1", "true", "yes"),
        "limit": _parse_limit(params.get("limit"), DEFAULT_LIMIT, MAX_LIMIT, "limit"),
        "now": now,
    }


def errors_params(params: Mapping[str, str], *, now: int) -> dict[str, Any]:
    """Keyword arguments of :func:`errors` from query parameters."""
    _only(params, ("since", "until", "service", "limit", "scan"))
    return {
        "since": parse_time(params["since"], now=now, field="since") if "since" in params else None,
        "until": parse_time(params["until"], now=now, field="until") if "until" in params else None,
        "service": params.get("service") or None,
        "limit": _parse_limit(params.get("limit"), 50, 500, "limit"),
        "scan": _parse_limit(params.get("scan"), DEFAULT_ERROR_SCAN, MAX_ERROR_SCAN, "scan"),
        "now": now,
    }


def stats_params(params: Mapping[str, str], *, now: int) -> dict[str, Any]:
    """Keyword arguments of :func:`stats` from query parameters."""
    _only(params, ("since", "until", "service", "interval", "durations"))
    flag = params.get("durations", "").strip().lower()
    if flag not in ("", "0", "1", "true", "false", "yes", "no"):
        raise QueryError("durations", flag, "expected true or false")
    return {
        "interval": params.get("interval") or None,
        "since": parse_time(params["since"], now=now, field="since") if "since" in params else None,
        "until": parse_time(params["until"], now=now, field="until") if "until" in params else None,
        "service": params.get("service") or None,
        "durations": flag in ("1", "true", "yes"),
        "now": now,
    }


def _only(params: Mapping[str, str], allowed: tuple[str, ...]) -> None:
    for key in params:
        if key not in allowed:
            raise QueryError(key, params[key], f"unknown parameter; expected {', '.join(allowed)}")
