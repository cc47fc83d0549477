"""API keys: one project each, shown once, stored as a SHA-256 of the secret, checked per request.

A key reads ``atk_<key_id>_<secret>``: ``key_id`` (16 hex digits) is public and finds the row,
``secret`` (32 random bytes, URL-safe base64) is never stored, only its SHA-256, compared with
:func:`hmac.compare_digest`. Checked keys are trusted from memory for ``ttl`` seconds, so a key
revoked by another process stops working within ``ttl``; revoked through :meth:`KeyStore.revoke`
it stops at once in this process.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..errors import AuthError, ConfigError
from ._state import PROJECT, database

__all__ = (
    "KEY_PREFIX",
    "ApiKey",
    "KeyStore",
    "auth_middleware",
    "check_project",
    "create_key",
    "is_key_id",
    "list_keys",
    "parse_key",
    "request_key",
    "revoke_key",
)

KEY_PREFIX = "atk_"
_KEY = re.compile(r"atk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# Unknown key ids are remembered too (an attacker's guesses must not each cost a query), within
# a bounded table.
_MAX_CACHED = 10_000


class ApiKey:
    """One stored key as ``atrace keys list`` shows it: never the secret."""

    __slots__ = ("created_at", "key_id", "name", "project", "revoked_at")

    def __init__(
        self, key_id: str, project: str, name: str | None, created_at: str, revoked_at: str | None
    ) -> None:
        self.key_id = key_id
        self.project = project
        self.name = name
        self.created_at = created_at
        self.revoked_at = revoked_at

    def __repr__(self) -> str:
        state = f"revoked {self.revoked_at}" if self.revoked_at else "active"
        return f"<ApiKey {self.key_id} project={self.project!r} {state}>"


def check_project(project: object) -> str:
    """A valid project name (letters, digits, ``._-``, at most 100), or :class:`ConfigError`."""
    if not isinstance(project, str) or not _PROJECT.fullmatch(project):
        raise ConfigError(
            "project", project, "expected letters, digits, '.', '_' or '-' (at most 100)"
        )
    return project


def parse_key(text: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else None."""
    match = _KEY.fullmatch(text.strip())
    if match is None:
        return None
    return match.group(1), match.group(2)


def is_key_id(text: str) -> bool:
    """Whether ``text`` is a key id (16 hex digits), the public part of a key."""
    return _KEY_ID.fullmatch(text) is not None


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


_TS = """to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')"""


async def create_key(conn: Any, schema: str, project: str, name: str | None = None) -> str:
    """Store a new key for ``project`` and return it whole; it cannot be shown again."""
    check_project(project)
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    await conn.execute(
        f"INSERT INTO {schema}.api_keys (key_id, project, name, secret_sha) "
        "VALUES ($1, $2, $3, $4)",
        key_id,
        project,
        name,
        _digest(secret),
    )
    return f"{KEY_PREFIX}{key_id}_{secret}"


async def list_keys(conn: Any, schema: str, project: str | None = None) -> list[ApiKey]:
    """Every key (of ``project`` if given), oldest first, without secrets."""
    rows = await conn.fetch(
        f"SELECT key_id, project, name, {_TS.format(col='created_at')} AS created, "
        f"{_TS.format(col='revoked_at')} AS revoked FROM {schema}.api_keys "
        "WHERE $1::text IS NULL OR project = $1 ORDER BY created_at, key_id",
        project,
    )
    return [ApiKey(r["key_id"], r["project"], r["name"], r["created"], r["revoked"]) for r in rows]


async def revoke_key(conn: Any, schema: str, key_id: str) -> bool | None:
    """Revoke a key by id (or by the whole key): True if revoked now, False if it already
    was, None if there is no such key."""
    parsed = parse_key(key_id)
    if parsed is not None:
        key_id = parsed[0]
    if not is_key_id(key_id):
        return None
    status = await conn.execute(
        f"UPDATE {schema}.api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL",
        key_id,
    )
    if status == "UPDATE 1":
        return True
    exists = await conn.fetchval(f"SELECT 1 FROM {schema}.api_keys WHERE key_id = $1", key_id)
    return False if exists else None


