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
    SPAN_KIND,
    SPAN_KIND_NAMES,
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
# span_kind=server: OpenTelemetry's span kinds by name (unspecified is not a filter).
_SPAN_KINDS = {name: kind for kind, name in SPAN_KIND_NAMES.items() if kind}
NS_PER_S = 1_000_000_000
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# ASCII only: str.isdigit() and \d also take "²" or "٣", which int() refuses or misreads.
_RELATIVE = re.compile(r"([0-9]{1,9})\s*([smhdw])", re.I | re.A)
_ISO = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,]([0-9]{1,9}))?)?)?"
    r"\s*(Z|[+-][0-9]{2}(?::?[0-9]{2})?)?",
    re.I | re.A,
)
_INTEGER = re.compile(r"-?[0-9]{1,19}", re.A)
_UNSIGNED = re.compile(r"[0-9]{1,19}", re.A)
_MILLISECONDS = re.compile(r"[0-9]{1,13}(?:\.[0-9]{1,6})?", re.A)
_CTID = re.compile(r"\(([0-9]{1,10}),([0-9]{1,5})\)", re.A)
_BASE64URL = re.compile(r"[A-Za-z0-9_-]{1,200}", re.A)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
# Times a query may name: every one, and a day either side, fits int64 nanoseconds (the API
# answers them as integers, PostgreSQL's bigint microseconds hold them).
MIN_TIME_NS = -9_183_024_000 * NS_PER_S  # 1679-01-01
MAX_TIME_NS = 9_183_110_400 * NS_PER_S  # 2261-01-01
# A text parameter (service, q, an attribute filter's key or value, ...) is at most this long.
MAX_TEXT = 1024
# The longest slow_ms: about 31 years, so that its nanoseconds fit a bigint.
MAX_SLOW_MS = 10**12
# What an error message quotes of a refused value.
_QUOTED = 100
_MAX_CTID_BLOCK = 2**32 - 1
_MAX_CTID_OFFSET = 2**16 - 1


def refuse(field: str, value: object, reason: str) -> QueryError:
    """The QueryError for ``field=value``: the value quoted at most 100 characters long, the
    field's name printable (a parameter name comes from the request, too)."""
    if isinstance(value, str) and len(repr(value)) > _QUOTED:
        # Cut so that the quoted form, escapes included, stays within the bound.
        kept, width = 0, 0
        for c in value:
            width += len(repr(c)) - 2
            if width > _QUOTED:
                break
            kept += 1
        value = value[:kept] + "…"
    return QueryError(_printable(field[:_QUOTED]), value, reason)


