"""The one table from errors (asyncpg, aiohttp, the OS, atrace's own) to retry verdicts.

Every sink and the collector judge a failure here, by class: the nearest class of the
exception's MRO that the table names decides, so a subclass listed on its own overrides its
parent. An error PostgreSQL sent carries a SQLSTATE, and its class (the first two characters)
decides. Anything the table does not name is permanent: retrying a bug or bad data only repeats
it.

asyncpg and aiohttp are optional; their rows join the table once the library is imported (an
exception of a library that was never imported cannot exist), so classifying never imports one.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from ..errors import SinkClosedError, SinkHTTPError

__all__ = (
    "DATA_SQLSTATE_CLASSES",
    "SQLSTATE_CLASSES",
    "Verdict",
    "class_rules",
    "classify",
    "refused_data",
    "sqlstate",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """A sink's judgement of an error: retry it (maybe after a server-given delay) or not.

    :ivar retryable: whether another attempt may succeed.
    :ivar retry_after: seconds the server asked to wait before the next attempt, or None for
        the policy's backoff.
    :ivar reason: a short name for the error, for logs (an exception class, an SQLSTATE, ...).
    """

    retryable: bool
    retry_after: float | None = None
    reason: str = ""


Rule = Callable[[BaseException], Verdict]

# SQLSTATE classes, each retryable or not, and what it means.
SQLSTATE_CLASSES: dict[str, tuple[bool, str]] = {
    "08": (True, "connection exception: lost, refused or never made"),
    "40": (True, "transaction rollback: serialization failure or deadlock"),
    "53": (True, "insufficient resources: too many connections, disk or memory full"),
    "57": (True, "operator intervention: shutdown, restart, cancelled by the admin"),
    "58": (True, "system error: I/O error outside PostgreSQL"),
    "0A": (False, "feature not supported"),
    "22": (False, "data exception: a value the column cannot hold"),
    "23": (False, "integrity constraint violation"),
    "28": (False, "invalid authorization: wrong user or password"),
    "3D": (False, "invalid catalog name: no such database"),
    "42": (False, "syntax error or access rule violation: missing table, no privilege"),
    "XX": (False, "internal error: PostgreSQL itself failed on this statement"),
}
# Classes meaning PostgreSQL refused the rows themselves (the session is fine): the same rows
# fail the same way every time.
DATA_SQLSTATE_CLASSES = frozenset({"22", "23"})


def _always(retryable: bool) -> Rule:
    def rule(exc: BaseException) -> Verdict:
        return Verdict(retryable=retryable, reason=type(exc).__name__)

    return rule


RETRY = _always(True)
PERMANENT = _always(False)


def _by_sqlstate(exc: BaseException) -> Verdict:
    code = sqlstate(exc)
    if code is None:
        return Verdict(retryable=False, reason=type(exc).__name__)
    retryable, _ = SQLSTATE_CLASSES.get(code[:2], (False, ""))
    return Verdict(retryable=retryable, reason=f"SQLSTATE {code}")


def _sink_http(exc: BaseException) -> Verdict:
    assert isinstance(exc, SinkHTTPError)
    reason = f"HTTP {exc.status}" if exc.status is not None else "no answer"
    return Verdict(retryable=exc.retryable, retry_after=exc.retry_after, reason=reason)


def _closed(exc: BaseException) -> Verdict:
    # The lane closes a sink after a failed write and opens it again before the next attempt.
    return Verdict(retryable=True, reason="closed")


def _own_rules() -> dict[type[BaseException], Rule]:
    return {
        # The OS: refused, reset, unreachable, broken pipe, and time-outs (a TimeoutError is an
        # OSError too; asyncio's is not the builtin before Python 3.11).
        OSError: RETRY,
        TimeoutError: RETRY,
        asyncio.TimeoutError: RETRY,
        # A stream that ended mid-message: the server went away.
        EOFError: RETRY,
        # atrace's own: an HTTP answer was already judged when the error was made.
        SinkHTTPError: _sink_http,
        SinkClosedError: _closed,
    }


def _asyncpg_rules(module: ModuleType) -> dict[type[BaseException], Rule]:
    pg = module.exceptions
    return {
        # Whatever the server answered: its SQLSTATE class decides (connection-loss errors such
        # as ConnectionDoesNotExistError carry class 08 too).
        pg.PostgresError: _by_sqlstate,
        # Client-side: a connection closed under the call, or left mid-operation by an earlier
        # failure. A new connection works.
        pg.InterfaceError: RETRY,
        pg.InternalClientError: RETRY,
        # Their subclasses that fail the same way on any connection: a value the driver cannot
        # encode for its column (DataError, also a ValueError) is the same on every attempt.
        pg.ClientConfigurationError: PERMANENT,
        module.exceptions._base.DataError: PERMANENT,
        pg.UnsupportedClientFeatureError: PERMANENT,
        pg.UnsupportedServerFeatureError: PERMANENT,
        pg.ProtocolError: PERMANENT,
        pg.OutdatedSchemaCacheError: PERMANENT,
        pg.TargetServerAttributeNotMatched: PERMANENT,
    }


def _aiohttp_rules(aiohttp: ModuleType) -> dict[type[BaseException], Rule]:
    return {
        # Connecting, sending, a lost connection, a server time-out, a cut-off body.
        aiohttp.ClientConnectionError: RETRY,
        aiohttp.ClientPayloadError: RETRY,
        # A certificate the client refuses is refused again on every attempt.
        aiohttp.ClientConnectorCertificateError: PERMANENT,
        # The rest (a bad URL, a redirect loop, an unreadable answer) fails every time.
        aiohttp.ClientError: PERMANENT,
    }


# Optional libraries whose rows join the table once they are imported.
_LIBRARIES: dict[str, Callable[[ModuleType], dict[type[BaseException], Rule]]] = {
    "asyncpg": _asyncpg_rules,
    "aiohttp": _aiohttp_rules,
}
_rules = _own_rules()
_pending = dict(_LIBRARIES)


def class_rules() -> dict[type[BaseException], Rule]:
    """The exception classes the table names now, each with its rule (for tests and docs)."""
    _load_libraries()
    return dict(_rules)


def _load_libraries() -> None:
    for name in [n for n in _pending if n in sys.modules]:
        rules = _pending.pop(name, None)
        if rules is None:  # another thread got there first
            continue
        try:
            _rules.update(rules(sys.modules[name]))
        except AttributeError:  # still being imported (in a worker thread): next time
            _pending[name] = rules


def classify(exc: BaseException) -> Verdict:
    """Whether a failed operation is worth retrying, and why (``Verdict.reason``)."""
    if _pending:
        _load_libraries()
    rules = _rules
    for cls in type(exc).__mro__:
        rule = rules.get(cls)
        if rule is not None:
            return rule(exc)
    return Verdict(retryable=False, reason=type(exc).__name__)


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of an error PostgreSQL sent (asyncpg's errors carry it), else None."""
    code = getattr(exc, "sqlstate", None)
    return code if isinstance(code, str) and code else None


def refused_data(exc: BaseException) -> bool:
    """Whether PostgreSQL refused the rows themselves (a value, a constraint), not the session."""
    code = sqlstate(exc)
    return code is not None and code[:2] in DATA_SQLSTATE_CLASSES