class KeyStore:
    """Checks keys against ``<schema>.api_keys``, trusting each answer for ``ttl`` seconds."""

    def __init__(
        self,
        schema: str,
        *,
        ttl: float = 5.0,
        pool_wait: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.schema = schema
        self.ttl = ttl
        self.pool_wait = pool_wait
        self._clock = clock
        # key_id -> (project, secret digest) of an active key, or None; and when to ask again.
        self._cache: dict[str, tuple[tuple[str, bytes] | None, float]] = {}
        # key_id -> the lookup under way: requests (and open live tails) asking for the same
        # key at once share one query instead of each taking a connection.
        self._asking: dict[str, asyncio.Future[tuple[str, bytes] | None]] = {}

    async def check(self, pool: Any, key: str | None) -> str:
        """The project of a valid, unrevoked key; else :class:`AuthError`.

        PostgreSQL unreachable while the key is not cached: asyncpg's or the OS's error, which
        the collector answers 503 (see ``atrace._delivery.classify``).
        """
        if not key:
            raise AuthError("missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key'")
        parsed = parse_key(key)
        if parsed is None:
            raise AuthError("malformed API key")
        key_id, secret = parsed
        entry = await self._lookup(pool, key_id)
        digest = _digest(secret)
        # Compared even for an unknown id, so the answer takes the same time either way.
        expected = entry[1] if entry is not None else bytes(32)
        if not hmac.compare_digest(digest, expected) or entry is None:
            raise AuthError("invalid or revoked API key")
        return entry[0]

    async def _lookup(self, pool: Any, key_id: str) -> tuple[str, bytes] | None:
        now = self._clock()
        cached = self._cache.get(key_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        asking = self._asking.get(key_id)
        if asking is not None:
            await asyncio.wait((asking,))  # never cancels the shared lookup
            if not asking.cancelled():
                return asking.result()
            # The request that asked went away before the answer: ask again.
        future = self._asking[key_id] = asyncio.get_running_loop().create_future()
        try:
            entry = await self._query(pool, key_id, now)
        except BaseException as exc:
            if isinstance(exc, Exception):
                future.set_exception(exc)
            else:
                future.cancel()
            raise
        else:
            future.set_result(entry)
            return entry
        finally:
            if self._asking.get(key_id) is future:
                del self._asking[key_id]
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: no "never retrieved" warning when nobody waits

    async def _query(self, pool: Any, key_id: str, now: float) -> tuple[str, bytes] | None:
        with database():
            async with pool.acquire(timeout=self.pool_wait) as conn:
                row = await conn.fetchrow(
                    f"SELECT project, secret_sha FROM {self.schema}.api_keys "
                    "WHERE key_id = $1 AND revoked_at IS NULL",
                    key_id,
                )
        entry = None if row is None else (str(row["project"]), bytes(row["secret_sha"]))
        if self.ttl > 0:
            if len(self._cache) >= _MAX_CACHED:
                self._prune(now)
            self._cache[key_id] = (entry, now + self.ttl)
        return entry

    def _prune(self, now: float) -> None:
        for key_id in [k for k, (_, until) in self._cache.items() if until <= now]:
            del self._cache[key_id]
        while len(self._cache) >= _MAX_CACHED:
            del self._cache[next(iter(self._cache))]

    def forget(self, key_id: str) -> None:
        """Drop what is remembered of one key: the next request asks PostgreSQL."""
        self._cache.pop(key_id, None)

    async def revoke(self, conn: Any, key_id: str) -> bool | None:
        """:func:`revoke_key`, effective at once in this process."""
        parsed = parse_key(key_id)
        result = await revoke_key(conn, self.schema, key_id)
        self.forget(parsed[0] if parsed is not None else key_id)
        return result


def request_key(request: web.Request) -> str | None:
    """The key a request carries in ``Authorization: Bearer`` or ``X-API-Key``, if any."""
    header = request.headers.get("Authorization")
    if header:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return header  # not a bearer token: reported as malformed
    return request.headers.get("X-API-Key") or None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def auth_middleware(store: KeyStore, pool: Callable[[], Any], public: frozenset[str]) -> Any:
    """An aiohttp middleware setting ``request[PROJECT]`` from the request's key; paths in
    ``public`` need none. ``pool()`` returns the asyncpg pool of the running app."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in public:
            return await handler(request)
        request[PROJECT] = await store.check(pool(), request_key(request))
        return await handler(request)

    return authenticate