def _printable(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def check_text(field: str, value: str, maximum: int = MAX_TEXT) -> str:
    """``value`` if PostgreSQL can take it as text: no NUL, valid UTF-8, at most ``maximum``."""
    if len(value) > maximum:
        raise refuse(field, value, f"longer than {maximum} characters")
    if "\x00" in value:
        raise refuse(field, value, "contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise refuse(field, value, "not valid UTF-8") from None
    return value


def _check_time(field: str, value: object, ns: int) -> int:
    if not MIN_TIME_NS <= ns <= MAX_TIME_NS:
        raise refuse(field, value, "out of range: expected a time between 1679 and 2261")
    return ns


def parse_time(value: str | int | dt.datetime, *, now: int, field: str = "time") -> int:
    """Nanoseconds since the epoch from ISO 8601, a relative age (``15m``, ``2h``, ``1d``: that
    long before ``now``), ``now``, integer nanoseconds, or a datetime (naive means UTC)."""
    if isinstance(value, dt.datetime):
        try:
            ns = datetime_ns(value)
        except OverflowError:
            raise refuse(field, str(value), "out of range") from None
        return _check_time(field, str(value), ns)
    if isinstance(value, int) and not isinstance(value, bool):
        return _check_time(field, value, value)
    text = check_text(field, str(value), 64).strip()
    if text.lower() == "now":
        return _check_time(field, value, now)
    if _INTEGER.fullmatch(text):
        return _check_time(field, value, int(text))
    m = _RELATIVE.fullmatch(text)
    if m is not None:
        return _check_time(field, value, now - int(m[1]) * _UNITS[m[2].lower()] * NS_PER_S)
    m = _ISO.fullmatch(text)
    if m is not None:
        try:
            ns = _iso_ns(m)
        except (ValueError, OverflowError):
            pass
        else:
            return _check_time(field, value, ns)
    raise refuse(
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
        if 0 <= value <= MAX_LEVEL:
            return value
    else:
        text = str(value).strip().lower()
        if text in LEVELS:
            return LEVELS[text]
        if _UNSIGNED.fullmatch(text) and int(text) <= MAX_LEVEL:
            return int(text)
    raise refuse("level", value, "expected debug, info, warning, error, critical or 0-100")


def _parse_limit(value: str | int | None, default: int, maximum: int, name: str) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        limit = value
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        limit = int(value)
    else:
        raise refuse(name, value, f"expected an integer from 1 to {maximum}")
    if not 1 <= limit <= maximum:
        raise refuse(name, value, f"expected 1 to {maximum}")
    return limit


def parse_trace_param(value: str) -> str:
    trace_id = parse_trace_id(value.strip()) if len(value) <= 64 else None
    if trace_id is None:
        raise refuse("trace_id", value, "expected 32 hex digits (not all zero)")
    return trace_id


def _attr_value(key: str, text: str) -> Any:
    check_text(key, text)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    # JSON may spell a NUL ("\\u0000"), which jsonb refuses, in a string or an object's key.
    if b"\\u0000" in orjson.dumps(value):
        raise refuse(key, text, "contains a NUL character")
    return value


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
    span_kind: int | None = None
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
        if self.span_kind is not None and row[SPAN_KIND] != self.span_kind:
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
            name = check_text(key, key[5:], 256)
            if not name:
                raise refuse(key, value, "an attribute filter needs a key: attr.KEY=VALUE")
            if name in attrs:
                raise refuse(key, value, "given more than once")
            if len(attrs) == MAX_ATTR_FILTERS:
                raise refuse("attr", key, f"at most {MAX_ATTR_FILTERS} attribute filters")
            attrs[name] = _attr_value(key, value)
        elif key in _FILTER_KEYS:
            if key in seen:
                raise refuse(key, value, "given more than once")
            seen[key] = check_text(key, value)
        else:
            raise refuse(key, value, f"unknown parameter; expected one of {_FILTER_NAMES}")
    since = seen.get("since")
    until = seen.get("until")
    kind = seen.get("kind")
    if kind is not None and kind.strip().lower() not in _KIND_FILTERS:
        raise refuse("kind", kind, "expected log, span, span_start or span_end")
    span_kind = seen.get("span_kind")
    if span_kind is not None and span_kind.strip().lower() not in _SPAN_KINDS:
        raise refuse(
            "span_kind", span_kind, "expected internal, server, client, producer or consumer"
        )
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
        span_kind=_SPAN_KINDS[span_kind.strip().lower()] if span_kind else None,
        q=q or None,
        attrs=attrs,
        trace_id=parse_trace_param(trace_id) if trace_id else None,
        limit=_parse_limit(seen.get("limit"), DEFAULT_LIMIT, MAX_LIMIT, "limit"),
        cursor=_decode_cursor(cursor) if cursor else None,
    )


_FILTER_KEYS = frozenset(
    ("service", "level", "kind", "span_kind", "since", "until", "q", "trace_id", "limit", "cursor")
)
_FILTER_NAMES = ", ".join(sorted(_FILTER_KEYS)) + ", attr.KEY"


def encode_cursor(ts_us: int, rid: str) -> str:
    raw = orjson.dumps([ts_us, rid])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode_cursor(text: str) -> tuple[int, str]:
    # Strictly what encode_cursor writes: unpadded base64url of [ts_us, "(block,offset)"], the
    # time within range and the row address within a tid's bounds.
    if _BASE64URL.fullmatch(text):
        try:
            raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
            decoded = orjson.loads(raw)
        except ValueError:
            decoded = None
        if isinstance(decoded, list) and len(decoded) == 2:
            ts_us, rid = decoded
            m = _CTID.fullmatch(rid) if isinstance(rid, str) else None
            if (
                type(ts_us) is int
                and MIN_TIME_NS // 1000 <= ts_us <= MAX_TIME_NS // 1000
                and m is not None
                and int(m[1]) <= _MAX_CTID_BLOCK
                and int(m[2]) <= _MAX_CTID_OFFSET
            ):
                return ts_us, rid
    raise refuse("cursor", text, "not a cursor this API returned")


# -- query parameters as keyword arguments ----------------------------------------------------


def spans_params(params: Mapping[str, str], *, now: int) -> dict[str, Any]:
    """Keyword arguments of :func:`spans` from query parameters."""
    params = _only(params, ("since", "until", "service", "slow_ms", "errors", "limit"))
    flag = params.get("errors", "").strip().lower()
    if flag not in ("", "0", "1", "true", "false", "yes", "no"):
        raise refuse("errors", flag, "expected true or false")
    return {
        "since": parse_time(params["since"], now=now, field="since") if "since" in params else None,
        "until": parse_time(params["until"], now=now, field="until") if "until" in params else None,
        "service": params.get("service") or None,
        "slow_ns": parse_slow_ms(params.get("slow_ms")),
        "errors_only": flag in ("1", "true", "yes"),
        "limit": _parse_limit(params.get("limit"), DEFAULT_LIMIT, MAX_LIMIT, "limit"),
        "now": now,
    }


def parse_slow_ms(value: str | float | None) -> int | None:
    """``slow_ms`` (milliseconds, at most 6 decimals, 0 to 10^12) as nanoseconds."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value) and 0 <= value <= MAX_SLOW_MS:
            return round(value * 1_000_000)
    elif isinstance(value, str) and _MILLISECONDS.fullmatch(value.strip()):
        whole, _, fraction = value.strip().partition(".")
        if int(whole) <= MAX_SLOW_MS:
            return int(whole) * 1_000_000 + int(fraction.ljust(6, "0"))
    raise refuse("slow_ms", value, f"expected a number of milliseconds from 0 to {MAX_SLOW_MS}")


def errors_params(params: Mapping[str, str], *, now: int) -> dict[str, Any]:
    """Keyword arguments of :func:`errors` from query parameters."""
    params = _only(params, ("since", "until", "service", "limit", "scan"))
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
    params = _only(params, ("since", "until", "service", "interval", "durations"))
    flag = params.get("durations", "").strip().lower()
    if flag not in ("", "0", "1", "true", "false", "yes", "no"):
        raise refuse("durations", flag, "expected true or false")
    return {
        "interval": params.get("interval") or None,
        "since": parse_time(params["since"], now=now, field="since") if "since" in params else None,
        "until": parse_time(params["until"], now=now, field="until") if "until" in params else None,
        "service": params.get("service") or None,
        "durations": flag in ("1", "true", "yes"),
        "now": now,
    }


def _only(params: Mapping[str, str], allowed: tuple[str, ...]) -> dict[str, str]:
    # The parameters as a plain dict, each one known, given once, and text PostgreSQL can take.
    out: dict[str, str] = {}
    items = params.items()
    for key, value in items:
        if key not in allowed:
            raise refuse(key, value, f"unknown parameter; expected {', '.join(allowed)}")
        if key in out:
            raise refuse(key, value, "given more than once")
        out[key] = check_text(key, value)
    return out
